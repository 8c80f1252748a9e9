// The HTTP API end to end: a real agentd, real SQLite, the fake model and tool servers.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <future>

#include "tests/integration/fixture.h"

namespace agentd::testing {
namespace {

using Headers = std::vector<std::pair<std::string, std::string>>;

TEST_F(AgentdTest, HealthAndReadiness) {
  Reply h = Call("GET", Url("/healthz"));
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.body["status"], "ok");
  Reply r = Call("GET", Url("/readyz"));
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(r.body["ready"], true);
  EXPECT_EQ(r.body["store"], "sqlite");
}

TEST_F(AgentdTest, AgentsAreVersionedAndSessionsKeepTheirVersion) {
  std::string id = CreateAgent();
  ASSERT_EQ(id.rfind("agt_", 0), 0u);
  Reply got = Call("GET", Url("/v1/agents/" + id));
  ASSERT_EQ(got.status, 200);
  EXPECT_EQ(got.body["version"], 1);
  EXPECT_EQ(got.body["tools"].size(), 3u);
  std::string sid = CreateSession(id);

  Json v2 = got.body;
  v2["instructions"] = "Second version.";
  Reply put = Call("PUT", Url("/v1/agents/" + id), v2);
  ASSERT_EQ(put.status, 200) << put.raw;
  EXPECT_EQ(put.body["version"], 2);
  EXPECT_EQ(Call("GET", Url("/v1/agents/" + id)).body["instructions"], "Second version.");
  EXPECT_EQ(Call("GET", Url("/v1/agents/" + id + "?version=1")).body["instructions"],
            "You are a test agent.");
  Reply list = Call("GET", Url("/v1/agents"));
  ASSERT_EQ(list.status, 200);
  ASSERT_EQ(list.body["data"].size(), 1u);
  EXPECT_EQ(list.body["data"][0]["version"], 2);

  // The old session still runs version 1: its model request carries version 1's instructions.
  Turn(sid, "say hello");
  Json req = Stats(model_)["last_request"];
  EXPECT_EQ(req["messages"][0]["role"], "system");
  EXPECT_EQ(req["messages"][0]["content"], "You are a test agent.");
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sid)).body["agent_version"], 1);
  std::string sid2 = CreateSession(id);
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sid2)).body["agent_version"], 2);
}

TEST_F(AgentdTest, ApiKeyIsReadFromTheEnvironmentAndNeverStoredOrEchoed) {
  agentd_.proc->Signal(SIGTERM);
  agentd_.proc->Wait();
  auto model = StartFake("fake_model", dir_, {"--require-key", "sk-test-secret"});
  ASSERT_TRUE(model.ok());
  model_ = std::move(model).value();
  StartDaemon({}, {{"FAKE_KEY", "sk-test-secret"}});
  Json spec = ModelSpec();
  spec["api_key_env"] = "FAKE_KEY";
  Reply a = Call("POST", Url("/v1/agents"),
                 {{"name", "k"}, {"model", spec}});
  ASSERT_EQ(a.status, 201) << a.raw;
  EXPECT_EQ(a.raw.find("sk-test-secret"), std::string::npos);
  std::string sid = CreateSession(a.body["id"]);
  Json t = Turn(sid, "say authorised");
  EXPECT_EQ(t["status"], "completed") << t.dump();
  EXPECT_EQ(t["output_text"], "authorised");
  // A missing variable fails the turn with a message naming it, not the key.
  Json spec2 = ModelSpec();
  spec2["api_key_env"] = "NOT_SET_ANYWHERE";
  Reply b = Call("POST", Url("/v1/agents"), {{"name", "k2"}, {"model", spec2}});
  std::string sid2 = CreateSession(b.body["id"]);
  Json t2 = Turn(sid2, "hi");
  EXPECT_EQ(t2["status"], "failed");
  EXPECT_NE(t2["error"]["message"].get<std::string>().find("NOT_SET_ANYWHERE"), std::string::npos);
  std::string log = agentd_.proc->Output();
  EXPECT_EQ(log.find("sk-test-secret"), std::string::npos);
  for (auto& e : Events(sid)) EXPECT_EQ(e.dump().find("sk-test-secret"), std::string::npos);
}

TEST_F(AgentdTest, TextTurnJournalsEveryStep) {
  std::string sid = CreateSession(CreateAgent());
  ASSERT_EQ(sid.rfind("ses_", 0), 0u);
  Json t = Turn(sid, "hello there");
  EXPECT_EQ(t["status"], "completed");
  EXPECT_EQ(t["output_text"], "echo: hello there");
  EXPECT_GT(t["usage"]["total_tokens"].get<int>(), 0);
  EXPECT_TRUE(t["completed_at"].is_string());
  Json events = Events(sid);
  ExpectDenseSeq(events);
  EXPECT_EQ(Types(events),
            (std::vector<std::string>{"session.created", "turn.queued", "turn.started",
                                      "model_call.started", "model_call.completed",
                                      "turn.completed"}));
  Reply s = Call("GET", Url("/v1/sessions/" + sid));
  EXPECT_EQ(s.body["status"], "idle");
  EXPECT_EQ(s.body["last_seq"], 6);
}

TEST_F(AgentdTest, ToolTurnCallsTheToolOnceWithAStableIdempotencyKey) {
  std::string sid = CreateSession(CreateAgent());
  Json t = Turn(sid, "call effect {\"x\": 1}");
  ASSERT_EQ(t["status"], "completed") << t.dump();
  EXPECT_NE(t["output_text"].get<std::string>().find("done: "), std::string::npos);
  Json events = Events(sid);
  ExpectDenseSeq(events);
  EXPECT_EQ(Types(events),
            (std::vector<std::string>{"session.created", "turn.queued", "turn.started",
                                      "model_call.started", "model_call.completed",
                                      "tool_call.started", "tool_call.completed",
                                      "model_call.started", "model_call.completed",
                                      "turn.completed"}));
  std::string key = events[5]["data"]["idempotency_key"];
  Json stats = Stats(tools_);
  EXPECT_EQ(stats["per_key"][key]["applied"], 1);
  EXPECT_EQ(stats["effects_applied"], 1);
  // The turn's output lists the call, its output and the final answer.
  ASSERT_EQ(t["output"].size(), 3u);
  EXPECT_EQ(t["output"][0]["type"], "function_call");
  EXPECT_EQ(t["output"][1]["type"], "function_call_output");
}

TEST_F(AgentdTest, ParallelAndSequentialToolCalls) {
  std::string sid = CreateSession(CreateAgent());
  Json t = Turn(sid, "call effect {\"n\": 1}\ncall effect {\"n\": 2}\ncall echo {\"n\": 3}");
  ASSERT_EQ(t["status"], "completed") << t.dump();
  EXPECT_EQ(Stats(tools_)["effects_applied"], 2);
  Json t2 = Turn(sid, "repeat 4 effect {}");
  ASSERT_EQ(t2["status"], "completed") << t2.dump();
  EXPECT_EQ(t2["model_calls"], 5);
  EXPECT_EQ(Stats(tools_)["effects_applied"], 6);
  // Every call had its own key.
  std::set<std::string> keys;
  for (auto& e : Events(sid)) {
    if (e["type"] == "tool_call.started") keys.insert(e["data"]["idempotency_key"]);
  }
  EXPECT_EQ(keys.size(), 7u);
}

TEST_F(AgentdTest, WorkingMemorySpansTurnsAndRestarts) {
  std::string sid = CreateSession(CreateAgent());
  Turn(sid, "call echo {\"fact\": \"blue\"}");
  RestartDaemon(SIGTERM);
  Turn(sid, "say second");
  Json msgs = Stats(model_)["last_request"]["messages"];
  // system, user 1, assistant tool call, tool, assistant answer, user 2
  ASSERT_EQ(msgs.size(), 6u) << msgs.dump();
  EXPECT_EQ(msgs[1]["content"], "call echo {\"fact\": \"blue\"}");
  EXPECT_EQ(msgs[2]["tool_calls"][0]["function"]["name"], "echo");
  EXPECT_EQ(msgs[3]["role"], "tool");
  EXPECT_NE(msgs[3]["content"].get<std::string>().find("blue"), std::string::npos);
  EXPECT_EQ(msgs[5]["content"], "say second");
}

TEST_F(AgentdTest, ClientToolStopsInRequiresActionAndResumesWithOutputs) {
  Json tools = Json::array({{{"type", "client"},
                             {"name", "ask_user"},
                             {"description", "asks the user"},
                             {"parameters",
                              {{"type", "object"},
                               {"properties", {{"q", {{"type", "string"}}}}},
                               {"required", {"q"}}}}}});
  std::string sid = CreateSession(CreateAgent({{"tools", tools}}));
  Json t = Turn(sid, "call ask_user {\"q\": \"colour?\"}");
  ASSERT_EQ(t["status"], "requires_action") << t.dump();
  ASSERT_EQ(t["pending_tool_calls"].size(), 1u);
  std::string call_id = t["pending_tool_calls"][0]["call_id"];
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sid)).body["status"], "requires_action");

  std::string base = "/v1/sessions/" + sid + "/turns/" + t["id"].get<std::string>();
  Reply bad = Call("POST", Url(base + "/tool_outputs"),
                   {{"outputs", {{{"call_id", "nope"}, {"output", "x"}}}}});
  EXPECT_EQ(bad.status, 400);
  EXPECT_NE(bad.body["detail"].get<std::string>().find("nope"), std::string::npos);
  Reply ok = Call("POST", Url(base + "/tool_outputs"),
                  {{"outputs", {{{"call_id", call_id}, {"output", "green"}}}}});
  ASSERT_EQ(ok.status, 200) << ok.raw;
  Json done = WaitTurn(sid, t["id"]);
  EXPECT_EQ(done["status"], "completed");
  EXPECT_EQ(done["output_text"], "done: green");
  Reply again = Call("POST", Url(base + "/tool_outputs"),
                     {{"outputs", {{{"call_id", call_id}, {"output", "x"}}}}});
  EXPECT_EQ(again.status, 409);
}

TEST_F(AgentdTest, BadToolArgumentsGoBackToTheModel) {
  Json tools = Json::array({{{"type", "http"},
                             {"name", "typed"},
                             {"url", tools_.url + "/effect"},
                             {"idempotent", true},
                             {"parameters",
                              {{"type", "object"},
                               {"properties", {{"n", {{"type", "integer"}}}}},
                               {"required", {"n"}}}}}});
  std::string sid = CreateSession(CreateAgent({{"tools", tools}}));
  Json t = Turn(sid, "call typed {not json");
  ASSERT_EQ(t["status"], "completed") << t.dump();
  EXPECT_NE(t["output_text"].get<std::string>().find("not valid JSON"), std::string::npos);
  Json t2 = Turn(sid, "call typed {\"n\": \"five\"}");
  ASSERT_EQ(t2["status"], "completed");
  EXPECT_NE(t2["output_text"].get<std::string>().find("schema"), std::string::npos);
  Json t3 = Turn(sid, "call no_such_tool {}");
  ASSERT_EQ(t3["status"], "completed");
  EXPECT_NE(t3["output_text"].get<std::string>().find("no tool named"), std::string::npos);
  EXPECT_EQ(Stats(tools_)["effects_applied"], 0);
}

TEST_F(AgentdTest, ModelFailuresAreRetriedHonouringRetryAfterThenFailTheTurn) {
  std::string sid = CreateSession(CreateAgent());
  Faults(model_, {{{"status", 429}, {"retry_after", "1"}}, {{"status", 500}}});
  auto start = std::chrono::steady_clock::now();
  Json t = Turn(sid, "say finally");
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(t["status"], "completed") << t.dump();
  EXPECT_EQ(t["output_text"], "finally");
  EXPECT_GE(took, std::chrono::milliseconds(1000));  // Retry-After: 1 was honoured
  Json events = Events(sid);
  int failed = 0;
  for (auto& e : events) {
    if (e["type"] == "model_call.failed") {
      ++failed;
      EXPECT_TRUE(e["data"]["will_retry"].get<bool>());
    }
  }
  EXPECT_EQ(failed, 2);

  Faults(model_, {{{"status", 500}}, {{"malformed", true}}, {{"status", 503}}});
  Json t2 = Turn(sid, "never");
  EXPECT_EQ(t2["status"], "failed");
  EXPECT_EQ(t2["error"]["code"], "model_error");
  EXPECT_NE(t2["error"]["message"].get<std::string>().find("3 attempts"), std::string::npos);
  // The session stays usable.
  EXPECT_EQ(Turn(sid, "say ok")["status"], "completed");

  Faults(model_, {{{"status", 400}}});
  Json t3 = Turn(sid, "bad request");
  EXPECT_EQ(t3["status"], "failed");  // 4xx is not retried
}

TEST_F(AgentdTest, HangingModelTimesOutAndIsRetried) {
  Json spec = ModelSpec();
  spec["timeout_ms"] = 300;
  std::string sid = CreateSession(CreateAgent({{"model", spec}}));
  Faults(model_, {{{"hang_ms", 3000}}});
  Json t = Turn(sid, "say after hang");
  EXPECT_EQ(t["status"], "completed") << t.dump();
  EXPECT_EQ(t["output_text"], "after hang");
}

TEST_F(AgentdTest, ToolRetriesReuseTheKeyAndClientErrorsAreNotRetried) {
  std::string sid = CreateSession(CreateAgent());
  Faults(tools_, {{{"status", 503}, {"retry_after", "0"}}, {{"status", 500}}});
  Json t = Turn(sid, "call effect {}");
  ASSERT_EQ(t["status"], "completed") << t.dump();
  Json stats = Stats(tools_);
  EXPECT_EQ(stats["effects_applied"], 1);
  ASSERT_EQ(stats["per_key"].size(), 1u);
  EXPECT_EQ(stats["per_key"].begin().value()["requests"], 3);

  Json tools = Json::array({HttpTool("missing", "/status/404", true)});
  std::string sid2 = CreateSession(CreateAgent({{"tools", tools}}));
  Json t2 = Turn(sid2, "call missing {}");
  ASSERT_EQ(t2["status"], "completed");
  EXPECT_NE(t2["output_text"].get<std::string>().find("404"), std::string::npos);
  int failed = 0;
  for (auto& e : Events(sid2)) failed += e["type"] == "tool_call.failed";
  EXPECT_EQ(failed, 1);
}

TEST_F(AgentdTest, NonIdempotentToolIsNotRetriedAfterAnAmbiguousFailure) {
  std::string sid = CreateSession(CreateAgent());
  Faults(tools_, {{{"status", 500}}});
  Json t = Turn(sid, "call unsafe {}");
  ASSERT_EQ(t["status"], "completed");
  EXPECT_NE(t["output_text"].get<std::string>().find("not idempotent"), std::string::npos);
  Faults(tools_, {{{"status", 503}}});
  Json t2 = Turn(sid, "call unsafe {}");
  EXPECT_EQ(Stats(tools_)["total_requests"], 3);  // the 503 was retried: not processed
}

TEST_F(AgentdTest, IdempotencyKeyGivesTheSameTurn) {
  std::string sid = CreateSession(CreateAgent());
  Headers h = {{"Idempotency-Key", "abc-123"}};
  Reply a = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "call effect {}"}}, h);
  ASSERT_EQ(a.status, 202) << a.raw;
  Reply b = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "call effect {}"}}, h);
  ASSERT_EQ(b.status, 200) << b.raw;
  EXPECT_EQ(a.body["id"], b.body["id"]);
  WaitTurn(sid, a.body["id"]);
  Reply c = Call("POST", Url("/v1/sessions/" + sid + "/turns"),
                 {{"input", "call effect {}"}, {"wait", true}}, h);
  EXPECT_EQ(c.body["id"], a.body["id"]);
  EXPECT_EQ(c.body["status"], "completed");
  // The same key with another input: 422, as the Idempotency-Key header draft says, and
  // nothing is queued (for an ended turn and for one still open).
  Reply d = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "other"}}, h);
  EXPECT_EQ(d.status, 422) << d.raw;
  EXPECT_EQ(d.body["code"], "unprocessable");
  EXPECT_NE(d.body.value("detail", "").find("Idempotency-Key"), std::string::npos);
  Headers h2 = {{"Idempotency-Key", "def-456"}};
  Faults(model_, {{{"hang_ms", 400}}});  // keeps the next turn open for a while
  Reply e = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "call effect {}"}}, h2);
  ASSERT_EQ(e.status, 202) << e.raw;
  Reply f = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "other"}}, h2);
  EXPECT_EQ(f.status, 422) << f.raw;
  WaitTurn(sid, e.body["id"]);
  EXPECT_EQ(Stats(tools_)["effects_applied"], 2);
  Reply turns = Call("GET", Url("/v1/sessions/" + sid + "/turns"));
  EXPECT_EQ(turns.body["data"].size(), 2u);
}

TEST_F(AgentdTest, TurnsQueueOrAreRejectedByPolicy) {
  std::string sid = CreateSession(CreateAgent());
  Faults(model_, {{{"hang_ms", 500}}});
  Reply a = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "say one"}});
  Reply b = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "say two"}});
  ASSERT_EQ(a.status, 202);
  ASSERT_EQ(b.status, 202);
  EXPECT_EQ(WaitTurn(sid, b.body["id"])["output_text"], "two");
  EXPECT_EQ(WaitTurn(sid, a.body["id"])["output_text"], "one");
  Json events = Events(sid);
  std::vector<std::string> started;
  for (auto& e : events) {
    if (e["type"] == "turn.started") started.push_back(e["turn_id"]);
  }
  EXPECT_EQ(started, (std::vector<std::string>{a.body["id"], b.body["id"]}));

  std::string sid2 = CreateSession(CreateAgent({{"turn_policy", "reject"}}));
  Faults(model_, {{{"hang_ms", 500}}});
  Reply c = Call("POST", Url("/v1/sessions/" + sid2 + "/turns"), {{"input", "say one"}});
  Reply d = Call("POST", Url("/v1/sessions/" + sid2 + "/turns"), {{"input", "say two"}});
  EXPECT_EQ(c.status, 202);
  EXPECT_EQ(d.status, 409);
  EXPECT_EQ(d.headers["content-type"], "application/problem+json");
}

TEST_F(AgentdTest, CancelStopsTheRunningTurn) {
  std::string sid = CreateSession(CreateAgent());
  Faults(model_, {{{"hang_ms", 20000}}});
  Reply a = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "say never"}});
  ASSERT_EQ(a.status, 202);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  Reply c = Call("POST", Url("/v1/sessions/" + sid + "/cancel"));
  ASSERT_EQ(c.status, 200) << c.raw;
  Json t = WaitTurn(sid, a.body["id"], std::chrono::seconds(10));
  EXPECT_EQ(t["status"], "cancelled");
  EXPECT_EQ(Types(Events(sid)).back(), "turn.cancelled");
  Reply again = Call("POST", Url("/v1/sessions/" + sid + "/cancel"));
  EXPECT_EQ(again.status, 409);
  Call("DELETE", model_.url + "/_fake/faults");
  EXPECT_EQ(Turn(sid, "say alive")["output_text"], "alive");
}

TEST_F(AgentdTest, DeletingASessionWakesItsWaiters) {
  std::string sid = CreateSession(CreateAgent());
  // The model hangs past the client's own 60 s limit: only the delete can end the wait.
  Faults(model_, {{{"hang_ms", 90000}}});
  std::future<Reply> waiting = std::async(std::launch::async, [&] {
    return Call("POST", Url("/v1/sessions/" + sid + "/turns"),
                {{"input", "say never"}, {"wait", true}});
  });
  // Delete once the turn is in its model call.
  for (int i = 0; i < 500; ++i) {
    Json ev = Events(sid);
    if (!ev.empty() && ev.back()["type"] == "model_call.started") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  Reply d = Call("DELETE", Url("/v1/sessions/" + sid));
  ASSERT_EQ(d.status, 204) << d.raw;
  Reply w = waiting.get();
  EXPECT_EQ(w.status, 404) << w.raw;
  EXPECT_EQ(w.headers["content-type"], "application/problem+json");
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sid)).status, 404);
  Call("DELETE", model_.url + "/_fake/faults");
}

TEST_F(AgentdTest, StreamedTurnSendsJournalEventsAsSse) {
  std::string sid = CreateSession(CreateAgent());
  HttpRequest req;
  req.url = Url("/v1/sessions/" + sid + "/turns");
  req.body = Json{{"input", "call echo {}"}, {"stream", true}}.dump();
  req.headers = {{"Content-Type", "application/json"}};
  req.headers.emplace_back("Authorization", "Bearer " + agentd_.admin_key);
  auto r = HttpDoBlocking(req);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->Header("content-type"), "text/event-stream");
  std::vector<std::string> types;
  std::vector<int64_t> ids;
  std::istringstream in(r->body);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("event: ", 0) == 0) types.push_back(line.substr(7));
    if (line.rfind("id: ", 0) == 0) ids.push_back(std::stoll(line.substr(4)));
  }
  EXPECT_EQ(types, (std::vector<std::string>{"turn.queued", "turn.started", "model_call.started",
                                             "model_call.completed", "tool_call.started",
                                             "tool_call.completed", "model_call.started",
                                             "model_call.completed", "turn.completed"}));
  ASSERT_FALSE(ids.empty());
  for (size_t i = 1; i < ids.size(); ++i) EXPECT_EQ(ids[i], ids[i - 1] + 1);
}

TEST_F(AgentdTest, EventsFollowResumesFromLastEventId) {
  std::string sid = CreateSession(CreateAgent());
  Turn(sid, "say one");
  HttpRequest req;
  req.method = "GET";
  req.url = Url("/v1/sessions/" + sid + "/events");
  req.headers = {{"Accept", "text/event-stream"}, {"Last-Event-ID", "4"}};
  req.headers.emplace_back("Authorization", "Bearer " + agentd_.admin_key);
  std::string got;
  req.on_body = [&](std::string_view c) {
    got.append(c);
    return got.find("id: 6\n") == std::string::npos;  // stop once seq 6 arrived
  };
  auto r = HttpDoBlocking(req);
  EXPECT_EQ(r.status().code(), StatusCode::kCancelled);  // we hung up
  EXPECT_EQ(got.find("id: 4\n"), std::string::npos);
  EXPECT_NE(got.find("id: 5\n"), std::string::npos);
  EXPECT_NE(got.find("id: 6\n"), std::string::npos);

  // A live follower sees events of a turn submitted after it connected.
  std::string live;
  std::thread follower([&] {
    HttpRequest f;
    f.method = "GET";
    f.url = Url("/v1/sessions/" + sid + "/events?after=6");
    f.headers = {{"Accept", "text/event-stream"}};
    f.headers.emplace_back("Authorization", "Bearer " + agentd_.admin_key);
    f.on_body = [&](std::string_view c) {
      live.append(c);
      return live.find("turn.completed") == std::string::npos;
    };
    (void)HttpDoBlocking(f);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  Turn(sid, "say two");
  follower.join();
  EXPECT_NE(live.find("id: 7\n"), std::string::npos);
  EXPECT_NE(live.find("turn.completed"), std::string::npos);
}

TEST_F(AgentdTest, SessionsListFilterPaginateAndDelete) {
  std::string agent = CreateAgent();
  std::string other = CreateAgent();
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back(CreateSession(agent));
  CreateSession(other);
  Reply p1 = Call("GET", Url("/v1/sessions?agent_id=" + agent + "&limit=3"));
  ASSERT_EQ(p1.status, 200);
  EXPECT_EQ(p1.body["data"].size(), 3u);
  EXPECT_TRUE(p1.body["has_more"].get<bool>());
  Reply p2 = Call("GET", Url("/v1/sessions?agent_id=" + agent + "&limit=3&cursor=" +
                             p1.body["next_cursor"].get<std::string>()));
  EXPECT_EQ(p2.body["data"].size(), 2u);
  EXPECT_FALSE(p2.body["has_more"].get<bool>());
  EXPECT_EQ(Call("GET", Url("/v1/sessions?status=idle")).body["data"].size(), 6u);
  EXPECT_EQ(Call("GET", Url("/v1/sessions?status=running")).body["data"].size(), 0u);
  EXPECT_EQ(Call("GET", Url("/v1/sessions?status=bogus")).status, 400);

  Reply del = Call("DELETE", Url("/v1/sessions/" + ids[0]));
  EXPECT_EQ(del.status, 204);
  EXPECT_EQ(del.headers.count("content-type"), 0u);
  EXPECT_TRUE(del.raw.empty());
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + ids[0])).status, 404);
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + ids[0] + "/events")).status, 404);
  EXPECT_EQ(Call("DELETE", Url("/v1/sessions/" + ids[0])).status, 404);
}

TEST_F(AgentdTest, BadInputGetsProblemJsonAndChangesNothing) {
  std::string agent = CreateAgent();
  std::string sid = CreateSession(agent);
  auto count = [&](const std::string& path) {
    return Call("GET", Url(path + "?limit=1000")).body["data"].size();
  };
  size_t agents = count("/v1/agents"), sessions = count("/v1/sessions");
  auto last_seq = [&] { return Call("GET", Url("/v1/sessions/" + sid)).body["last_seq"]; };
  Json seq = last_seq();

  auto expect_problem = [&](const Reply& r, int status, const std::string& needle) {
    EXPECT_EQ(r.status, status) << r.raw;
    EXPECT_EQ(r.headers.count("content-type") ? r.headers.at("content-type") : "",
              "application/problem+json");
    EXPECT_EQ(r.body.value("status", 0), status);
    EXPECT_NE(r.body.value("detail", "").find(needle), std::string::npos)
        << "detail: " << r.body.value("detail", "") << " should mention " << needle;
  };
  auto raw = [&](const std::string& method, const std::string& path, const std::string& body,
                 const std::string& ct = "application/json") {
    HttpRequest req;
    req.method = method;
    req.url = Url(path);
    req.body = body;
    req.headers = {{"Content-Type", ct}};
    req.headers.emplace_back("Authorization", "Bearer " + agentd_.admin_key);
    auto r = HttpDoBlocking(req);
    Reply out;
    out.status = r->status;
    out.headers = r->headers;
    out.raw = r->body;
    try {
      out.body = Json::parse(r->body);
    } catch (...) {
    }
    return out;
  };
  expect_problem(raw("POST", "/v1/agents", "{\"name\": "), 400, "not valid JSON");
  expect_problem(raw("POST", "/v1/agents", "[]"), 400, "object");
  expect_problem(raw("POST", "/v1/agents", "name=x", "application/x-www-form-urlencoded"), 415,
                 "application/json");
  expect_problem(Call("GET", Url("/v1/sessions?cursor=abc")), 400, "cursor");
  expect_problem(Call("GET", Url("/v1/agents?cursor=-1")), 400, "cursor");
  expect_problem(Call("POST", Url("/v1/agents"), {{"name", "x"}}), 400, "'model' is required");
  expect_problem(Call("POST", Url("/v1/agents"), {{"name", 5}, {"model", ModelSpec()}}), 400,
                 "'name' must be a string");
  expect_problem(
      Call("POST", Url("/v1/agents"), {{"name", "x"}, {"model", ModelSpec()}, {"colour", "red"}}),
      400, "unknown field 'colour'");
  Json bad_model = ModelSpec();
  bad_model["provider"] = "acme";
  expect_problem(Call("POST", Url("/v1/agents"), {{"name", "x"}, {"model", bad_model}}), 400,
                 "model.provider");
  Json bad_tool = HttpTool("t", "/echo", true);
  bad_tool["parameters"] = {{"type", "object"}, {"properties", {{"a", {{"type", "integr"}}}}}};
  expect_problem(Call("POST", Url("/v1/agents"),
                      {{"name", "x"}, {"model", ModelSpec()}, {"tools", {bad_tool}}}),
                 400, "tools[0].parameters");
  Json bad_url = HttpTool("t", "/echo", true);
  bad_url["url"] = "file:///etc/passwd";
  expect_problem(Call("POST", Url("/v1/agents"),
                      {{"name", "x"}, {"model", ModelSpec()}, {"tools", {bad_url}}}),
                 400, "tools[0].url");
  expect_problem(Call("POST", Url("/v1/agents"),
                      {{"name", "x"}, {"model", ModelSpec()}, {"retry", {{"max_attempts", 0}}}}),
                 400, "retry.max_attempts");
  expect_problem(Call("PUT", Url("/v1/agents/agt_nope"), {{"name", "x"}, {"model", ModelSpec()}}),
                 404, "agt_nope");
  expect_problem(Call("GET", Url("/v1/agents/agt_nope")), 404, "agt_nope");
  expect_problem(Call("POST", Url("/v1/sessions"), {{"agent_id", "agt_nope"}}), 404, "agt_nope");
  expect_problem(Call("POST", Url("/v1/sessions"), {{"agent_id", agent}, {"metadata", {{"a", 1}}}}),
                 400, "metadata.a");
  expect_problem(Call("POST", Url("/v1/sessions"), Json::object()), 400, "'agent_id' is required");
  expect_problem(Call("POST", Url("/v1/sessions/ses_nope/turns"), {{"input", "x"}}), 404,
                 "ses_nope");
  expect_problem(Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", 42}}), 400,
                 "'input'");
  expect_problem(Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", ""}}), 400,
                 "'input'");
  expect_problem(Call("POST", Url("/v1/sessions/" + sid + "/turns"),
                      {{"input", {{{"role", "robot"}, {"content", "x"}}}}}),
                 400, "input[0].role");
  expect_problem(Call("POST", Url("/v1/sessions/" + sid + "/turns"),
                      {{"input", "x"}, {"wait", "yes"}}),
                 400, "'wait' must be a boolean");
  expect_problem(Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"inptu", "x"}}), 400,
                 "'input' is required");
  expect_problem(Call("GET", Url("/v1/sessions/" + sid + "/turns/trn_nope")), 404, "trn_nope");
  expect_problem(Call("GET", Url("/v1/sessions/" + sid + "/events?limit=5000")), 400, "limit");
  expect_problem(Call("GET", Url("/v1/sessions/" + sid + "/events?after=abc")), 400, "after");
  expect_problem(Call("POST", Url("/v1/sessions/" + sid + "/turns/trn_nope/tool_outputs"),
                      {{"outputs", {{{"call_id", "c"}, {"output", "x"}}}}}),
                 404, "trn_nope");
  expect_problem(Call("POST", Url("/v1/sessions/" + sid + "/turns/trn_x/tool_outputs"),
                      {{"outputs", "x"}}),
                 400, "outputs");
  Reply big = raw("POST", "/v1/agents", std::string(2 << 20, ' '));
  expect_problem(big, 413, "larger than");
  EXPECT_EQ(big.body.value("code", ""), "payload_too_large");
  expect_problem(Call("PATCH", Url("/v1/agents")), 405, "PATCH");
  expect_problem(Call("GET", Url("/v2/nothing")), 404, "/v2/nothing");

  EXPECT_EQ(count("/v1/agents"), agents);
  EXPECT_EQ(count("/v1/sessions"), sessions);
  EXPECT_EQ(last_seq(), seq);
  EXPECT_EQ(Call("GET", Url("/healthz")).status, 200);
}

TEST_F(AgentdTest, GarbageFromTheModelOrToolDoesNotWedgeTheTurn) {
  std::string sid = CreateSession(CreateAgent({{"retry", {{"max_attempts", 2},
                                                          {"initial_backoff_ms", 1}}}}));
  Faults(model_, {{{"malformed", true}}, {{"drop", true}}});
  Json t = Turn(sid, "say fine");
  EXPECT_EQ(t["status"], "failed");
  EXPECT_NE(t["error"]["message"].get<std::string>().find("2 attempts"), std::string::npos);
  Json tools = Json::array({HttpTool("garbage", "/garbage", true)});
  std::string sid2 = CreateSession(CreateAgent({{"tools", tools}}));
  Json t2 = Turn(sid2, "call garbage {}");
  EXPECT_EQ(t2["status"], "completed") << t2.dump();
}

// GET of a running turn shows its latest durable progress (built from the session in memory;
// the stored row is rewritten only when the status changes), not the row as it started.
TEST_F(AgentdTest, RunningTurnShowsItsDurableProgress) {
  std::string sid =
      CreateSession(CreateAgent({{"tools", Json::array({HttpTool("slow", "/echo?after_ms=1500",
                                                                 true)})}}));
  Reply a = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "call slow {}"}});
  ASSERT_EQ(a.status, 202) << a.raw;
  std::string url = Url("/v1/sessions/" + sid + "/turns/" + a.body["id"].get<std::string>());
  Json turn;
  for (int i = 0; i < 100; ++i) {  // the model's answer is journaled long before the tool's
    turn = Call("GET", url).body;
    if (!turn["output"].empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(turn["status"], "running") << turn.dump();
  ASSERT_EQ(turn["output"].size(), 1u) << turn.dump();
  EXPECT_EQ(turn["output"][0]["type"], "function_call");
  EXPECT_EQ(turn["output"][0]["name"], "slow");
  Json listed = Call("GET", Url("/v1/sessions/" + sid + "/turns")).body;
  ASSERT_EQ(listed["data"].size(), 1u);
  EXPECT_EQ(listed["data"][0]["output"].size(), 1u) << listed.dump();
  EXPECT_EQ(WaitTurn(sid, a.body["id"])["status"], "completed");
}

// Idle sessions stay in memory only up to `resident_idle_sessions`, least recently used
// leaving first; one that left is rebuilt from the journal with its whole conversation.
TEST_F(AgentdTest, IdleSessionsBeyondTheResidentLimitLeaveMemoryAndComeBackWhole) {
  std::string cfg = dir_ + "/one_resident.yaml";
  FILE* f = fopen(cfg.c_str(), "w");
  fputs("resident_idle_sessions: 1\n", f);
  fclose(f);
  agentd_.proc->Signal(SIGTERM);
  ASSERT_EQ(agentd_.proc->Wait(), 0);
  agentd_.proc.reset();
  StartDaemon({"--config", cfg});

  auto resident = [&](int64_t want) {
    // A worker lets go of its session just after the turn's last commit: wait for it.
    int64_t n = -1;
    for (int i = 0; i < 200; ++i) {
      n = Call("GET", Url("/readyz")).body.value("resident_sessions", int64_t{-1});
      if (n >= 0 && n <= want) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return n;
  };
  std::string agent = CreateAgent();
  std::vector<std::string> sids = {CreateSession(agent), CreateSession(agent),
                                   CreateSession(agent)};
  for (size_t i = 0; i < sids.size(); ++i) {
    EXPECT_EQ(Turn(sids[i], fmt::format("say first {}", i))["status"], "completed");
    EXPECT_EQ(resident(1), 1) << "after the turn of session " << i;
  }
  // The first session left memory two turns ago; its next turn sees all of its past.
  EXPECT_EQ(Turn(sids[0], "say again")["output_text"], "again");
  Json msgs = Stats(model_)["last_request"]["messages"];
  ASSERT_EQ(msgs.size(), 4u) << msgs.dump();  // system, user, assistant, user
  EXPECT_EQ(msgs[1]["content"], "say first 0");
  EXPECT_EQ(msgs[2]["content"], "first 0");
  EXPECT_EQ(msgs[3]["content"], "say again");
  // The one kept is the last used, and it is still right.
  EXPECT_EQ(resident(1), 1);
  EXPECT_EQ(Turn(sids[0], "say third")["status"], "completed");
  EXPECT_EQ(Stats(model_)["last_request"]["messages"].size(), 6u);
  // A deleted session does not linger.
  EXPECT_EQ(Call("DELETE", Url("/v1/sessions/" + sids[0])).status, 204);
  EXPECT_EQ(resident(0), 0);
  EXPECT_EQ(Call("GET", Url("/v1/sessions/" + sids[0] + "/turns")).status, 404);
}

TEST_F(AgentdTest, UnknownConfigKeyIsRefusedByName) {
  std::string cfg = dir_ + "/bad.yaml";
  FILE* f = fopen(cfg.c_str(), "w");
  fputs("listen: 127.0.0.1:0\nlisten_port: 9\n", f);
  fclose(f);
  auto p = Process::Start({BinPath("agentd"), "--config", cfg, "--data-dir", dir_ + "/d2"}, {},
                          "");
  ASSERT_TRUE(p.ok());
  EXPECT_EQ((*p)->Wait(), 2);
  EXPECT_NE((*p)->Output().find("unknown config key 'listen_port'"), std::string::npos);
  f = fopen(cfg.c_str(), "w");
  fputs("sandbox:\n  spares: 99\n", f);
  fclose(f);
  auto s = Process::Start({BinPath("agentd"), "--config", cfg, "--data-dir", dir_ + "/d3"}, {}, "");
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)->Wait(), 2);
  EXPECT_NE((*s)->Output().find("sandbox.spares"), std::string::npos) << (*s)->Output();
  // A second agentd on the same data directory is refused.
  auto q = Process::Start({BinPath("agentd"), "--listen", "127.0.0.1:0", "--data-dir",
                           dir_ + "/data"},
                          {}, "");
  ASSERT_TRUE(q.ok());
  EXPECT_EQ((*q)->Wait(), 2);
  EXPECT_NE((*q)->Output().find("another agentd"), std::string::npos);
}

TEST_F(AgentdTest, SigtermDrainsAndRestartResumesQueuedWork) {
  std::string sid = CreateSession(CreateAgent());
  Faults(model_, {{{"hang_ms", 300}}});
  Reply a = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "say first"}});
  Reply b = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "say second"}});
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  RestartDaemon(SIGTERM);
  EXPECT_EQ(WaitTurn(sid, a.body["id"])["output_text"], "first");
  EXPECT_EQ(WaitTurn(sid, b.body["id"])["output_text"], "second");
  ExpectDenseSeq(Events(sid));
}

TEST_F(AgentdTest, NonIdempotentCallCutByKill9NeedsAttention) {
  Json tools = Json::array({HttpTool("slow_unsafe", "/slow?ms=1500", false)});
  std::string sid = CreateSession(CreateAgent({{"tools", tools}}));
  Reply a = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", "call slow_unsafe {}"}});
  // Wait until the call is journaled as started, then kill -9 while it runs.
  for (int i = 0; i < 200; ++i) {
    auto types = Types(Events(sid));
    if (std::find(types.begin(), types.end(), "tool_call.started") != types.end()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  RestartDaemon(SIGKILL);
  Json t;
  for (int i = 0; i < 200; ++i) {
    t = Call("GET", Url("/v1/sessions/" + sid)).body;
    if (t["status"] == "needs_attention") break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(t["status"], "needs_attention");
  Json turn = Call("GET", Url("/v1/sessions/" + sid + "/turns/" + a.body["id"].get<std::string>())).body;
  ASSERT_EQ(turn["status"], "requires_action");
  ASSERT_EQ(turn["pending_tool_calls"][0]["reason"], "unknown_outcome");
  std::string call_id = turn["pending_tool_calls"][0]["call_id"];
  Reply ok = Call("POST",
                  Url("/v1/sessions/" + sid + "/turns/" + a.body["id"].get<std::string>() +
                      "/tool_outputs"),
                  {{"outputs", {{{"call_id", call_id}, {"output", "checked by hand"}}}}});
  ASSERT_EQ(ok.status, 200) << ok.raw;
  Json done = WaitTurn(sid, a.body["id"]);
  EXPECT_EQ(done["status"], "completed");
  EXPECT_EQ(done["output_text"], "done: checked by hand");
}

}  // namespace
}  // namespace agentd::testing
