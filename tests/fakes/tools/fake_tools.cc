#include "fakes/tools/fake_tools.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>

#include "api/http/server.h"

namespace agentd::fakes {
namespace {

constexpr int64_t kMaxWaitMs = 600000;
constexpr int64_t kMaxBigBytes = 64ll << 20;

http::Response JsonResponse(int status, std::string body) {
  http::Response r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

http::Response Error(int status, std::string_view message) {
  return JsonResponse(status, DumpJson(Json{{"error", message}, {"status", status}}));
}

// Parses a non-negative decimal up to `max`; nullopt when malformed.
std::optional<int64_t> ParseCount(std::string_view s, int64_t max) {
  if (s.empty() || s.size() > 12) return std::nullopt;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return std::min(v, max);
}

struct Fault {
  int64_t hang_ms = 0;
  int status = 0;  // 0: none
  std::string retry_after;
  std::optional<Json> body;
  bool close = false;
  bool apply = false;
};

Result<Fault> ParseFault(const Json& j, const std::string& path) {
  FieldReader r(j, path);
  RETURN_IF_ERROR(r.CheckObject());
  Fault f;
  int64_t status = 0;
  const Json* retry_after = nullptr;
  const Json* body = nullptr;
  RETURN_IF_ERROR(r.Int("hang_ms", &f.hang_ms, false, 0, kMaxWaitMs));
  RETURN_IF_ERROR(r.Int("status", &status, false, 200, 599));
  RETURN_IF_ERROR(r.Value("retry_after", &retry_after, false));
  RETURN_IF_ERROR(r.Value("body", &body, false));
  RETURN_IF_ERROR(r.Bool("close", &f.close, false));
  RETURN_IF_ERROR(r.Bool("apply", &f.apply, false));
  RETURN_IF_ERROR(r.NoUnknownKeys());
  f.status = static_cast<int>(status);
  if (retry_after != nullptr) {
    if (retry_after->is_string()) {
      f.retry_after = retry_after->get<std::string>();
    } else if (retry_after->is_number_unsigned()) {
      f.retry_after = std::to_string(retry_after->get<uint64_t>());
    } else {
      return InvalidArgument(
          fmt::format("'{}' must be a string or a non-negative integer", r.PathOf("retry_after")));
    }
  }
  if (body != nullptr) f.body = *body;
  if (f.status == 0 && f.hang_ms == 0 && !f.close) {
    return InvalidArgument(fmt::format("'{}' needs one of status, hang_ms, close", path));
  }
  return f;
}

struct KeyStats {
  int64_t requests = 0;
  int64_t applied = 0;
};

// What /effect answered the first time for a key, to answer replays the same way.
struct Stored {
  int64_t effect_no = 0;
  std::string args;  // compact JSON text
};

enum class ToolKind { kEcho, kEffect, kUnsafe };

class FakeTools final : public FakeToolServer {
 public:
  explicit FakeTools(FakeToolOptions options) : options_(std::move(options)) {}
  ~FakeTools() override {
    Stop();
    if (state_fd_ >= 0) ::close(state_fd_);
  }

  Status Start() {
    if (!options_.state_file.empty()) RETURN_IF_ERROR(LoadStateFile());
    http::ServerOptions so;
    so.host = options_.host;
    so.port = options_.port;
    so.io_threads = options_.io_threads;
    so.pool_name = "fake_tools";
    server_ = std::make_unique<http::Server>(
        so, [this](const http::Request& req, http::Exchange& ex) { Handle(req, ex); });
    return server_->Start();
  }

  uint16_t port() const override { return server_->port(); }
  std::string Url(const std::string& path) const override {
    std::string host =
        options_.host.find(':') != std::string::npos ? "[" + options_.host + "]" : options_.host;
    return fmt::format("http://{}:{}{}", host, port(), path);
  }

  Status AddFaults(const Json& faults) override {
    const Json* list = &faults;
    if (faults.is_object() && faults.contains("faults")) list = &faults["faults"];
    if (!list->is_array()) return InvalidArgument("'faults' must be an array");
    std::vector<Fault> parsed;
    for (size_t i = 0; i < list->size(); ++i) {
      ASSIGN_OR_RETURN(Fault f, ParseFault((*list)[i], fmt::format("faults[{}]", i)));
      parsed.push_back(std::move(f));
    }
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& f : parsed) faults_.push_back(std::move(f));
    return Status::OK();
  }

  void ClearFaults() override {
    std::lock_guard<std::mutex> lock(mu_);
    faults_.clear();
  }

  Status Reset() override {
    std::lock_guard<std::mutex> lock(mu_);
    total_requests_ = effects_applied_ = unsafe_applied_ = 0;
    per_key_.clear();
    unsafe_per_key_.clear();
    stored_.clear();
    faults_.clear();
    if (state_fd_ >= 0 && ::ftruncate(state_fd_, 0) != 0) {
      return Internal(
          fmt::format("cannot truncate {}: {}", options_.state_file, std::strerror(errno)));
    }
    return Status::OK();
  }

  Json Stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    auto keys = [](const std::unordered_map<std::string, KeyStats>& m) {
      Json out = Json::object();
      for (const auto& [k, v] : m) out[k] = {{"requests", v.requests}, {"applied", v.applied}};
      return out;
    };
    return {{"total_requests", total_requests_}, {"effects_applied", effects_applied_},
            {"unsafe_applied", unsafe_applied_}, {"faults_pending", faults_.size()},
            {"per_key", keys(per_key_)},         {"unsafe_per_key", keys(unsafe_per_key_)}};
  }

  void Stop() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    wake_.notify_all();
    if (server_) server_->Stop();
  }

 private:
  void Handle(const http::Request& req, http::Exchange& ex) {
    const std::string& path = req.path;
    if (path.rfind("/_fake/", 0) == 0) {
      ex.Respond(Control(req));
      return;
    }
    if (path == "/echo") return ServeTool(ToolKind::kEcho, req, ex);
    if (path == "/effect") return ServeTool(ToolKind::kEffect, req, ex);
    if (path == "/unsafe") return ServeTool(ToolKind::kUnsafe, req, ex);
    Count();
    if (path.rfind("/status/", 0) == 0) {
      auto code = ParseCount(std::string_view(path).substr(8), 1000);
      if (!code || *code < 200 || *code > 599) {
        return ex.Respond(Error(400, "status must be between 200 and 599"));
      }
      int status = static_cast<int>(*code);
      http::Response r = JsonResponse(status, fmt::format(R"({{"status":{}}})", status));
      if (status == 204 || status == 304) r.body.clear();
      if (const std::string* ra = req.Query("retry_after"))
        r.headers.emplace_back("Retry-After", *ra);
      return ex.Respond(std::move(r));
    }
    if (path == "/slow") {
      const std::string* ms_text = req.Query("ms");
      auto ms = ParseCount(ms_text ? *ms_text : "", kMaxWaitMs);
      if (!ms) return ex.Respond(Error(400, "/slow needs ?ms=N"));
      Wait(*ms);
      return ex.Respond(JsonResponse(200, fmt::format(R"({{"slept_ms":{}}})", *ms)));
    }
    if (path == "/garbage") {
      static const std::string kGarbage = std::string("<html>not json") + '\x01' + '\xff' + "{\"";
      return ex.Respond(JsonResponse(200, kGarbage));
    }
    if (path == "/big") {
      const std::string* b = req.Query("bytes");
      auto n = ParseCount(b ? *b : "", kMaxBigBytes);
      if (!n || *n < 2) return ex.Respond(Error(400, "/big needs ?bytes=N (N >= 2)"));
      std::string body(static_cast<size_t>(*n), 'x');
      body.front() = body.back() = '"';
      return ex.Respond(JsonResponse(200, std::move(body)));
    }
    if (path == "/headers") {
      Json h = Json::object();
      for (const auto& [k, v] : req.headers) h[k] = v;
      return ex.Respond(JsonResponse(200, DumpJson(h)));
    }
    ex.Respond(Error(404, fmt::format("no tool at {}", path)));
  }

  void Count() {
    std::lock_guard<std::mutex> lock(mu_);
    ++total_requests_;
  }

  http::Response Control(const http::Request& req) {
    const std::string& p = req.path;
    if (p == "/_fake/faults" && req.method == "POST") {
      auto body = ParseJson(req.body, "request body");
      if (!body.ok()) return Error(400, body.status().message());
      if (!body->is_object() || !body->contains("faults")) {
        return Error(400, "body must be {\"faults\": [...]}");
      }
      Status st = AddFaults(*body);
      if (!st.ok()) return Error(400, st.message());
      std::lock_guard<std::mutex> lock(mu_);
      return JsonResponse(200, fmt::format(R"({{"pending":{}}})", faults_.size()));
    }
    if (p == "/_fake/faults" && req.method == "DELETE") {
      ClearFaults();
      return JsonResponse(200, R"({"pending":0})");
    }
    if (p == "/_fake/stats" && req.method == "GET") return JsonResponse(200, DumpJson(Stats()));
    if (p == "/_fake/reset" && req.method == "POST") {
      Status st = Reset();
      if (!st.ok()) return Error(500, st.message());
      return JsonResponse(200, "{}");
    }
    return Error(404, fmt::format("no control endpoint {} {}", req.method, p));
  }

  void ServeTool(ToolKind tool, const http::Request& req, http::Exchange& ex) {
    std::string key = req.Header("idempotency-key");
    std::optional<Fault> fault;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++total_requests_;
      if (tool == ToolKind::kEffect && !key.empty()) ++per_key_[key].requests;
      if (tool == ToolKind::kUnsafe) ++unsafe_per_key_[key].requests;
      if (!faults_.empty()) {
        fault = std::move(faults_.front());
        faults_.pop_front();
      }
    }
    if (!fault) {
      http::Response r = Apply(tool, key, req.body);
      // ?after_ms=N: the effect is applied at once, the answer comes N ms later, which opens
      // a window for a crash between the two.
      if (const std::string* after = req.Query("after_ms")) {
        if (auto ms = ParseCount(*after, kMaxWaitMs)) Wait(*ms);
      }
      return ex.Respond(std::move(r));
    }

    const Fault& f = *fault;
    if (f.hang_ms > 0) Wait(f.hang_ms);
    std::optional<http::Response> normal;
    if (f.apply) normal = Apply(tool, key, req.body);
    if (f.close) {
      // See "close" in fake_tools.h: a truncated chunked response, then the connection closes.
      if (ex.StartStream(200, "application/json", {})) ex.Write(R"({"truncated":)");
      return;
    }
    if (f.status != 0) {
      http::Response r = JsonResponse(
          f.status, f.body ? (f.body->is_string() ? f.body->get<std::string>() : DumpJson(*f.body))
                           : fmt::format(R"({{"error":"injected fault","status":{}}})", f.status));
      if (f.status == 204 || f.status == 304) r.body.clear();
      if (!f.retry_after.empty()) r.headers.emplace_back("Retry-After", f.retry_after);
      return ex.Respond(std::move(r));
    }
    if (normal) return ex.Respond(std::move(*normal));
    ex.Respond(Error(504, "injected hang"));
  }

  http::Response Apply(ToolKind tool, const std::string& key, const std::string& body) {
    switch (tool) {
      case ToolKind::kEcho:
        return JsonResponse(200, body);
      case ToolKind::kEffect:
        return ApplyEffect(key, body);
      case ToolKind::kUnsafe:
        return ApplyUnsafe(key, body);
    }
    return Error(500, "unknown tool");
  }

  static std::string EffectBody(bool applied, const std::string& key, const Stored& s) {
    return fmt::format(R"({{"applied":{},"key":{},"effect_no":{},"args":{}}})", applied,
                       DumpJson(Json(key)), s.effect_no, s.args);
  }

  http::Response ApplyEffect(const std::string& key, const std::string& body) {
    if (key.empty()) return Error(400, "/effect needs an Idempotency-Key header");
    auto args =
        ParseJson(body.empty() ? std::string_view("{}") : std::string_view(body), "request body");
    if (!args.ok()) return Error(400, args.status().message());
    std::lock_guard<std::mutex> lock(mu_);
    auto it = stored_.find(key);
    if (it != stored_.end()) return JsonResponse(200, EffectBody(false, key, it->second));
    Stored s{++effects_applied_, DumpJson(*args)};
    ++per_key_[key].applied;
    PersistLocked("effect", key, s.effect_no, &*args);
    std::string answer = EffectBody(true, key, s);
    stored_.emplace(key, std::move(s));
    return JsonResponse(200, std::move(answer));
  }

  http::Response ApplyUnsafe(const std::string& key, const std::string&) {
    std::lock_guard<std::mutex> lock(mu_);
    int64_t n = ++unsafe_applied_;
    ++unsafe_per_key_[key].applied;
    PersistLocked("unsafe", key, n, nullptr);
    return JsonResponse(200, fmt::format(R"({{"effect_no":{}}})", n));
  }

  // Waits `ms`, or less when the server stops.
  void Wait(int64_t ms) {
    std::unique_lock<std::mutex> lock(mu_);
    wake_.wait_for(lock, std::chrono::milliseconds(ms), [this] { return stopping_; });
  }

  // Appends one applied effect to the state file and syncs it. Requires mu_ held, so lines
  // are in effect order.
  void PersistLocked(const char* tool, const std::string& key, int64_t effect_no,
                     const Json* args) {
    if (state_fd_ < 0) return;
    Json line = {{"tool", tool}, {"key", key}, {"effect_no", effect_no}};
    if (args != nullptr) line["args"] = *args;
    std::string text = DumpJson(line) + "\n";
    size_t done = 0;
    while (done < text.size()) {
      ssize_t n = ::write(state_fd_, text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        spdlog::error("fake_tools: cannot write {}: {}", options_.state_file, std::strerror(errno));
        return;
      }
      done += static_cast<size_t>(n);
    }
    if (::fdatasync(state_fd_) != 0) {
      spdlog::error("fake_tools: cannot sync {}: {}", options_.state_file, std::strerror(errno));
    }
  }

  Status LoadStateFile() {
    const std::string& path = options_.state_file;
    state_fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (state_fd_ < 0) {
      return Unavailable(fmt::format("cannot open state file {}: {}", path, std::strerror(errno)));
    }
    std::string content;
    char buf[65536];
    while (true) {
      ssize_t n = ::read(state_fd_, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        return Unavailable(
            fmt::format("cannot read state file {}: {}", path, std::strerror(errno)));
      }
      if (n == 0) break;
      content.append(buf, static_cast<size_t>(n));
    }
    size_t pos = 0;
    int line_no = 0;
    while (true) {
      size_t nl = content.find('\n', pos);
      if (nl == std::string::npos) break;  // a torn last line (crash mid-append) is dropped
      ++line_no;
      std::string_view text(content.data() + pos, nl - pos);
      pos = nl + 1;
      if (text.empty()) continue;
      auto j = ParseJson(text, fmt::format("state file line {}", line_no));
      if (!j.ok()) return j.status();
      if (!j->is_object() || !(*j)["key"].is_string() || !(*j)["effect_no"].is_number_integer() ||
          !(*j)["tool"].is_string()) {
        return InvalidArgument(fmt::format("state file line {} is malformed", line_no));
      }
      std::string key = (*j)["key"];
      int64_t no = (*j)["effect_no"];
      if ((*j)["tool"] == "effect") {
        ++effects_applied_;
        ++per_key_[key].applied;
        stored_[key] = Stored{no, DumpJson(j->value("args", Json::object()))};
      } else {
        ++unsafe_applied_;
        ++unsafe_per_key_[key].applied;
      }
    }
    if (pos < content.size() && ::ftruncate(state_fd_, static_cast<off_t>(pos)) != 0) {
      return Unavailable(
          fmt::format("cannot truncate the torn end of {}: {}", path, std::strerror(errno)));
    }
    return Status::OK();
  }

  const FakeToolOptions options_;
  std::unique_ptr<http::Server> server_;
  int state_fd_ = -1;  // written under mu_

  mutable std::mutex mu_;
  std::condition_variable wake_;                       // signalled when stopping_ becomes true
  bool stopping_ = false;                              // guarded by mu_
  int64_t total_requests_ = 0;                         // guarded by mu_
  int64_t effects_applied_ = 0;                        // guarded by mu_
  int64_t unsafe_applied_ = 0;                         // guarded by mu_
  std::unordered_map<std::string, KeyStats> per_key_;  // guarded by mu_
  std::unordered_map<std::string, KeyStats> unsafe_per_key_;  // guarded by mu_
  std::unordered_map<std::string, Stored> stored_;            // guarded by mu_
  std::deque<Fault> faults_;                                  // guarded by mu_
};

}  // namespace

Result<std::unique_ptr<FakeToolServer>> StartFakeTools(FakeToolOptions options) {
  auto server = std::make_unique<FakeTools>(std::move(options));
  RETURN_IF_ERROR(server->Start());
  return std::unique_ptr<FakeToolServer>(std::move(server));
}

}  // namespace agentd::fakes
