#include "cli/exit_codes.h"

#include <gtest/gtest.h>

namespace agentd::cli {
namespace {

TEST(ExitCodesTest, HttpStatuses) {
  EXPECT_EQ(ExitCodeForHttpStatus(200), ExitCode::kOk);
  EXPECT_EQ(ExitCodeForHttpStatus(201), ExitCode::kOk);
  EXPECT_EQ(ExitCodeForHttpStatus(204), ExitCode::kOk);
  EXPECT_EQ(ExitCodeForHttpStatus(404), ExitCode::kNotFound);
  for (int s : {400, 413, 415, 422})
    EXPECT_EQ(ExitCodeForHttpStatus(s), ExitCode::kInvalidRequest) << s;
  for (int s : {409, 412}) EXPECT_EQ(ExitCodeForHttpStatus(s), ExitCode::kConflict) << s;
  for (int s : {500, 502, 503, 504, 599, 429}) {
    EXPECT_EQ(ExitCodeForHttpStatus(s), ExitCode::kUnavailable) << s;
  }
  for (int s : {401, 403}) EXPECT_EQ(ExitCodeForHttpStatus(s), ExitCode::kUnauthenticated) << s;
  for (int s : {301, 405, 406, 418, 0}) EXPECT_EQ(ExitCodeForHttpStatus(s), ExitCode::kError) << s;
}

TEST(ExitCodesTest, TransportAndLocalStatuses) {
  EXPECT_EQ(ExitCodeForStatus(Status::OK()), ExitCode::kOk);
  EXPECT_EQ(ExitCodeForStatus(Unavailable("refused")), ExitCode::kUnavailable);
  EXPECT_EQ(ExitCodeForStatus(DeadlineExceeded("slow")), ExitCode::kUnavailable);
  EXPECT_EQ(ExitCodeForStatus(InvalidArgument("bad yaml")), ExitCode::kUsage);
  EXPECT_EQ(ExitCodeForStatus(Internal("bad json")), ExitCode::kError);
  EXPECT_EQ(ExitCodeForStatus(Cancelled("stop")), ExitCode::kError);
}

TEST(ExitCodesTest, NumericValuesAreTheDocumentedOnes) {
  EXPECT_EQ(ToInt(ExitCode::kOk), 0);
  EXPECT_EQ(ToInt(ExitCode::kError), 1);
  EXPECT_EQ(ToInt(ExitCode::kUsage), 2);
  EXPECT_EQ(ToInt(ExitCode::kNotFound), 3);
  EXPECT_EQ(ToInt(ExitCode::kInvalidRequest), 4);
  EXPECT_EQ(ToInt(ExitCode::kConflict), 5);
  EXPECT_EQ(ToInt(ExitCode::kUnavailable), 6);
  EXPECT_EQ(ToInt(ExitCode::kUnauthenticated), 7);
  EXPECT_EQ(ToInt(ExitCode::kTurnFailed), 8);
  EXPECT_EQ(ToInt(ExitCode::kRequiresAction), 9);
}

TEST(ExitCodesTest, HelpListsEveryCodeWithItsHttpStatuses) {
  std::string help = ExitCodeHelp();
  for (int code = 0; code <= 9; ++code) {
    EXPECT_NE(help.find("\n  " + std::to_string(code) + "  "), std::string::npos) << code;
  }
  EXPECT_NE(help.find("not found (HTTP 404)"), std::string::npos);
  EXPECT_NE(help.find("(HTTP 400, 413, 415, 422)"), std::string::npos);
  EXPECT_NE(help.find("(HTTP 409, 412)"), std::string::npos);
  EXPECT_NE(help.find("(HTTP 429, 5xx)"), std::string::npos);
  EXPECT_NE(help.find("(HTTP 401, 403)"), std::string::npos);
}

}  // namespace
}  // namespace agentd::cli
