// The openai-chat provider's pure parts: SSE framing, chunk accumulation, request building.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "model/openai_chat/chat_stream.h"
#include "model/openai_chat/openai_chat.h"
#include "chat_body.h"  // beside this file

namespace agentd::model::openai_chat {
namespace {

std::vector<std::string> FeedInPieces(std::string_view input, size_t cut_every) {
  std::vector<std::string> got;
  SseParser p;
  auto on = [&](std::string_view d) {
    got.emplace_back(d);
    return Status::OK();
  };
  for (size_t pos = 0; pos < input.size(); pos += cut_every) {
    EXPECT_TRUE(p.Feed(input.substr(pos, cut_every), on).ok());
  }
  EXPECT_TRUE(p.Finish(on).ok());
  return got;
}

TEST(SseParserTest, HandlesAnySplitLineEndingsAndComments) {
  std::string input =
      ": keep-alive comment\r\n"
      "data: {\"a\":1}\r\n\r\n"
      "event: message\n"
      "data:{\"b\":2}\n\n"
      "id: 7\n"
      "data: line one\n"
      "data: line two\n\n"
      "data: cr only\r\r"
      "data:\n\n"  // empty data: no event
      "retry: 100\n\n"
      "data: [DONE]";  // no trailing blank line: dispatched by Finish()
  std::vector<std::string> want = {"{\"a\":1}", "{\"b\":2}", "line one\nline two", "cr only",
                                   "[DONE]"};
  for (size_t cut = 1; cut <= input.size(); ++cut) {
    EXPECT_EQ(FeedInPieces(input, cut), want) << "cut every " << cut;
  }
}

TEST(SseParserTest, StopsAtTheFirstError) {
  SseParser p;
  int calls = 0;
  Status st = p.Feed("data: 1\n\ndata: 2\n\n", [&](std::string_view) {
    ++calls;
    return InvalidArgument("bad");
  });
  EXPECT_FALSE(st.ok());
  EXPECT_EQ(calls, 1);
}

TEST(ChatStreamDecoderTest, AccumulatesTextToolCallsFinishAndUsage) {
  std::vector<std::string> deltas;
  ChatStreamDecoder d([&](std::string_view s) { deltas.emplace_back(s); });
  const char* chunks[] = {
      R"({"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]})",
      R"({"choices":[{"index":0,"delta":{"content":"Hel"}}]})",
      R"({"choices":[{"index":0,"delta":{"content":"lo"}}]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"a","arguments":""}}]}}]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_2","type":"function","function":{"name":"b","arguments":"{\"x\""}}]}}]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"q\":"}}]}}]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]}}]})",
      R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":":2}"}}]}}]})",
      R"({"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}],"usage":null})",
      R"({"choices":[],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}})",
  };
  for (const char* c : chunks) ASSERT_TRUE(d.OnData(c).ok()) << c;
  EXPECT_TRUE(d.finished());
  EXPECT_FALSE(d.done());
  ASSERT_TRUE(d.OnData("[DONE]").ok());
  EXPECT_TRUE(d.done());
  ModelResponse r = d.TakeResponse();
  EXPECT_EQ(r.text, "Hello");
  EXPECT_EQ(deltas, (std::vector<std::string>{"Hel", "lo"}));
  ASSERT_EQ(r.tool_calls.size(), 2u);
  EXPECT_EQ(r.tool_calls[0].call_id, "call_1");
  EXPECT_EQ(r.tool_calls[0].name, "a");
  EXPECT_EQ(r.tool_calls[0].arguments, "{\"q\":1}");
  EXPECT_EQ(r.tool_calls[1].call_id, "call_2");
  EXPECT_EQ(r.tool_calls[1].arguments, "{\"x\":2}");
  EXPECT_EQ(r.finish_reason, "tool_calls");
  EXPECT_EQ(r.usage.input_tokens, 11);
  EXPECT_EQ(r.usage.output_tokens, 7);
  EXPECT_EQ(r.usage.total_tokens, 18);
}

TEST(ChatStreamDecoderTest, ANewIdAtAReusedIndexIsANewCall) {
  ChatStreamDecoder d;
  ASSERT_TRUE(d.OnData(R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c1","function":{"name":"a","arguments":"{}"}}]}}]})").ok());
  ASSERT_TRUE(d.OnData(R"({"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"c2","function":{"name":"b","arguments":{"k":1}}}]}}]})").ok());
  ModelResponse r = d.TakeResponse();
  ASSERT_EQ(r.tool_calls.size(), 2u);
  EXPECT_EQ(r.tool_calls[1].name, "b");
  EXPECT_EQ(r.tool_calls[1].arguments, "{\"k\":1}");
  EXPECT_EQ(r.finish_reason, "tool_calls");  // inferred
}

TEST(ChatStreamDecoderTest, SeveralChunksInOneEventAndErrors) {
  ChatStreamDecoder d;
  ASSERT_TRUE(d.OnData("{\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n"
                       "{\"choices\":[{\"delta\":{\"content\":\"b\"},\"finish_reason\":\"stop\"}]}")
                  .ok());
  EXPECT_TRUE(d.finished());
  EXPECT_FALSE(d.OnData("{\"choices\":[").ok());
  EXPECT_FALSE(d.OnData("hello").ok());
  EXPECT_FALSE(d.OnData("[1]").ok());
  ASSERT_TRUE(d.OnData(R"({"error":{"message":"overloaded","type":"server_error"}})").ok());
  ASSERT_TRUE(d.server_error().has_value());
  EXPECT_EQ(*d.server_error(), "overloaded");
  EXPECT_EQ(d.TakeResponse().text, "ab");
}

TEST(ChatStreamDecoderTest, DecodesAWholeCompletion) {
  std::string deltas;
  ChatStreamDecoder d([&](std::string_view s) { deltas += s; });
  ASSERT_TRUE(d.OnCompletion(R"({"object":"chat.completion","choices":[{"index":0,
      "message":{"role":"assistant","content":"hi","tool_calls":[{"id":"c","type":"function",
      "function":{"name":"f","arguments":"{bad"}}]},"finish_reason":"tool_calls"}],
      "usage":{"prompt_tokens":3,"completion_tokens":2}})")
                  .ok());
  ModelResponse r = d.TakeResponse();
  EXPECT_EQ(r.text, "hi");
  EXPECT_EQ(deltas, "hi");
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(r.tool_calls[0].arguments, "{bad");
  EXPECT_EQ(r.usage.total_tokens, 5);
  ChatStreamDecoder bad;
  EXPECT_FALSE(bad.OnCompletion("{\"choices\":[").ok());
  EXPECT_FALSE(bad.OnCompletion("{\"id\":\"x\"}").ok());
}

ModelRequest RequestWith(Json items) {
  ModelRequest r;
  r.model = "gpt-test";
  r.items = std::move(items);
  return r;
}

TEST(BuildChatRequestBodyTest, MapsCanonicalItemsToMessages) {
  ModelRequest r = RequestWith(Json::array({
      {{"type", "message"}, {"role", "user"}, {"content", "weather?"}},
      {{"type", "message"}, {"role", "assistant"}, {"content", "Let me look."}},
      {{"type", "function_call"}, {"call_id", "c1"}, {"name", "weather"}, {"arguments", "{\"city\":\"Oslo\"}"}},
      {{"type", "function_call"}, {"call_id", "c2"}, {"name", "time"}, {"arguments", "{bad"}},
      {{"type", "function_call_output"}, {"call_id", "c1"}, {"output", "rain"}},
      {{"type", "function_call_output"}, {"call_id", "c2"}, {"output", "noon"}},
      {{"type", "reasoning"}, {"summary", "skipped"}},
      {{"type", "function_call"}, {"call_id", "c3"}, {"name", "again"}, {"arguments", "{}"}},
      {{"type", "function_call_output"}, {"call_id", "c3"}, {"output", "ok"}},
  }));
  r.instructions = "Be terse.";
  r.tools.push_back({"weather", "Looks up the weather", Json{{"type", "object"}}});
  r.tools.push_back({"time", "", Json()});
  auto body = BuildChatRequestBody(r);
  ASSERT_TRUE(body.ok()) << body.status().ToString();
  const Json& b = *body;
  EXPECT_EQ(b["model"], "gpt-test");
  EXPECT_EQ(b["stream"], true);
  EXPECT_EQ(b["stream_options"]["include_usage"], true);
  const Json& m = b["messages"];
  ASSERT_EQ(m.size(), 7u) << m.dump(1);
  EXPECT_EQ(m[0], (Json{{"role", "system"}, {"content", "Be terse."}}));
  EXPECT_EQ(m[1], (Json{{"role", "user"}, {"content", "weather?"}}));
  EXPECT_EQ(m[2]["role"], "assistant");
  EXPECT_EQ(m[2]["content"], "Let me look.");
  ASSERT_EQ(m[2]["tool_calls"].size(), 2u);
  EXPECT_EQ(m[2]["tool_calls"][0],
            (Json{{"id", "c1"},
                  {"type", "function"},
                  {"function", {{"name", "weather"}, {"arguments", "{\"city\":\"Oslo\"}"}}}}));
  EXPECT_EQ(m[2]["tool_calls"][1]["function"]["arguments"], "{bad");
  EXPECT_EQ(m[3], (Json{{"role", "tool"}, {"tool_call_id", "c1"}, {"content", "rain"}}));
  EXPECT_EQ(m[4]["tool_call_id"], "c2");
  EXPECT_EQ(m[5]["role"], "assistant");
  EXPECT_TRUE(m[5]["content"].is_null());
  EXPECT_EQ(m[5]["tool_calls"].size(), 1u);
  EXPECT_EQ(m[6]["tool_call_id"], "c3");
  ASSERT_EQ(b["tools"].size(), 2u);
  EXPECT_EQ(b["tools"][0],
            (Json{{"type", "function"},
                  {"function",
                   {{"name", "weather"},
                    {"description", "Looks up the weather"},
                    {"parameters", {{"type", "object"}}}}}}));
  EXPECT_FALSE(b["tools"][1]["function"].contains("description"));
  EXPECT_EQ(b["tools"][1]["function"]["parameters"]["type"], "object");
}

TEST(BuildChatRequestBodyTest, NoToolsNoSystemMessage) {
  auto body = BuildChatRequestBody(
      RequestWith(Json::array({{{"type", "message"}, {"role", "user"}, {"content", "hi"}}})));
  ASSERT_TRUE(body.ok());
  EXPECT_FALSE(body->contains("tools"));
  EXPECT_EQ((*body)["messages"].size(), 1u);
}

TEST(BuildChatRequestBodyTest, RejectsMalformedItemsNamingThem) {
  for (Json items : {Json::array({{{"role", "user"}, {"content", "x"}}}),
                     Json::array({{{"type", "message"}, {"content", "x"}}}),
                     Json::array({{{"type", "message"}, {"role", "user"}}}),
                     Json::array({{{"type", "function_call"}, {"name", "f"}}}),
                     Json::array({{{"type", "function_call_output"}, {"output", "o"}}}),
                     Json::array({"text"}), Json::object()}) {
    auto body = BuildChatRequestBody(RequestWith(items));
    ASSERT_FALSE(body.ok()) << items.dump();
    EXPECT_EQ(body.status().code(), StatusCode::kInvalidArgument);
  }
  auto body = BuildChatRequestBody(RequestWith(Json::array({{{"type", "message"}}})));
  EXPECT_NE(body.status().message().find("items[0].role"), std::string::npos)
      << body.status().message();
}

}  // namespace
}  // namespace agentd::model::openai_chat
