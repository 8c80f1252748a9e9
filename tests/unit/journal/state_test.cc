#include "journal/state.h"

#include <gtest/gtest.h>

#include "journal/events.h"

namespace agentd::journal {
namespace {

class Journal {
 public:
  store::EventRecord Add(std::string_view type, const std::string& turn, Json data) {
    store::EventRecord e{"ses_x", static_cast<int64_t>(events.size()) + 1, std::string(type), turn,
                         1000 + static_cast<int64_t>(events.size()), data.dump()};
    events.push_back(e);
    return e;
  }
  std::vector<store::EventRecord> events;
};

auto NoClient = [](const std::string&) { return false; };

SessionState Fold(const std::vector<store::EventRecord>& events) {
  SessionState s;
  for (const auto& e : events) {
    Status st = Apply(s, e);
    EXPECT_TRUE(st.ok()) << st.ToString();
  }
  return s;
}

Journal ToolTurn() {
  Journal j;
  j.Add(ev::kSessionCreated, "", {{"agent_id", "agt_a"}, {"agent_version", 1},
                                   {"metadata", {{"k", "v"}}}});
  j.Add(ev::kTurnQueued, "trn_1",
        {{"input", Json::array({{{"type", "message"}, {"role", "user"}, {"content", "hi"}}})},
         {"idempotency_key", "k1"}});
  j.Add(ev::kTurnStarted, "trn_1", Json::object());
  j.Add(ev::kModelCallStarted, "trn_1", {{"attempt", 1}});
  j.Add(ev::kModelCallCompleted, "trn_1",
        {{"text", ""},
         {"tool_calls", Json::array({{{"call_id", "c1"}, {"name", "add"}, {"arguments", "{}"}}})},
         {"usage", {{"input_tokens", 10}, {"output_tokens", 2}, {"total_tokens", 12}}}});
  return j;
}

TEST(StateTest, FoldsATurnWithAToolCall) {
  Journal j = ToolTurn();
  SessionState s = Fold(j.events);
  EXPECT_EQ(s.Status(), "running");
  EXPECT_EQ(s.current_turn, "trn_1");
  EXPECT_EQ(s.idempotency.at("k1"), "trn_1");
  auto next = DecideNext(s, NoClient);
  ASSERT_EQ(next.kind, NextKind::kRunTool);
  EXPECT_EQ(next.call->call_id, "c1");

  j.Add(ev::kToolCallStarted, "trn_1", {{"call_id", "c1"}, {"idempotency_key", "ses_x.6"}});
  s = Fold(j.events);
  next = DecideNext(s, NoClient);
  // A started call without a result is what a crash leaves behind.
  ASSERT_EQ(next.kind, NextKind::kRecoverTool);
  EXPECT_EQ(next.call->idempotency_key, "ses_x.6");

  j.Add(ev::kToolCallCompleted, "trn_1", {{"call_id", "c1"}, {"output", "3"}});
  s = Fold(j.events);
  EXPECT_EQ(DecideNext(s, NoClient).kind, NextKind::kCallModel);
  j.Add(ev::kModelCallStarted, "trn_1", {{"attempt", 1}});
  j.Add(ev::kModelCallCompleted, "trn_1",
        {{"text", "it is 3"}, {"tool_calls", Json::array()},
         {"usage", {{"input_tokens", 20}, {"output_tokens", 3}, {"total_tokens", 23}}}});
  s = Fold(j.events);
  EXPECT_EQ(DecideNext(s, NoClient).kind, NextKind::kCompleteTurn);

  ApplyEffect effect;
  SessionState s2 = Fold(j.events);
  ASSERT_TRUE(Apply(s2, j.Add(ev::kTurnCompleted, "trn_1", {{"output_text", "it is 3"}}), &effect).ok());
  ASSERT_TRUE(effect.ended.has_value());
  EXPECT_EQ(effect.ended->status, "completed");
  EXPECT_EQ(effect.ended->usage.total_tokens, 35);
  EXPECT_EQ(effect.ended->output_text, "it is 3");
  // user message, function_call, function_call_output, assistant message
  ASSERT_EQ(s2.items.size(), 4u);
  EXPECT_EQ(s2.items[1]["type"], "function_call");
  EXPECT_EQ(s2.items[2]["output"], "3");
  EXPECT_EQ(s2.Status(), "idle");
  EXPECT_EQ(DecideNext(s2, NoClient).kind, NextKind::kIdle);
  Json turn = TurnObject("ses_x", *effect.ended);
  EXPECT_EQ(turn["status"], "completed");
  EXPECT_EQ(turn["output"].size(), 3u);
}

TEST(StateTest, SnapshotPlusTailEqualsFullFold) {
  Journal j = ToolTurn();
  SessionState head = Fold(j.events);
  Json before = StateToJson(head);
  ASSERT_FALSE(before["items"].empty());
  // The snapshot text: the document serialised, with the state left as it was.
  std::string text = StateToText(head);
  EXPECT_EQ(text, DumpJson(before));
  EXPECT_EQ(StateToJson(head), before);
  auto restored = StateFromJson(Json::parse(text));
  ASSERT_TRUE(restored.ok()) << restored.status().ToString();
  EXPECT_EQ(StateToJson(*restored), before);
  j.Add(ev::kToolCallStarted, "trn_1", {{"call_id", "c1"}, {"idempotency_key", "ses_x.6"}});
  j.Add(ev::kToolCallCompleted, "trn_1", {{"call_id", "c1"}, {"output", "3"}});
  SessionState full = Fold(j.events);
  for (size_t i = 5; i < j.events.size(); ++i) ASSERT_TRUE(Apply(*restored, j.events[i]).ok());
  EXPECT_EQ(StateToJson(*restored), StateToJson(full));
}

TEST(StateTest, RejectsGapsRepeatsAndForeignEvents) {
  Journal j = ToolTurn();
  SessionState s = Fold(j.events);
  store::EventRecord gap{"ses_x", 9, "turn.started", "trn_1", 0, "{}"};
  EXPECT_FALSE(Apply(s, gap).ok());
  SessionState s2 = Fold(j.events);
  store::EventRecord repeat = j.events.back();
  EXPECT_FALSE(Apply(s2, repeat).ok());
  SessionState s3 = Fold(j.events);
  store::EventRecord unknown_turn{"ses_x", 6, "turn.started", "trn_nope", 0, "{}"};
  EXPECT_FALSE(Apply(s3, unknown_turn).ok());
  SessionState s4 = Fold(j.events);
  store::EventRecord garbage{"ses_x", 6, "tool_call.completed", "trn_1", 0, "not json"};
  EXPECT_FALSE(Apply(s4, garbage).ok());
  SessionState empty;
  store::EventRecord first{"ses_x", 1, "turn.queued", "trn_1", 0, "{}"};
  EXPECT_FALSE(Apply(empty, first).ok());
}

TEST(StateTest, UnknownEventTypesAreSkipped) {
  Journal j = ToolTurn();
  j.Add("future.event", "trn_1", {{"x", 1}});
  SessionState s = Fold(j.events);
  EXPECT_EQ(s.last_seq, 6);
  EXPECT_EQ(DecideNext(s, NoClient).kind, NextKind::kRunTool);
}

TEST(StateTest, ClientToolsStopTheTurnAndOutputsResumeIt) {
  Journal j = ToolTurn();
  auto client = [](const std::string& n) { return n == "add"; };
  SessionState s = Fold(j.events);
  EXPECT_EQ(DecideNext(s, client).kind, NextKind::kAwaitClient);
  j.Add(ev::kTurnRequiresAction, "trn_1",
        {{"pending", Json::array({{{"call_id", "c1"}, {"name", "add"}}})}});
  s = Fold(j.events);
  EXPECT_EQ(s.Status(), "requires_action");
  EXPECT_EQ(DecideNext(s, client).kind, NextKind::kWait);
  j.Add(ev::kToolCallCompleted, "trn_1", {{"call_id", "c1"}, {"output", "from client"}});
  s = Fold(j.events);
  EXPECT_EQ(s.Status(), "running");
  EXPECT_EQ(DecideNext(s, client).kind, NextKind::kCallModel);
}

TEST(StateTest, CancelClosesOpenCallsSoTheConversationStaysWellFormed) {
  Journal j = ToolTurn();
  j.Add(ev::kToolCallStarted, "trn_1", {{"call_id", "c1"}});
  j.Add(ev::kTurnCancelled, "trn_1", {{"reason", "test"}});
  SessionState s = Fold(j.events);
  EXPECT_EQ(s.Status(), "idle");
  ASSERT_EQ(s.items.size(), 3u);
  EXPECT_EQ(s.items[2]["type"], "function_call_output");
  EXPECT_EQ(s.items[2]["call_id"], "c1");
}

TEST(StateTest, QueuedTurnsStartInOrder) {
  Journal j;
  j.Add(ev::kSessionCreated, "", {{"agent_id", "a"}, {"agent_version", 1}});
  j.Add(ev::kTurnQueued, "trn_1", {{"input", Json::array()}});
  j.Add(ev::kTurnQueued, "trn_2", {{"input", Json::array()}});
  SessionState s = Fold(j.events);
  auto next = DecideNext(s, NoClient);
  ASSERT_EQ(next.kind, NextKind::kStartTurn);
  EXPECT_EQ(next.turn_id, "trn_1");
  store::EventRecord wrong{"ses_x", 4, std::string(ev::kTurnStarted), "trn_2", 0, "{}"};
  EXPECT_FALSE(Apply(s, wrong).ok());
}

TEST(StateTest, NeedsAttentionWaitsUntilTheCallIsResolved) {
  Journal j = ToolTurn();
  j.Add(ev::kToolCallStarted, "trn_1", {{"call_id", "c1"}});
  j.Add(ev::kSessionNeedsAttention, "trn_1",
        {{"pending", Json::array({{{"call_id", "c1"}, {"reason", "unknown_outcome"}}})}});
  SessionState s = Fold(j.events);
  EXPECT_EQ(s.Status(), "needs_attention");
  EXPECT_EQ(DecideNext(s, NoClient).kind, NextKind::kWait);
  j.Add(ev::kToolCallCompleted, "trn_1", {{"call_id", "c1"}, {"output", "resolved"}});
  s = Fold(j.events);
  EXPECT_EQ(s.Status(), "running");
  EXPECT_EQ(DecideNext(s, NoClient).kind, NextKind::kCallModel);
}

TEST(StateTest, MalformedSnapshotIsAnError) {
  EXPECT_FALSE(StateFromJson(Json::parse("{}")).ok());
  EXPECT_FALSE(StateFromJson(Json::parse("[1,2]")).ok());
  Json newer = StateToJson(SessionState{});
  newer["format_version"] = 99;
  EXPECT_EQ(StateFromJson(newer).status().code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace agentd::journal
