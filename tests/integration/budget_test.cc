// Turn budgets, loop detection and the kill switch, end to end: a real agentd, the fake
// model and the fake tool server (which counts the effects that really happened).
#include <gtest/gtest.h>

#include <fstream>

#include "tests/integration/fixture.h"

namespace agentd::testing {
namespace {

class BudgetTest : public AgentdTest {
 protected:
  // Restarts agentd with `yaml` as its config file.
  void RestartWithConfig(const std::string& yaml) {
    std::string path = dir_ + "/budget.yaml";
    std::ofstream(path) << yaml;
    agentd_.proc->Signal(SIGTERM);
    ASSERT_EQ(agentd_.proc->Wait(), 0);
    agentd_.proc.reset();
    StartDaemon({"--config", path});
  }
  std::string CreateSessionWith(const std::string& agent, const Json& budget) {
    Reply r = Call("POST", Url("/v1/sessions"), {{"agent_id", agent}, {"budget", budget}});
    EXPECT_EQ(r.status, 201) << r.raw;
    return r.body.value("id", "");
  }
  static void ExpectStopped(const Json& turn, const std::string& code, const std::string& limit) {
    EXPECT_EQ(turn["status"], "failed") << turn.dump();
    EXPECT_EQ(turn["error"]["code"], code) << turn.dump();
    EXPECT_EQ(turn["error"]["limit"], limit) << turn.dump();
    EXPECT_NE(turn["error"]["message"].get<std::string>().find(limit), std::string::npos)
        << turn.dump();
  }
  // The session ended the stopped turn cleanly: idle, and the next turn runs.
  void ExpectUsable(const std::string& sid) {
    EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sid)).body["status"], "idle");
    Json t = Turn(sid, "say still here");
    EXPECT_EQ(t["status"], "completed") << t.dump();
    EXPECT_EQ(t["output_text"], "still here");
  }
  int64_t Effects() { return Stats(tools_)["effects_applied"].get<int64_t>(); }
  int CountEvents(const std::string& sid, const std::string& type) {
    int n = 0;
    for (auto& e : Events(sid)) n += e["type"] == type;
    return n;
  }
  // Waits until the session's journal has `n` events of `type`.
  void WaitForEvents(const std::string& sid, const std::string& type, int n) {
    for (int i = 0; i < 500; ++i) {
      if (CountEvents(sid, type) >= n) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    FAIL() << "no " << n << " " << type << " events in " << sid;
  }
};

TEST_F(BudgetTest, ToolCallLimitStopsTheTurnBeforeTheNextCall) {
  std::string sid = CreateSession(CreateAgent({{"budget", {{"max_tool_calls", 2}}}}));
  Json t = Turn(sid, "repeat 5 effect {}");
  ExpectStopped(t, "budget_exceeded", "max_tool_calls");
  EXPECT_EQ(t["error"]["max"], 2);
  EXPECT_EQ(t["tool_calls"], 2);
  EXPECT_EQ(Effects(), 2);
  EXPECT_EQ(Types(Events(sid)).back(), "turn.failed");
  ExpectUsable(sid);
  // Limits count per turn: the next turn has its own two calls.
  EXPECT_EQ(Turn(sid, "repeat 2 effect {}")["status"], "completed");
  EXPECT_EQ(Effects(), 4);
}

TEST_F(BudgetTest, ModelCallAndTokenLimits) {
  std::string sid = CreateSession(CreateAgent({{"budget", {{"max_model_calls", 2}}}}));
  Json t = Turn(sid, "repeat 5 echo {}");
  ExpectStopped(t, "budget_exceeded", "max_model_calls");
  EXPECT_EQ(t["model_calls"], 2);
  EXPECT_EQ(CountEvents(sid, "model_call.started"), 2);
  ExpectUsable(sid);

  // The fake model counts a token per four characters: the first answer alone is over 5.
  std::string sid2 = CreateSession(CreateAgent({{"budget", {{"max_tokens", 5}}}}));
  Json tool_requests = Stats(tools_)["total_requests"];
  Json t2 = Turn(sid2, "repeat 3 echo {}");
  ExpectStopped(t2, "budget_exceeded", "max_tokens");
  EXPECT_GE(t2["error"]["used"].get<int64_t>(), 5);
  EXPECT_EQ(t2["model_calls"], 1);
  EXPECT_EQ(Stats(tools_)["total_requests"], tool_requests);  // no tool ran after the limit
  // A turn that needs one model call completes even when that call goes over.
  ExpectUsable(sid2);
}

TEST_F(BudgetTest, WallTimeLimitInterruptsASlowToolCall) {
  std::string sid = CreateSession(CreateAgent(
      {{"tools", Json::array({HttpTool("slow", "/slow?ms=20000", true)})},
       {"budget", {{"max_turn_seconds", 0.5}}}}));
  auto start = std::chrono::steady_clock::now();
  Json t = Turn(sid, "call slow {}");
  auto took = std::chrono::steady_clock::now() - start;
  ExpectStopped(t, "budget_exceeded", "max_turn_seconds");
  EXPECT_LT(took, std::chrono::seconds(10));  // interrupted, not waited out
  // The call's result is a synthetic error, so the conversation stays well-formed.
  ASSERT_EQ(t["output"].size(), 2u) << t.dump();
  EXPECT_EQ(t["output"][1]["type"], "function_call_output");
  ExpectUsable(sid);
}

TEST_F(BudgetTest, CostLimitUsesThePriceTableAndUnpricedModelsAreRefused) {
  // A dollar a token, so one answer goes over a one-dollar budget.
  RestartWithConfig(
      "prices:\n"
      "  fake-1: {input_per_million_usd: 1000000, output_per_million_usd: 1000000}\n"
      "  openai-chat/fake-2: {input_per_million_usd: 0, output_per_million_usd: 500000}\n");
  std::string sid = CreateSession(CreateAgent({{"budget", {{"max_cost_usd", 1.0}}}}));
  Json t = Turn(sid, "repeat 3 echo {}");
  ExpectStopped(t, "budget_exceeded", "max_cost_usd");
  EXPECT_EQ(t["model_calls"], 1);
  EXPECT_DOUBLE_EQ(t["cost_usd"].get<double>(), t["usage"]["total_tokens"].get<double>());
  Json events = Events(sid);
  double journaled = 0;
  for (auto& e : events) {
    if (e["type"] == "model_call.completed") journaled += e["data"]["cost_usd"].get<double>();
  }
  EXPECT_DOUBLE_EQ(journaled, t["cost_usd"].get<double>());
  ExpectUsable(sid);

  // The provider-qualified key prices a model too.
  Json priced = ModelSpec();
  priced["name"] = "fake-2";
  std::string sid2 = CreateSession(CreateAgent({{"model", priced}}));
  Json t2 = Turn(sid2, "say hi");
  EXPECT_DOUBLE_EQ(t2["cost_usd"].get<double>(), 0.5 * t2["usage"]["output_tokens"].get<double>());

  // A cost limit on a model without a price could never be reached: refused, naming it.
  Json unpriced = ModelSpec();
  unpriced["name"] = "fake-unpriced";
  Reply bad = Call("POST", Url("/v1/agents"),
                   {{"name", "x"}, {"model", unpriced}, {"budget", {{"max_cost_usd", 1}}}});
  EXPECT_EQ(bad.status, 422) << bad.raw;
  EXPECT_NE(bad.body.value("detail", "").find("fake-unpriced"), std::string::npos) << bad.raw;
  EXPECT_NE(bad.body.value("detail", "").find("budget.max_cost_usd"), std::string::npos);
  // The same for a session of an unpriced agent asking for one.
  std::string agent = CreateAgent({{"model", unpriced}});
  Reply bad_session = Call("POST", Url("/v1/sessions"),
                           {{"agent_id", agent}, {"budget", {{"max_cost_usd", 1}}}});
  EXPECT_EQ(bad_session.status, 422) << bad_session.raw;
  EXPECT_NE(bad_session.body.value("detail", "").find("fake-unpriced"), std::string::npos);
}

TEST_F(BudgetTest, SessionBudgetTightensAndIsClampedToTheAgents) {
  std::string agent = CreateAgent({{"budget", {{"max_tool_calls", 3}, {"max_model_calls", 50}}}});
  // Tighter: the session's limit applies.
  std::string tight = CreateSessionWith(agent, {{"max_tool_calls", 1}});
  Json obj = Call("GET", Url("/v1/sessions/" + tight)).body;
  EXPECT_EQ(obj["budget"], Json({{"max_tool_calls", 1}, {"max_model_calls", 50}})) << obj.dump();
  Json t = Turn(tight, "repeat 4 effect {}");
  ExpectStopped(t, "budget_exceeded", "max_tool_calls");
  EXPECT_EQ(Effects(), 1);
  // Looser: clamped to the agent's, and the session object says so.
  Reply loose = Call("POST", Url("/v1/sessions"),
                     {{"agent_id", agent}, {"budget", {{"max_tool_calls", 100}}}});
  ASSERT_EQ(loose.status, 201) << loose.raw;
  EXPECT_EQ(loose.body["budget"]["max_tool_calls"], 3) << loose.raw;
  std::string lsid = loose.body["id"];
  ExpectStopped(Turn(lsid, "repeat 6 effect {}"), "budget_exceeded", "max_tool_calls");
  EXPECT_EQ(Effects(), 4);
  // A session without its own budget shows none.
  EXPECT_TRUE(Call("GET", Url("/v1/sessions/" + CreateSession(agent))).body["budget"].is_null());
  // The session's budget is journaled: a restart keeps it.
  RestartDaemon(SIGTERM);
  ExpectStopped(Turn(tight, "repeat 4 effect {}"), "budget_exceeded", "max_tool_calls");
  EXPECT_EQ(Effects(), 5);
  bool listed = false;
  Reply list = Call("GET", Url("/v1/sessions?agent_id=" + agent));
  for (auto& s : list.body["data"]) {
    if (s["id"] == tight) listed = s["budget"]["max_tool_calls"] == 1;
  }
  EXPECT_TRUE(listed) << list.raw;
}

TEST_F(BudgetTest, MalformedBudgetsAreRefusedByNameAndCreateNothing) {
  std::string agent = CreateAgent();
  auto count = [&](const std::string& path) {
    return Call("GET", Url(path + "?limit=1000")).body["data"].size();
  };
  size_t agents = count("/v1/agents"), sessions = count("/v1/sessions");
  struct Case {
    Json budget;
    std::string needle;
  };
  std::vector<Case> cases = {
      {{{"max_tokens", -1}}, "'budget.max_tokens' must be a positive integer"},
      {{{"max_tokens", 0}}, "'budget.max_tokens'"},
      {{{"max_tool_calls", "5"}}, "'budget.max_tool_calls' must be a positive integer"},
      {{{"max_model_calls", 2.5}}, "'budget.max_model_calls'"},
      {{{"max_tool_calls", 1e18}}, "'budget.max_tool_calls'"},
      {{{"max_cost_usd", 1e300}}, "'budget.max_cost_usd'"},
      {{{"max_turn_seconds", -0.5}}, "'budget.max_turn_seconds' must be a positive number"},
      {{{"max_repeated_tool_calls", 100000}}, "'budget.max_repeated_tool_calls'"},
      {{{"max_tokenz", 5}}, "unknown field 'budget.max_tokenz'"},
      {Json("lots"), "'budget' must be an object"},
  };
  for (const auto& c : cases) {
    Reply a = Call("POST", Url("/v1/agents"),
                   {{"name", "x"}, {"model", ModelSpec()}, {"budget", c.budget}});
    EXPECT_EQ(a.status, 400) << c.budget.dump() << " " << a.raw;
    EXPECT_EQ(a.headers["content-type"], "application/problem+json");
    EXPECT_NE(a.body.value("detail", "").find(c.needle), std::string::npos)
        << a.body.value("detail", "") << " should mention " << c.needle;
    Reply s = Call("POST", Url("/v1/sessions"), {{"agent_id", agent}, {"budget", c.budget}});
    EXPECT_EQ(s.status, 400) << c.budget.dump() << " " << s.raw;
    EXPECT_NE(s.body.value("detail", "").find(c.needle), std::string::npos)
        << s.body.value("detail", "") << " should mention " << c.needle;
  }
  EXPECT_EQ(count("/v1/agents"), agents);
  EXPECT_EQ(count("/v1/sessions"), sessions);
  // A fetched agent with a budget can be PUT back as it is.
  std::string with = CreateAgent({{"budget", {{"max_tokens", 1000}, {"max_turn_seconds", 1.5}}}});
  Json got = Call("GET", Url("/v1/agents/" + with)).body;
  EXPECT_EQ(got["budget"], Json({{"max_tokens", 1000}, {"max_turn_seconds", 1.5}}));
  EXPECT_EQ(Call("PUT", Url("/v1/agents/" + with), got).status, 200);
}

TEST_F(BudgetTest, TheSameCallRepeatedStopsTheTurnBeforeItRunsAgain) {
  std::string sid = CreateSession(CreateAgent({{"budget", {{"max_repeated_tool_calls", 3}}}}));
  Json t = Turn(sid, "repeat 5 effect {\"a\": 1}");
  ExpectStopped(t, "loop_detected", "max_repeated_tool_calls");
  EXPECT_EQ(t["error"]["tool"], "effect");
  EXPECT_EQ(t["error"]["max"], 3);
  EXPECT_EQ(Effects(), 3);  // three ran; the fourth identical one did not
  ExpectUsable(sid);
  // Exactly N in a row is fine, and so are calls whose arguments differ.
  EXPECT_EQ(Turn(sid, "repeat 3 effect {\"a\": 1}")["status"], "completed");
  EXPECT_EQ(Turn(sid, "call echo {\"a\": 1}\ncall echo {\"a\": 2}\ncall echo {\"a\": 1}\n"
                      "call echo {\"a\": 3}")["status"],
            "completed");
  // Arguments are compared as canonical JSON: key order and spacing do not matter.
  Json same = Turn(sid, "call echo {\"a\": 1, \"b\": 2}\ncall echo {\"b\":2,\"a\":1}\n"
                        "call echo {\"a\":1, \"b\":2}\ncall echo {\"b\": 2, \"a\": 1}");
  ExpectStopped(same, "loop_detected", "max_repeated_tool_calls");
}

TEST_F(BudgetTest, LoopDetectionDefaultsTo25) {
  std::string sid = CreateSession(CreateAgent());
  EXPECT_EQ(Turn(sid, "repeat 25 echo {}")["status"], "completed");
  Json t = Turn(sid, "repeat 26 echo {}");
  ExpectStopped(t, "loop_detected", "max_repeated_tool_calls");
  EXPECT_EQ(t["tool_calls"], 25);
}

TEST_F(BudgetTest, CancelTurnsStopsEveryTurnOfOneAgentAndNoOther) {
  Json slow = HttpTool("slow", "/slow?ms=30000", true);
  slow["timeout_ms"] = 60000;
  Json tools = Json::array({slow});
  std::string a = CreateAgent({{"tools", tools}});
  std::string b = CreateAgent({{"tools", tools}});
  std::string a1 = CreateSession(a), a2 = CreateSession(a), a3 = CreateSession(a);
  std::string b1 = CreateSession(b);
  auto submit = [&](const std::string& sid) {
    Reply r = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "call slow {}"}});
    EXPECT_EQ(r.status, 202) << r.raw;
    return r.body.value("id", "");
  };
  std::string ta1 = submit(a1), ta1_queued = submit(a1), ta2 = submit(a2), tb1 = submit(b1);
  for (const auto& sid : {a1, a2, b1}) WaitForEvents(sid, "tool_call.started", 1);

  auto start = std::chrono::steady_clock::now();
  Reply c = Call("POST", Url("/v1/agents/" + a + "/cancel-turns"));
  ASSERT_EQ(c.status, 200) << c.raw;
  EXPECT_EQ(c.body["cancelled"], 3) << c.raw;
  std::set<std::string> touched(c.body["sessions"].begin(), c.body["sessions"].end());
  EXPECT_EQ(touched, (std::set<std::string>{a1, a2})) << c.raw;  // a3 had nothing to cancel
  for (auto [sid, tid] : std::vector<std::pair<std::string, std::string>>{
           {a1, ta1}, {a1, ta1_queued}, {a2, ta2}}) {
    EXPECT_EQ(WaitTurn(sid, tid, std::chrono::seconds(10))["status"], "cancelled") << tid;
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  // The other agent's turn runs on.
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + b1 + "/turns/" + tb1)).body["status"], "running");
  // Cancelled sessions take new turns.
  EXPECT_EQ(Turn(a1, "say alive")["output_text"], "alive");
  EXPECT_EQ(CountEvents(a1, "turn.cancelled"), 2);
  // Nothing left to cancel for the first agent; the second one's turn goes now.
  EXPECT_EQ(Call("POST", Url("/v1/agents/" + a + "/cancel-turns")).body["cancelled"], 0);
  Reply cb = Call("POST", Url("/v1/agents/" + b + "/cancel-turns"));
  EXPECT_EQ(cb.body["cancelled"], 1) << cb.raw;
  EXPECT_EQ(WaitTurn(b1, tb1, std::chrono::seconds(10))["status"], "cancelled");

  EXPECT_EQ(Call("POST", Url("/v1/agents/agt_nope/cancel-turns")).status, 404);
  EXPECT_EQ(Call("GET", Url("/v1/agents/" + a + "/cancel-turns")).status, 405);
}

// kill -9 while a turn limited to K tool calls runs, twice: the counts come back from the
// journal, so the tool server sees exactly K effects, never more.
TEST_F(BudgetTest, Kill9MidTurnKeepsTheCountsAndNeverRunsMoreThanTheLimit) {
  const int kLimit = 4;
  std::string sid = CreateSession(CreateAgent(
      {{"tools", Json::array({HttpTool("effect", "/effect?after_ms=300", true)})},
       {"budget", {{"max_tool_calls", kLimit}}}}));
  Reply r = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "repeat 10 effect {}"}});
  ASSERT_EQ(r.status, 202) << r.raw;
  std::string tid = r.body["id"];
  // Killed while the second call runs (its effect applied, its answer not yet journaled),
  // and again while the fourth does.
  WaitForEvents(sid, "tool_call.started", 2);
  RestartDaemon(SIGKILL);
  WaitForEvents(sid, "tool_call.started", 4);
  RestartDaemon(SIGKILL);
  Json t = WaitTurn(sid, tid);
  ExpectStopped(t, "budget_exceeded", "max_tool_calls");
  EXPECT_EQ(t["tool_calls"], kLimit);
  EXPECT_EQ(Effects(), kLimit);
  std::set<std::string> calls;
  for (auto& e : Events(sid)) {
    if (e["type"] == "tool_call.started") calls.insert(e["data"]["call_id"].get<std::string>());
  }
  EXPECT_EQ(calls.size(), static_cast<size_t>(kLimit));
  ExpectDenseSeq(Events(sid));
  ExpectUsable(sid);
}

}  // namespace
}  // namespace agentd::testing
