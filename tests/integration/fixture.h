// Shared fixture: a real agentd over HTTP with real SQLite, the fake model server and the
// tool server, each its own process.
#pragma once

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mount.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "tests/support/process.h"

namespace agentd::testing {

class AgentdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("it");
    auto model = StartFake("fake_model", dir_);
    ASSERT_TRUE(model.ok()) << model.status().ToString();
    model_ = std::move(model).value();
    auto tools = StartFake("fake_tools", dir_);
    ASSERT_TRUE(tools.ok()) << tools.status().ToString();
    tools_ = std::move(tools).value();
    StartDaemon();
  }
  void TearDown() override {
    if (agentd_.proc) {
      agentd_.proc->Signal(SIGTERM);
      agentd_.proc->Wait();
    }
    // Workspaces agentd left mounted (it keeps those with unsnapshotted changes).
    std::ifstream mounts("/proc/self/mountinfo");
    std::string line;
    while (std::getline(mounts, line)) {
      std::istringstream fields(line);
      std::string id, parent, dev, root, point;
      fields >> id >> parent >> dev >> root >> point;
      if (point.rfind(dir_ + "/", 0) == 0) umount2(point.c_str(), MNT_DETACH);
    }
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }
  void StartDaemon(std::vector<std::string> args = {},
                   std::map<std::string, std::string> env = {}) {
    auto a = StartAgentd(dir_ + "/data", dir_ + "/agentd.log", args, env, agentd_binary_);
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    agentd_ = std::move(a).value();
  }
  void RestartDaemon(int sig) {
    agentd_.proc->Signal(sig);
    int code = agentd_.proc->Wait();
    if (sig == SIGTERM) {
      EXPECT_EQ(code, 0) << agentd_.proc->Output();
    }
    agentd_.proc.reset();
    StartDaemon();
  }
  std::string Url(const std::string& path) const { return agentd_.url + path; }

  Json ModelSpec() const {
    return {{"provider", "openai-chat"}, {"name", "fake-1"}, {"base_url", model_.url + "/v1"}};
  }
  Json HttpTool(const std::string& name, const std::string& path, bool idempotent) const {
    return {{"type", "http"},
            {"name", name},
            {"description", "test tool " + name},
            {"parameters", {{"type", "object"}, {"properties", Json::object()}}},
            {"url", tools_.url + path},
            {"timeout_ms", 5000},
            {"idempotent", idempotent}};
  }
  std::string CreateAgent(Json extra = Json::object()) {
    Json body = {{"name", "test-agent"},
                 {"instructions", "You are a test agent."},
                 {"model", ModelSpec()},
                 {"tools", Json::array({HttpTool("effect", "/effect", true),
                                        HttpTool("unsafe", "/unsafe", false),
                                        HttpTool("echo", "/echo", true)})},
                 {"retry", {{"max_attempts", 3}, {"initial_backoff_ms", 10},
                            {"backoff_multiplier", 2.0}, {"max_backoff_ms", 2000}}}};
    for (auto& [k, v] : extra.items()) body[k] = v;
    Reply r = Call("POST", Url("/v1/agents"), body);
    EXPECT_EQ(r.status, 201) << r.raw;
    EXPECT_EQ(r.headers["location"], "/v1/agents/" + r.body.value("id", ""));
    return r.body.value("id", "");
  }
  std::string CreateSession(const std::string& agent_id) {
    Reply r = Call("POST", Url("/v1/sessions"), {{"agent_id", agent_id}});
    EXPECT_EQ(r.status, 201) << r.raw;
    EXPECT_EQ(r.headers["location"], "/v1/sessions/" + r.body.value("id", ""));
    return r.body.value("id", "");
  }
  Json Turn(const std::string& sid, const std::string& text) {
    Reply r = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", text}, {"wait", true}});
    EXPECT_EQ(r.status, 200) << r.raw;
    return r.body;
  }
  Json Events(const std::string& sid) {
    Json all = Json::array();
    int64_t after = 0;
    while (true) {
      Reply r = Call("GET", Url("/v1/sessions/" + sid + "/events?limit=1000&after=" +
                                std::to_string(after)));
      EXPECT_EQ(r.status, 200) << r.raw;
      for (auto& e : r.body["data"]) {
        after = e["seq"].get<int64_t>();
        all.push_back(e);
      }
      if (!r.body.value("has_more", false)) break;
    }
    return all;
  }
  std::vector<std::string> Types(const Json& events) {
    std::vector<std::string> t;
    for (auto& e : events) t.push_back(e["type"]);
    return t;
  }
  Json WaitTurn(const std::string& sid, const std::string& tid,
                std::chrono::seconds timeout = std::chrono::seconds(60)) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < deadline) {
      Reply r = Call("GET", Url("/v1/sessions/" + sid + "/turns/" + tid));
      if (r.status == 200) {
        std::string s = r.body.value("status", "");
        if (s != "queued" && s != "running") return r.body;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ADD_FAILURE() << "turn " << tid << " did not end";
    return Json();
  }
  void Faults(const FakeProcess& fake, Json faults) {
    Reply r = Call("POST", fake.url + "/_fake/faults", {{"faults", faults}});
    ASSERT_EQ(r.status, 200) << r.raw;
  }
  // Identity, as the bootstrap admin: tenants, principals and their keys.
  // The bootstrap tenant, the admin's.
  std::string OperatorTenant() {
    Reply r = Call("GET", Url("/v1/principals"));
    EXPECT_EQ(r.status, 200) << r.raw;
    return r.body["data"][0].value("tenant_id", "");
  }
  std::string NewTenant(const std::string& name) {
    Reply r = Call("POST", Url("/v1/tenants"), {{"name", name}});
    EXPECT_EQ(r.status, 201) << r.raw;
    return r.body.value("id", "");
  }
  std::string NewPrincipal(const std::string& tenant, const std::string& name, Json policies,
                           Json extra = Json::object()) {
    Json body = {{"tenant_id", tenant}, {"name", name}, {"kind", "user"}, {"policies", policies}};
    for (auto& [k, v] : extra.items()) body[k] = v;
    Reply r = Call("POST", Url("/v1/principals"), body);
    EXPECT_EQ(r.status, 201) << r.raw;
    return r.body.value("id", "");
  }
  std::string NewKey(const std::string& principal, Json body = Json::object()) {
    Reply r = Call("POST", Url("/v1/principals/" + principal + "/api-keys"), body);
    EXPECT_EQ(r.status, 201) << r.raw;
    EXPECT_EQ(r.headers["cache-control"], "no-store");
    return r.body.value("key", "");
  }
  Json AgentBody() {
    return {{"name", "a"}, {"instructions", "x"}, {"model", ModelSpec()},
            {"tools", Json::array({HttpTool("echo", "/echo", true)})}};
  }
  Json Stats(const FakeProcess& fake) { return Call("GET", fake.url + "/_fake/stats").body; }
  static void ExpectDenseSeq(const Json& events) {
    for (size_t i = 0; i < events.size(); ++i) {
      ASSERT_EQ(events[i]["seq"].get<int64_t>(), static_cast<int64_t>(i + 1));
    }
  }

  std::string agentd_binary_ = "agentd";  // set before SetUp() to test a mutant
  std::string dir_;
  FakeProcess model_, tools_;
  Agentd agentd_;
};

}  // namespace agentd::testing
