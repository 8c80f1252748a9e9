// The stdio transport: newline-delimited JSON-RPC over a server process's stdin/stdout.
//
// One reader thread per connection polls stdout, splits lines and dispatches: responses to
// the waiting Call() by id, notifications/progress to that call's callback, other
// notifications to the client's sink, and server requests are answered on the spot. Writes
// are serialised by a mutex and bounded in time with poll(), so a server that stops
// reading its stdin cannot block a caller forever. The first protocol violation (a line that
// is not JSON, a line over the size limit) or the end of stdout breaks the connection: every
// waiting call fails with the reason and the owner reconnects.
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <thread>

#include "tools/mcp/connection.h"

namespace agentd::tools::mcp::internal {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

constexpr milliseconds kPollInterval{50};
constexpr milliseconds kNotifyWriteTimeout{5000};
constexpr size_t kStderrTailBytes = 2000;

struct Pending {
  std::function<void(const Json&)> on_progress;
  bool done = false;
  bool detached = false;
  int callbacks_running = 0;
  RpcReply reply;
};

// Writes all of `data` to a non-blocking pipe before `deadline`. SIGPIPE is blocked on this
// thread while writing so that a server that closed its stdin gives EPIPE, not a dead agentd.
Status WriteAll(int fd, std::string_view data, Clock::time_point deadline) {
  sigset_t pipe_set, old_set;
  sigemptyset(&pipe_set);
  sigaddset(&pipe_set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &pipe_set, &old_set);
  Status st;
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n > 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
      if (left.count() <= 0) {
        st = DeadlineExceeded("the server does not read its stdin");
        break;
      }
      pollfd p{fd, POLLOUT, 0};
      ::poll(&p, 1, static_cast<int>(std::min<int64_t>(left.count(), 1000)));
      continue;
    }
    int err = errno;
    if (err == EPIPE) {
      timespec zero{0, 0};
      sigtimedwait(&pipe_set, nullptr, &zero);  // drop the SIGPIPE this write raised
      st = Unavailable("the server closed its stdin");
    } else {
      st = Unavailable(fmt::format("cannot write to the server: {}", std::strerror(err)));
    }
    break;
  }
  pthread_sigmask(SIG_SETMASK, &old_set, nullptr);
  return st;
}

class StdioConnection final : public Connection {
 public:
  StdioConnection(std::unique_ptr<sandbox::Process> process, const ClientOptions& options,
                  NotificationSink sink)
      : process_(std::move(process)),
        server_(options.server_name),
        max_message_bytes_(options.max_message_bytes),
        shutdown_grace_(options.shutdown_grace),
        sink_(std::move(sink)) {}

  int64_t NextRequestId() const override { return next_id_.load(); }
  void SetNextRequestId(int64_t id) { next_id_.store(id); }

  // MCP's stdio shutdown: the server's stdin is closed, it gets a moment to exit on its
  // own (and save what it keeps), and only then is it killed.
  ~StdioConnection() override {
    process_->CloseStdin();
    auto deadline = std::chrono::steady_clock::now() + shutdown_grace_;
    while (process_->Running(nullptr) && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    stop_.store(true);
    if (reader_.joinable()) reader_.join();
    process_->Kill();
  }

  void Start() {
    for (int fd : {process_->stdin_fd(), process_->stdout_fd()}) {
      int flags = ::fcntl(fd, F_GETFL);
      if (flags >= 0) ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    }
    reader_ = std::thread([this] { ReadLoop(); });
  }

  Result<RpcReply> Call(const std::string& method, Json params,
                        const RequestOptions& options) override {
    int64_t id = next_id_.fetch_add(1);
    if (!params.is_object()) params = Json::object();
    if (options.on_progress) params["_meta"]["progressToken"] = id;
    auto pending = std::make_shared<Pending>();
    pending->on_progress = options.on_progress;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (broken_) return broken_status_;
      pending_[id] = pending;
    }
    Json msg = {{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", std::move(params)}};
    Status st = Write(msg, options.deadline);
    if (!st.ok()) {
      Forget(id, *pending);
      std::string why = st.message();
      if (st.code() == StatusCode::kUnavailable) {  // it closed its stdin: likely ending
        std::string ended = AwaitEnd();
        if (!ended.empty()) why += " (it " + ended + ")";
      }
      return WithStderr(fmt::format("MCP server '{}': cannot send {}: {}", server_, method, why),
                        st.code());
    }

    std::unique_lock<std::mutex> lock(mu_);
    while (true) {
      if (pending->done) {
        RpcReply reply = std::move(pending->reply);
        pending_.erase(id);
        WaitCallbacks(lock, *pending);
        return reply;
      }
      if (broken_) {
        pending_.erase(id);
        WaitCallbacks(lock, *pending);
        return broken_status_;
      }
      bool aborted = false;
      if (options.should_abort) {
        lock.unlock();
        aborted = options.should_abort();
        lock.lock();
        if (pending->done) continue;
      }
      bool expired = Clock::now() >= options.deadline;
      if (aborted || expired) {
        pending_.erase(id);
        WaitCallbacks(lock, *pending);
        lock.unlock();
        Json cancel = {{"requestId", id},
                       {"reason", aborted ? "cancelled by the caller" : "timed out"}};
        Notify("notifications/cancelled", std::move(cancel)).IgnoreError();
        if (aborted) {
          return Cancelled(fmt::format("MCP server '{}': {} cancelled", server_, method));
        }
        return DeadlineExceeded(
            fmt::format("MCP server '{}' did not answer {} in time", server_, method));
      }
      cv_.wait_until(lock, std::min(options.deadline, Clock::now() + kPollInterval));
    }
  }

  Status Notify(const std::string& method, Json params) override {
    Json msg = {{"jsonrpc", "2.0"}, {"method", method}};
    if (!params.is_null()) msg["params"] = std::move(params);
    return Write(msg, Clock::now() + kNotifyWriteTimeout);
  }

  Status SendDetached(const std::string& method, Json params) override {
    int64_t id = next_id_.fetch_add(1);
    auto pending = std::make_shared<Pending>();
    pending->detached = true;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (broken_) return broken_status_;
      pending_[id] = pending;
    }
    Json msg = {{"jsonrpc", "2.0"}, {"id", id}, {"method", method}, {"params", std::move(params)}};
    return Write(msg, Clock::now() + kNotifyWriteTimeout);
  }

  void SetProtocolVersion(const std::string&) override {}

  bool Broken(Status* why) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (broken_ && why != nullptr) *why = broken_status_;
    return broken_;
  }

 private:
  Status Write(const Json& msg, Clock::time_point deadline) {
    std::string line = DumpJson(msg);
    line.push_back('\n');
    std::lock_guard<std::mutex> lock(write_mu_);
    return WriteAll(process_->stdin_fd(), line, deadline);
  }

  void Forget(int64_t id, Pending& pending) {
    std::unique_lock<std::mutex> lock(mu_);
    pending_.erase(id);
    WaitCallbacks(lock, pending);
  }

  // A progress callback may be running on the reader thread; the caller's options must
  // outlive it, so a call returns only once none runs.
  void WaitCallbacks(std::unique_lock<std::mutex>& lock, Pending& pending) {
    cv_.wait(lock, [&] { return pending.callbacks_running == 0; });
  }

  std::string StderrTail() const {
    std::string tail = process_->StderrTail();
    if (tail.size() > kStderrTailBytes) tail = "..." + tail.substr(tail.size() - kStderrTailBytes);
    while (!tail.empty() && (tail.back() == '\n' || tail.back() == '\r')) tail.pop_back();
    return tail;
  }

  Status WithStderr(const std::string& message, StatusCode code) const {
    std::string tail = StderrTail();
    if (tail.empty()) return Status(code, message);
    return Status(code, fmt::format("{}; stderr: {}", message, tail));
  }

  void Break(Status why) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (broken_) return;
      broken_ = true;
      broken_status_ = std::move(why);
    }
    spdlog::warn("{}", broken_status_.message());
    cv_.notify_all();
  }

  void ReadLoop() {
    std::string buf;
    char chunk[65536];
    int fd = process_->stdout_fd();
    while (!stop_.load()) {
      pollfd p{fd, POLLIN, 0};
      int r = ::poll(&p, 1, static_cast<int>(kPollInterval.count()));
      if (r < 0 && errno != EINTR) {
        Break(Unavailable(
            fmt::format("MCP server '{}': poll failed: {}", server_, std::strerror(errno))));
        return;
      }
      if (r <= 0) continue;
      ssize_t n = ::read(fd, chunk, sizeof(chunk));
      if (n < 0) {
        if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
        Break(Unavailable(fmt::format("MCP server '{}': cannot read its stdout: {}", server_,
                                      std::strerror(errno))));
        return;
      }
      if (n == 0) {
        OnEof();
        return;
      }
      size_t scan_from = buf.size();
      buf.append(chunk, static_cast<size_t>(n));
      size_t start = 0;
      while (true) {
        size_t nl = buf.find('\n', std::max(start, scan_from));
        if (nl == std::string::npos) break;
        std::string_view line(buf.data() + start, nl - start);
        if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
        if (line.size() > max_message_bytes_) {
          Break(Oversized());
          return;
        }
        if (!line.empty() && !HandleLine(line)) return;
        start = nl + 1;
      }
      buf.erase(0, start);
      if (buf.size() > max_message_bytes_) {
        Break(Oversized());
        return;
      }
    }
  }

  Status Oversized() const {
    return ResourceExhausted(fmt::format("MCP server '{}' sent a message larger than {} bytes",
                                         server_, max_message_bytes_));
  }

  // The process usually exits right after closing one of its pipes: gives it a moment, and
  // its last words on stderr time to arrive, so that an error can say how it ended. Returns
  // "exited with code N", or "" while it still runs.
  std::string AwaitEnd() {
    int code = 0;
    bool running = true;
    for (int i = 0; i < 20 && (running = process_->Running(&code)); ++i) {
      std::this_thread::sleep_for(milliseconds(25));
    }
    // Wait (briefly) until the stderr tail stops growing.
    std::string tail = process_->StderrTail();
    for (int i = 0; i < 10; ++i) {
      std::this_thread::sleep_for(milliseconds(20));
      std::string now = process_->StderrTail();
      if (now == tail && !tail.empty()) break;
      tail = std::move(now);
    }
    return running ? "" : fmt::format("exited with code {}", code);
  }

  void OnEof() {
    std::string how = AwaitEnd();
    if (how.empty()) how = "closed its stdout";
    Break(WithStderr(fmt::format("MCP server '{}' {}", server_, how), StatusCode::kUnavailable));
  }

  // False when the line broke the connection.
  bool HandleLine(std::string_view line) {
    auto parsed = ParseJson(line, "MCP message");
    if (!parsed.ok() || !parsed->is_object()) {
      Break(
          Internal(fmt::format("MCP server '{}' wrote a line to stdout that is not a JSON-RPC "
                               "message: '{}'",
                               server_, Excerpt(line, 120))));
      return false;
    }
    Json& msg = *parsed;
    const std::string* method = FindString(msg, "method");
    bool has_id = msg.contains("id") && !msg["id"].is_null();
    if (method != nullptr && has_id) {
      Json answer = AnswerServerRequest(msg);
      Status st = Write(answer, Clock::now() + kNotifyWriteTimeout);
      if (!st.ok())
        spdlog::warn("MCP server '{}': cannot answer {}: {}", server_, *method, st.message());
      return true;
    }
    const Json params = msg.contains("params") ? msg["params"] : Json::object();
    if (method != nullptr) {
      if (*method == "notifications/progress") {
        DeliverProgress(params);
      } else if (sink_) {
        sink_(*method, params);
      }
      return true;
    }
    if (has_id && (msg.contains("result") || msg.contains("error"))) {
      if (!msg["id"].is_number_integer()) return true;  // not one of ours
      DeliverReply(msg["id"].get<int64_t>(), msg);
      return true;
    }
    spdlog::warn(
        "MCP server '{}' sent a message that is neither request, notification nor "
        "response: '{}'",
        server_, Excerpt(line, 120));
    return true;
  }

  void DeliverProgress(const Json& params) {
    if (!params.is_object() || !params.contains("progressToken") ||
        !params["progressToken"].is_number_integer()) {
      return;
    }
    int64_t token = params["progressToken"].get<int64_t>();
    std::shared_ptr<Pending> pending;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = pending_.find(token);
      if (it == pending_.end() || !it->second->on_progress || it->second->done) return;
      pending = it->second;
      ++pending->callbacks_running;
    }
    pending->on_progress(params);
    {
      std::lock_guard<std::mutex> lock(mu_);
      --pending->callbacks_running;
    }
    cv_.notify_all();
  }

  void DeliverReply(int64_t id, Json& msg) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = pending_.find(id);
      if (it == pending_.end()) return;  // cancelled or timed out meanwhile
      Pending& p = *it->second;
      if (p.detached) {
        pending_.erase(it);
        return;
      }
      if (msg.contains("error")) {
        const Json& e = msg["error"];
        RpcError err;
        if (e.is_object()) {
          if (e.contains("code") && e["code"].is_number_integer()) {
            err.code = e["code"].get<int64_t>();
          }
          if (const std::string* m = FindString(e, "message")) err.message = *m;
          if (e.contains("data")) err.data = e["data"];
        }
        p.reply.error = std::move(err);
      } else {
        p.reply.result = std::move(msg["result"]);
      }
      p.done = true;
    }
    cv_.notify_all();
  }

  std::unique_ptr<sandbox::Process> process_;
  const std::string server_;
  const size_t max_message_bytes_;
  const std::chrono::milliseconds shutdown_grace_;
  NotificationSink sink_;
  std::atomic<int64_t> next_id_{1};
  std::atomic<bool> stop_{false};
  std::thread reader_;
  std::mutex write_mu_;  // one line at a time on stdin

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<int64_t, std::shared_ptr<Pending>> pending_;  // GUARDED_BY(mu_)
  bool broken_ = false;                                  // GUARDED_BY(mu_)
  Status broken_status_;                                 // GUARDED_BY(mu_)
};

}  // namespace

Result<std::unique_ptr<Connection>> StartStdioConnection(std::unique_ptr<sandbox::Process> process,
                                                         const ClientOptions& options,
                                                         NotificationSink sink,
                                                         int64_t first_request_id) {
  if (process == nullptr) return Internal("no process to talk to");
  auto conn = std::make_unique<StdioConnection>(std::move(process), options, std::move(sink));
  conn->SetNextRequestId(std::max<int64_t>(1, first_request_id));
  conn->Start();
  return std::unique_ptr<Connection>(std::move(conn));
}

}  // namespace agentd::tools::mcp::internal
