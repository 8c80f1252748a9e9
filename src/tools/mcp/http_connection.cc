// The Streamable HTTP transport: every JSON-RPC message is one POST to the MCP endpoint,
// answered with one JSON object or an SSE stream that carries the request's notifications
// and ends with its response.
//
// Headers: Accept (both types), Content-Type, the target's custom headers, and by era:
//   stateless (2026-07-28): MCP-Protocol-Version, Mcp-Method, Mcp-Name (tools/call,
//     resources/read, prompts/get; Base64 sentinel when not plain header-safe ASCII);
//   handshake: MCP-Protocol-Version after initialize, Mcp-Session-Id once the server
//     assigned one (and DELETE of the session when the connection closes).
// Resumption (handshake era, 2025-11-25): a stream that ends before its response is resumed
// with GET and Last-Event-ID after the server's `retry`, up to kMaxResumes times.
// Cancellation: a stateless request is cancelled by closing its stream; a handshake-era
// one also gets notifications/cancelled. Server requests on a handshake-era stream (ping)
// are answered by a POST from a helper thread, since the stream's thread is inside curl.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "common/http_client.h"
#include "tools/mcp/connection.h"

namespace agentd::tools::mcp::internal {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kNotifyTimeout{10000};
constexpr milliseconds kDeleteTimeout{2000};
constexpr milliseconds kLingerAfterResponse{2000};
constexpr int kMaxResumes = 5;                 // GET reconnections of one request's stream
constexpr milliseconds kMaxResumeWait{30000};  // cap on the server's `retry`

bool IsModern(const std::string& version) { return version >= kStatelessVersion; }

RpcError ErrorOf(const Json& e) {
  RpcError err;
  if (e.is_object()) {
    if (e.contains("code") && e["code"].is_number_integer()) err.code = e["code"].get<int64_t>();
    if (const std::string* m = FindString(e, "message")) err.message = *m;
    if (e.contains("data")) err.data = e["data"];
  }
  return err;
}

class HttpConnection final : public Connection {
 public:
  HttpConnection(HttpTarget target, const ClientOptions& options, NotificationSink sink)
      : target_(std::move(target)),
        server_(options.server_name),
        max_message_bytes_(options.max_message_bytes),
        sink_(std::move(sink)) {}

  ~HttpConnection() override {
    std::string session;
    {
      std::lock_guard<std::mutex> lock(mu_);
      session = session_id_;
    }
    if (session.empty()) return;
    HttpRequest req;
    req.method = "DELETE";
    req.url = target_.url;
    req.headers = BaseHeaders();
    req.timeout = kDeleteTimeout;
    req.connect_timeout = target_.connect_timeout;
    req.connect_address = target_.connect_address;
    auto r = HttpDoBlocking(req);  // a courtesy: the server may keep the session otherwise
    (void)r;
  }

  Result<RpcReply> Call(const std::string& method, Json params,
                        const RequestOptions& options) override {
    int64_t id = next_id_.fetch_add(1);
    if (!params.is_object()) params = Json::object();
    if (options.on_progress) params["_meta"]["progressToken"] = id;
    std::string name;
    if (method == "tools/call" || method == "prompts/get") {
      if (const std::string* n = FindString(params, "name")) name = *n;
    } else if (method == "resources/read") {
      if (const std::string* n = FindString(params, "uri")) name = *n;
    }
    Json msg = {{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", std::move(params)}};

    auto left = std::chrono::duration_cast<milliseconds>(options.deadline - Clock::now());
    if (left.count() <= 0) {
      return DeadlineExceeded(
          fmt::format("MCP server '{}' did not answer {} in time", server_, method));
    }
    HttpRequest req;
    req.method = "POST";
    req.url = target_.url;
    req.headers = BaseHeaders();
    for (const auto& [k, v] : options.headers) SetHeader(req.headers, k, v);
    std::string version = Version();
    if (IsModern(version)) {
      req.headers.emplace_back("Mcp-Method", method);
      if (!name.empty()) req.headers.emplace_back("Mcp-Name", HeaderValue(name));
      for (const auto& h : options.extra_headers) req.headers.push_back(h);
    }
    req.body = DumpJson(msg);
    req.timeout = left;
    req.connect_timeout = target_.connect_timeout;
    req.connect_address = target_.connect_address;

    // The body is sniffed: JSON starts with '{' or '['; anything else is an event stream.
    // (on_body runs before the caller sees the headers.)
    enum class Kind { kUnknown, kJson, kSse } kind = Kind::kUnknown;
    std::string raw;   // a JSON body
    std::string head;  // the start of an event stream, for error messages
    SseParser sse(max_message_bytes_);
    std::optional<RpcReply> reply;
    std::optional<Clock::time_point> reply_at;
    Status stream_error;
    std::vector<std::thread> answers;
    req.on_body = [&](std::string_view bytes) -> bool {
      if (kind == Kind::kUnknown) {
        size_t i = 0;
        while (i < bytes.size() &&
               (bytes[i] == ' ' || bytes[i] == '\r' || bytes[i] == '\n' || bytes[i] == '\t')) {
          ++i;
        }
        if (i == bytes.size()) {
          raw.append(bytes);
          return raw.size() <= max_message_bytes_;
        }
        kind = (bytes[i] == '{' || bytes[i] == '[') ? Kind::kJson : Kind::kSse;
        if (kind == Kind::kSse) raw.clear();  // only blank lines so far: nothing to parse
      }
      if (kind == Kind::kJson) {
        if (raw.size() + bytes.size() > max_message_bytes_) {
          stream_error = Oversized();
          return false;
        }
        raw.append(bytes);
        return true;
      }
      if (head.size() < 4096) head.append(bytes.substr(0, 4096 - head.size()));
      Status st = sse.Feed(bytes, [&](std::string data) {
        if (reply || !stream_error.ok()) return;
        OnEvent(id, data, options, &reply, &stream_error, &answers);
      });
      if (!st.ok()) {
        stream_error = ResourceExhausted(fmt::format("MCP server '{}': {}", server_, st.message()));
        return false;
      }
      if (reply && !reply_at) reply_at = Clock::now();
      return stream_error.ok();
    };
    // After the response the stream should end; it is read to its end, so that the response
    // headers (Mcp-Session-Id) are kept, but not for longer than kLingerAfterResponse.
    req.should_abort = [&]() -> bool {
      if (reply_at) return Clock::now() - *reply_at > kLingerAfterResponse;
      return options.should_abort && options.should_abort();
    };

    auto resp = HttpDoBlocking(req);
    for (auto& t : answers) t.join();

    if (!stream_error.ok()) return stream_error;
    if (reply) {
      CaptureSession(resp.ok() ? &*resp : nullptr);
      return std::move(*reply);
    }
    if (!resp.ok()) {
      Status st = resp.status();
      if (st.code() == StatusCode::kCancelled) {
        if (!IsModern(version)) {
          Notify("notifications/cancelled",
                 Json{{"requestId", id}, {"reason", "cancelled by the caller"}})
              .IgnoreError();
        }
        return Cancelled(fmt::format("MCP server '{}': {} cancelled", server_, method));
      }
      if (st.code() == StatusCode::kDeadlineExceeded) {
        if (!IsModern(version)) {
          Notify("notifications/cancelled", Json{{"requestId", id}, {"reason", "timed out"}})
              .IgnoreError();
        }
        return DeadlineExceeded(
            fmt::format("MCP server '{}' did not answer {} in time", server_, method));
      }
      return Status(st.code(), fmt::format("MCP server '{}' at {}: {} failed: {}", server_,
                                           target_.url, method, st.message()));
    }
    CaptureSession(&*resp);
    if (kind == Kind::kSse && !IsModern(version) && resp->status >= 200 && resp->status < 300 &&
        !sse.last_event_id().empty()) {
      // Handshake era (2025-11-25, SEP-1699): a server may end the stream before the response
      // and expect the client to resume it with GET and Last-Event-ID after `retry` ms.
      for (int attempt = 0; attempt < kMaxResumes && !reply; ++attempt) {
        sse.EndStream();
        milliseconds wait(sse.retry_ms() > 0 ? sse.retry_ms() : 1000);
        wait = std::min(wait, kMaxResumeWait);
        auto resume_at = Clock::now() + wait;
        while (Clock::now() < resume_at) {
          if (options.should_abort && options.should_abort()) {
            Notify("notifications/cancelled",
                   Json{{"requestId", id}, {"reason", "cancelled by the caller"}})
                .IgnoreError();
            return Cancelled(fmt::format("MCP server '{}': {} cancelled", server_, method));
          }
          if (Clock::now() >= options.deadline) break;
          std::this_thread::sleep_for(milliseconds(10));
        }
        auto remaining = std::chrono::duration_cast<milliseconds>(options.deadline - Clock::now());
        if (remaining.count() <= 0) {
          return DeadlineExceeded(
              fmt::format("MCP server '{}' did not answer {} in time", server_, method));
        }
        HttpRequest get;
        get.method = "GET";
        get.url = target_.url;
        for (auto& h : BaseHeaders()) {
          if (h.first == "Content-Type") continue;
          if (h.first == "Accept") h.second = "text/event-stream";
          get.headers.push_back(std::move(h));
        }
        get.headers.emplace_back("Last-Event-ID", sse.last_event_id());
        get.timeout = remaining;
        get.connect_timeout = target_.connect_timeout;
        get.connect_address = target_.connect_address;
        get.on_body = req.on_body;
        get.should_abort = req.should_abort;
        auto r = HttpDoBlocking(get);
        for (auto& t : answers) t.join();
        answers.clear();
        if (!stream_error.ok()) return stream_error;
        if (reply) return std::move(*reply);
        if (!r.ok()) {
          return Status(r.status().code(),
                        fmt::format("MCP server '{}': resuming the event stream of {} failed: {}",
                                    server_, method, r.status().message()));
        }
        if (r->status < 200 || r->status >= 300) {
          return Unavailable(
              fmt::format("MCP server '{}': resuming the event stream of {} got HTTP {}", server_,
                          method, r->status));
        }
      }
    }
    return FinalReply(*resp, kind == Kind::kSse, kind == Kind::kSse ? head : raw, id, method);
  }

  Status Notify(const std::string& method, Json params) override {
    Json msg = {{"jsonrpc", "2.0"}, {"method", method}};
    if (!params.is_null()) msg["params"] = std::move(params);
    HttpRequest req;
    req.method = "POST";
    req.url = target_.url;
    req.headers = BaseHeaders();
    if (IsModern(Version())) req.headers.emplace_back("Mcp-Method", method);
    req.body = DumpJson(msg);
    req.timeout = kNotifyTimeout;
    req.connect_timeout = target_.connect_timeout;
    req.connect_address = target_.connect_address;
    req.max_response_bytes = 64 * 1024;
    ASSIGN_OR_RETURN(HttpResponse resp, HttpDoBlocking(req));
    if (resp.status < 200 || resp.status >= 300) {
      return Unavailable(fmt::format("MCP server '{}' answered {} with HTTP {}: {}", server_,
                                     method, resp.status, Excerpt(resp.body)));
    }
    return Status::OK();
  }

  Status SendDetached(const std::string& method, Json) override {
    return FailedPrecondition(
        fmt::format("{} is not supported on the Streamable HTTP transport", method));
  }

  void SetProtocolVersion(const std::string& version) override {
    std::lock_guard<std::mutex> lock(mu_);
    version_ = version;
    if (version.empty() || IsModern(version)) session_id_.clear();
  }

  int64_t NextRequestId() const override { return next_id_.load(); }

  bool Broken(Status* why) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (session_expired_ && why != nullptr) {
      *why = Unavailable(fmt::format("MCP server '{}' ended the session", server_));
    }
    return session_expired_;
  }

 private:
  std::string Version() {
    std::lock_guard<std::mutex> lock(mu_);
    return version_;
  }

  std::vector<std::pair<std::string, std::string>> BaseHeaders() {
    std::vector<std::pair<std::string, std::string>> h = {
        {"Content-Type", "application/json"},
        {"Accept", "application/json, text/event-stream"},
        {"User-Agent", "agentd/0.1"}};
    for (const auto& kv : target_.headers) h.push_back(kv);
    if (target_.fresh_headers) {
      for (const auto& [k, v] : target_.fresh_headers()) SetHeader(h, k, v);
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (!version_.empty()) h.emplace_back("MCP-Protocol-Version", version_);
    if (!session_id_.empty()) h.emplace_back("Mcp-Session-Id", session_id_);
    return h;
  }

  Status Oversized() const {
    return ResourceExhausted(fmt::format("MCP server '{}' sent a message larger than {} bytes",
                                         server_, max_message_bytes_));
  }

  void CaptureSession(const HttpResponse* resp) {
    if (resp == nullptr) return;
    std::string sid = resp->Header("mcp-session-id");
    std::lock_guard<std::mutex> lock(mu_);
    if (!sid.empty() && session_id_.empty() && !IsModern(version_)) session_id_ = sid;
  }

  // One SSE event of the response stream to request `id`.
  void OnEvent(int64_t id, const std::string& data, const RequestOptions& options,
               std::optional<RpcReply>* reply, Status* error, std::vector<std::thread>* answers) {
    if (data.empty()) return;  // priming events carry no data
    auto parsed = ParseJson(data, "MCP message");
    if (!parsed.ok() || !parsed->is_object()) {
      *error =
          Internal(fmt::format("MCP server '{}' sent an event that is not a JSON-RPC "
                               "message: '{}'",
                               server_, Excerpt(data, 120)));
      return;
    }
    Json& msg = *parsed;
    const std::string* method = FindString(msg, "method");
    bool has_id = msg.contains("id") && !msg["id"].is_null();
    if (method != nullptr && has_id) {
      Json answer = AnswerServerRequest(msg);
      answers->emplace_back([this, answer = std::move(answer)] { PostAnswer(answer); });
      return;
    }
    const Json params = msg.contains("params") ? msg["params"] : Json::object();
    if (method != nullptr) {
      if (*method == "notifications/progress") {
        if (options.on_progress && params.is_object() && params.contains("progressToken") &&
            params["progressToken"] == Json(id)) {
          options.on_progress(params);
        }
      } else if (sink_) {
        sink_(*method, params);
      }
      return;
    }
    if (has_id && msg["id"] == Json(id)) {
      RpcReply r;
      if (msg.contains("error")) {
        r.error = ErrorOf(msg["error"]);
      } else if (msg.contains("result")) {
        r.result = std::move(msg["result"]);
      } else {
        *error = Internal(
            fmt::format("MCP server '{}' sent a response without result or error", server_));
        return;
      }
      r.http_status = 200;
      *reply = std::move(r);
    }
  }

  void PostAnswer(const Json& answer) {
    HttpRequest req;
    req.method = "POST";
    req.url = target_.url;
    req.headers = BaseHeaders();
    req.body = DumpJson(answer);
    req.timeout = kNotifyTimeout;
    req.connect_timeout = target_.connect_timeout;
    req.connect_address = target_.connect_address;
    req.max_response_bytes = 64 * 1024;
    auto r = HttpDoBlocking(req);
    if (!r.ok()) {
      spdlog::warn("MCP server '{}': cannot answer its request: {}", server_, r.status().message());
    }
  }

  Result<RpcReply> FinalReply(const HttpResponse& resp, bool was_sse, const std::string& raw,
                              int64_t id, const std::string& method) {
    if (resp.status == 404) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!session_id_.empty()) {
        // Handshake era: the server forgot our session; the client must initialize again.
        session_expired_ = true;
        return Unavailable(fmt::format("MCP server '{}' ended the session", server_));
      }
    }
    if (was_sse) {
      if (resp.Header("content-type").find("text/event-stream") == std::string::npos) {
        return Internal(
            fmt::format("MCP server '{}' answered {} with HTTP {} and a body that is "
                        "not a JSON-RPC message: '{}'",
                        server_, method, resp.status, Excerpt(raw, 120)));
      }
      if (resp.status >= 200 && resp.status < 300) {
        return Aborted(
            fmt::format("MCP server '{}' closed the event stream of {} without "
                        "answering it",
                        server_, method));
      }
    }
    RpcReply reply;
    reply.http_status = resp.status;
    if (!raw.empty() && !was_sse) {
      auto parsed = ParseJson(raw, "MCP response");
      if (parsed.ok() && parsed->is_object() &&
          (parsed->contains("result") || parsed->contains("error"))) {
        Json& msg = *parsed;
        bool ours = msg.contains("id") && msg["id"] == Json(id);
        bool anonymous = !msg.contains("id") || msg["id"].is_null();
        if (msg.contains("error") && msg["error"].is_object() && msg["error"].contains("code") &&
            (ours || anonymous)) {
          reply.error = ErrorOf(msg["error"]);
          return reply;
        }
        if (ours && resp.status >= 200 && resp.status < 300) {
          reply.result = std::move(msg["result"]);
          return reply;
        }
      }
      if (resp.status >= 200 && resp.status < 300) {
        return Internal(
            fmt::format("MCP server '{}' answered {} with a body that is not its "
                        "JSON-RPC response: '{}'",
                        server_, method, Excerpt(raw, 120)));
      }
    }
    if (resp.status >= 200 && resp.status < 300) {
      return Internal(fmt::format("MCP server '{}' answered {} with HTTP {} and no response",
                                  server_, method, resp.status));
    }
    reply.error =
        RpcError{kHttpStatusError, fmt::format("HTTP {}: {}", resp.status, Excerpt(raw, 200)),
                 Json{{"http_status", resp.status}}};
    return reply;
  }

  const HttpTarget target_;
  const std::string server_;
  const size_t max_message_bytes_;
  NotificationSink sink_;
  std::atomic<int64_t> next_id_{1};

  std::mutex mu_;
  std::string version_;           // GUARDED_BY(mu_)
  std::string session_id_;        // GUARDED_BY(mu_)
  bool session_expired_ = false;  // GUARDED_BY(mu_)
};

}  // namespace

std::unique_ptr<Connection> StartHttpConnection(const HttpTarget& target,
                                                const ClientOptions& options,
                                                NotificationSink sink) {
  return std::make_unique<HttpConnection>(target, options, std::move(sink));
}

}  // namespace agentd::tools::mcp::internal
