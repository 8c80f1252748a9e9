// The parts of ApiClient that need no server: URL building and error bodies. Requests are
// exercised by the integration tests against a real agentd.
#include "cli/client.h"

#include <gtest/gtest.h>

#include "cli/exit_codes.h"

namespace agentd::cli {
namespace {

TEST(UrlEncodeTest, KeepsUnreservedAndEscapesTheRest) {
  EXPECT_EQ(UrlEncode("ses_01HX-a.b~c"), "ses_01HX-a.b~c");
  EXPECT_EQ(UrlEncode("a/b?c=d&e f"), "a%2Fb%3Fc%3Dd%26e%20f");
  EXPECT_EQ(UrlEncode("é"), "%C3%A9");
}

TEST(QueryStringTest, SkipsEmptyValues) {
  EXPECT_EQ(QueryString({}), "");
  EXPECT_EQ(QueryString({{"agent_id", ""}, {"limit", ""}}), "");
  EXPECT_EQ(QueryString({{"agent_id", "agt_1"}, {"status", ""}, {"limit", "10"}}),
            "?agent_id=agt_1&limit=10");
  EXPECT_EQ(QueryString({{"cursor", "a+b/c="}}), "?cursor=a%2Bb%2Fc%3D");
}

TEST(ProblemTest, ProblemJsonDetail) {
  ApiResponse r;
  r.http_status = 404;
  r.content_type = "application/problem+json";
  r.body = R"({"type":"about:blank","title":"Not Found","status":404,"detail":"no session ses_9"})";
  ApiProblem p = ProblemFromResponse(r);
  EXPECT_EQ(FormatProblem(p), "no session ses_9 (HTTP 404)");
  EXPECT_EQ(ExitCodeForHttpStatus(p.http_status), ExitCode::kNotFound);
}

TEST(ProblemTest, FallsBackToTitleThenBodyThenReason) {
  ApiResponse r;
  r.http_status = 409;
  r.body = R"({"title":"Conflict","status":409})";
  EXPECT_EQ(FormatProblem(ProblemFromResponse(r)), "Conflict (HTTP 409)");
  r.http_status = 502;
  r.content_type = "text/plain";
  r.body = "upstream down\n";
  EXPECT_EQ(FormatProblem(ProblemFromResponse(r)), "upstream down (HTTP 502)");
  r.http_status = 503;
  r.content_type = "text/html";
  r.body = "<html>busy</html>";
  EXPECT_EQ(FormatProblem(ProblemFromResponse(r)), "Service Unavailable (HTTP 503)");
  r.body = "";
  r.content_type = "";
  EXPECT_EQ(FormatProblem(ProblemFromResponse(r)), "Service Unavailable (HTTP 503)");
}

TEST(ParseResponseJsonTest, EmptyBodyIsNullAndGarbageIsAnError) {
  ApiResponse r;
  r.http_status = 204;
  Result<Json> j = ParseResponseJson(r, "reply");
  ASSERT_TRUE(j.ok());
  EXPECT_TRUE(j->is_null());
  r.body = "{\"a\":";
  EXPECT_EQ(ParseResponseJson(r, "reply").status().code(), StatusCode::kInternal);
}

TEST(ApiClientTest, UnreachableServerIsUnavailable) {
  // Port 1 on localhost: nothing listens there, so the connection is refused at once.
  ApiClient client({.server = "http://127.0.0.1:1/", .api_key = "secret-key"});
  Result<ApiResponse> r = client.CallBlocking("GET", "/v1/agents", nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(ExitCodeForStatus(r.status()), ExitCode::kUnavailable);
  EXPECT_EQ(r.status().message().find("secret-key"), std::string::npos);
  Result<ApiResponse> s = client.StreamBlocking("GET", "/v1/sessions/s/events", nullptr, {},
                                                [](const SseEvent&) { return true; });
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(ExitCodeForStatus(s.status()), ExitCode::kUnavailable);
}

}  // namespace
}  // namespace agentd::cli
