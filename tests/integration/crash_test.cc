// kill -9 of agentd at random points, many times, while sessions run tool-using turns.
// Afterwards: every turn finished, every journal's seq is dense, every idempotent tool effect
// happened exactly once, and no non-idempotent call happened twice.
#include <gtest/gtest.h>

#include <random>

#include "tests/integration/fixture.h"

namespace agentd::testing {
namespace {

class CrashTest : public AgentdTest {};

TEST_F(CrashTest, Kill9AtRandomPointsLosesNothingAndRepeatsNothing) {
  const int kSessions = 8;
  const int kKills = std::getenv("AGENTD_CRASH_KILLS") ? std::atoi(std::getenv("AGENTD_CRASH_KILLS"))
                                                       : 25;
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  // The tools apply their effect at once and answer 2 ms later, so kills also land between
  // a tool's effect and agentd journaling its result.
  std::string agent = CreateAgent(
      {{"tools", Json::array({HttpTool("effect", "/effect?after_ms=2", true),
                              HttpTool("unsafe", "/unsafe?after_ms=2", false)})},
       {"retry", {{"max_attempts", 10}, {"initial_backoff_ms", 5},
                  {"backoff_multiplier", 2.0}, {"max_backoff_ms", 200}}}});
  std::vector<std::string> sessions;
  for (int i = 0; i < kSessions; ++i) sessions.push_back(CreateSession(agent));
  std::vector<std::pair<std::string, std::string>> turns;  // (session, turn)
  int batches = 0;
  // Idempotent effects, sequential and parallel, and one non-idempotent call per session.
  auto submit_batch = [&] {
    ++batches;
    for (const auto& sid : sessions) {
      for (const char* input : {"repeat 20 effect {\"k\": 1}", "call effect {}\ncall effect {}",
                                "call unsafe {}", "repeat 10 effect {}"}) {
        Reply r = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", input}});
        ASSERT_EQ(r.status, 202) << r.raw;
        turns.emplace_back(sid, r.body["id"]);
      }
    }
  };
  // Calls of the non-idempotent tool caught by a kill wait for a person: answer them as an
  // operator would, after checking the tool server's record.
  auto resolve_needs_attention = [&] {
    for (const auto& sid : sessions) {
      Json s = Call("GET", Url("/v1/sessions/" + sid)).body;
      if (s.value("status", "") != "needs_attention") continue;
      Json list = Call("GET", Url("/v1/sessions/" + sid + "/turns?limit=100")).body;
      for (auto& t : list["data"]) {
        if (t["status"] != "requires_action") continue;
        for (auto& p : t["pending_tool_calls"]) {
          Call("POST",
               Url("/v1/sessions/" + sid + "/turns/" + t["id"].get<std::string>() +
                   "/tool_outputs"),
               {{"outputs", {{{"call_id", p["call_id"]}, {"output", "resolved by operator"}}}}});
        }
      }
    }
  };
  submit_batch();
  // Kill until kKills kills have landed on work in flight; when the work runs out, submit
  // more. A kill that finds nothing running does not count.
  int mid_turn_kills = 0;
  for (int k = 0; mid_turn_kills < kKills && k < kKills * 10; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(
        std::uniform_int_distribution<int>(2, 60)(rng)));
    Json running = Call("GET", Url("/v1/sessions?status=running&limit=1")).body;
    if (running["data"].empty()) {
      resolve_needs_attention();
      submit_batch();
      continue;
    }
    ++mid_turn_kills;
    RestartDaemon(SIGKILL);
    resolve_needs_attention();
  }
  // Let everything finish, resolving any last needs_attention.
  for (auto& [sid, tid] : turns) {
    Json t;
    for (int i = 0; i < 3000; ++i) {
      t = Call("GET", Url("/v1/sessions/" + sid + "/turns/" + tid)).body;
      std::string st = t.value("status", "");
      if (st == "completed" || st == "failed" || st == "cancelled") break;
      if (st == "requires_action") {
        for (auto& p : t["pending_tool_calls"]) {
          Call("POST", Url("/v1/sessions/" + sid + "/turns/" + tid + "/tool_outputs"),
               {{"outputs", {{{"call_id", p["call_id"]}, {"output", "resolved by operator"}}}}});
        }
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_EQ(t.value("status", ""), "completed") << t.dump();
  }

  Json stats = Stats(tools_);
  std::map<std::string, int> completed_calls;  // idempotency key -> tool_call.completed count
  int64_t effect_calls = 0;
  for (const auto& sid : sessions) {
    Json events = Events(sid);
    ExpectDenseSeq(events);
    std::map<std::string, std::string> key_of;  // call_id -> key
    std::map<std::string, std::string> name_of;
    for (auto& e : events) {
      if (e["type"] == "tool_call.started") {
        key_of[e["data"]["call_id"]] = e["data"]["idempotency_key"];
        name_of[e["data"]["call_id"]] = e["data"]["name"];
      }
      if (e["type"] == "tool_call.completed") {
        std::string call = e["data"]["call_id"];
        ASSERT_TRUE(key_of.count(call)) << "completed a call that never started";
        completed_calls[key_of[call]]++;
        if (name_of[call] == "effect") ++effect_calls;
      }
    }
  }
  for (auto& [key, n] : completed_calls) EXPECT_EQ(n, 1) << key;
  // Each idempotent call's effect applied exactly once (replays with its key apply nothing).
  EXPECT_EQ(stats["effects_applied"].get<int64_t>(), effect_calls);
  for (auto& [key, v] : stats["per_key"].items()) EXPECT_EQ(v["applied"], 1) << key;
  // No non-idempotent call was sent twice.
  for (auto& [key, v] : stats["unsafe_per_key"].items()) {
    EXPECT_LE(v["requests"].get<int>(), 1) << key;
  }
  EXPECT_EQ(effect_calls, int64_t{batches} * kSessions * (20 + 2 + 10));
  // The kills must have hit work in flight, or the test shows nothing.
  EXPECT_EQ(mid_turn_kills, kKills);
  RecordProperty("batches", batches);
}

}  // namespace
}  // namespace agentd::testing
