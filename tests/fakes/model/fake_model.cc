#include "fakes/model/fake_model.h"

#include <fmt/format.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <ctime>
#include <deque>
#include <mutex>
#include <random>
#include <string_view>
#include <utility>
#include <vector>

#include "api/http/server.h"
#include "fakes/model/json_scan.h"

namespace agentd::fakes {
namespace {

using std::string_view;

constexpr string_view kEventStream = "text/event-stream; charset=utf-8";
// Pieces a streamed text or argument string is cut into are at most this long.
constexpr size_t kStreamPiece = 16;

struct Fault {
  int status = 0;            // 0: no status fault
  std::string retry_after;   // Retry-After header value, empty for none
  std::string message;       // error.message override
  int64_t hang_ms = 0;
  bool malformed = false;
  bool drop = false;
};

Status ParseFault(const Json& j, size_t index, Fault* out) {
  std::string path = fmt::format("faults[{}]", index);
  FieldReader r(j, path);
  RETURN_IF_ERROR(r.CheckObject());
  int64_t status = 0;
  RETURN_IF_ERROR(r.Int("status", &status, false, 400, 599));
  out->status = static_cast<int>(status);
  const Json* ra = nullptr;
  RETURN_IF_ERROR(r.Value("retry_after", &ra, false));
  if (ra != nullptr) {
    if (ra->is_string()) {
      out->retry_after = ra->get<std::string>();
    } else if (ra->is_number_integer()) {
      out->retry_after = std::to_string(ra->get<int64_t>());
    } else {
      return InvalidArgument(fmt::format("'{}' must be a string or an integer",
                                         r.PathOf("retry_after")));
    }
  }
  RETURN_IF_ERROR(r.String("message", &out->message, false));
  RETURN_IF_ERROR(r.Int("hang_ms", &out->hang_ms, false, 0, 3600 * 1000));
  RETURN_IF_ERROR(r.Bool("malformed", &out->malformed, false));
  RETURN_IF_ERROR(r.Bool("drop", &out->drop, false));
  return r.NoUnknownKeys();
}

void AppendJsonString(std::string* out, string_view s) {
  out->push_back('"');
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out->append("\\\""); break;
      case '\\': out->append("\\\\"); break;
      case '\n': out->append("\\n"); break;
      case '\r': out->append("\\r"); break;
      case '\t': out->append("\\t"); break;
      default:
        if (c < 0x20) {
          fmt::format_to(std::back_inserter(*out), "\\u{:04x}", static_cast<unsigned>(c));
        } else {
          out->push_back(ch);
        }
    }
  }
  out->push_back('"');
}

// Calls fn with at least two consecutive pieces of `s` (the last may be empty when `s` is
// a single character), none longer than kStreamPiece unless a UTF-8 sequence demands it,
// never cutting inside a UTF-8 sequence (each piece is escaped on its own).
template <typename Fn>
void ForEachPiece(string_view s, Fn&& fn) {
  size_t n = std::max<size_t>(2, (s.size() + kStreamPiece - 1) / kStreamPiece);
  size_t step = std::max<size_t>(1, (s.size() + n - 1) / n);
  size_t pos = 0, pieces = 0;
  while (pos < s.size()) {
    size_t end = std::min(s.size(), pos + step);
    while (end < s.size() && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) ++end;
    fn(s.substr(pos, end - pos));
    ++pieces;
    pos = end;
  }
  for (; pieces < 2; ++pieces) fn(string_view());
}

size_t Utf8Chars(string_view s) {
  size_t n = 0;
  for (char ch : s) n += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;
  return n;
}

string_view TrimLeft(string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  return s;
}

string_view TrimRight(string_view s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

// Splits "NAME ARGS" into the name and the verbatim arguments ("{}" when absent).
std::pair<string_view, string_view> NameAndArgs(string_view rest) {
  rest = TrimLeft(rest);
  size_t sp = rest.find_first_of(" \t");
  string_view name = rest.substr(0, sp);
  string_view args = sp == string_view::npos ? string_view() : TrimLeft(rest.substr(sp));
  if (args.empty()) args = "{}";
  return {name, args};
}

bool StartsWithWord(string_view line, string_view word, string_view* rest) {
  if (line.size() < word.size() || line.substr(0, word.size()) != word) return false;
  if (line.size() > word.size() && line[word.size()] != ' ' && line[word.size()] != '\t') {
    return false;
  }
  *rest = line.substr(word.size());
  return true;
}

struct Call {
  string_view name;
  string_view args;
  std::string id;
};

// What the script decided to answer. Views point into `user_text`.
struct Answer {
  std::string user_text;
  std::string text;
  std::vector<Call> calls;
  int64_t prompt_tokens = 1;
  int64_t completion_tokens = 1;
};

// What the fake needs from a chat request, read in one pass of ScanJson: no DOM is built
// and no string copied while scanning; the two texts the script needs are decoded at the end.
class ChatRequest {
 public:
  std::string model = "fake-model";
  bool stream = false;
  bool include_usage = false;
  size_t prompt_chars = 0;     // characters of every message's content
  std::string user_text;       // content of the last user message
  int64_t tools_after = 0;     // tool messages after it (all of them when there is none)
  bool has_tool_after = false;
  std::string last_tool_text;  // content of the last of those

  // Fails with an OpenAI-style message for bad JSON, a non-object body, missing or empty
  // messages, or a message without a string role.
  Status Parse(string_view body) {
    if (body.empty()) return InvalidArgument("We could not parse the JSON body of your request.");
    size_t at = 0;
    ScanResult r = ScanJson(body, *this, &at);
    if (!error_.empty()) return InvalidArgument(error_);
    if (r != ScanResult::kOk) {
      return InvalidArgument(fmt::format(
          "We could not parse the JSON body of your request (at byte {}).", at + 1));
    }
    if (!saw_messages_) return InvalidArgument("Missing required parameter: 'messages'.");
    if (messages_ == 0) return InvalidArgument("Invalid 'messages': expected a non-empty array.");
    Join(user_parts_, &user_text);
    Join(tool_parts_, &last_tool_text);
    return Status::OK();
  }

  // ScanJson's handler.
  bool Null() { return Scalar(); }
  bool Number() { return Scalar(); }
  bool Bool(bool v) {
    if (depth_ == 1 && keys_[1] == Field::kStream) stream = v;
    if (depth_ == 2 && keys_[1] == Field::kStreamOptions && keys_[2] == Field::kIncludeUsage) {
      include_usage = v;
    }
    return Scalar();
  }

  bool String(const JsonString& v) {
    if (depth_ == 1 && keys_[1] == Field::kModel) {
      model.clear();
      AppendDecoded(v, &model);
    }
    if (InMessage()) {
      if (depth_ == 3 && keys_[3] == Field::kRole) {
        role_ = DecodedEquals(v, "user")   ? Role::kUser
                : DecodedEquals(v, "tool") ? Role::kTool
                                           : Role::kOther;
        has_role_ = true;
      } else if (depth_ == 3 && keys_[3] == Field::kContent) {
        parts_.assign(1, v);
        prompt_chars += v.chars;
      } else if (depth_ == 5 && keys_[3] == Field::kContent && keys_[5] == Field::kText) {
        parts_.push_back(v);
        prompt_chars += v.chars;
      }
    }
    return Scalar();
  }

  bool Key(const JsonString& k) {
    if (depth_ >= kMaxDepth) return true;
    auto is = [&k](string_view name) { return DecodedEquals(k, name); };
    Field key = Field::kOther;
    if (depth_ == 1) {
      key = is("model")            ? Field::kModel
            : is("messages")       ? Field::kMessages
            : is("stream")         ? Field::kStream
            : is("stream_options") ? Field::kStreamOptions
                                   : Field::kOther;
    } else if (depth_ == 2) {
      key = is("include_usage") ? Field::kIncludeUsage : Field::kOther;
    } else if (depth_ == 3) {
      key = is("role") ? Field::kRole : is("content") ? Field::kContent : Field::kOther;
    } else if (depth_ == 5) {
      key = is("text") ? Field::kText : Field::kOther;
    }
    keys_[depth_] = key;
    return true;
  }

  bool StartObject() {
    if (depth_ == 1 && keys_[1] == Field::kMessages) {
      return Fail("Invalid 'messages': expected an array.");
    } else if (depth_ == 2 && keys_[1] == Field::kMessages) {
      parts_.clear();
      has_role_ = false;
    }
    return Open();
  }

  bool EndObject() {
    if (InMessage() && depth_ == 3) {
      if (!has_role_) {
        return Fail(fmt::format("Missing required parameter: 'messages[{}].role'.", messages_));
      }
      if (role_ == Role::kUser) {
        user_parts_.swap(parts_);
        tools_after = 0;
        has_tool_after = false;
      } else if (role_ == Role::kTool) {
        ++tools_after;
        has_tool_after = true;
        tool_parts_.swap(parts_);
      }
      ++messages_;
    }
    --depth_;
    return true;
  }

  bool StartArray() {
    if (depth_ == 0) return Fail("request body must be a JSON object");
    if (depth_ == 1 && keys_[1] == Field::kMessages) saw_messages_ = true;
    if (depth_ == 2 && keys_[1] == Field::kMessages) {
      return Fail(fmt::format("Invalid type for 'messages[{}]': expected an object.", messages_));
    }
    return Open();
  }

  bool EndArray() {
    --depth_;
    return true;
  }

 private:
  enum class Field : uint8_t {
    kOther, kModel, kMessages, kStream, kStreamOptions, kIncludeUsage, kRole, kContent, kText
  };
  enum class Role : uint8_t { kOther, kUser, kTool };
  static constexpr int kMaxDepth = 8;  // keys deeper than this never matter

  // Depth 1 is the body, 2 the messages array, 3 a message, 4 its content parts, 5 a part.
  bool InMessage() const { return depth_ >= 3 && keys_[1] == Field::kMessages; }

  bool Open() {
    ++depth_;
    if (depth_ < kMaxDepth) keys_[depth_] = Field::kOther;
    return true;
  }

  bool Scalar() {
    if (depth_ == 0) return Fail("request body must be a JSON object");
    if (depth_ == 1 && keys_[1] == Field::kMessages) {
      return Fail("Invalid 'messages': expected an array.");
    }
    if (depth_ == 2 && keys_[1] == Field::kMessages) {
      return Fail(fmt::format("Invalid type for 'messages[{}]': expected an object.", messages_));
    }
    return true;
  }

  bool Fail(std::string message) {
    if (error_.empty()) error_ = std::move(message);
    return false;
  }

  // A message's text: its content string, or its text parts joined by newlines.
  static void Join(const std::vector<JsonString>& parts, std::string* out) {
    out->clear();
    for (size_t i = 0; i < parts.size(); ++i) {
      if (i > 0) out->push_back('\n');
      AppendDecoded(parts[i], out);
    }
  }

  int depth_ = 0;
  Field keys_[kMaxDepth] = {};
  bool saw_messages_ = false;
  size_t messages_ = 0;
  // The message being read; views into the body.
  std::vector<JsonString> parts_;
  Role role_ = Role::kOther;
  bool has_role_ = false;
  std::vector<JsonString> user_parts_;  // of the last user message
  std::vector<JsonString> tool_parts_;  // of the last tool message after it
  std::string error_;
};

class FakeModelServerImpl final : public FakeModelServer {
 public:
  explicit FakeModelServerImpl(FakeModelOptions options) : options_(std::move(options)) {
    if (!options_.require_key.empty()) expected_auth_ = "Bearer " + options_.require_key;
    std::random_device rd;
    id_prefix_ = fmt::format("{:08x}", rd());
  }

  ~FakeModelServerImpl() override { Stop(); }

  Status Start() {
    http::ServerOptions so;
    so.host = options_.host;
    so.port = options_.port;
    so.io_threads = options_.io_threads;
    so.max_body_bytes = 32u << 20;
    so.pool_name = "fake-model";
    server_ = std::make_unique<http::Server>(
        so, [this](const http::Request& req, http::Exchange& ex) { Handle(req, ex); });
    RETURN_IF_ERROR(server_->Start());
    port_ = server_->port();
    return Status::OK();
  }

  uint16_t port() const override { return port_; }

  std::string base_url() const override {
    std::string host = options_.host;
    if (host == "0.0.0.0") host = "127.0.0.1";
    if (host == "::") host = "::1";
    if (host.find(':') != std::string::npos) host = "[" + host + "]";
    return fmt::format("http://{}:{}/v1", host, port());
  }

  Status AddFaults(const Json& faults) override {
    if (!faults.is_array()) return InvalidArgument("'faults' must be an array");
    std::vector<Fault> parsed(faults.size());
    for (size_t i = 0; i < faults.size(); ++i) RETURN_IF_ERROR(ParseFault(faults[i], i, &parsed[i]));
    std::lock_guard lk(mu_);
    for (auto& f : parsed) faults_.push_back(std::move(f));
    return Status::OK();
  }

  void ClearFaults() override {
    std::lock_guard lk(mu_);
    faults_.clear();
  }

  void Reset() override {
    std::lock_guard lk(mu_);
    faults_.clear();
    requests_ = 0;
    last_request_.clear();
  }

  Json Stats() const override {
    std::lock_guard lk(mu_);
    Json j = {{"requests", requests_}, {"faults_pending", faults_.size()}};
    if (last_request_.empty()) {
      j["last_request"] = nullptr;
    } else {
      auto parsed = ParseJson(last_request_, "request");
      j["last_request"] = parsed.ok() ? std::move(parsed).value() : Json(last_request_);
    }
    return j;
  }

  void Stop() override {
    {
      std::lock_guard lk(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    std::lock_guard lk(stop_mu_);
    // Destroyed, not only stopped: http::Server::Stop() can leave the listening socket open
    // (its close is posted to an event loop that Stop() then halts), and a stopped fake
    // must refuse connections.
    server_.reset();
  }

 private:
  void Handle(const http::Request& req, http::Exchange& ex) {
    const std::string& p = req.path;
    if (p == "/v1/chat/completions" || p == "/chat/completions") {
      if (req.method != "POST") {
        ex.Respond(ErrorResponse(405, fmt::format("Unsupported method {} for {}; use POST.",
                                                  req.method, p)));
        return;
      }
      HandleChat(req, ex);
    } else if (p == "/_fake/faults" && req.method == "POST") {
      auto body = ParseJson(req.body, "request body");
      Status st = body.status();
      if (st.ok()) {
        const Json& b = *body;
        if (b.is_object() && b.contains("faults")) {
          st = AddFaults(b["faults"]);
        } else {
          st = InvalidArgument("body must be {\"faults\":[...]}");
        }
      }
      if (!st.ok()) {
        ex.Respond(ErrorResponse(400, st.message()));
        return;
      }
      ex.Respond({200, "application/json", DumpJson(Stats()), {}});
    } else if (p == "/_fake/faults" && req.method == "DELETE") {
      ClearFaults();
      ex.Respond({200, "application/json", DumpJson(Stats()), {}});
    } else if (p == "/_fake/stats" && req.method == "GET") {
      ex.Respond({200, "application/json", DumpJson(Stats()), {}});
    } else if (p == "/_fake/reset" && req.method == "POST") {
      Reset();
      ex.Respond({200, "application/json", DumpJson(Stats()), {}});
    } else {
      ex.Respond(ErrorResponse(404, fmt::format("Unknown request URL: {} {}.", req.method, p)));
    }
  }

  static http::Response ErrorResponse(int status, string_view message,
                                      string_view type = "invalid_request_error",
                                      string_view code = {}) {
    http::Response r;
    r.status = status;
    r.body.reserve(message.size() + 96);
    r.body += R"({"error":{"message":)";
    AppendJsonString(&r.body, message);
    r.body += R"(,"type":)";
    AppendJsonString(&r.body, type);
    r.body += R"(,"param":null,"code":)";
    if (code.empty()) {
      r.body += "null";
    } else {
      AppendJsonString(&r.body, code);
    }
    r.body += "}}";
    return r;
  }

  static http::Response FaultResponse(const Fault& f) {
    http::Response r;
    if (f.status == 429) {
      r = ErrorResponse(429, f.message.empty() ? "Rate limit reached (fake fault)." : f.message,
                        "requests", "rate_limit_exceeded");
    } else if (f.status >= 500) {
      r = ErrorResponse(f.status,
                        f.message.empty()
                            ? "The server had an error while processing your request. Sorry about that!"
                            : f.message,
                        "server_error");
    } else {
      r = ErrorResponse(f.status,
                        f.message.empty() ? fmt::format("Fake fault: status {}.", f.status)
                                          : f.message);
    }
    if (!f.retry_after.empty()) r.headers.emplace_back("Retry-After", f.retry_after);
    return r;
  }

  // Waits up to `ms`, returning early when the server stops.
  void Hang(int64_t ms, http::Exchange& ex) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    std::unique_lock lk(mu_);
    while (!stopping_ && !ex.Stopping()) {
      auto now = std::chrono::steady_clock::now();
      if (now >= deadline) break;
      // Exchange::Stopping() cannot notify us, so look at it now and then.
      cv_.wait_until(lk, std::min(deadline, now + std::chrono::milliseconds(50)));
    }
  }

  void HandleChat(const http::Request& req, http::Exchange& ex) {
    {
      std::lock_guard lk(mu_);
      ++requests_;
      last_request_.assign(req.body);
    }
    if (!expected_auth_.empty()) {
      auto it = req.headers.find("authorization");
      if (it == req.headers.end()) {
        ex.Respond(ErrorResponse(
            401,
            "You didn't provide an API key. You need to provide your API key in an "
            "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            "invalid_request_error"));
        return;
      }
      if (it->second != expected_auth_) {
        ex.Respond(ErrorResponse(401, "Incorrect API key provided.", "invalid_request_error",
                                 "invalid_api_key"));
        return;
      }
    }
    // Faults are taken after authentication, so a rejected request leaves the queue alone.
    Fault fault;
    {
      std::lock_guard lk(mu_);
      if (!faults_.empty()) {
        fault = std::move(faults_.front());
        faults_.pop_front();
      }
    }
    if (fault.hang_ms > 0) Hang(fault.hang_ms, ex);
    if (fault.status != 0) {
      ex.Respond(FaultResponse(fault));
      return;
    }
    ChatRequest chat;
    if (Status st = chat.Parse(req.body); !st.ok()) {
      ex.Respond(ErrorResponse(400, st.message()));
      return;
    }
    bool stream = chat.stream && !options_.ignore_stream;
    if (fault.malformed && !stream) {
      ex.Respond({200, "application/json", "this is not JSON {\"choices\":", {}});
      return;
    }
    Answer answer = Script(chat);
    std::string head = Head(chat, stream);
    if (stream) {
      Stream(chat, answer, head, fault, ex);
    } else {
      std::string body = Completion(answer, head);
      if (fault.drop) body.resize(body.size() / 2);
      ex.Respond({200, "application/json", std::move(body), {}});
    }
  }

  std::string NewCallId() {
    return fmt::format("call_{}{}", id_prefix_, counter_.fetch_add(1, std::memory_order_relaxed));
  }

  Answer Script(ChatRequest& chat) {
    Answer a;
    a.prompt_tokens = std::max<int64_t>(1, static_cast<int64_t>(chat.prompt_chars / 4));
    a.user_text = std::move(chat.user_text);
    const int64_t k = chat.tools_after;

    std::vector<std::pair<string_view, string_view>> calls;
    bool has_repeat = false, has_say = false;
    int64_t repeat_n = 0;
    std::pair<string_view, string_view> repeat_call;
    string_view say;
    string_view u = a.user_text;
    while (!u.empty()) {
      size_t nl = u.find('\n');
      string_view line = TrimRight(TrimLeft(u.substr(0, nl)));
      u = nl == string_view::npos ? string_view() : u.substr(nl + 1);
      string_view rest;
      if (StartsWithWord(line, "call", &rest)) {
        calls.push_back(NameAndArgs(rest));
      } else if (!has_repeat && StartsWithWord(line, "repeat", &rest)) {
        rest = TrimLeft(rest);
        size_t digits = 0;
        int64_t n = 0;
        while (digits < rest.size() && rest[digits] >= '0' && rest[digits] <= '9' &&
               n < 1000000) {
          n = n * 10 + (rest[digits] - '0');
          ++digits;
        }
        if (digits > 0) {
          has_repeat = true;
          repeat_n = n;
          repeat_call = NameAndArgs(rest.substr(digits));
        }
      } else if (!has_say && StartsWithWord(line, "say", &rest)) {
        has_say = true;
        say = TrimLeft(rest);
      }
    }

    if (!calls.empty() && k == 0) {
      for (auto& [name, args] : calls) a.calls.push_back({name, args, NewCallId()});
    } else if (calls.empty() && has_repeat && k < repeat_n) {
      a.calls.push_back({repeat_call.first, repeat_call.second, NewCallId()});
    } else if (has_say) {
      a.text = say;
    } else if (chat.has_tool_after) {
      a.text = "done: " + chat.last_tool_text;
    } else {
      a.text = "echo: " + a.user_text;
    }
    size_t completion_chars = 0;
    if (a.calls.empty()) {
      completion_chars = Utf8Chars(a.text);
    } else {
      for (const auto& c : a.calls) completion_chars += Utf8Chars(c.args);
    }
    a.completion_tokens = std::max<int64_t>(1, static_cast<int64_t>(completion_chars / 4));
    return a;
  }

  // The object's fields up to and including `"choices":[`.
  std::string Head(const ChatRequest& chat, bool stream) {
    std::string h;
    h.reserve(160 + chat.model.size());
    h += R"({"id":"chatcmpl-)";
    h += id_prefix_;
    fmt::format_to(std::back_inserter(h), "{}", counter_.fetch_add(1, std::memory_order_relaxed));
    h += stream ? R"(","object":"chat.completion.chunk","created":)"
                : R"(","object":"chat.completion","created":)";
    fmt::format_to(std::back_inserter(h), "{}", static_cast<int64_t>(std::time(nullptr)));
    h += R"(,"model":)";
    AppendJsonString(&h, chat.model);
    h += R"(,"system_fingerprint":"fp_fake","choices":[)";
    return h;
  }

  static void AppendUsage(std::string* out, const Answer& a) {
    fmt::format_to(std::back_inserter(*out),
                   R"({{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{},)"
                   R"("prompt_tokens_details":{{"cached_tokens":0,"audio_tokens":0}},)"
                   R"("completion_tokens_details":{{"reasoning_tokens":0,"audio_tokens":0,)"
                   R"("accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}})",
                   a.prompt_tokens, a.completion_tokens, a.prompt_tokens + a.completion_tokens);
  }

  static std::string Completion(const Answer& a, const std::string& head) {
    std::string b;
    b.reserve(head.size() + 512 + a.text.size() + a.calls.size() * 96);
    b += head;
    b += R"({"index":0,"message":{"role":"assistant","content":)";
    if (a.calls.empty()) {
      AppendJsonString(&b, a.text);
    } else {
      b += "null";
      b += R"(,"tool_calls":[)";
      for (size_t i = 0; i < a.calls.size(); ++i) {
        if (i > 0) b.push_back(',');
        b += R"({"id":)";
        AppendJsonString(&b, a.calls[i].id);
        b += R"(,"type":"function","function":{"name":)";
        AppendJsonString(&b, a.calls[i].name);
        b += R"(,"arguments":)";
        AppendJsonString(&b, a.calls[i].args);
        b += "}}";
      }
      b += "]";
    }
    b += R"(,"refusal":null,"annotations":[]},"logprobs":null,"finish_reason":)";
    b += a.calls.empty() ? R"("stop")" : R"("tool_calls")";
    b += R"(}],"usage":)";
    AppendUsage(&b, a);
    b += R"(,"service_tier":"default"})";
    return b;
  }

  // Writes the answer as chat.completion.chunk events.
  void Stream(const ChatRequest& chat, const Answer& a, const std::string& head,
              const Fault& fault, http::Exchange& ex) {
    if (!ex.StartStream(200, std::string(kEventStream), {})) return;
    std::string buf;
    buf.reserve(1024 + a.text.size() * 8);
    bool peer_ok = true;
    auto flush = [&](bool force) {
      if ((force || options_.flush_each_event) && !buf.empty() && peer_ok) {
        peer_ok = ex.Write(buf);
        buf.clear();
      }
    };
    // One `data:` event whose only choice has `delta` (a JSON object body without braces).
    auto event = [&](auto&& write_delta, string_view finish_reason) {
      buf += "data: ";
      buf += head;
      buf += R"({"index":0,"delta":{)";
      write_delta();
      buf += R"(},"logprobs":null,"finish_reason":)";
      if (finish_reason.empty()) {
        buf += "null";
      } else {
        AppendJsonString(&buf, finish_reason);
      }
      buf += "}]";
      if (chat.include_usage) buf += R"(,"usage":null)";
      buf += "}\n\n";
      flush(false);
    };
    // The drop fault lets one piece through, then cuts the stream.
    int budget = fault.drop ? 1 : 1 << 30;
    auto done = [&] { return budget-- <= 0; };

    if (a.calls.empty()) {
      event([&] { buf += R"("role":"assistant","content":"","refusal":null)"; }, {});
      if (fault.malformed) {
        buf += "data: {\"id\":\"chatcmpl-broken\",\"choices\":[{\"delta\":{\"content\":\"oo\n\n";
        buf += "data: [DONE]\n\n";
        flush(true);
        ex.EndStream();
        return;
      }
      bool cut = false;
      ForEachPiece(a.text, [&](string_view piece) {
        if (cut || (cut = done())) return;
        event([&] {
          buf += R"("content":)";
          AppendJsonString(&buf, piece);
        }, {});
      });
      if (cut || fault.drop) {
        flush(true);
        ex.EndStream();
        return;
      }
    } else {
      bool cut = false;
      for (size_t i = 0; i < a.calls.size() && !cut; ++i) {
        const Call& c = a.calls[i];
        event([&] {
          if (i == 0) buf += R"("role":"assistant","content":null,)";
          fmt::format_to(std::back_inserter(buf), R"("tool_calls":[{{"index":{},"id":)", i);
          AppendJsonString(&buf, c.id);
          buf += R"(,"type":"function","function":{"name":)";
          AppendJsonString(&buf, c.name);
          buf += R"(,"arguments":""}}])";
          if (i == 0) buf += R"(,"refusal":null)";
        }, {});
        if (i == 0 && fault.malformed) {
          buf += "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\n\n";
          buf += "data: [DONE]\n\n";
          flush(true);
          ex.EndStream();
          return;
        }
        ForEachPiece(c.args, [&](string_view piece) {
          if (cut || (cut = done())) return;
          event([&] {
            fmt::format_to(std::back_inserter(buf),
                           R"("tool_calls":[{{"index":{},"function":{{"arguments":)", i);
            AppendJsonString(&buf, piece);
            buf += "}}]";
          }, {});
        });
      }
      if (cut || fault.drop) {
        flush(true);
        ex.EndStream();
        return;
      }
    }
    event([] {}, a.calls.empty() ? "stop" : "tool_calls");
    if (chat.include_usage) {
      buf += "data: ";
      buf += head;
      buf += R"(],"usage":)";
      AppendUsage(&buf, a);
      buf += "}\n\n";
      flush(false);
    }
    buf += "data: [DONE]\n\n";
    flush(true);
    ex.EndStream();
  }

  const FakeModelOptions options_;
  std::string expected_auth_;  // "Bearer KEY", empty when no key is required
  std::string id_prefix_;      // random per server, so ids differ across restarts
  std::atomic<uint64_t> counter_{1};
  uint16_t port_ = 0;
  std::mutex stop_mu_;                     // serialises Stop()
  std::unique_ptr<http::Server> server_;  // guarded by stop_mu_ after Start()

  mutable std::mutex mu_;
  std::condition_variable cv_;  // signalled on stop, to cut hangs short
  std::deque<Fault> faults_;    // guarded by mu_
  int64_t requests_ = 0;        // guarded by mu_
  std::string last_request_;    // guarded by mu_
  bool stopping_ = false;       // guarded by mu_
};

}  // namespace

Result<std::unique_ptr<FakeModelServer>> StartFakeModel(FakeModelOptions options) {
  auto server = std::make_unique<FakeModelServerImpl>(std::move(options));
  RETURN_IF_ERROR(server->Start());
  return std::unique_ptr<FakeModelServer>(std::move(server));
}

}  // namespace agentd::fakes
