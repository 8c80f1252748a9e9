// Built-in tools and session workspaces through the HTTP API: a real agentd running the
// tools in bwrap sandboxes, the fake model asking for them, and the workspace kept across
// turns, restarts (from its snapshot in the store) and crashes (from the host).
#include <sys/stat.h>
#include <sys/utsname.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>
#include <vector>

#include "tests/integration/fixture.h"

namespace agentd::testing {
namespace {

namespace fs = std::filesystem;

class WorkspaceTest : public AgentdTest {
 protected:
  std::string CreateSandboxAgent(Json sandbox = Json::object()) {
    Json tools = Json::array();
    for (const char* name : {"exec", "read_file", "write_file", "list_files", "edit_file"}) {
      tools.push_back({{"type", "builtin"}, {"name", name}});
    }
    Json extra = {{"tools", tools}};
    if (!sandbox.empty()) extra["sandbox"] = sandbox;
    return CreateAgent(extra);
  }
  // The tool's answer as the model saw it ("done: <output>").
  static Json ToolOutput(const Json& turn) {
    for (const auto& item : turn["output"]) {
      if (item["type"] == "function_call_output") {
        return Json::parse(item["output"].get<std::string>(), nullptr, false);
      }
    }
    return Json();
  }
  std::string WorkspaceRoot(const std::string& sid) const { return dir_ + "/data/workspaces/" + sid; }
};

TEST_F(WorkspaceTest, FilesLiveAcrossTurnsAndRestartsAndComeBackFromTheStore) {
  std::string sid = CreateSession(CreateSandboxAgent());
  Json t1 = Turn(sid, R"(call write_file {"path": "notes/a.txt", "content": "hello"})");
  ASSERT_EQ(t1["status"], "completed") << t1.dump();
  EXPECT_EQ(ToolOutput(t1), Json({{"bytes_written", 5}}));
  Json t2 = Turn(sid, R"(call exec {"command": "cat notes/a.txt; echo ' world' >> notes/a.txt; id -u"})");
  ASSERT_EQ(t2["status"], "completed") << t2.dump();
  EXPECT_EQ(ToolOutput(t2)["stdout"], "hello1000\n");
  EXPECT_EQ(ToolOutput(t2)["exit_code"], 0);

  // Every turn that used the sandbox recorded its snapshot before it ended.
  Json events = Events(sid);
  ExpectDenseSeq(events);
  std::vector<std::string> manifests;
  for (size_t i = 0; i < events.size(); ++i) {
    if (events[i]["type"] != "workspace.snapshot") continue;
    manifests.push_back(events[i]["data"]["manifest"]);
    EXPECT_EQ(events[i + 1]["type"], "turn.completed");
    EXPECT_EQ(events[i]["turn_id"], events[i + 1]["turn_id"]);
  }
  ASSERT_EQ(manifests.size(), 2u);
  EXPECT_NE(manifests[0], manifests[1]);  // the second turn changed a file

  Reply list = Call("GET", Url("/v1/sessions/" + sid + "/workspace"));
  ASSERT_EQ(list.status, 200) << list.raw;
  EXPECT_EQ(list.body["data"], Json::parse(R"([{"path":"notes","type":"dir"},
      {"path":"notes/a.txt","size":12,"type":"file"}])"));
  Reply file = Call("GET", Url("/v1/sessions/" + sid + "/workspace/notes/a.txt"));
  ASSERT_EQ(file.status, 200);
  EXPECT_EQ(file.raw, "hello world\n");
  EXPECT_EQ(file.headers["content-type"], "application/octet-stream");

  // A clean stop takes the workspace off the host: it is all in the store.
  RestartDaemon(SIGTERM);
  EXPECT_FALSE(fs::exists(WorkspaceRoot(sid)));
  list = Call("GET", Url("/v1/sessions/" + sid + "/workspace"));
  EXPECT_EQ(list.body["data"].size(), 2u) << list.raw;
  file = Call("GET", Url("/v1/sessions/" + sid + "/workspace/notes/a.txt"));
  EXPECT_EQ(file.raw, "hello world\n");

  // The next turn gets its files back from the snapshot.
  Json t3 = Turn(sid, R"(call read_file {"path": "notes/a.txt"})");
  ASSERT_EQ(t3["status"], "completed") << t3.dump();
  EXPECT_EQ(ToolOutput(t3), Json({{"content", "hello world\n"}}));
  Json t4 = Turn(sid, R"(call exec {"command": "ls -ln notes | tail -1 | awk '{print $3}'"})");
  EXPECT_EQ(ToolOutput(t4)["stdout"], "1000\n");  // restored files belong to the sandbox user
  // Turns that changed no file record no new snapshot.
  int snapshots = 0;
  for (const auto& e : Events(sid)) snapshots += e["type"] == "workspace.snapshot";
  EXPECT_EQ(snapshots, 2);
}

// The folders in which agentd `pid` makes its sandboxes' groups, one per hierarchy; read
// while it runs.
std::vector<std::string> SandboxGroupFolders(pid_t pid) {
  std::map<std::string, std::string> mounts;  // controller ("" for cgroup2) -> mount point
  std::ifstream mi("/proc/self/mountinfo");
  for (std::string line; std::getline(mi, line);) {
    std::istringstream f(line);
    std::vector<std::string> w;
    for (std::string x; f >> x;) w.push_back(x);
    auto dash = std::find(w.begin(), w.end(), "-");
    if (dash == w.end() || dash + 3 >= w.end() || w.size() < 5) continue;
    if (*(dash + 1) == "cgroup2") mounts.emplace("", w[4]);
    if (*(dash + 1) != "cgroup") continue;
    std::istringstream opts(*(dash + 3));
    for (std::string o; std::getline(opts, o, ',');) mounts.emplace(o, w[4]);
  }
  std::vector<std::string> out;
  std::ifstream cg("/proc/" + std::to_string(pid) + "/cgroup");
  for (std::string line; std::getline(cg, line);) {
    auto a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    std::string controllers = line.substr(a + 1, b - a - 1);
    std::string first = controllers.substr(0, controllers.find(','));
    if (auto m = mounts.find(first); m != mounts.end()) {
      out.push_back(m->second + line.substr(b + 1) + "/agentd-sandboxes");
    }
  }
  return out;
}

// Live processes whose real uid is in [first, first + count), as "pid (name) state ...". A
// zombie is left out: it holds nothing but its pid, and is the host's init's to reap once
// its parent has gone.
std::vector<std::string> ProcessesOfUids(uid_t first, uid_t count) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc", ec)) {
    std::ifstream status(e.path() / "status");
    std::string state;
    for (std::string line; std::getline(status, line);) {
      if (line.rfind("State:", 0) == 0) state = line;
      if (line.rfind("Uid:", 0) != 0) continue;
      uid_t uid = static_cast<uid_t>(std::stoul(line.substr(4)));
      if (uid >= first && uid - first < count && state.find("zombie") == std::string::npos) {
        std::ifstream st(e.path() / "stat");
        out.emplace_back(std::istreambuf_iterator<char>(st), std::istreambuf_iterator<char>());
      }
    }
  }
  return out;
}

// A sandbox that cannot start (here bwrap cannot find a read-only folder of the config,
// removed after agentd started) fails the call with bwrap's reason, and once agentd stops
// nothing of it is left on the host: no mount, no process of a sandbox uid, no group, no
// workspace folder.
TEST_F(WorkspaceTest, ASandboxThatFailsToStartLeavesNothingBehind) {
  if (geteuid() != 0) GTEST_SKIP() << "sandbox uids, groups and mounts need agentd as root";
  const uid_t kUidBase = 1600000000;  // apart from the other tests' sandboxes
  std::string ro = dir_ + "/ro";
  fs::create_directories(ro);
  std::string cfg = dir_ + "/agentd.yaml";
  std::ofstream(cfg) << "sandbox:\n  uid_base: " << kUidBase << "\n  read_only_paths:\n    - "
                     << ro << "\n";
  agentd_.proc->Signal(SIGTERM);
  agentd_.proc->Wait();
  agentd_.proc.reset();
  StartDaemon({"--config", cfg});
  fs::remove(ro);

  std::string sid = CreateSession(CreateSandboxAgent());
  Json t = Turn(sid, R"(call exec {"command": "echo never"})");
  ASSERT_EQ(t["status"], "completed") << t.dump();
  std::string output;
  for (const auto& item : t["output"]) {
    if (item["type"] == "function_call_output") output = item["output"];
  }
  EXPECT_NE(output.find("the sandbox failed"), std::string::npos) << output;
  EXPECT_NE(output.find(ro), std::string::npos) << output;  // bwrap's own reason
  EXPECT_EQ(output.find("never\n"), std::string::npos) << output;
  // The call never reached the workspace: nothing changed, so there is nothing to snapshot.
  for (const auto& e : Events(sid)) EXPECT_NE(e["type"], "workspace.snapshot") << e.dump();
  std::vector<std::string> groups = SandboxGroupFolders(agentd_.proc->pid());
  EXPECT_FALSE(groups.empty());
  const std::string ours = std::to_string(agentd_.proc->pid()) + "-";

  agentd_.proc->Signal(SIGTERM);
  EXPECT_EQ(agentd_.proc->Wait(), 0) << agentd_.proc->Output();
  agentd_.proc.reset();
  std::ifstream mounts("/proc/self/mountinfo");
  for (std::string line; std::getline(mounts, line);) {
    EXPECT_EQ(line.find(dir_ + "/"), std::string::npos) << "left mounted: " << line;
  }
  EXPECT_FALSE(fs::exists(WorkspaceRoot(sid)));
  EXPECT_EQ(ProcessesOfUids(kUidBase, 65536), std::vector<std::string>{});
  for (const auto& folder : groups) {
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(folder, ec)) {
      EXPECT_NE(e.path().filename().string().rfind(ours, 0), 0u) << "left: " << e.path();
    }
  }
}

TEST_F(WorkspaceTest, RefusalsReachTheModelAndTheSessionStaysUsable) {
  std::string sid = CreateSession(CreateSandboxAgent());
  Json t = Turn(sid, R"(call read_file {"path": "../../../etc/passwd"})");
  ASSERT_EQ(t["status"], "completed") << t.dump();
  std::string out = t["output"][1]["output"];
  EXPECT_NE(out.find("'..'"), std::string::npos) << out;
  t = Turn(sid, R"(call exec {"command": "ln -s /etc host-etc"})");
  t = Turn(sid, R"(call read_file {"path": "host-etc/hostname"})");
  out = t["output"][1]["output"];
  EXPECT_NE(out.find("outside the workspace"), std::string::npos) << out;
  // Arguments that do not fit the tool's schema never reach the sandbox.
  t = Turn(sid, R"(call exec {"cmd": "true"})");
  out = t["output"][1]["output"];
  EXPECT_NE(out.find("schema"), std::string::npos) << out;
  t = Turn(sid, R"(call exec {"command": "echo still here"})");
  EXPECT_EQ(ToolOutput(t)["stdout"], "still here\n");
  Reply bad = Call("GET", Url("/v1/sessions/" + sid + "/workspace/..%2F..%2Fagentd.db"));
  EXPECT_EQ(bad.status, 400) << bad.raw;
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sid + "/workspace/missing.txt")).status, 404);
  EXPECT_EQ(Call("GET", Url("/v1/sessions/ses_nope/workspace")).status, 404);
}

TEST_F(WorkspaceTest, AgentSandboxSettingsAreChecked) {
  auto post = [&](Json tools, Json sandbox) {
    Json body = {{"name", "x"}, {"model", ModelSpec()}, {"tools", tools}};
    if (!sandbox.is_null()) body["sandbox"] = sandbox;
    return Call("POST", Url("/v1/agents"), body);
  };
  Json exec = Json::array({{{"type", "builtin"}, {"name", "exec"}}});
  Reply r = post(Json::array({{{"type", "builtin"}, {"name", "rm_rf"}}}), Json());
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body["detail"].get<std::string>().find("tools[0].name"), std::string::npos) << r.raw;
  r = post(exec, {{"memory_mb", 1 << 19}});
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body["detail"].get<std::string>().find("sandbox.memory_mb"), std::string::npos);
  r = post(exec, {{"egress", {"example.com:443", "*"}}});
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body["detail"].get<std::string>().find("sandbox.egress[1]"), std::string::npos)
      << r.raw;
  r = post(exec, {{"driver", "vmware"}});
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body["detail"].get<std::string>().find("sandbox.driver"), std::string::npos);
  r = post(exec, {{"memroy_mb", 64}});
  EXPECT_EQ(r.status, 400);
  r = post(Json::array({{{"type", "builtin"}, {"name", "exec"}, {"parameters", {{"type", "object"}}}}}),
           Json());
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body["detail"].get<std::string>().find("fixed"), std::string::npos);
  // A valid agent round-trips: what GET returns can be PUT back.
  r = post(exec, {{"memory_mb", 128}, {"timeout_ms", 5000}});
  ASSERT_EQ(r.status, 201) << r.raw;
  EXPECT_EQ(r.body["sandbox"], Json({{"driver", "bwrap"}, {"memory_mb", 128}, {"timeout_ms", 5000}}));
  Reply put = Call("PUT", Url("/v1/agents/" + r.body["id"].get<std::string>()), r.body);
  EXPECT_EQ(put.status, 200) << put.raw;
  // /readyz says what the sandbox enforces.
  Reply ready = Call("GET", Url("/readyz"));
  EXPECT_EQ(ready.body["sandbox_drivers"]["bwrap"]["available"], true) << ready.raw;
  EXPECT_FALSE(ready.body["sandbox_drivers"]["bwrap"]["enforced"].empty());
}

TEST_F(WorkspaceTest, EgressGoesOnlyWhereTheAgentSaysAndEveryConnectionIsJournaled) {
  std::string port = tools_.url.substr(tools_.url.rfind(':') + 1);
  // Listed by address, the host's loopback port is reachable; listed by name, a name that
  // resolves to loopback is not (a listed name never unlocks an internal address).
  std::string model_port = model_.url.substr(model_.url.rfind(':') + 1);
  std::string sid = CreateSession(
      CreateSandboxAgent({{"egress", {"127.0.0.1:" + port, "localhost:" + model_port}}}));
  // Inside the sandbox 127.0.0.1 is the sandbox's own loopback, which NO_PROXY keeps off the
  // proxy; these requests clear it to ask the proxy for the host's.
  auto curl = [&](const std::string& url) {
    Json t = Turn(sid, "call exec " + Json({{"command", "NO_PROXY= no_proxy= curl -s -o /dev/null -w '%{http_code}' "
                                                       "-X POST -H 'Content-Type: application/json' "
                                                       "-d '{}' " + url}}).dump());
    return ToolOutput(t)["stdout"].get<std::string>();
  };
  EXPECT_EQ(curl("http://127.0.0.1:" + port + "/echo"), "200");
  EXPECT_EQ(curl("http://169.254.169.254/latest/meta-data/"), "403");
  EXPECT_EQ(curl("http://127.0.0.1:1/"), "403");  // the host's loopback, another port
  EXPECT_EQ(curl("http://localhost:" + model_port + "/v1/models"), "403");
  // A program that ignores the proxy finds no network at all.
  Json t = Turn(sid, "call exec " + Json({{"command", "curl -s --noproxy '*' -o /dev/null "
                                                       "-w '%{http_code}' http://127.0.0.1:" +
                                                       port + "/echo; echo \" $?\""}}).dump());
  EXPECT_EQ(ToolOutput(t)["stdout"], "000 7\n");
  Json events = Events(sid);
  ExpectDenseSeq(events);
  std::vector<Json> egress;
  for (const auto& e : events) {
    if (e["type"] == "egress.connection") egress.push_back(e["data"]);
  }
  ASSERT_EQ(egress.size(), 4u);
  EXPECT_EQ(egress[0]["allowed"], true);
  EXPECT_EQ(egress[0]["host"], "127.0.0.1");
  EXPECT_EQ(egress[1]["allowed"], false);
  EXPECT_EQ(egress[1]["host"], "169.254.169.254");
  EXPECT_NE(egress[1]["reason"].get<std::string>().find("not allowed"), std::string::npos)
      << egress[1].dump();
  EXPECT_EQ(egress[2]["allowed"], false);
  EXPECT_EQ(egress[3]["allowed"], false);
  EXPECT_NE(egress[3]["reason"].get<std::string>().find("loopback"), std::string::npos)
      << egress[3].dump();
}

TEST_F(WorkspaceTest, AnAgentCanChooseTheGvisorDriver) {
  // /readyz tells that gvisor is probed on first use; the agent's creation probes it.
  Reply ready = Call("GET", Url("/readyz"));
  EXPECT_EQ(ready.body["sandbox_drivers"]["gvisor"]["available"], false) << ready.raw;
  std::string sid = CreateSession(CreateSandboxAgent({{"driver", "gvisor"}}));
  ASSERT_FALSE(sid.empty());
  Json t = Turn(sid, R"(call exec {"command": "echo hi > f.txt; cat f.txt; uname -r"})");
  ASSERT_EQ(t["status"], "completed") << t.dump();
  Json out = ToolOutput(t);
  EXPECT_EQ(out["stdout"].get<std::string>().rfind("hi\n", 0), 0u) << out.dump();
  // gVisor's own kernel answers, not the host's.
  utsname host;
  uname(&host);
  EXPECT_EQ(out["stdout"].get<std::string>().find(host.release), std::string::npos) << out.dump();
  EXPECT_GT(out["stdout"].get<std::string>().size(), 3u);
  ready = Call("GET", Url("/readyz"));
  EXPECT_EQ(ready.body["sandbox_drivers"]["gvisor"]["available"], true) << ready.raw;
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sid + "/workspace/f.txt")).raw, "hi\n");
}

TEST_F(WorkspaceTest, DeletingASessionRemovesItsWorkspace) {
  std::string sid = CreateSession(CreateSandboxAgent());
  Json t = Turn(sid, R"(call write_file {"path": "x.txt", "content": "x"})");
  ASSERT_EQ(t["status"], "completed");
  EXPECT_TRUE(fs::exists(WorkspaceRoot(sid) + "/workspace/x.txt"));
  EXPECT_EQ(Call("DELETE", Url("/v1/sessions/" + sid)).status, 204);
  for (int i = 0; i < 100 && fs::exists(WorkspaceRoot(sid)); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_FALSE(fs::exists(WorkspaceRoot(sid)));
}

TEST_F(WorkspaceTest, AKilledAgentdKeepsTheFilesOfAnInterruptedCommand) {
  std::string sid = CreateSession(CreateSandboxAgent());
  Reply r = Call("POST", Url("/v1/sessions/" + sid + "/turns"),
                 {{"input", R"(call exec {"command": "echo partial > p.txt; sleep 60"})"}});
  ASSERT_EQ(r.status, 202) << r.raw;
  // Wait until the command has run far enough to write its file.
  for (int i = 0; i < 500 && !fs::exists(WorkspaceRoot(sid) + "/workspace/p.txt"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_TRUE(fs::exists(WorkspaceRoot(sid) + "/workspace/p.txt"));
  RestartDaemon(SIGKILL);
  // exec is not idempotent: its outcome is unknown, so a person decides; nothing is rerun.
  Json turn = WaitTurn(sid, r.body["id"]);
  EXPECT_EQ(turn["status"], "requires_action") << turn.dump();
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sid)).body["status"], "needs_attention");
  // The files the command wrote before the crash are still the session's.
  Reply file = Call("GET", Url("/v1/sessions/" + sid + "/workspace/p.txt"));
  EXPECT_EQ(file.raw, "partial\n");
}

}  // namespace
}  // namespace agentd::testing

namespace agentd::testing {
namespace {

// MCP servers as tools: stdio servers run in the session's sandbox, their tools reach the
// model as "<server>__<tool>", and their calls are journaled like any other.
class McpTest : public WorkspaceTest {
 protected:
  void SetUp() override {
    WorkspaceTest::SetUp();
    // The operator makes the servers' files visible (read-only) in every sandbox.
    std::string cfg = dir_ + "/agentd.yaml";
    std::ofstream(cfg) << "sandbox:\n  read_only_paths:\n    - "
                       << fs::path(AGENTD_FAKE_MCP_SERVER).parent_path().string() << "\n    - "
                       << AGENTD_NODE_MODULES << "\n";
    agentd_.proc->Signal(SIGTERM);
    agentd_.proc->Wait();
    agentd_.proc.reset();
    StartDaemon({"--config", cfg});
  }
  std::string McpAgent(Json servers) {
    servers.push_back({{"type", "builtin"}, {"name", "read_file"}});
    return CreateAgent({{"tools", servers}});
  }
  static std::string Output(const Json& turn) {
    for (const auto& item : turn["output"]) {
      if (item["type"] == "function_call_output") return item["output"];
    }
    return "";
  }
};

TEST_F(McpTest, StdioServersOfBothEraAnswerFromTheSandbox) {
  std::string sid = CreateSession(McpAgent(Json::array(
      {{{"type", "mcp"}, {"name", "old"}, {"command", {AGENTD_FAKE_MCP_SERVER, "--era", "2025-06-18"}}},
       {{"type", "mcp"}, {"name", "new"}, {"command", {AGENTD_FAKE_MCP_SERVER, "--era", "2026-07-28"}}}})));
  Json t = Turn(sid, R"(call old__echo {"text": "from the handshake era"})");
  ASSERT_EQ(t["status"], "completed") << t.dump();
  EXPECT_NE(Output(t).find("from the handshake era"), std::string::npos) << Output(t);
  t = Turn(sid, R"(call new__add {"a": 2, "b": 3})");
  EXPECT_NE(Output(t).find("\"sum\":5"), std::string::npos) << Output(t);  // structured output
  // Journaled like any tool call, under the namespaced name.
  Json events = Events(sid);
  ExpectDenseSeq(events);
  int started = 0;
  for (const auto& e : events) {
    if (e["type"] == "tool_call.started") {
      ++started;
      EXPECT_TRUE(e["data"]["name"] == "old__echo" || e["data"]["name"] == "new__add") << e.dump();
    }
  }
  EXPECT_EQ(started, 2);
  // Arguments that break the server's own schema never reach it.
  t = Turn(sid, R"(call new__add {"a": "two"})");
  EXPECT_NE(Output(t).find("schema"), std::string::npos) << Output(t);
  t = Turn(sid, R"(call new__nope {})");
  EXPECT_NE(Output(t).find("error"), std::string::npos) << Output(t);
}

TEST_F(McpTest, AServerThatDiesOrTalksGarbageIsRestartedAndTheModelGetsAnError) {
  std::string sid = CreateSession(McpAgent(Json::array(
      {{{"type", "mcp"}, {"name", "fake"}, {"command", {AGENTD_FAKE_MCP_SERVER}}}})));
  Json t = Turn(sid, R"(call fake__exit {})");
  ASSERT_EQ(t["status"], "completed") << t.dump();
  EXPECT_EQ(Output(t).rfind("error:", 0), 0u) << Output(t);
  EXPECT_NE(Output(t).find("fake"), std::string::npos) << Output(t);
  t = Turn(sid, R"(call fake__echo {"text": "back again"})");
  EXPECT_NE(Output(t).find("back again"), std::string::npos) << Output(t);
  t = Turn(sid, R"(call fake__garbage {})");
  EXPECT_EQ(Output(t).rfind("error:", 0), 0u) << Output(t);
  t = Turn(sid, R"(call fake__echo {"text": "still fine"})");
  EXPECT_NE(Output(t).find("still fine"), std::string::npos) << Output(t);
  // A tool error of the server's own is the model's to read, not a failure.
  t = Turn(sid, R"(call fake__fail {})");
  EXPECT_EQ(t["status"], "completed");
  EXPECT_EQ(Output(t).rfind("error:", 0), 0u) << Output(t);
}

TEST_F(McpTest, TheReferenceFilesystemServerWorksOnTheSessionsWorkspace) {
  std::string server = std::string(AGENTD_NODE_MODULES) +
                       "/@modelcontextprotocol/server-filesystem/dist/index.js";
  std::string sid = CreateSession(McpAgent(Json::array(
      {{{"type", "mcp"}, {"name", "fs"}, {"command", {AGENTD_NODE, server, "/workspace"}}}})));
  Json t = Turn(sid, R"(call fs__write_file {"path": "/workspace/from-mcp.txt", "content": "written over MCP"})");
  ASSERT_EQ(t["status"], "completed") << t.dump();
  EXPECT_EQ(Output(t).find("error:"), std::string::npos) << Output(t);
  t = Turn(sid, R"(call read_file {"path": "from-mcp.txt"})");
  EXPECT_NE(Output(t).find("written over MCP"), std::string::npos) << Output(t);
  // Outside the workspace is outside what the server may touch, and outside the sandbox.
  t = Turn(sid, R"(call fs__read_text_file {"path": "/etc/passwd"})");
  EXPECT_EQ(Output(t).rfind("error:", 0), 0u) << Output(t);
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sid + "/workspace/from-mcp.txt")).raw,
            "written over MCP");
}

// With no idle session kept in memory, every turn's end takes the session out of memory:
// its sandbox is hibernated (on a worker, while the API answers), and the next turn waits for
// that to finish before it resumes the same sandbox from the image.
TEST_F(McpTest, AGvisorSessionLeavingMemoryBetweenTurnsKeepsItsServer) {
  std::string cfg = dir_ + "/evict.yaml";
  {
    std::ifstream in(dir_ + "/agentd.yaml");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(cfg) << text << "resident_idle_sessions: 0\n";
  }
  agentd_.proc->Signal(SIGTERM);
  agentd_.proc->Wait();
  agentd_.proc.reset();
  StartDaemon({"--config", cfg});
  Json tools = Json::array({{{"type", "mcp"}, {"name", "fake"}, {"command", {AGENTD_FAKE_MCP_SERVER}}}});
  std::string sid =
      CreateSession(CreateAgent({{"tools", tools}, {"sandbox", {{"driver", "gvisor"}}}}));
  for (const char* want : {"1", "2", "3"}) {
    Json t = Turn(sid, R"(call fake__counter {})");
    ASSERT_EQ(t["status"], "completed") << t.dump();
    EXPECT_EQ(Output(t), want);
    // Out of memory (its hibernation may still be under way) before the next turn loads it.
    for (int i = 0; i < 500; ++i) {
      if (Call("GET", Url("/readyz")).body.value("resident_sessions", -1) == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    ASSERT_EQ(Call("GET", Url("/readyz")).body["resident_sessions"], 0);
  }
  int from_checkpoint = 0;
  for (const auto& e : Events(sid)) {
    if (e["type"] == "sandbox.resumed") {
      EXPECT_EQ(e["data"]["from"], "checkpoint") << e.dump();
      ++from_checkpoint;
    }
  }
  EXPECT_EQ(from_checkpoint, 2);
}

TEST_F(McpTest, ProgressReportsReachTheJournalAsTheyCome) {
  std::string sid = CreateSession(McpAgent(Json::array(
      {{{"type", "mcp"}, {"name", "fake"}, {"command", {AGENTD_FAKE_MCP_SERVER}}}})));
  Json t = Turn(sid, R"(call fake__progress {"steps": 3})");
  ASSERT_EQ(t["status"], "completed") << t.dump();
  std::vector<Json> progress;
  std::string started_call, completed_call;
  std::vector<std::string> order;
  for (const auto& e : Events(sid)) {
    std::string type = e["type"];
    if (type.rfind("tool_call.", 0) == 0) order.push_back(type);
    if (type == "tool_call.started") started_call = e["data"]["call_id"];
    if (type == "tool_call.completed") completed_call = e["data"]["call_id"];
    if (type == "tool_call.progress") {
      EXPECT_EQ(e["turn_id"], t["id"]);
      progress.push_back(e["data"]);
    }
  }
  // The first report and the last one at least (those between may be thinned out), each
  // naming its call, between the call's start and its result.
  ASSERT_GE(progress.size(), 2u);
  EXPECT_EQ(progress.front(), Json({{"call_id", started_call}, {"progress", 1}, {"total", 3},
                                    {"message", "step 1"}}));
  EXPECT_EQ(progress.back()["progress"], 3);
  EXPECT_EQ(progress.back()["call_id"], completed_call);
  EXPECT_EQ(order.front(), "tool_call.started");
  EXPECT_EQ(order.back(), "tool_call.completed");
}

// gVisor can checkpoint a sandbox: a session's MCP servers keep running (with their state)
// across an agentd restart; where the checkpoint is lost or broken, they start afresh on the
// same workspace, and the journal says which happened.
TEST_F(McpTest, AGvisorSessionKeepsItsLiveServersAcrossARestart) {
  Json tools = Json::array({{{"type", "mcp"}, {"name", "fake"}, {"command", {AGENTD_FAKE_MCP_SERVER}}},
                            {{"type", "builtin"}, {"name", "write_file"}},
                            {{"type", "builtin"}, {"name", "read_file"}}});
  std::string sid =
      CreateSession(CreateAgent({{"tools", tools}, {"sandbox", {{"driver", "gvisor"}}}}));
  auto counter = [&] {
    Json t = Turn(sid, R"(call fake__counter {})");
    EXPECT_EQ(t["status"], "completed") << t.dump();
    return Output(t);
  };
  auto restart = [&](int sig) {
    agentd_.proc->Signal(sig);
    int code = agentd_.proc->Wait();
    if (sig == SIGTERM) {
      EXPECT_EQ(code, 0) << agentd_.proc->Output();
    }
    agentd_.proc.reset();
    StartDaemon({"--config", dir_ + "/agentd.yaml"});
  };
  auto resumed_events = [&] {
    std::vector<Json> out;
    for (const auto& e : Events(sid)) {
      if (e["type"] == "sandbox.resumed") out.push_back(e["data"]);
    }
    return out;
  };
  EXPECT_EQ(counter(), "1");
  EXPECT_EQ(counter(), "2");
  ASSERT_EQ(Turn(sid, R"(call write_file {"path": "kept.txt", "content": "kept"})")["status"],
            "completed");

  // A clean stop hibernates the sandbox with the server in it.
  restart(SIGTERM);
  std::string image = WorkspaceRoot(sid) + ".image";
  ASSERT_TRUE(fs::exists(image + "/agentd-live.json"));
  EXPECT_EQ(counter(), "3");  // the same process, its count intact
  EXPECT_FALSE(fs::exists(image));  // an image is used once
  std::vector<Json> resumed = resumed_events();
  ASSERT_EQ(resumed.size(), 1u);
  EXPECT_EQ(resumed[0], Json({{"from", "checkpoint"}, {"processes", {"fake"}}}));
  Json t = Turn(sid, R"(call read_file {"path": "kept.txt"})");
  EXPECT_NE(Output(t).find("kept"), std::string::npos) << Output(t);

  // kill -9 leaves no checkpoint: the server starts afresh, the files are still there.
  restart(SIGKILL);
  EXPECT_EQ(counter(), "1");
  EXPECT_EQ(resumed_events().size(), 1u);
  EXPECT_EQ(counter(), "2");

  // A checkpoint that cannot be resumed: the same, and the journal says why.
  restart(SIGTERM);
  ASSERT_TRUE(fs::exists(image + "/agentd-live.json"));
  for (const auto& f : fs::directory_iterator(image)) {
    if (f.is_regular_file() && f.path().filename() != "agentd-live.json") {
      fs::resize_file(f.path(), 10);
    }
  }
  EXPECT_EQ(counter(), "1");
  resumed = resumed_events();
  ASSERT_EQ(resumed.size(), 2u);
  EXPECT_EQ(resumed[1]["from"], "workspace");
  EXPECT_NE(resumed[1]["reason"].get<std::string>().find("checkpoint"), std::string::npos)
      << resumed[1].dump();
  t = Turn(sid, R"(call read_file {"path": "kept.txt"})");
  EXPECT_NE(Output(t).find("kept"), std::string::npos) << Output(t);
  EXPECT_FALSE(fs::exists(image));
}

// An HTTP MCP server is reached where the egress list allows, decided on the addresses its
// name has (a listed name never unlocks loopback; an address entry does), and the client
// connects to the address that was checked.
TEST_F(McpTest, HttpServersAreReachedOnlyAtAddressesTheEgressListAllows) {
  auto p = Process::Start({AGENTD_FAKE_MCP_SERVER, "--transport", "http", "--era", "dual"}, {},
                          dir_ + "/mcp-http.log");
  ASSERT_TRUE(p.ok());
  auto port = (*p)->WaitForLine("LISTENING ([0-9]+)", std::chrono::seconds(10));
  ASSERT_TRUE(port.ok());
  auto agent = [&](std::string host, Json egress) {
    Json server = {{"type", "mcp"}, {"name", "remote"},
                   {"url", "http://" + host + ":" + *port + "/mcp"}};
    return CreateAgent({{"tools", {server}}, {"sandbox", {{"egress", egress}}}});
  };
  // (localhost is loopback whichever of 127.0.0.1 and ::1 it resolves to here.)
  std::string by_name = CreateSession(agent("localhost", {"localhost:" + *port}));
  Json t = Turn(by_name, R"(call remote__echo {"text": "x"})");
  ASSERT_EQ(t["status"], "completed") << t.dump();
  EXPECT_NE(Output(t).find("loopback"), std::string::npos) << Output(t);
  std::string by_address = CreateSession(agent("127.0.0.1", {"127.0.0.1:" + *port}));
  t = Turn(by_address, R"(call remote__echo {"text": "over http"})");
  ASSERT_EQ(t["status"], "completed") << t.dump();
  EXPECT_EQ(Output(t), "over http");
}

TEST_F(McpTest, HttpServersMustBeOnTheEgressList) {
  std::string sid = CreateSession(McpAgent(Json::array(
      {{{"type", "mcp"}, {"name", "remote"}, {"url", "http://127.0.0.1:9/mcp"}}})));
  Json t = Turn(sid, R"(call remote__echo {"text": "x"})");
  ASSERT_EQ(t["status"], "completed") << t.dump();
  EXPECT_NE(Output(t).find("not allowed"), std::string::npos) << Output(t);
  // Bad server definitions are refused when the agent is created.
  Reply r = Call("POST", Url("/v1/agents"),
                 {{"name", "x"}, {"model", ModelSpec()},
                  {"tools", {{{"type", "mcp"}, {"name", "a__b"}, {"command", {"x"}}}}}});
  EXPECT_EQ(r.status, 400);
  r = Call("POST", Url("/v1/agents"),
           {{"name", "x"}, {"model", ModelSpec()},
            {"tools", {{{"type", "mcp"}, {"name", "both"}, {"command", {"x"}}, {"url", "http://h/"}}}}});
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body["detail"].get<std::string>().find("tools[0]"), std::string::npos) << r.raw;
}

}  // namespace
}  // namespace agentd::testing
