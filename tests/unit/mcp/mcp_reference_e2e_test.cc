// The MCP client against the official reference servers from npm
// (@modelcontextprotocol/server-everything and server-filesystem, pinned in
// tests/e2e/node/package-lock.json and installed by scripts/npm-deps.sh). These tests fail,
// not skip, when the packages are missing: CI must install them.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "host_process.h"
#include "tests/support/process.h"
#include "tools/mcp/mcp_client.h"

namespace agentd::tools::mcp {
namespace {

using std::chrono::milliseconds;
namespace fs = std::filesystem;

const std::string kNodeModules = AGENTD_NODE_MODULES;
const std::string kNode = AGENTD_NODE;

std::string Package(const std::string& name) {
  return kNodeModules + "/@modelcontextprotocol/" + name + "/dist/index.js";
}

class ReferenceServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(fs::exists(kNode))
        << kNode << " is missing: run scripts/npm-deps.sh (npm ci in tests/e2e/node)";
    for (const char* p : {"server-everything", "server-filesystem"}) {
      ASSERT_TRUE(fs::exists(Package(p)))
          << Package(p) << " is missing: run scripts/npm-deps.sh (npm ci in tests/e2e/node)";
    }
  }

  static ClientOptions Options(const std::string& name) {
    ClientOptions o;
    o.server_name = name;
    o.connect_timeout = milliseconds(30000);
    o.request_timeout = milliseconds(30000);
    return o;
  }

  static std::set<std::string> Names(const std::vector<McpTool>& tools) {
    std::set<std::string> names;
    for (const auto& t : tools) names.insert(t.name);
    return names;
  }

  static std::string TextOf(const CallResult& r) {
    return r.content.is_array() && !r.content.empty() ? r.content[0].value("text", "") : "";
  }

  // What every transport must do with server-everything.
  static void ExerciseEverything(McpClient& c) {
    EXPECT_EQ(c.era(), Era::kHandshake);  // server-everything 2026.8.31 speaks 2025-11-25
    EXPECT_EQ(c.protocol_version(), kVersion20251125);
    auto tools = c.ListToolsBlocking();
    ASSERT_TRUE(tools.ok()) << tools.status().ToString();
    auto names = Names(*tools);
    for (const char* n :
         {"echo", "get-sum", "get-structured-content", "trigger-long-running-operation"}) {
      EXPECT_TRUE(names.count(n)) << n;
    }
    for (const auto& t : *tools) {
      EXPECT_TRUE(NamespacedToolName("everything", t.name).ok()) << t.name;
      if (t.name == "get-structured-content") {
        EXPECT_TRUE(t.output_schema.is_object());
      }
    }

    auto echo = c.CallToolBlocking("echo", {{"message", "hello from agentd"}});
    ASSERT_TRUE(echo.ok()) << echo.status().ToString();
    EXPECT_EQ(TextOf(*echo), "Echo: hello from agentd");

    auto sum = c.CallToolBlocking("get-sum", {{"a", 2}, {"b", 40}});
    ASSERT_TRUE(sum.ok()) << sum.status().ToString();
    EXPECT_NE(TextOf(*sum).find("42"), std::string::npos) << TextOf(*sum);

    auto structured = c.CallToolBlocking("get-structured-content", {{"location", "Chicago"}});
    ASSERT_TRUE(structured.ok()) << structured.status().ToString();
    EXPECT_TRUE(structured->structured_content.is_object()) << structured->structured_content;
    EXPECT_FALSE(structured->is_error);

    std::vector<ProgressUpdate> updates;
    CallOptions o;
    o.timeout = milliseconds(30000);
    o.on_progress = [&](const ProgressUpdate& u) { updates.push_back(u); };
    auto lro =
        c.CallToolBlocking("trigger-long-running-operation", {{"duration", 1}, {"steps", 3}}, o);
    ASSERT_TRUE(lro.ok()) << lro.status().ToString();
    EXPECT_FALSE(lro->is_error);
    ASSERT_EQ(updates.size(), 3u);
    EXPECT_EQ(updates.back().progress, 3);
    EXPECT_EQ(updates.back().total, 3);

    auto unknown = c.CallToolBlocking("no-such-tool", Json::object());
    EXPECT_TRUE(!unknown.ok() || unknown->is_error);
  }
};

TEST_F(ReferenceServerTest, EverythingOverStdio) {
  auto c = McpClient::ConnectStdioBlocking(
      Options("everything"), testing::HostFactory({kNode, Package("server-everything"), "stdio"}));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ((*c)->server_info().value("name", ""), "mcp-servers/everything");
  ExerciseEverything(**c);
}

TEST_F(ReferenceServerTest, FilesystemOverStdio) {
  std::string root = agentd::testing::TempDir("mcp-fs");
  std::ofstream(root + "/notes.txt") << "remember the milk\n";
  auto c = McpClient::ConnectStdioBlocking(
      Options("fs"), testing::HostFactory({kNode, Package("server-filesystem"), root}));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  auto tools = (*c)->ListToolsBlocking();
  ASSERT_TRUE(tools.ok()) << tools.status().ToString();
  auto names = Names(*tools);
  EXPECT_TRUE(names.count("list_directory") && names.count("read_text_file") &&
              names.count("write_file"));

  auto list = (*c)->CallToolBlocking("list_directory", {{"path", root}});
  ASSERT_TRUE(list.ok()) << list.status().ToString();
  EXPECT_NE(TextOf(*list).find("notes.txt"), std::string::npos) << TextOf(*list);

  auto write = (*c)->CallToolBlocking("write_file",
                                      {{"path", root + "/out.txt"}, {"content", "written by MCP"}});
  ASSERT_TRUE(write.ok()) << write.status().ToString();
  EXPECT_FALSE(write->is_error) << TextOf(*write);
  std::ifstream in(root + "/out.txt");
  std::string got((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(got, "written by MCP");

  auto read = (*c)->CallToolBlocking("read_text_file", {{"path", root + "/notes.txt"}});
  ASSERT_TRUE(read.ok()) << read.status().ToString();
  EXPECT_EQ(TextOf(*read), "remember the milk\n");
  EXPECT_EQ(read->structured_content["content"], "remember the milk\n");

  // Outside the allowed directory: the tool's error, not a transport failure.
  auto denied = (*c)->CallToolBlocking("read_text_file", {{"path", "/etc/hostname"}});
  ASSERT_TRUE(denied.ok()) << denied.status().ToString();
  EXPECT_TRUE(denied->is_error);
}

uint16_t FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

TEST_F(ReferenceServerTest, EverythingOverStreamableHttp) {
  uint16_t port = FreePort();
  std::string log = agentd::testing::TempDir("mcp-everything-http") + "/server.log";
  auto proc =
      agentd::testing::Process::Start({kNode, Package("server-everything"), "streamableHttp"},
                                      {{"PORT", std::to_string(port)}}, log);
  ASSERT_TRUE(proc.ok()) << proc.status().ToString();
  auto up = (*proc)->WaitForLine("listening on port (\\d+)", milliseconds(30000));
  ASSERT_TRUE(up.ok()) << up.status().ToString() << "\n" << (*proc)->Output();
  HttpTarget target{"http://127.0.0.1:" + std::to_string(port) + "/mcp",
                    {{"X-Agentd-Test", "custom header"}},
                    milliseconds(5000), {}, {}};
  auto c = McpClient::ConnectHttpBlocking(Options("everything"), target);
  ASSERT_TRUE(c.ok()) << c.status().ToString() << "\n" << (*proc)->Output();
  ExerciseEverything(**c);
}

}  // namespace
}  // namespace agentd::tools::mcp
