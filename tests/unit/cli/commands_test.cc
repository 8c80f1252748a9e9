#include "cli/commands.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace agentd::cli {
namespace {

TEST(MetadataArgsTest, KeyValuePairs) {
  Result<Json> j = ParseMetadataArgs({"user=alice", "expr=a=b", "empty="});
  ASSERT_TRUE(j.ok()) << j.status().message();
  EXPECT_EQ(*j, Json({{"user", "alice"}, {"expr", "a=b"}, {"empty", ""}}));
  EXPECT_EQ(*ParseMetadataArgs({}), Json::object());
}

TEST(MetadataArgsTest, Errors) {
  EXPECT_EQ(ParseMetadataArgs({"novalue"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseMetadataArgs({"=x"}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseMetadataArgs({"a=1", "a=2"}).status().code(), StatusCode::kInvalidArgument);
}

TEST(ToolOutputsTest, PairsInOrder) {
  Result<Json> j = BuildToolOutputs({"c1", "c2"}, {"sunny", "{\"t\":3}"});
  ASSERT_TRUE(j.ok());
  EXPECT_EQ(*j, Json::parse(R"({"outputs":[{"call_id":"c1","output":"sunny"},
                                            {"call_id":"c2","output":"{\"t\":3}"}]})"));
}

TEST(ToolOutputsTest, CountsMustMatch) {
  Status st = BuildToolOutputs({"c1", "c2"}, {"x"}).status();
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("2 --call-id but 1 --output"), std::string::npos);
  EXPECT_FALSE(BuildToolOutputs({}, {}).ok());
}

int RunCli(std::vector<std::string> args) {
  args.insert(args.begin(), "agentctl");
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  return RunAgentctlBlocking(static_cast<int>(argv.size()), argv.data());
}

TEST(RunAgentctlTest, HelpExitsZero) {
  EXPECT_EQ(RunCli({"--help"}), 0);
  EXPECT_EQ(RunCli({"turn", "--help"}), 0);
  EXPECT_EQ(RunCli({"agents", "create", "--help"}), 0);
}

TEST(RunAgentctlTest, UsageErrorsExitTwo) {
  EXPECT_EQ(RunCli({}), 2);
  EXPECT_EQ(RunCli({"bogus"}), 2);
  EXPECT_EQ(RunCli({"agents"}), 2);
  EXPECT_EQ(RunCli({"agents", "create"}), 2);  // -f missing
  EXPECT_EQ(RunCli({"sessions", "list", "--status", "x"}), 2);
  EXPECT_EQ(RunCli({"turn", "ses_1"}), 2);  // TEXT missing
  EXPECT_EQ(RunCli({"events", "ses_1", "--limit", "0"}), 2);
  // Local input problems are found before anything is sent.
  EXPECT_EQ(
      RunCli({"--server", "http://127.0.0.1:1", "agents", "create", "-f", "/nonexistent.yaml"}), 2);
  EXPECT_EQ(RunCli({"--server", "http://127.0.0.1:1", "sessions", "create", "--agent", "a",
                    "--metadata", "novalue"}),
            2);
  EXPECT_EQ(RunCli({"--server", "http://127.0.0.1:1", "tool-outputs", "s", "t", "--call-id", "a",
                    "--call-id", "b", "--output", "x"}),
            2);
}

TEST(RunAgentctlTest, UnreachableServerExitsSix) {
  EXPECT_EQ(RunCli({"--server", "http://127.0.0.1:1", "agents", "list"}), 6);
  EXPECT_EQ(RunCli({"agents", "get", "agt_1", "--server", "http://127.0.0.1:1", "--json"}), 6);
  EXPECT_EQ(RunCli({"--server", "http://127.0.0.1:1", "turn", "ses_1", "hi"}), 6);
  EXPECT_EQ(RunCli({"--server", "http://127.0.0.1:1", "health"}), 6);
}

}  // namespace
}  // namespace agentd::cli
