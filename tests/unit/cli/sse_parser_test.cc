#include "cli/sse_parser.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace agentd::cli {
namespace {

// Collects every dispatched event.
struct Collector {
  std::vector<SseEvent> events;
  SseParser parser{[this](const SseEvent& e) {
    events.push_back(e);
    return true;
  }};
};

const char kTwoEvents[] =
    "id: 1\nevent: turn.started\ndata: {\"seq\":1}\n\n"
    ": keep-alive\n\n"
    "id: 2\nevent: turn.completed\ndata: {\"seq\":2}\n\n";

TEST(SseParserTest, ParsesEventsWithIdTypeAndData) {
  Collector c;
  ASSERT_TRUE(c.parser.Feed(kTwoEvents).ok());
  ASSERT_EQ(c.events.size(), 2u);
  EXPECT_EQ(c.events[0].id, "1");
  EXPECT_EQ(c.events[0].type, "turn.started");
  EXPECT_EQ(c.events[0].data, "{\"seq\":1}");
  EXPECT_EQ(c.events[1].id, "2");
  EXPECT_EQ(c.events[1].type, "turn.completed");
  EXPECT_EQ(c.parser.last_event_id(), "2");
}

TEST(SseParserTest, EverySplitPointGivesTheSameEvents) {
  const std::string stream = kTwoEvents;
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    Collector c;
    ASSERT_TRUE(c.parser.Feed(stream.substr(0, cut)).ok());
    ASSERT_TRUE(c.parser.Feed(stream.substr(cut)).ok());
    ASSERT_EQ(c.events.size(), 2u) << "cut at " << cut;
    EXPECT_EQ(c.events[1].data, "{\"seq\":2}") << "cut at " << cut;
  }
}

TEST(SseParserTest, OneByteAtATime) {
  Collector c;
  for (char ch : std::string(kTwoEvents)) ASSERT_TRUE(c.parser.Feed(std::string(1, ch)).ok());
  ASSERT_EQ(c.events.size(), 2u);
  EXPECT_EQ(c.events[0].type, "turn.started");
}

TEST(SseParserTest, CrlfAndBareCrLineEndings) {
  Collector c;
  ASSERT_TRUE(c.parser.Feed("event: a\r\ndata: x\r\n\r\nevent: b\rdata: y\r\r").ok());
  ASSERT_EQ(c.events.size(), 2u);
  EXPECT_EQ(c.events[0].type, "a");
  EXPECT_EQ(c.events[0].data, "x");
  EXPECT_EQ(c.events[1].type, "b");
  EXPECT_EQ(c.events[1].data, "y");
}

TEST(SseParserTest, CrlfSplitBetweenChunksIsOneLineEnd) {
  Collector c;
  // If the LF after a chunk-final CR were taken for a second line end, it would be the blank
  // line that dispatches the event early, without its second data line.
  ASSERT_TRUE(c.parser.Feed("data: one\r").ok());
  ASSERT_TRUE(c.parser.Feed("\ndata: two\r").ok());
  ASSERT_TRUE(c.parser.Feed("\n\r").ok());
  ASSERT_TRUE(c.parser.Feed("\n").ok());
  ASSERT_EQ(c.events.size(), 1u);
  EXPECT_EQ(c.events[0].data, "one\ntwo");
}

TEST(SseParserTest, MultiLineDataJoinsWithNewline) {
  Collector c;
  ASSERT_TRUE(c.parser.Feed("data: {\ndata:  \"a\": 1\ndata: }\n\n").ok());
  ASSERT_EQ(c.events.size(), 1u);
  EXPECT_EQ(c.events[0].data, "{\n \"a\": 1\n}");  // only one leading space is removed
}

TEST(SseParserTest, CommentsAndUnknownFieldsAreIgnored) {
  Collector c;
  ASSERT_TRUE(c.parser.Feed(": hello\nfoo: bar\ndata: x\n: inside\n\n:only a comment\n\n").ok());
  ASSERT_EQ(c.events.size(), 1u);
  EXPECT_EQ(c.events[0].data, "x");
  EXPECT_EQ(c.events[0].type, "message");
}

TEST(SseParserTest, EventWithoutDataIsNotDispatchedAndDoesNotLeakItsType) {
  Collector c;
  ASSERT_TRUE(c.parser.Feed("event: ping\n\ndata: x\n\n").ok());
  ASSERT_EQ(c.events.size(), 1u);
  EXPECT_EQ(c.events[0].type, "message");
}

TEST(SseParserTest, FieldWithoutColonAndWithoutSpace) {
  Collector c;
  ASSERT_TRUE(c.parser.Feed("data\ndata:x\n\n").ok());
  ASSERT_EQ(c.events.size(), 1u);
  EXPECT_EQ(c.events[0].data, "\nx");
}

TEST(SseParserTest, IdPersistsAcrossEventsAndRetryIsRead) {
  Collector c;
  ASSERT_TRUE(c.parser.Feed("retry: 1500\nid: 7\ndata: a\n\ndata: b\n\nretry: soon\n").ok());
  ASSERT_EQ(c.events.size(), 2u);
  EXPECT_EQ(c.events[1].id, "7");
  EXPECT_EQ(c.parser.retry_ms(), 1500);
}

TEST(SseParserTest, IncompleteEventAtEndIsNotDispatched) {
  Collector c;
  ASSERT_TRUE(c.parser.Feed("data: a\n\ndata: partial\n").ok());
  EXPECT_EQ(c.events.size(), 1u);
}

TEST(SseParserTest, LeadingBomIsSkipped) {
  Collector c;
  ASSERT_TRUE(c.parser
                  .Feed("\xEF\xBB\xBF"
                        "data: a\n\n")
                  .ok());
  ASSERT_EQ(c.events.size(), 1u);
  EXPECT_EQ(c.events[0].data, "a");
}

TEST(SseParserTest, HandlerCanStopTheStream) {
  int seen = 0;
  SseParser parser([&](const SseEvent&) { return ++seen < 1; });
  ASSERT_TRUE(parser.Feed("data: a\n\ndata: b\n\n").ok());
  EXPECT_TRUE(parser.stopped());
  EXPECT_EQ(seen, 1);
  ASSERT_TRUE(parser.Feed("data: c\n\n").ok());
  EXPECT_EQ(seen, 1);
}

TEST(SseParserTest, OverlongLineIsAnError) {
  SseParser parser([](const SseEvent&) { return true; }, 16);
  EXPECT_TRUE(parser.Feed("data: 0123456").ok());
  Status st = parser.Feed("789abcdef");
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted);
}

TEST(SseParserTest, OverlongEventIsAnError) {
  SseParser parser([](const SseEvent&) { return true; }, 16);
  Status st = parser.Feed("data: 01234567\ndata: 01234567\n\n");
  EXPECT_EQ(st.code(), StatusCode::kResourceExhausted);
}

TEST(SseParserTest, AgentdTurnStream) {
  Collector c;
  std::string stream =
      ": stream opened\r\n"
      "id: 41\r\nevent: model_call.started\r\n"
      "data: {\"seq\":41,\"type\":\"model_call.started\",\"turn_id\":\"trn_1\",\"data\":{}}\r\n\r\n"
      "id: 42\r\nevent: turn.completed\r\n"
      "data: {\"seq\":42,\"type\":\"turn.completed\",\"turn_id\":\"trn_1\","
      "\"data\":{\"output_text\":\"hi\"}}\r\n\r\n";
  for (size_t i = 0; i < stream.size(); i += 7) {
    ASSERT_TRUE(c.parser.Feed(std::string_view(stream).substr(i, 7)).ok());
  }
  ASSERT_EQ(c.events.size(), 2u);
  EXPECT_EQ(c.events[1].type, "turn.completed");
  EXPECT_EQ(c.events[1].id, "42");
  EXPECT_NE(c.events[1].data.find("\"output_text\":\"hi\""), std::string::npos);
}

}  // namespace
}  // namespace agentd::cli
