// The fake Chat Completions server: its script, its wire format and its faults.
#include "fakes/model/fake_model.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "common/http_client.h"
#include "common/json.h"

extern char** environ;

namespace agentd::fakes {
namespace {

using std::chrono::milliseconds;
using std::chrono::steady_clock;

class FakeModelTest : public ::testing::Test {
 protected:
  void SetUp() override { Start({}); }

  void Start(FakeModelOptions options) {
    fake_.reset();
    auto r = StartFakeModel(std::move(options));
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    fake_ = std::move(r).value();
  }

  std::string Url(const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(fake_->port()) + path;
  }

  HttpResponse Send(const std::string& method, const std::string& path, const std::string& body,
                    std::vector<std::pair<std::string, std::string>> headers = {}) {
    HttpRequest req;
    req.method = method;
    req.url = Url(path);
    req.body = body;
    req.headers = std::move(headers);
    req.headers.emplace_back("Content-Type", "application/json");
    req.timeout = milliseconds(10000);
    auto r = HttpDoBlocking(req);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : HttpResponse{};
  }

  static Json Body(const std::string& user, bool stream = false, bool usage = false) {
    Json b = {{"model", "fake-1"}, {"messages", {{{"role", "user"}, {"content", user}}}}};
    if (stream) b["stream"] = true;
    if (usage) b["stream_options"] = {{"include_usage", true}};
    return b;
  }

  HttpResponse Chat(const Json& body) {
    return Send("POST", "/v1/chat/completions", DumpJson(body));
  }

  Json ChatJson(const Json& body) {
    HttpResponse r = Chat(body);
    EXPECT_EQ(r.status, 200) << r.body;
    auto j = ParseJson(r.body, "response");
    EXPECT_TRUE(j.ok()) << r.body;
    return j.ok() ? *j : Json();
  }

  void AddFaults(const Json& faults) {
    HttpResponse r = Send("POST", "/_fake/faults", DumpJson(Json{{"faults", faults}}));
    ASSERT_EQ(r.status, 200) << r.body;
  }

  std::unique_ptr<FakeModelServer> fake_;
};

// Splits an event stream into its data payloads, checking the framing on the way.
std::vector<std::string> DataEvents(const std::string& body) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\n\n", pos);
    EXPECT_NE(end, std::string::npos) << "event not terminated by a blank line";
    if (end == std::string::npos) break;
    std::string event = body.substr(pos, end - pos);
    EXPECT_EQ(event.rfind("data: ", 0), 0u) << event;
    EXPECT_EQ(event.find('\n'), std::string::npos) << event;
    out.push_back(event.substr(6));
    pos = end + 2;
  }
  return out;
}

std::vector<Json> Chunks(const std::vector<std::string>& events) {
  std::vector<Json> out;
  for (const auto& e : events) {
    if (e == "[DONE]") continue;
    auto j = ParseJson(e, "chunk");
    EXPECT_TRUE(j.ok()) << e;
    if (j.ok()) out.push_back(*j);
  }
  return out;
}

Json ToolMessage(const std::string& id, const std::string& content) {
  return {{"role", "tool"}, {"tool_call_id", id}, {"content", content}};
}

Json AssistantCall(const std::string& id, const std::string& name) {
  return {{"role", "assistant"},
          {"content", nullptr},
          {"tool_calls",
           {{{"id", id}, {"type", "function"}, {"function", {{"name", name}, {"arguments", "{}"}}}}}}};
}

TEST_F(FakeModelTest, EchoesTheLastUserMessage) {
  Json b = Body("hello world");
  b["messages"].insert(b["messages"].begin(), Json{{"role", "system"}, {"content", "be brief"}});
  Json r = ChatJson(b);
  EXPECT_EQ(r["object"], "chat.completion");
  EXPECT_EQ(r["id"].get<std::string>().rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(r["model"], "fake-1");
  EXPECT_TRUE(r["created"].is_number_integer());
  ASSERT_EQ(r["choices"].size(), 1u);
  const Json& c = r["choices"][0];
  EXPECT_EQ(c["index"], 0);
  EXPECT_EQ(c["message"]["role"], "assistant");
  EXPECT_EQ(c["message"]["content"], "echo: hello world");
  EXPECT_FALSE(c["message"].contains("tool_calls"));
  EXPECT_EQ(c["finish_reason"], "stop");
  // "be brief" (8) + "hello world" (11) = 19 chars -> 4; "echo: hello world" (17) -> 4.
  EXPECT_EQ(r["usage"]["prompt_tokens"], 4);
  EXPECT_EQ(r["usage"]["completion_tokens"], 4);
  EXPECT_EQ(r["usage"]["total_tokens"], 8);
}

TEST_F(FakeModelTest, AcceptsThePathWithoutV1AndContentParts) {
  Json b = {{"model", "m"},
            {"messages", {{{"role", "user"}, {"content", {{{"type", "text"}, {"text", "hi"}}}}}}}};
  HttpResponse r = Send("POST", "/chat/completions", DumpJson(b));
  ASSERT_EQ(r.status, 200) << r.body;
  EXPECT_EQ((*ParseJson(r.body, "r"))["choices"][0]["message"]["content"], "echo: hi");
}

TEST_F(FakeModelTest, SaySetsTheFinalText) {
  Json r = ChatJson(Body("first line\nsay All good ✓\nmore"));
  EXPECT_EQ(r["choices"][0]["message"]["content"], "All good ✓");
  EXPECT_EQ(r["usage"]["completion_tokens"], 2);  // 10 characters
}

TEST_F(FakeModelTest, CallLinesGiveParallelToolCallsThenTheFinalAnswer) {
  std::string u = "call get_weather {\"city\":\"Paris\"}\ncall lookup {not json\ncall ping";
  Json r = ChatJson(Body(u));
  const Json& m = r["choices"][0]["message"];
  EXPECT_TRUE(m["content"].is_null());
  EXPECT_EQ(r["choices"][0]["finish_reason"], "tool_calls");
  ASSERT_EQ(m["tool_calls"].size(), 3u);
  EXPECT_EQ(m["tool_calls"][0]["type"], "function");
  EXPECT_EQ(m["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(m["tool_calls"][0]["function"]["arguments"], "{\"city\":\"Paris\"}");
  EXPECT_EQ(m["tool_calls"][1]["function"]["arguments"], "{not json");
  EXPECT_EQ(m["tool_calls"][2]["function"]["name"], "ping");
  EXPECT_EQ(m["tool_calls"][2]["function"]["arguments"], "{}");
  std::string id0 = m["tool_calls"][0]["id"], id1 = m["tool_calls"][1]["id"];
  EXPECT_EQ(id0.rfind("call_", 0), 0u);
  EXPECT_NE(id0, id1);
  // 15 + 9 + 2 = 26 characters of arguments.
  EXPECT_EQ(r["usage"]["completion_tokens"], 6);

  Json b = Body(u);
  b["messages"].push_back(AssistantCall(id0, "get_weather"));
  b["messages"].push_back(ToolMessage(id0, "sunny"));
  b["messages"].push_back(ToolMessage(id1, "found it"));
  r = ChatJson(b);
  EXPECT_EQ(r["choices"][0]["message"]["content"], "done: found it");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");

  b["messages"][0]["content"] = u + "\nsay finished";
  EXPECT_EQ(ChatJson(b)["choices"][0]["message"]["content"], "finished");
}

TEST_F(FakeModelTest, ToolMessagesBeforeTheLastUserMessageDoNotCount) {
  Json b = Body("earlier");
  b["messages"].push_back(AssistantCall("call_a", "t"));
  b["messages"].push_back(ToolMessage("call_a", "old"));
  b["messages"].push_back({{"role", "user"}, {"content", "call t {}"}});
  Json r = ChatJson(b);
  EXPECT_EQ(r["choices"][0]["finish_reason"], "tool_calls");
}

TEST_F(FakeModelTest, RepeatGivesSequentialCalls) {
  Json b = Body("repeat 3 step {\"n\":1}");
  for (int k = 0; k < 3; ++k) {
    Json r = ChatJson(b);
    const Json& m = r["choices"][0]["message"];
    ASSERT_EQ(m["tool_calls"].size(), 1u) << "k=" << k;
    EXPECT_EQ(m["tool_calls"][0]["function"]["name"], "step");
    EXPECT_EQ(m["tool_calls"][0]["function"]["arguments"], "{\"n\":1}");
    std::string id = m["tool_calls"][0]["id"];
    b["messages"].push_back(AssistantCall(id, "step"));
    b["messages"].push_back(ToolMessage(id, "result " + std::to_string(k)));
  }
  Json r = ChatJson(b);
  EXPECT_EQ(r["choices"][0]["message"]["content"], "done: result 2");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
}

TEST_F(FakeModelTest, StreamsTextLikeOpenAI) {
  HttpResponse r = Chat(Body("say The quick brown fox jumps over the lazy dog", true, true));
  ASSERT_EQ(r.status, 200);
  EXPECT_EQ(r.Header("content-type").rfind("text/event-stream", 0), 0u);
  auto events = DataEvents(r.body);
  ASSERT_GE(events.size(), 5u);
  EXPECT_EQ(events.back(), "[DONE]");
  auto chunks = Chunks(events);
  ASSERT_EQ(chunks.size(), events.size() - 1);
  std::string id = chunks[0]["id"];
  EXPECT_EQ(chunks[0]["choices"][0]["delta"]["role"], "assistant");
  std::string text;
  int content_deltas = 0;
  for (size_t i = 0; i + 2 < chunks.size(); ++i) {
    const Json& c = chunks[i];
    EXPECT_EQ(c["object"], "chat.completion.chunk");
    EXPECT_EQ(c["id"], id);
    EXPECT_TRUE(c["usage"].is_null());
    EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
    const Json& d = c["choices"][0]["delta"];
    if (d.contains("content") && d["content"].is_string() && !d["content"].get<std::string>().empty()) {
      text += d["content"].get<std::string>();
      ++content_deltas;
    }
  }
  EXPECT_EQ(text, "The quick brown fox jumps over the lazy dog");
  EXPECT_GE(content_deltas, 2);
  const Json& fin = chunks[chunks.size() - 2];
  EXPECT_EQ(fin["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(fin["choices"][0]["delta"].empty());
  const Json& usage = chunks.back();
  EXPECT_TRUE(usage["choices"].is_array() && usage["choices"].empty());
  EXPECT_EQ(usage["id"], id);
  EXPECT_EQ(usage["usage"]["completion_tokens"], 10);  // 43 characters
  EXPECT_EQ(usage["usage"]["total_tokens"],
            usage["usage"]["prompt_tokens"].get<int>() + 10);
}

TEST_F(FakeModelTest, StreamsShortTextInTwoContentChunks) {
  HttpResponse r = Chat(Body("say é", true));
  auto chunks = Chunks(DataEvents(r.body));
  int content_chunks = 0;
  std::string text;
  for (const auto& c : chunks) {
    EXPECT_FALSE(c.contains("usage")) << "usage only with stream_options.include_usage";
    const Json& d = c["choices"][0]["delta"];
    if (!d.contains("role") && d.contains("content")) {
      ++content_chunks;
      text += d["content"].get<std::string>();
    }
  }
  EXPECT_GE(content_chunks, 2);
  EXPECT_EQ(text, "é");
  EXPECT_EQ(chunks.back()["choices"][0]["finish_reason"], "stop");
}

TEST_F(FakeModelTest, StreamsToolCallsLikeOpenAI) {
  std::string args0 = "{\"city\":\"Paris\",\"unit\":\"celsius\"}";
  HttpResponse r = Chat(Body("call weather " + args0 + "\ncall bad {x", true, true));
  auto events = DataEvents(r.body);
  EXPECT_EQ(events.back(), "[DONE]");
  auto chunks = Chunks(events);
  EXPECT_EQ(chunks[0]["choices"][0]["delta"]["role"], "assistant");
  struct Seen {
    std::string id, name, args;
    int fragments = 0;
  };
  std::vector<Seen> calls;
  std::string finish;
  for (const auto& c : chunks) {
    if (c["choices"].empty()) continue;
    const Json& choice = c["choices"][0];
    if (choice["finish_reason"].is_string()) finish = choice["finish_reason"];
    if (!choice["delta"].contains("tool_calls")) continue;
    ASSERT_EQ(choice["delta"]["tool_calls"].size(), 1u);
    const Json& tc = choice["delta"]["tool_calls"][0];
    size_t index = tc["index"];
    if (tc.contains("id")) {
      ASSERT_EQ(index, calls.size()) << "a call's first delta comes once, in order";
      EXPECT_EQ(tc["type"], "function");
      EXPECT_EQ(tc["function"]["arguments"], "");
      calls.push_back({tc["id"], tc["function"]["name"], "", 0});
    } else {
      ASSERT_LT(index, calls.size());
      EXPECT_FALSE(tc["function"].contains("name"));
      calls[index].args += tc["function"]["arguments"].get<std::string>();
      ++calls[index].fragments;
    }
  }
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[0].name, "weather");
  EXPECT_EQ(calls[0].args, args0);
  EXPECT_GE(calls[0].fragments, 2);
  EXPECT_EQ(calls[1].name, "bad");
  EXPECT_EQ(calls[1].args, "{x");
  EXPECT_GE(calls[1].fragments, 2);
  EXPECT_EQ(calls[0].id.rfind("call_", 0), 0u);
  EXPECT_NE(calls[0].id, calls[1].id);
  EXPECT_EQ(finish, "tool_calls");
  EXPECT_TRUE(chunks.back()["choices"].empty());
}

TEST_F(FakeModelTest, FlushEachEventGivesTheSameStream) {
  FakeModelOptions o;
  o.flush_each_event = true;
  Start(o);
  HttpResponse r = Chat(Body("say one two three four five six seven eight nine ten", true, true));
  auto chunks = Chunks(DataEvents(r.body));
  EXPECT_EQ(chunks[chunks.size() - 2]["choices"][0]["finish_reason"], "stop");
  EXPECT_NE(r.body.find("data: [DONE]\n\n"), std::string::npos);
}

TEST_F(FakeModelTest, IgnoreStreamAnswersWithOneObject) {
  FakeModelOptions o;
  o.ignore_stream = true;
  Start(o);
  Json r = ChatJson(Body("hi", true, true));
  EXPECT_EQ(r["object"], "chat.completion");
}

TEST_F(FakeModelTest, RejectsBadRequestsLikeOpenAI) {
  for (std::string body : {std::string("{not json"), std::string(R"({"model":"m"})"),
                           std::string(R"({"model":"m","messages":[]})"),
                           std::string(R"({"model":"m","messages":[{"content":"x"}]})"),
                           std::string("[1,2]")}) {
    HttpResponse r = Send("POST", "/v1/chat/completions", body);
    EXPECT_EQ(r.status, 400) << body;
    auto j = ParseJson(r.body, "error");
    ASSERT_TRUE(j.ok()) << r.body;
    EXPECT_EQ((*j)["error"]["type"], "invalid_request_error");
    EXPECT_TRUE((*j)["error"]["message"].is_string());
    EXPECT_TRUE((*j)["error"].contains("param"));
    EXPECT_TRUE((*j)["error"].contains("code"));
  }
  EXPECT_EQ(Send("POST", "/v1/other", "{}").status, 404);
  EXPECT_EQ(Send("GET", "/v1/chat/completions", "").status, 405);
}

TEST_F(FakeModelTest, RequireKeyWantsTheBearerToken) {
  FakeModelOptions o;
  o.require_key = "sk-fake-123";
  Start(o);
  std::string body = DumpJson(Body("hi"));
  AddFaults({{{"status", 500}}});
  HttpResponse none = Send("POST", "/v1/chat/completions", body);
  EXPECT_EQ(none.status, 401);
  EXPECT_EQ(fake_->Stats()["faults_pending"], 1) << "a rejected request leaves faults alone";
  fake_->ClearFaults();
  HttpResponse wrong =
      Send("POST", "/v1/chat/completions", body, {{"Authorization", "Bearer sk-other"}});
  EXPECT_EQ(wrong.status, 401);
  auto j = ParseJson(wrong.body, "error");
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)["error"]["code"], "invalid_api_key");
  EXPECT_EQ(wrong.body.find("sk-other"), std::string::npos);
  HttpResponse right =
      Send("POST", "/v1/chat/completions", body, {{"Authorization", "Bearer sk-fake-123"}});
  EXPECT_EQ(right.status, 200) << right.body;
}

TEST_F(FakeModelTest, StatusFaultsComeInOrderWithOpenAIErrorBodies) {
  AddFaults({{{"status", 429}, {"retry_after", "1"}}, {{"status", 500}}, {{"status", 400}},
             {{"status", 503}, {"retry_after", 7}, {"message", "overloaded"}}});
  HttpResponse r = Chat(Body("hi"));
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.Header("retry-after"), "1");
  auto j = ParseJson(r.body, "error");
  ASSERT_TRUE(j.ok()) << r.body;
  EXPECT_EQ((*j)["error"]["code"], "rate_limit_exceeded");

  r = Chat(Body("hi"));
  EXPECT_EQ(r.status, 500);
  EXPECT_EQ(r.Header("retry-after"), "");
  EXPECT_EQ((*ParseJson(r.body, "e"))["error"]["type"], "server_error");

  r = Chat(Body("hi"));
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ((*ParseJson(r.body, "e"))["error"]["type"], "invalid_request_error");

  r = Chat(Body("hi"));
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(r.Header("retry-after"), "7");
  EXPECT_EQ((*ParseJson(r.body, "e"))["error"]["message"], "overloaded");

  EXPECT_EQ(Chat(Body("hi")).status, 200);  // the queue is empty again
}

TEST_F(FakeModelTest, HangDelaysTheAnswer) {
  AddFaults({{{"hang_ms", 150}}});
  auto t0 = steady_clock::now();
  Json r = ChatJson(Body("hi"));
  EXPECT_GE(steady_clock::now() - t0, milliseconds(150));
  EXPECT_EQ(r["choices"][0]["message"]["content"], "echo: hi");
}

TEST_F(FakeModelTest, StopCutsAHangShort) {
  AddFaults({{{"hang_ms", 60000}}});
  std::thread client([&] {
    HttpRequest req;
    req.url = Url("/v1/chat/completions");
    req.body = DumpJson(Body("hi"));
    req.timeout = milliseconds(20000);
    HttpDoBlocking(req).status().IgnoreError();
  });
  for (int i = 0; i < 200 && fake_->Stats()["requests"] == 0; ++i) {
    std::this_thread::sleep_for(milliseconds(5));
  }
  auto t0 = steady_clock::now();
  fake_->Stop();
  EXPECT_LT(steady_clock::now() - t0, milliseconds(3000));
  client.join();
}

TEST_F(FakeModelTest, MalformedFault) {
  AddFaults({{{"malformed", true}}, {{"malformed", true}}});
  HttpResponse r = Chat(Body("hi"));
  EXPECT_EQ(r.status, 200);
  EXPECT_FALSE(ParseJson(r.body, "body").ok());

  r = Chat(Body("hi", true));
  EXPECT_EQ(r.status, 200);
  auto events = DataEvents(r.body);
  bool garbage = false;
  for (const auto& e : events) {
    if (e != "[DONE]" && !ParseJson(e, "chunk").ok()) garbage = true;
  }
  EXPECT_TRUE(garbage) << r.body;
}

TEST_F(FakeModelTest, DropFault) {
  AddFaults({{{"drop", true}}, {{"drop", true}}, {{"drop", true}}});
  HttpResponse r = Chat(Body("say a long enough answer to need several chunks", true, true));
  EXPECT_EQ(r.status, 200);
  auto events = DataEvents(r.body);
  EXPECT_GE(events.size(), 2u);
  EXPECT_EQ(r.body.find("[DONE]"), std::string::npos);
  for (const auto& c : Chunks(events)) {
    EXPECT_TRUE(c["choices"][0]["finish_reason"].is_null());
  }

  r = Chat(Body("call t {\"a\":1}", true));
  EXPECT_EQ(r.body.find("[DONE]"), std::string::npos);
  EXPECT_EQ(r.body.find("finish_reason\":\"tool_calls"), std::string::npos);

  r = Chat(Body("hi"));
  EXPECT_EQ(r.status, 200);
  EXPECT_FALSE(r.body.empty());
  EXPECT_FALSE(ParseJson(r.body, "body").ok());
}

TEST_F(FakeModelTest, StatsClearAndReset) {
  EXPECT_EQ(Chat(Body("one")).status, 200);
  AddFaults({{{"status", 500}}, Json::object()});
  HttpResponse s = Send("GET", "/_fake/stats", "");
  auto j = ParseJson(s.body, "stats");
  ASSERT_TRUE(j.ok());
  EXPECT_EQ((*j)["requests"], 1);
  EXPECT_EQ((*j)["faults_pending"], 2);
  EXPECT_EQ((*j)["last_request"]["messages"][0]["content"], "one");

  EXPECT_EQ(Send("DELETE", "/_fake/faults", "").status, 200);
  EXPECT_EQ(fake_->Stats()["faults_pending"], 0);
  EXPECT_EQ(Chat(Body("two")).status, 200);
  EXPECT_EQ(fake_->Stats()["requests"], 2);

  AddFaults({{{"status", 500}}});
  EXPECT_EQ(Send("POST", "/_fake/reset", "").status, 200);
  Json after = fake_->Stats();
  EXPECT_EQ(after["requests"], 0);
  EXPECT_EQ(after["faults_pending"], 0);
  EXPECT_TRUE(after["last_request"].is_null());
}

TEST_F(FakeModelTest, RejectsBadFaults) {
  for (const char* body : {R"({"faults":[{"status":"x"}]})", R"({"faults":[{"stauts":500}]})",
                           R"({"faults":[{"status":200}]})", R"({"faults":{}})", "nope"}) {
    HttpResponse r = Send("POST", "/_fake/faults", body);
    EXPECT_EQ(r.status, 400) << body;
  }
  EXPECT_EQ(fake_->Stats()["faults_pending"], 0);
}

TEST_F(FakeModelTest, AnswersManyRequestsInARow) {
  // Its cost is measured by `make bench`, not here; this only shows that it keeps answering.
  std::string body = DumpJson(Body("say fine"));
  for (int i = 0; i < 300; ++i) ASSERT_EQ(Send("POST", "/v1/chat/completions", body).status, 200);
  EXPECT_EQ(fake_->Stats()["requests"], 300);
}

// One HTTP/1.1 connection driven by hand, to see what happens to the connection itself
// (libcurl hides reconnects).
class RawConnection {
 public:
  explicit RawConnection(uint16_t port) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    timeval tv = {};
    tv.tv_sec = 5;
    setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  }
  ~RawConnection() { close(fd_); }

  bool connected() const { return connected_; }

  struct Reply {
    int status = 0;
    std::string head;  // status line and headers
    std::string body;  // de-chunked
  };

  // Sends one POST and reads its whole response; status 0 when the connection ended or the
  // response could not be framed.
  Reply Post(const std::string& path, const std::string& body, const std::string& extra = "") {
    std::string req = "POST " + path +
                      " HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\n" + extra +
                      "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    if (send(fd_, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
      return {};
    }
    Reply r;
    size_t head_end = 0;
    if (!ReadUntil("\r\n\r\n", &head_end)) return {};
    r.head = buf_.substr(0, head_end);
    buf_.erase(0, head_end + 4);
    r.status = std::atoi(r.head.c_str() + 9);
    std::string lower = r.head;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (lower.find("transfer-encoding: chunked") != std::string::npos) {
      for (;;) {
        size_t line_end = 0;
        if (!ReadUntil("\r\n", &line_end)) return {};
        size_t n = std::strtoul(buf_.c_str(), nullptr, 16);
        buf_.erase(0, line_end + 2);
        if (!ReadAtLeast(n + 2)) return {};
        r.body += buf_.substr(0, n);
        buf_.erase(0, n + 2);
        if (n == 0) break;
      }
    } else if (size_t cl = lower.find("content-length: "); cl != std::string::npos) {
      size_t n = std::strtoul(lower.c_str() + cl + 16, nullptr, 10);
      if (!ReadAtLeast(n)) return {};
      r.body = buf_.substr(0, n);
      buf_.erase(0, n);
    } else {
      return {};
    }
    return r;
  }

  // True when the server closed the connection (no more bytes, EOF).
  bool ClosedByServer() {
    char c;
    return recv(fd_, &c, 1, 0) == 0;
  }

 private:
  bool Fill() {
    char chunk[4096];
    ssize_t n = recv(fd_, chunk, sizeof(chunk), 0);
    if (n <= 0) return false;
    buf_.append(chunk, static_cast<size_t>(n));
    return true;
  }
  bool ReadUntil(const char* delim, size_t* pos) {
    while ((*pos = buf_.find(delim)) == std::string::npos) {
      if (!Fill()) return false;
    }
    return true;
  }
  bool ReadAtLeast(size_t n) {
    while (buf_.size() < n) {
      if (!Fill()) return false;
    }
    return true;
  }

  int fd_ = -1;
  bool connected_ = false;
  std::string buf_;
};

// Real OpenAI-compatible servers keep connections alive after a streamed answer; a fake
// that closed them would make every benchmarked model call pay for a new connection.
TEST_F(FakeModelTest, KeepsTheConnectionAliveAcrossAnswersAndFaults) {
  AddFaults({{{"drop", true}},
             {{"malformed", true}},
             {{"status", 429}, {"retry_after", "1"}},
             {{"drop", true}},
             {{"malformed", true}}});
  RawConnection conn(fake_->port());
  ASSERT_TRUE(conn.connected());
  const std::string stream =
      DumpJson(Body("say a long enough answer to need several chunks", true, true));
  const std::string plain = DumpJson(Body("hi"));
  struct Step {
    const std::string* body;
    int status;
    const char* expect;  // a substring of the body
  };
  const std::vector<Step> steps = {
      {&stream, 200, "chat.completion.chunk"},  // drop fault: cut short, still framed
      {&stream, 200, "chatcmpl-broken"},        // malformed fault
      {&plain, 429, "rate_limit_exceeded"},
      {&plain, 200, "chat.completion"},   // drop fault: a truncated JSON body
      {&plain, 200, "this is not JSON"},  // malformed fault
      {&stream, 200, "data: [DONE]"},
      {&plain, 200, "echo: hi"},
      {&stream, 200, "data: [DONE]"},
  };
  for (size_t i = 0; i < steps.size(); ++i) {
    RawConnection::Reply r = conn.Post("/v1/chat/completions", *steps[i].body);
    ASSERT_EQ(r.status, steps[i].status) << "request " << i << " on the same connection\n"
                                         << r.head;
    EXPECT_NE(r.body.find(steps[i].expect), std::string::npos) << i << ": " << r.body;
    EXPECT_EQ(r.head.find("onnection: close"), std::string::npos) << r.head;
  }
  EXPECT_EQ(fake_->Stats()["requests"], static_cast<int64_t>(steps.size()));

  // A client that asks for close gets it, after a complete answer.
  RawConnection::Reply r = conn.Post("/v1/chat/completions", stream, "Connection: close\r\n");
  ASSERT_EQ(r.status, 200);
  EXPECT_NE(r.body.find("data: [DONE]"), std::string::npos);
  EXPECT_TRUE(conn.ClosedByServer());
}

#ifdef FAKE_MODEL_BIN
TEST(FakeModelBinaryTest, PrintsListeningAndStopsOnSigterm) {
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], 1);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  std::string bin = FAKE_MODEL_BIN;
  std::vector<std::string> args = {bin, "--listen", "127.0.0.1:0", "--require-key", "k1"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = 0;
  ASSERT_EQ(posix_spawn(&pid, bin.c_str(), &actions, nullptr, argv.data(), environ), 0);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  FILE* out = fdopen(fds[0], "r");
  char line[128] = {};
  ASSERT_NE(fgets(line, sizeof(line), out), nullptr);
  unsigned port = 0;
  ASSERT_EQ(std::sscanf(line, "LISTENING %u\n", &port), 1) << line;

  HttpRequest req;
  req.url = "http://127.0.0.1:" + std::to_string(port) + "/v1/chat/completions";
  req.body = R"({"model":"m","messages":[{"role":"user","content":"hi"}]})";
  req.headers = {{"Authorization", "Bearer k1"}};
  auto r = HttpDoBlocking(req);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  req.headers.clear();
  r = HttpDoBlocking(req);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 401);

  kill(pid, SIGTERM);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  char rest[64];
  EXPECT_EQ(fgets(rest, sizeof(rest), out), nullptr) << "exactly one line on stdout";
  fclose(out);
}
#endif

}  // namespace
}  // namespace agentd::fakes
