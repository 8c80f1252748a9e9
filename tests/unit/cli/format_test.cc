#include "cli/format.h"

#include <gtest/gtest.h>

#include <string>

namespace agentd::cli {
namespace {

Json Event(const std::string& type, Json data, const std::string& turn = "trn_1") {
  return {{"seq", 5},
          {"type", type},
          {"turn_id", turn},
          {"time", "2025-01-02T03:04:05Z"},
          {"data", std::move(data)}};
}

TEST(FormatTableTest, AlignsColumnsAndTrimsTrailingSpace) {
  std::string t =
      FormatTable({"ID", "NAME", "X"}, {{"agt_1", "weather", "a"}, {"agt_22", "", "b"}});
  EXPECT_EQ(t,
            "ID      NAME     X\n"
            "agt_1   weather  a\n"
            "agt_22  -        b\n");
}

TEST(FormatTableTest, WidthCountsCharactersNotBytes) {
  std::string t = FormatTable({"A", "B"}, {{"héllo", "1"}, {"abcde", "2"}});
  EXPECT_EQ(t, "A      B\nhéllo  1\nabcde  2\n");
}

TEST(FormatTableTest, ShortRowsArePaddedAndControlCharactersRemoved) {
  std::string t = FormatTable({"A", "B"}, {{"x\x1b[31m\ny"}});
  EXPECT_EQ(t.find('\x1b'), std::string::npos);
  EXPECT_NE(t.find("x [31m y  -"), std::string::npos) << t;
}

TEST(FormatTableTest, HeaderOnly) { EXPECT_EQ(FormatTable({"SEQ", "TYPE"}, {}), "SEQ  TYPE\n"); }

TEST(TruncateTest, CutsOnCharacterBoundariesWithEllipsis) {
  EXPECT_EQ(Truncate("hello", 5), "hello");
  EXPECT_EQ(Truncate("hello world", 6), "hello…");
  EXPECT_EQ(Truncate("ééééé", 3), "éé…");
  EXPECT_EQ(DisplayWidth(Truncate(std::string(500, 'x'), kSummaryChars)), kSummaryChars);
}

TEST(SanitizeTest, ControlCharactersAndInvalidUtf8) {
  EXPECT_EQ(Sanitize("a\x1b]0;title\x07z", false), "a ]0;title z");
  EXPECT_EQ(Sanitize("a\nb\tc", true), "a\nb\tc");
  EXPECT_EQ(Sanitize("a\nb\tc", false), "a b c");
  EXPECT_EQ(Sanitize("\xC2\x9B"
                     "1m",
                     false),
            " 1m");  // C1 CSI
  EXPECT_EQ(Sanitize("x\xFFy", false), "x\xEF\xBF\xBDy");
  EXPECT_EQ(Sanitize("→ ok", false), "→ ok");
}

TEST(SummarizeEventTest, ModelCalls) {
  EXPECT_EQ(SummarizeEvent(Event("model_call.started", {{"index", 1}})), "· model call 1 …");
  EXPECT_EQ(SummarizeEvent(Event("model_call.started", {{"index", 2}, {"attempt", 2}})),
            "· model call 2 (attempt 2) …");
  EXPECT_EQ(SummarizeEvent(Event("model_call.failed",
                                 {{"attempt", 2},
                                  {"error", {{"code", "timeout"}, {"message", "no answer"}}},
                                  {"retrying", true}})),
            "! model call failed (attempt 2): timeout: no answer, retrying");
  EXPECT_EQ(SummarizeEvent(Event("model.call.failed", {{"error", "HTTP 500"}, {"final", true}})),
            "! model call failed: HTTP 500");
  EXPECT_EQ(
      SummarizeEvent(Event("model_call.completed", {{"index", 1},
                                                    {"tool_calls", Json::array({Json::object()})},
                                                    {"usage", {{"total_tokens", 120}}}})),
      "· model call 1 done (1 tool call, 120 tokens)");
}

TEST(SummarizeEventTest, ToolCalls) {
  EXPECT_EQ(SummarizeEvent(Event("tool_call.started",
                                 {{"name", "get_weather"}, {"arguments", "{\"city\":\"Paris\"}"}})),
            "→ tool get_weather {\"city\":\"Paris\"}");
  EXPECT_EQ(SummarizeEvent(Event("tool_call.started",
                                 {{"name", "get_weather"}, {"arguments", {{"city", "Paris"}}}})),
            "→ tool get_weather {\"city\":\"Paris\"}");
  EXPECT_EQ(
      SummarizeEvent(Event("tool_call.completed", {{"name", "get_weather"}, {"output", "sunny"}})),
      "← tool get_weather: sunny");
  EXPECT_EQ(SummarizeEvent(
                Event("tool_call.failed", {{"name", "sh"}, {"error", {{"message", "exit 1"}}}})),
            "! tool sh failed: exit 1");
}

TEST(SummarizeEventTest, LongToolOutputIsTruncatedToOneLine) {
  std::string output = std::string(150, 'a') + "\n" + std::string(150, 'b');
  std::string line =
      SummarizeEvent(Event("tool_call.completed", {{"name", "t"}, {"output", output}}));
  EXPECT_EQ(line.find('\n'), std::string::npos);
  EXPECT_EQ(DisplayWidth(line), std::string("← tool t: ").size() - 2 + kSummaryChars);
  EXPECT_EQ(line.substr(line.size() - 3), "…");
}

TEST(SummarizeEventTest, TerminalTurnEvents) {
  EXPECT_EQ(SummarizeEvent(Event("turn.completed",
                                 {{"output_text", "hi"}, {"usage", {{"total_tokens", 30}}}})),
            "✓ turn completed (30 tokens)");
  EXPECT_EQ(SummarizeEvent(
                Event("turn.failed", {{"error", {{"code", "model_error"}, {"message", "quota"}}}})),
            "✗ turn failed: model_error: quota");
  EXPECT_EQ(SummarizeEvent(Event("turn.cancelled", Json::object())), "✗ turn cancelled");
  EXPECT_EQ(
      SummarizeEvent(Event("turn.requires_action",
                           {{"pending", Json::array({{{"call_id", "c1"}, {"name", "ask"}},
                                                     {{"call_id", "c2"}, {"name", "pay"}}})}})),
      "? turn requires action: 2 pending tool calls: ask, pay");
  EXPECT_EQ(SummarizeEvent(Event("turn.started", {{"input", "What's the weather?"}})),
            "▶ turn started: What's the weather?");
}

TEST(SummarizeEventTest, UnknownEventsShowTypeAndData) {
  EXPECT_EQ(SummarizeEvent(Event("session.created", {{"agent_id", "agt_1"}})),
            "session.created {\"agent_id\":\"agt_1\"}");
  EXPECT_EQ(SummarizeEvent(Event("session.hibernated", Json::object())), "session.hibernated");
  EXPECT_EQ(SummarizeEvent(Json::object()), "");
  EXPECT_EQ(SummarizeEvent(Event("message.created", {{"role", "user"}, {"content", "hello"}})),
            "“ user: hello");
}

TEST(SummarizeEventTest, MissingFieldsDoNotThrow) {
  EXPECT_EQ(SummarizeEvent(Event("tool_call.started", Json::object())), "→ tool ? ");
  EXPECT_EQ(SummarizeEvent(Event("model_call.failed", Json::array())), "! model call failed: ");
  EXPECT_NO_THROW(SummarizeEvent(Json("not an object")));
  EXPECT_NO_THROW(EventRow(Json(nullptr)));
}

TEST(EventTypesTest, TerminalAndDelta) {
  EXPECT_TRUE(IsTerminalEventType("turn.completed"));
  EXPECT_TRUE(IsTerminalEventType("turn.failed"));
  EXPECT_TRUE(IsTerminalEventType("turn.cancelled"));
  EXPECT_TRUE(IsTerminalEventType("turn.requires_action"));
  EXPECT_FALSE(IsTerminalEventType("turn.started"));
  EXPECT_FALSE(IsTerminalEventType("tool_call.completed"));
  EXPECT_TRUE(IsDeltaEventType("output_text.delta"));
  EXPECT_FALSE(IsDeltaEventType("delta"));
}

TEST(RowsTest, ListTables) {
  Json agent = {{"id", "agt_1"},
                {"version", 3},
                {"name", "w"},
                {"model", {{"provider", "openai-chat"}, {"name", "gpt-4o-mini"}}},
                {"created_at", "2025-01-01T00:00:00Z"}};
  EXPECT_EQ(AgentRow(agent),
            (std::vector<std::string>{"agt_1", "3", "w", "gpt-4o-mini", "2025-01-01T00:00:00Z"}));
  Json session = {{"id", "ses_1"},    {"agent_id", "agt_1"}, {"agent_version", 2},
                  {"status", "idle"}, {"last_seq", 17},      {"updated_at", "t"}};
  EXPECT_EQ(SessionRow(session), (std::vector<std::string>{"ses_1", "agt_1@2", "idle", "17", "t"}));
  Json turn = {{"id", "trn_1"},
               {"status", "failed"},
               {"output_text", ""},
               {"error", {{"code", "x"}, {"message", "y"}}},
               {"usage", nullptr}};
  EXPECT_EQ(TurnRow(turn), (std::vector<std::string>{"trn_1", "failed", "", "", "x: y"}));
  std::vector<std::string> row = EventRow(Event("turn.cancelled", Json::object()));
  EXPECT_EQ(row, (std::vector<std::string>{"5", "2025-01-02T03:04:05Z", "turn.cancelled", "trn_1",
                                           "✗ turn cancelled"}));
}

TEST(FormatEventLineTest, HasAllColumns) {
  std::string line =
      FormatEventLine(Event("tool_call.completed", {{"name", "t"}, {"output", "ok"}}));
  EXPECT_EQ(line.substr(0, 6), "     5");
  EXPECT_NE(line.find("2025-01-02T03:04:05Z"), std::string::npos);
  EXPECT_NE(line.find("tool_call.completed"), std::string::npos);
  EXPECT_NE(line.find("trn_1"), std::string::npos);
  EXPECT_NE(line.find("← tool t: ok"), std::string::npos);
}

TEST(DescribeObjectTest, OrderedKeysThenTheRestAndMultiLineValues) {
  Json obj = {{"zeta", 1},
              {"id", "agt_1"},
              {"instructions", "line 1\nline 2"},
              {"model", {{"name", "m"}}},
              {"gone", nullptr}};
  EXPECT_EQ(DescribeObject(obj, {"id", "instructions", "missing"}),
            "id:            agt_1\n"
            "instructions:  line 1\n"
            "               line 2\n"
            "gone:          -\n"
            "model:         {\"name\":\"m\"}\n"
            "zeta:          1\n");
}

TEST(PendingCallsTest, ListsCallsAndTheAnsweringCommand) {
  Json pending = Json::array(
      {{{"call_id", "call_1"}, {"name", "get_weather"}, {"arguments", "{\"city\":\"Paris\"}"}}});
  std::string text = FormatPendingCalls("ses_1", "trn_1", pending);
  EXPECT_NE(text.find("1 client tool call:"), std::string::npos) << text;
  EXPECT_NE(text.find("call_1   get_weather  {\"city\":\"Paris\"}"), std::string::npos) << text;
  EXPECT_NE(text.find("agentctl tool-outputs ses_1 trn_1 --call-id call_1 --output '<result>'"),
            std::string::npos)
      << text;
}

TEST(PendingCallsTest, FromTurnOutputSkipsAnsweredCalls) {
  Json output = Json::array(
      {{{"type", "message"}, {"role", "assistant"}, {"content", "x"}},
       {{"type", "function_call"}, {"call_id", "a"}, {"name", "n1"}, {"arguments", "{}"}},
       {{"type", "function_call_output"}, {"call_id", "a"}, {"output", "done"}},
       {{"type", "function_call"}, {"call_id", "b"}, {"name", "n2"}, {"arguments", "{\"k\":1}"}}});
  Json pending = PendingFromOutput(output);
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_EQ(pending[0]["call_id"], "b");
  EXPECT_EQ(pending[0]["name"], "n2");
  EXPECT_EQ(pending[0]["arguments"], "{\"k\":1}");
  EXPECT_TRUE(PendingFromOutput(Json(nullptr)).empty());
}

}  // namespace
}  // namespace agentd::cli

namespace agentd::cli {
namespace {

TEST(FormatEventLineTest, HeaderLinesUpWithLines) {
  std::string header = EventLineHeader();
  std::string line = FormatEventLine(Event("turn.started", Json::object()));
  EXPECT_EQ(header.find("TIME"), line.find("2025-01-02"));
  EXPECT_EQ(header.find("TYPE"), line.find("turn.started"));
  EXPECT_EQ(header.find("TURN"), line.find("trn_1"));
}

}  // namespace
}  // namespace agentd::cli
