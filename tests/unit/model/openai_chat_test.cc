// The openai-chat provider against the fake Chat Completions server, in process.
#include "model/openai_chat/openai_chat.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <string>
#include <vector>

#include "fakes/model/fake_model.h"

namespace agentd::model::openai_chat {
namespace {

using fakes::FakeModelOptions;
using fakes::FakeModelServer;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

class OpenAIChatTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }

  void Start(const FakeModelOptions& options) {
    fake_.reset();
    auto r = fakes::StartFakeModel(options);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    fake_ = std::move(r).value();
  }

  ModelRequest Request(const std::string& user) const {
    ModelRequest r;
    r.model = "fake-chat";
    r.base_url = fake_->base_url();
    r.items = Json::array({{{"type", "message"}, {"role", "user"}, {"content", user}}});
    r.timeout = milliseconds(10000);
    return r;
  }

  void Faults(const Json& faults) { ASSERT_TRUE(fake_->AddFaults(faults).ok()); }

  OpenAIChatProvider provider_;
  std::unique_ptr<FakeModelServer> fake_;
};

TEST_F(OpenAIChatTest, TextAnswerWithUsage) {
  ModelRequest req = Request("hello there");
  req.instructions = "Be nice.";
  ModelAttempt a = provider_.CallBlocking(req);
  ASSERT_TRUE(a.response.has_value()) << a.error.ToString();
  EXPECT_TRUE(a.error.ok());
  EXPECT_EQ(a.http_status, 200);
  EXPECT_EQ(a.response->text, "echo: hello there");
  EXPECT_TRUE(a.response->tool_calls.empty());
  EXPECT_EQ(a.response->finish_reason, "stop");
  // "Be nice." (8) + "hello there" (11) = 19 -> 4; "echo: hello there" (17) -> 4.
  EXPECT_EQ(a.response->usage.input_tokens, 4);
  EXPECT_EQ(a.response->usage.output_tokens, 4);
  EXPECT_EQ(a.response->usage.total_tokens, 8);

  Json sent = fake_->Stats()["last_request"];
  EXPECT_EQ(sent["model"], "fake-chat");
  EXPECT_EQ(sent["stream"], true);
  EXPECT_EQ(sent["stream_options"]["include_usage"], true);
  EXPECT_EQ(sent["messages"][0]["role"], "system");
  EXPECT_FALSE(sent.contains("tools"));
}

TEST_F(OpenAIChatTest, StreamsTextDeltasToTheCallback) {
  for (bool per_event : {false, true}) {
    FakeModelOptions o;
    o.flush_each_event = per_event;
    Start(o);
    std::vector<std::string> deltas;
    ModelRequest req = Request("say A longer answer that the fake cuts into several deltas.");
    req.on_text_delta = [&](std::string_view d) { deltas.emplace_back(d); };
    ModelAttempt a = provider_.CallBlocking(req);
    ASSERT_TRUE(a.response.has_value()) << a.error.ToString();
    EXPECT_GE(deltas.size(), 2u);
    std::string joined;
    for (const auto& d : deltas) joined += d;
    EXPECT_EQ(joined, a.response->text);
    EXPECT_EQ(a.response->text, "A longer answer that the fake cuts into several deltas.");
  }
}

TEST_F(OpenAIChatTest, ParallelToolCallsWithMalformedArgumentsVerbatim) {
  ModelRequest req = Request("call get_weather {\"city\":\"Paris\"}\ncall search {not: json");
  req.tools.push_back({"get_weather", "Weather by city",
                       Json{{"type", "object"},
                            {"properties", {{"city", {{"type", "string"}}}}}}});
  req.tools.push_back({"search", "", Json()});
  ModelAttempt a = provider_.CallBlocking(req);
  ASSERT_TRUE(a.response.has_value()) << a.error.ToString();
  const ModelResponse& r = *a.response;
  EXPECT_EQ(r.finish_reason, "tool_calls");
  EXPECT_EQ(r.text, "");
  ASSERT_EQ(r.tool_calls.size(), 2u);
  EXPECT_EQ(r.tool_calls[0].name, "get_weather");
  EXPECT_EQ(r.tool_calls[0].arguments, "{\"city\":\"Paris\"}");
  EXPECT_EQ(r.tool_calls[1].name, "search");
  EXPECT_EQ(r.tool_calls[1].arguments, "{not: json");
  EXPECT_EQ(r.tool_calls[0].call_id.rfind("call_", 0), 0u);
  EXPECT_NE(r.tool_calls[0].call_id, r.tool_calls[1].call_id);
  EXPECT_GE(r.usage.output_tokens, 1);

  Json tools = fake_->Stats()["last_request"]["tools"];
  ASSERT_EQ(tools.size(), 2u);
  EXPECT_EQ(tools[0]["type"], "function");
  EXPECT_EQ(tools[0]["function"]["name"], "get_weather");
  EXPECT_EQ(tools[0]["function"]["parameters"]["properties"]["city"]["type"], "string");
}

// Runs the conversation the way the engine does: each call's tool calls and their outputs
// go back as items until the model answers with text.
TEST_F(OpenAIChatTest, SequentialToolCallsRoundTrip) {
  ModelRequest req = Request("repeat 3 step {\"i\":1}");
  int calls = 0;
  for (;;) {
    ModelAttempt a = provider_.CallBlocking(req);
    ASSERT_TRUE(a.response.has_value()) << a.error.ToString();
    if (a.response->tool_calls.empty()) {
      EXPECT_EQ(a.response->text, "done: output 2");
      EXPECT_EQ(a.response->finish_reason, "stop");
      break;
    }
    ASSERT_EQ(a.response->tool_calls.size(), 1u);
    const ToolCall& c = a.response->tool_calls[0];
    EXPECT_EQ(c.name, "step");
    req.items.push_back(
        {{"type", "function_call"}, {"call_id", c.call_id}, {"name", c.name}, {"arguments", c.arguments}});
    req.items.push_back({{"type", "function_call_output"},
                         {"call_id", c.call_id},
                         {"output", "output " + std::to_string(calls)}});
    ASSERT_LT(++calls, 10);
  }
  EXPECT_EQ(calls, 3);
  Json messages = fake_->Stats()["last_request"]["messages"];
  ASSERT_EQ(messages.size(), 7u);
  EXPECT_EQ(messages[1]["role"], "assistant");
  EXPECT_EQ(messages[1]["tool_calls"][0]["function"]["name"], "step");
  EXPECT_EQ(messages[2]["role"], "tool");
  EXPECT_EQ(messages[2]["tool_call_id"], messages[1]["tool_calls"][0]["id"]);
}

TEST_F(OpenAIChatTest, AcceptsANonStreamingAnswer) {
  FakeModelOptions o;
  o.ignore_stream = true;
  Start(o);
  std::string deltas;
  ModelRequest req = Request("call f {\"a\":1}\ncall g {}");
  req.on_text_delta = [&](std::string_view d) { deltas += d; };
  ModelAttempt a = provider_.CallBlocking(req);
  ASSERT_TRUE(a.response.has_value()) << a.error.ToString();
  EXPECT_EQ(a.response->tool_calls.size(), 2u);
  EXPECT_EQ(a.response->finish_reason, "tool_calls");
  EXPECT_GT(a.response->usage.total_tokens, 0);
  a = provider_.CallBlocking(Request("say plain"));
  ASSERT_TRUE(a.response.has_value()) << a.error.ToString();
  EXPECT_EQ(a.response->text, "plain");
}

TEST_F(OpenAIChatTest, RateLimitIsRetryableWithRetryAfter) {
  Faults({{{"status", 429}, {"retry_after", "2"}}});
  ModelAttempt a = provider_.CallBlocking(Request("hi"));
  EXPECT_FALSE(a.response.has_value());
  EXPECT_TRUE(a.retryable);
  EXPECT_EQ(a.http_status, 429);
  EXPECT_EQ(a.error.code(), StatusCode::kResourceExhausted);
  ASSERT_TRUE(a.retry_after.has_value());
  EXPECT_EQ(*a.retry_after, milliseconds(2000));
  EXPECT_NE(a.error.message().find("429"), std::string::npos) << a.error.message();
  EXPECT_NE(a.error.message().find("Rate limit"), std::string::npos) << a.error.message();
}

TEST_F(OpenAIChatTest, ServerErrorIsRetryable) {
  Faults({{{"status", 500}}, {{"status", 503}, {"retry_after", "1"}}});
  ModelAttempt a = provider_.CallBlocking(Request("hi"));
  EXPECT_TRUE(a.retryable);
  EXPECT_EQ(a.http_status, 500);
  EXPECT_FALSE(a.retry_after.has_value());
  EXPECT_EQ(a.error.code(), StatusCode::kUnavailable);
  a = provider_.CallBlocking(Request("hi"));
  EXPECT_TRUE(a.retryable);
  EXPECT_EQ(a.retry_after, milliseconds(1000));
  // The queue is empty: the next attempt succeeds.
  EXPECT_TRUE(provider_.CallBlocking(Request("hi")).response.has_value());
}

TEST_F(OpenAIChatTest, BadRequestIsNotRetryableAndQuotesTheServer) {
  Faults({{{"status", 400}, {"message", "Invalid 'messages[0].role': unknown role."}}});
  ModelAttempt a = provider_.CallBlocking(Request("hi"));
  EXPECT_FALSE(a.retryable);
  EXPECT_EQ(a.http_status, 400);
  EXPECT_EQ(a.error.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(a.error.message().find("400"), std::string::npos);
  EXPECT_NE(a.error.message().find("unknown role"), std::string::npos) << a.error.message();
}

TEST_F(OpenAIChatTest, LongServerErrorsAreTruncated) {
  Faults({{{"status", 404}, {"message", std::string(5000, 'x')}}});
  ModelAttempt a = provider_.CallBlocking(Request("hi"));
  EXPECT_FALSE(a.retryable);
  EXPECT_EQ(a.error.code(), StatusCode::kNotFound);
  EXPECT_LT(a.error.message().size(), 600u);
  EXPECT_NE(a.error.message().find("xxx..."), std::string::npos);
}

TEST_F(OpenAIChatTest, MalformedStreamIsRetryable) {
  Faults({{{"malformed", true}}, {{"malformed", true}}});
  ModelAttempt a = provider_.CallBlocking(Request("hi"));
  EXPECT_FALSE(a.response.has_value());
  EXPECT_TRUE(a.retryable);
  EXPECT_EQ(a.http_status, 200);
  EXPECT_NE(a.error.message().find("model server sent a malformed response"), std::string::npos)
      << a.error.message();
  a = provider_.CallBlocking(Request("call f {\"a\":1}"));
  EXPECT_TRUE(a.retryable);
  EXPECT_NE(a.error.message().find("malformed"), std::string::npos);
}

TEST_F(OpenAIChatTest, MalformedNonStreamBodyIsRetryable) {
  FakeModelOptions o;
  o.ignore_stream = true;
  Start(o);
  Faults({{{"malformed", true}}, {{"drop", true}}});
  for (int i = 0; i < 2; ++i) {
    ModelAttempt a = provider_.CallBlocking(Request("hi"));
    EXPECT_FALSE(a.response.has_value());
    EXPECT_TRUE(a.retryable);
    EXPECT_EQ(a.error.code(), StatusCode::kUnavailable);
    EXPECT_NE(a.error.message().find("model server sent a malformed response"),
              std::string::npos)
        << a.error.message();
  }
}

TEST_F(OpenAIChatTest, DroppedStreamIsRetryable) {
  Faults({{{"drop", true}}, {{"drop", true}}});
  for (const char* u : {"say a long enough answer to be cut", "call f {\"long\":\"arguments\"}"}) {
    ModelAttempt a = provider_.CallBlocking(Request(u));
    EXPECT_FALSE(a.response.has_value()) << u;
    EXPECT_TRUE(a.retryable);
    EXPECT_NE(a.error.message().find("ended before a finish_reason"), std::string::npos)
        << a.error.message();
  }
}

TEST_F(OpenAIChatTest, TimeoutDuringAHangIsRetryable) {
  Faults({{{"hang_ms", 5000}}});
  ModelRequest req = Request("hi");
  req.timeout = milliseconds(300);
  auto t0 = steady_clock::now();
  ModelAttempt a = provider_.CallBlocking(req);
  EXPECT_LT(steady_clock::now() - t0, milliseconds(3000));
  EXPECT_TRUE(a.retryable);
  EXPECT_EQ(a.error.code(), StatusCode::kDeadlineExceeded);
  EXPECT_EQ(a.http_status, 0);
}

TEST_F(OpenAIChatTest, ShouldAbortCancelsDuringAHang) {
  Faults({{{"hang_ms", 30000}}});
  ModelRequest req = Request("hi");
  auto t0 = steady_clock::now();
  req.should_abort = [&] { return steady_clock::now() - t0 > milliseconds(200); };
  ModelAttempt a = provider_.CallBlocking(req);
  auto took = steady_clock::now() - t0;
  EXPECT_GE(took, milliseconds(200));
  EXPECT_LT(took, milliseconds(3000));
  EXPECT_FALSE(a.response.has_value());
  EXPECT_EQ(a.error.code(), StatusCode::kCancelled);
  EXPECT_FALSE(a.retryable);
}

TEST_F(OpenAIChatTest, AlreadyAbortedMakesNoRequest) {
  ModelRequest req = Request("hi");
  req.should_abort = [] { return true; };
  ModelAttempt a = provider_.CallBlocking(req);
  EXPECT_EQ(a.error.code(), StatusCode::kCancelled);
  EXPECT_EQ(fake_->Stats()["requests"], 0);
}

TEST_F(OpenAIChatTest, SendsTheApiKeyAsBearerAndNeverEchoesIt) {
  const std::string key = "sk-test-0123456789abcdef";
  FakeModelOptions o;
  o.require_key = key;
  Start(o);
  ModelRequest req = Request("hi");
  req.api_key = key;
  req.base_url = fake_->base_url() + "/";  // a trailing slash is tolerated
  ModelAttempt a = provider_.CallBlocking(req);
  ASSERT_TRUE(a.response.has_value()) << a.error.ToString();

  req.api_key = "sk-wrong-key-value";
  a = provider_.CallBlocking(req);
  EXPECT_FALSE(a.retryable);
  EXPECT_EQ(a.http_status, 401);
  EXPECT_EQ(a.error.code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(a.error.message().find("sk-wrong-key-value"), std::string::npos);

  req.api_key.clear();  // no Authorization header at all
  a = provider_.CallBlocking(req);
  EXPECT_EQ(a.http_status, 401);

  // A server that quotes the key back in its error does not get it into ours.
  req.api_key = key;
  Faults({{{"status", 400}, {"message", "Bad key " + key + " used"}}});
  a = provider_.CallBlocking(req);
  EXPECT_EQ(a.http_status, 400);
  EXPECT_EQ(a.error.message().find(key), std::string::npos) << a.error.message();
  EXPECT_NE(a.error.message().find("[redacted]"), std::string::npos) << a.error.message();
}

TEST_F(OpenAIChatTest, RefusedConnectionIsRetryable) {
  ModelRequest req = Request("hi");
  fake_->Stop();
  ModelAttempt a = provider_.CallBlocking(req);
  EXPECT_TRUE(a.retryable);
  EXPECT_EQ(a.error.code(), StatusCode::kUnavailable);
  EXPECT_EQ(a.http_status, 0);
}

TEST_F(OpenAIChatTest, BadItemsAreNotRetryable) {
  ModelRequest req = Request("hi");
  req.items.push_back({{"type", "function_call"}, {"name", "f"}});
  ModelAttempt a = provider_.CallBlocking(req);
  EXPECT_FALSE(a.retryable);
  EXPECT_EQ(a.error.code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(fake_->Stats()["requests"], 0);
}

// The engine's way: encode from the conversation it holds, then call without request.items.
TEST_F(OpenAIChatTest, EncodeThenCallEncodedSendsThatBody) {
  ModelRequest req = Request("ignored: request.items is not what is sent");
  Json items = Json::array({{{"type", "message"}, {"role", "user"}, {"content", "say encoded"}}});
  Result<std::string> body = provider_.EncodeBody(req, items);
  ASSERT_TRUE(body.ok()) << body.status().ToString();
  Json expected = *ParseJson(*body, "body");
  req.items = Json::array();
  ModelAttempt a = provider_.CallEncodedBlocking(req, std::move(body).value());
  ASSERT_TRUE(a.response.has_value()) << a.error.ToString();
  EXPECT_EQ(a.response->text, "encoded");
  EXPECT_EQ(fake_->Stats()["last_request"], expected);

  Result<std::string> bad = provider_.EncodeBody(req, Json::array({{{"type", "message"}}}));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad.status().message(), "'items[0].role' must be a string");
}

TEST_F(OpenAIChatTest, ConcurrentCallsFromManyThreads) {
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        ModelAttempt a = provider_.CallBlocking(Request("say " + std::to_string(t * 100 + i)));
        if (a.response && a.response->text == std::to_string(t * 100 + i)) ++ok;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), 160);
}

}  // namespace
}  // namespace agentd::model::openai_chat
