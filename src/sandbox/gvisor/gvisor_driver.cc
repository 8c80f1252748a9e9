#include "sandbox/gvisor/gvisor_driver.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/magic.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>

#include "common/json.h"
#include "sandbox/cgroup.h"
#include "sandbox/host_util.h"
#include "sandbox/gvisor/seccomp_filter.h"
#include "sandbox/supervisor_protocol.h"

namespace agentd::sandbox {
namespace {

namespace fs = std::filesystem;
using namespace host;
using Clock = std::chrono::steady_clock;

constexpr int kSandboxUid = 1000;  // the uid tools see inside
constexpr std::chrono::seconds kStartTimeout{20};
constexpr std::chrono::seconds kKillGrace{5};
constexpr std::chrono::seconds kStopGrace{3};
constexpr size_t kStderrTail = 8192;
constexpr int64_t kTmpMb = 64;  // private /tmp
// The Sentry and the gofer are in the sandbox's cgroups too: room for them on top of what
// the tools are given (measured: ~40 MB for an idle sandbox on ptrace). Processes are
// counted inside gVisor (RLIMIT_NPROC) and not by a host pids limit: on ptrace each sandbox
// process is a host stub with a thread per Sentry thread that ran it, so any host limit
// low enough to matter panics the Sentry ("error initializing first thread: EAGAIN").
constexpr int64_t kSentryMemoryMb = 96;

// Closes the write side for a caller: a pipe, or one of two descriptors of a proxy
// connection's socket, which only a shutdown ends.
void CloseWrite(int& fd) {
  if (fd >= 0) shutdown(fd, SHUT_WR);
  CloseFd(fd);
}

// Runs a short runsc command to its end; returns its exit status, -1 when it would not end
// in `timeout` (it is killed then), and its output in `out`.
int RunBlocking(const std::vector<std::string>& args, std::chrono::milliseconds timeout,
                std::string* out) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return -1;
  std::vector<char*> argv;
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (devnull < 0 || dup2(devnull, 0) != 0 || dup2(p[1], 1) != 1 || dup2(p[1], 2) != 2) _exit(126);
    close_range(3, ~0U, 0);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(p[1]);
  if (pid < 0) {
    close(p[0]);
    return -1;
  }
  Clock::time_point deadline = Clock::now() + timeout;
  bool timed_out = false;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      kill(pid, SIGKILL);
      break;
    }
    pollfd f{p[0], POLLIN, 0};
    int r = poll(&f, 1, static_cast<int>(left));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) continue;
    char buf[4096];
    ssize_t n = read(p[0], buf, sizeof(buf));
    if (n <= 0) break;
    if (out != nullptr && out->size() < kStderrTail) out->append(buf, static_cast<size_t>(n));
  }
  close(p[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (timed_out) return -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// One process in the sandbox, as the driver sees it.
struct Proc {
  bool exec = true;  // an Exec (output collected here) or a Spawn (output to a pipe)
  bool connection = false;  // an egress proxy connection (ends when both directions have)
  bool replied = false;
  std::string error;
  bool exited = false;
  int code = -1;
  bool out_eof = false, err_eof = false;
  size_t in_unacked = 0;  // stdin bytes sent and not yet written to the process
  // Exec: collected output.
  std::string out, err;
  size_t max_output = 0;
  bool truncated = false;
  // Spawn: the driver's ends of the caller's pipes, and output not yet written to them.
  int caller_in = -1;   // read end: what the caller writes to the process's stdin
  int caller_out = -1;  // write end: the process's stdout for the caller
  std::string pending_out;
  std::string tail;  // stderr tail
};

}  // namespace

struct GvisorDriver::Impl {
  GvisorOptions options;
  Capabilities caps;
  Cgroups cgroups;
  bool root = false;
  std::string rootfs;     // the read-only root of every sandbox
  std::string runsc_root; // runsc --root
  std::string platform;   // as the probe settled it
  std::atomic<int64_t> next_cid{1};

  std::vector<std::string> RunscArgs() const {
    return {options.runsc_path, "--root=" + runsc_root, "--platform=" + platform, "--network=none",
            "--ignore-cgroups"};
  }
};

namespace {

class GvisorSandbox : public Sandbox, public std::enable_shared_from_this<GvisorSandbox> {
 public:
  GvisorSandbox(GvisorDriver::Impl* d, SandboxSpec spec)
      : d_(d), spec_(std::move(spec)), workspace_(spec_.root + "/workspace"),
        bundle_(spec_.root + ".bundle") {
    spec_.limits = WithDefaults(spec_.limits);
    std::string frame;
    AppendFrame(&frame, kSync, 0, kSyncPayload, sizeof(kSyncPayload) - 1);
    sync_frame_ = frame;
  }
  ~GvisorSandbox() override { Shutdown(); }

  Status Prepare() {
    if (d_->root) {
      RETURN_IF_ERROR(MountWorkspaceFs(spec_.root, spec_.limits.disk_mb, -1));
    }
    if (mkdir(workspace_.c_str(), 0755) != 0 && errno != EEXIST) {
      return Internal(Errno("mkdir " + workspace_));
    }
    RETURN_IF_ERROR(WriteBundle());
    Limits host = spec_.limits;
    host.memory_mb += kSentryMemoryMb;
    host.pids = 0;
    auto cg = d_->cgroups.Create(spec_.id, host);
    if (!cg.ok()) return cg.status();
    cgroup_ = std::move(cg).value();
    return Status::OK();
  }

  const std::string& workspace() const override { return workspace_; }
  int64_t OomKills() const override { return cgroup_ ? cgroup_->OomKills() : 0; }

  Result<ExecResult> Exec(const ExecRequest& req) override {
    std::chrono::milliseconds timeout =
        req.timeout.count() > 0
            ? std::min<std::chrono::milliseconds>(req.timeout, std::chrono::milliseconds(spec_.limits.timeout_ms))
            : std::chrono::milliseconds(spec_.limits.timeout_ms);
    int64_t ooms_before = OomKills();
    SpawnRequest spawn;
    spawn.argv = {"/bin/sh", "-c", req.command};
    spawn.env = req.env;
    int64_t id;
    RETURN_IF_ERROR(SpawnRaw(spawn, /*exec=*/true, req.max_output_bytes, &id));
    ExecResult result;
    Clock::time_point deadline = Clock::now() + timeout;
    Clock::time_point hard_deadline = Clock::time_point::max();
    bool killed = false;
    size_t sent = 0;
    bool eof_sent = false;
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      Proc& p = procs_[id];
      if (dead_ || (p.exited && p.out_eof && p.err_eof)) break;
      // stdin, within the credit window.
      while (!killed && !eof_sent && sent < req.stdin_data.size() && p.in_unacked < kStdioWindow) {
        size_t n = std::min({kMaxDataChunk, kStdioWindow - p.in_unacked, req.stdin_data.size() - sent});
        AppendFrame(&outq_, kStdin, id, req.stdin_data.data() + sent, n);
        sent += n;
        p.in_unacked += n;
        WakeLocked();
      }
      if (!eof_sent && sent == req.stdin_data.size()) {
        AppendFrame(&outq_, kStdinEof, id);
        eof_sent = true;
        WakeLocked();
      }
      Clock::time_point now = Clock::now();
      if (!killed && req.should_abort) {
        lock.unlock();
        bool abort = req.should_abort();
        lock.lock();
        if (abort) {
          result.cancelled = true;
          deadline = now;
        }
      }
      if (!killed && now >= deadline) {
        killed = true;
        AppendFrame(&outq_, kKill, id);
        WakeLocked();
        hard_deadline = now + kKillGrace;
      }
      if (killed && now >= hard_deadline) {
        lock.unlock();
        Fail("a command outlived its kill");
        lock.lock();
        break;
      }
      Clock::time_point until = std::min(killed ? hard_deadline : deadline, now + std::chrono::milliseconds(50));
      cv_.wait_until(lock, until);
    }
    Proc& p = procs_[id];
    result.timed_out = killed && !result.cancelled;
    result.stdout_data = std::move(p.out);
    result.stderr_data = std::move(p.err);
    result.truncated = p.truncated;
    bool exited = p.exited;
    result.exit_code = p.code;
    procs_.erase(id);
    lock.unlock();
    result.oom_killed = OomKills() > ooms_before;
    if (!exited) {
      // The memory limit's OOM killer can only kill the Sentry, which ends the sandbox.
      if (result.oom_killed) {
        result.exit_code = 128 + SIGKILL;
        return result;
      }
      std::lock_guard<std::mutex> l(mu_);
      return Internal("the sandbox ended while running the command" + RunscErrorLocked());
    }
    return result;
  }

  Result<std::unique_ptr<Process>> Spawn(const SpawnRequest& req) override;

  void Shutdown() override {
    std::unique_lock<std::mutex> lock(mu_);
    StopLocked(lock, /*graceful=*/true);
  }

  // Starts the sandbox from a checkpoint image instead of afresh.
  Status StartRestored(const std::string& image_dir) {
    std::unique_lock<std::mutex> lock(mu_);
    StopLocked(lock, true);
    lock.unlock();
    return Start(image_dir);
  }

  Status Hibernate(const std::string& image_dir) {
    std::unique_lock<std::mutex> lock(mu_);
    if (dead_ || !ready_) return FailedPrecondition("the sandbox is not running");
    std::string cid = cid_;
    lock.unlock();
    std::error_code ec;
    fs::create_directories(image_dir, ec);
    std::vector<std::string> args = d_->RunscArgs();
    args.insert(args.end(), {"checkpoint", "--image-path", image_dir, cid});
    std::string out;
    int rc = RunBlocking(args, std::chrono::seconds(60), &out);
    lock.lock();
    if (rc != 0) return Internal("runsc checkpoint: " + (rc < 0 ? "timed out" : Trim(out)));
    // The container has stopped with its processes in the image; nothing is left to kill.
    StopLocked(lock, /*graceful=*/false);
    return Status::OK();
  }

  std::vector<int64_t> Live() {
    std::lock_guard<std::mutex> lock(mu_);
    return live_;
  }

  // Process support.
  bool Exited(int64_t id, int* code) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = procs_.find(id);
    bool gone = it == procs_.end() || dead_;
    if (!gone && !it->second.exited) return false;
    if (code != nullptr) *code = (!gone && it->second.exited) ? it->second.code : 128 + SIGKILL;
    return true;
  }
  void KillId(int64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    if (dead_) return;
    AppendFrame(&outq_, kKill, id);
    WakeLocked();
  }
  std::string Tail(int64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = procs_.find(id);
    return it == procs_.end() ? dead_tail_[id] : it->second.tail;
  }
  void Forget(int64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = procs_.find(id);
    if (it != procs_.end()) {
      CloseFd(it->second.caller_in);
      CloseFd(it->second.caller_out);
      procs_.erase(it);
    }
    dead_tail_.erase(id);
    WakeLocked();
  }

 private:
  Status WriteBundle() {
    std::error_code ec;
    fs::create_directories(bundle_, ec);
    if (ec) return Internal("cannot create " + bundle_ + ": " + ec.message());
    Json mounts = Json::array();
    auto bind = [&](const std::string& src, const std::string& dst, bool rw) {
      mounts.push_back({{"destination", dst}, {"type", "bind"}, {"source", src},
                        {"options", Json::array({"rbind", rw ? "rw" : "ro", "nosuid", "nodev"})}});
    };
    mounts.push_back({{"destination", "/proc"}, {"type", "proc"}, {"source", "proc"}});
    mounts.push_back({{"destination", "/dev"}, {"type", "tmpfs"}, {"source", "tmpfs"},
                      {"options", Json::array({"nosuid", "mode=755"})}});
    mounts.push_back({{"destination", "/tmp"}, {"type", "tmpfs"}, {"source", "tmpfs"},
                      {"options", Json::array({"nosuid", "nodev", "mode=1777",
                                               "size=" + std::to_string(kTmpMb) + "m"})}});
    bind("/usr", "/usr", false);
    for (const char* top : {"bin", "sbin", "lib", "lib32", "lib64", "libx32"}) {
      std::string host = std::string("/") + top;
      if (!fs::is_symlink(host, ec) && fs::is_directory(host, ec)) bind(host, host, false);
    }
    for (const char* const* name = kEtcFiles; *name != nullptr; ++name) {
    const char* f = *name;
      std::string host = std::string("/etc/") + f;
      if (fs::exists(host, ec)) bind(host, host, false);
    }
    for (const auto& p : spec_.read_only_paths) bind(p, p, false);
    bind(workspace_, kInsidePath, true);
    Json env = Json::array({"PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/workspace", "LANG=C.UTF-8",
                            "TMPDIR=/tmp"});
    Json args = Json::array({"/.agentd/init", "--stdio"});
    if (spec_.on_egress_connection) {
      args.push_back("--proxy");
      args.push_back(std::to_string(kEgressProxyPort));
    }
    for (const char* a : {"--seccomp", "/.agentd/seccomp.bpf", kInsidePath, "/tmp"}) args.push_back(a);
    Json config = {
        {"ociVersion", "1.0.2"},
        {"process",
         {{"terminal", false},
          {"user", {{"uid", kSandboxUid}, {"gid", kSandboxUid}}},
          {"args", args},
          // Counted by gVisor per user, and every process in the sandbox is its uid 1000.
          {"rlimits", Json::array({{{"type", "RLIMIT_NPROC"},
                                    {"hard", spec_.limits.pids},
                                    {"soft", spec_.limits.pids}}})},
          {"env", env},
          {"cwd", kInsidePath},
          {"capabilities", Json::object()},
          {"noNewPrivileges", true}}},
        {"root", {{"path", d_->rootfs}, {"readonly", true}}},
        {"hostname", "sandbox"},
        {"mounts", mounts},
        {"linux",
         {{"namespaces", Json::array({{{"type", "pid"}}, {{"type", "ipc"}}, {{"type", "uts"}},
                                      {{"type", "mount"}}, {{"type", "network"}}})}}},
    };
    return WriteText(bundle_ + "/config.json", config.dump(2));
  }

  Status Start(const std::string& restore_image = "") {
    if (d_->root) RETURN_IF_ERROR(ChownTree(workspace_, kSandboxUid));
    std::string cid = "agentd-" + std::to_string(getpid()) + "-" + std::to_string(d_->next_cid++);
    std::vector<std::string> args = d_->RunscArgs();
    if (restore_image.empty()) {
      args.insert(args.end(), {"run", "--bundle", bundle_, cid});
    } else {
      args.insert(args.end(), {"restore", "--image-path", restore_image, "--bundle", bundle_, cid});
    }
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    std::vector<std::string> procs = cgroup_->procs_files();
    int to[2] = {-1, -1}, from[2] = {-1, -1}, err[2] = {-1, -1};
    int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    auto close_all = [&] {
      for (int fd : {to[0], to[1], from[0], from[1], err[0], err[1], wake}) {
        if (fd >= 0) close(fd);
      }
    };
    if (wake < 0 || pipe2(to, O_CLOEXEC) != 0 || pipe2(from, O_CLOEXEC) != 0 ||
        pipe2(err, O_CLOEXEC) != 0) {
      Status st = Internal(Errno("sandbox pipes"));
      close_all();
      return st;
    }
    pid_t pid = fork();
    if (pid == 0) {
      // Only async-signal-safe calls from here to exec. runsc and the Sentry and gofer it
      // starts all land in the sandbox's cgroups.
      for (const auto& f : procs) {
        int fd = open(f.c_str(), O_WRONLY | O_CLOEXEC);
        if (fd < 0 || write(fd, "0", 1) != 1) _exit(120);
        close(fd);
      }
      if (dup2(to[0], 0) != 0 || dup2(from[1], 1) != 1 || dup2(err[1], 2) != 2) _exit(122);
      close_range(3, ~0U, 0);
      setsid();
      execv(argv[0], argv.data());
      _exit(124);
    }
    close(to[0]);
    close(from[1]);
    close(err[1]);
    if (pid < 0) {
      close(to[1]), close(from[0]), close(err[0]), close(wake);
      return Internal(Errno("fork"));
    }
    for (int fd : {to[1], from[0], err[0]}) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    std::unique_lock<std::mutex> lock(mu_);
    runsc_pid_ = pid;
    cid_ = cid;
    to_sup_ = to[1];
    from_sup_ = from[0];
    err_fd_ = err[0];
    wake_ = wake;
    dead_ = false;
    ready_ = false;
    stopping_ = false;
    start_error_.clear();
    runsc_stderr_.clear();
    outq_.clear();
    inbuf_.clear();
    resyncing_ = !restore_image.empty();
    if (resyncing_) AppendFrame(&outq_, kResync, 0);
    io_ = std::thread([this] { IoLoop(); });
    if (!cv_.wait_for(lock, kStartTimeout, [&] { return ready_ || dead_; })) {
      start_error_ = "the sandbox did not start within " + std::to_string(kStartTimeout.count()) + " s";
    }
    if (!ready_) {
      std::string why = start_error_.empty() ? "the sandbox failed to start" : start_error_;
      why += RunscErrorLocked();
      StopLocked(lock, false);
      return Unavailable(why);
    }
    return Status::OK();
  }

  std::string RunscErrorLocked() const {
    std::string e = Trim(runsc_stderr_);
    return e.empty() ? "" : " (runsc: " + e + ")";
  }

  void WakeLocked() {
    if (wake_ >= 0) {
      uint64_t one = 1;
      (void)!write(wake_, &one, sizeof(one));
    }
  }

  // The one thread that moves bytes between the supervisor and the callers' pipes. It
  // never blocks on a write: everything bound for the supervisor waits in outq_, and a
  // process's output waits in its pending_out, both bounded by the credit windows.
  void IoLoop() {
    std::unique_lock<std::mutex> lock(mu_);
    while (!stopping_) {
      std::vector<pollfd> p;
      std::vector<std::pair<int64_t, int>> who;
      p.push_back({from_sup_, POLLIN, 0});
      p.push_back({wake_, POLLIN, 0});
      p.push_back({err_fd_, static_cast<short>(err_fd_ >= 0 ? POLLIN : 0), 0});
      p.push_back({to_sup_, static_cast<short>(outq_.empty() ? 0 : POLLOUT), 0});
      for (auto& [id, pr] : procs_) {
        if (pr.caller_in >= 0 && pr.in_unacked < kStdioWindow) {
          p.push_back({pr.caller_in, POLLIN, 0});
          who.push_back({id, 0});
        }
        if (pr.caller_out >= 0 && (!pr.pending_out.empty() || pr.out_eof)) {
          p.push_back({pr.caller_out, POLLOUT, 0});
          who.push_back({id, 1});
        }
      }
      lock.unlock();
      int n = poll(p.data(), p.size(), -1);
      lock.lock();
      if (n < 0 && errno != EINTR) break;
      if (n <= 0) continue;
      if (p[1].revents & POLLIN) {
        uint64_t v;
        (void)!read(wake_, &v, sizeof(v));
      }
      if (p[2].revents & (POLLIN | POLLHUP)) {
        char buf[1024];
        ssize_t r = read(err_fd_, buf, sizeof(buf));
        if (r == 0 || (r < 0 && errno != EAGAIN)) {
          CloseFd(err_fd_);
        } else if (r > 0 && runsc_stderr_.size() < kStderrTail) {
          runsc_stderr_.append(buf, static_cast<size_t>(r));
        }
      }
      if (p[3].revents & (POLLOUT | POLLERR | POLLHUP)) {
        ssize_t w = write(to_sup_, outq_.data(), outq_.size());
        if (w > 0) outq_.erase(0, static_cast<size_t>(w));
        if (w < 0 && errno != EAGAIN && errno != EINTR) break;
      }
      for (size_t i = 4; i < p.size(); ++i) {
        if (p[i].revents == 0) continue;
        auto it = procs_.find(who[i - 4].first);
        if (it == procs_.end()) continue;
        PumpCaller(it->first, it->second, who[i - 4].second);
      }
      if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
        char buf[65536];
        ssize_t r = read(from_sup_, buf, sizeof(buf));
        if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR)) break;
        if (r > 0) {
          inbuf_.append(buf, static_cast<size_t>(r));
          if (!TakeFrames()) break;
        }
      }
      for (auto it = procs_.begin(); it != procs_.end();) {
        bool done = it->second.connection && it->second.caller_in < 0 && it->second.caller_out < 0;
        it = done ? procs_.erase(it) : std::next(it);
      }
      cv_.notify_all();
      if (!handoff_.empty()) {
        // Handed on outside the lock: the egress proxy takes it from here.
        std::vector<int> fds = std::move(handoff_);
        handoff_.clear();
        lock.unlock();
        for (int fd : fds) spec_.on_egress_connection(fd);
        lock.lock();
      }
    }
    for (int fd : handoff_) close(fd);
    handoff_.clear();
    dead_ = true;
    for (auto& [id, pr] : procs_) {
      // A process that cannot end normally any more: its caller sees its output end.
      CloseFd(pr.caller_out);
      CloseFd(pr.caller_in);
    }
    cv_.notify_all();
  }

  void PumpCaller(int64_t id, Proc& pr, int which) {
    if (which == 0) {
      char buf[kMaxDataChunk];
      size_t room = std::min(sizeof(buf), kStdioWindow - pr.in_unacked);
      ssize_t r = read(pr.caller_in, buf, room);
      if (r > 0) {
        AppendFrame(&outq_, kStdin, id, buf, static_cast<size_t>(r));
        pr.in_unacked += static_cast<size_t>(r);
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        CloseFd(pr.caller_in);
        AppendFrame(&outq_, kStdinEof, id);
      }
      return;
    }
    size_t done = 0;
    if (!pr.pending_out.empty()) {
      ssize_t w = write(pr.caller_out, pr.pending_out.data(), pr.pending_out.size());
      if (w > 0) {
        done = static_cast<size_t>(w);
      } else if (w < 0 && errno != EAGAIN && errno != EINTR) {
        done = pr.pending_out.size();  // the caller stopped reading
        CloseWrite(pr.caller_out);
      }
      pr.pending_out.erase(0, done);
      if (done > 0) AppendFrame(&outq_, kAckOut, id, EncodeU64(done));
    }
    if (pr.pending_out.empty() && pr.out_eof) CloseWrite(pr.caller_out);
  }

  // Handles every whole frame in inbuf_; false when the stream is corrupt.
  bool TakeFrames() {
    if (resyncing_) {
      // After a restore: skip what the old stream left, up to the supervisor's marker.
      size_t at = inbuf_.find(sync_frame_);
      if (at == std::string::npos) {
        if (inbuf_.size() > sync_frame_.size()) inbuf_.erase(0, inbuf_.size() - sync_frame_.size());
        return true;
      }
      inbuf_.erase(0, at + sync_frame_.size());
      resyncing_ = false;
    }
    Frame f;
    int r;
    while ((r = TakeFrame(&inbuf_, &f)) == 1) HandleFrame(f);
    return r == 0;
  }

  void HandleFrame(const Frame& f) {
    if (f.kind == kReady) {
      Json m = Json::parse(f.payload, nullptr, false);
      ready_ = true;
      live_.clear();
      if (m.is_object() && m.contains("live") && m["live"].is_array()) {
        for (const auto& id : m["live"]) {
          if (id.is_number_integer()) live_.push_back(id.get<int64_t>());
        }
        for (int64_t id : live_) next_id_ = std::max(next_id_, id + 1);
      }
      return;
    }
    if (f.kind == kFatal) {
      start_error_ = f.payload;
      return;
    }
    if (f.kind == kConnection) {
      int sv[2];
      if (!spec_.on_egress_connection || procs_.count(f.id) != 0 ||
          socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        AppendFrame(&outq_, kStdinEof, f.id);
        return;
      }
      int writer = fcntl(sv[0], F_DUPFD_CLOEXEC, 0);
      fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
      Proc& pr = procs_[f.id];
      pr.exec = false;
      pr.connection = true;
      pr.replied = true;
      pr.caller_in = sv[0];
      pr.caller_out = writer;
      handoff_.push_back(sv[1]);
      return;
    }
    auto it = procs_.find(f.id);
    if (it == procs_.end()) {
      // Output of a process nobody holds any more: take it, so the window stays open.
      if (f.kind == kStdout || f.kind == kStderr) AppendFrame(&outq_, kAckOut, f.id, EncodeU64(f.payload.size()));
      return;
    }
    Proc& pr = it->second;
    switch (f.kind) {
      case kSpawned:
        pr.replied = true;
        break;
      case kError:
        pr.replied = true;
        pr.error = f.payload.empty() ? "error" : f.payload;
        break;
      case kStdout:
      case kStderr: {
        bool is_out = f.kind == kStdout;
        if (pr.exec) {
          std::string& sink = is_out ? pr.out : pr.err;
          size_t room = pr.max_output > sink.size() ? pr.max_output - sink.size() : 0;
          sink.append(f.payload, 0, std::min(room, f.payload.size()));
          if (f.payload.size() > room) pr.truncated = true;
          AppendFrame(&outq_, kAckOut, f.id, EncodeU64(f.payload.size()));
        } else if (is_out && pr.caller_out >= 0) {
          pr.pending_out.append(f.payload);  // acknowledged once the caller has it
        } else {
          if (!is_out) {
            pr.tail.append(f.payload);
            if (pr.tail.size() > kStderrTail) pr.tail.erase(0, pr.tail.size() - kStderrTail);
          }
          AppendFrame(&outq_, kAckOut, f.id, EncodeU64(f.payload.size()));
        }
        break;
      }
      case kEof:
        if (!f.payload.empty() && f.payload[0] == 1) {
          pr.out_eof = true;
          if (pr.caller_out >= 0 && pr.pending_out.empty()) CloseWrite(pr.caller_out);
        } else {
          pr.err_eof = true;
        }
        break;
      case kExit: {
        uint32_t c = 0;
        for (size_t i = 0; i < 4 && i < f.payload.size(); ++i) {
          c |= static_cast<uint32_t>(static_cast<unsigned char>(f.payload[i])) << (8 * i);
        }
        pr.exited = true;
        pr.code = static_cast<int>(c);
        break;
      }
      case kAckIn:
        pr.in_unacked -= std::min<size_t>(pr.in_unacked, DecodeU64(f.payload));
        break;
      default:
        break;
    }
  }

 public:
  Status SpawnRaw(const SpawnRequest& req, bool exec, size_t max_output, int64_t* id_out,
                  int caller_in = -1, int caller_out = -1) {
    std::unique_lock<std::mutex> lock(mu_);
    if (dead_) {
      // The sandbox ended (a crash, the kill at a limit, a checkpoint): start a fresh one.
      StopLocked(lock, false);
      lock.unlock();
      RETURN_IF_ERROR(Start());
      lock.lock();
    }
    int64_t id = next_id_++;
    Json env = {{"PATH", "/usr/local/bin:/usr/bin:/bin"}, {"HOME", kInsidePath},
                {"LANG", "C.UTF-8"}, {"TMPDIR", "/tmp"}};
    if (spec_.on_egress_connection) {
      std::string proxy = "http://127.0.0.1:" + std::to_string(kEgressProxyPort);
      for (const char* k : {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                            "https_proxy", "all_proxy"}) {
        env[k] = proxy;
      }
    }
    for (const auto& [k, v] : req.env) env[k] = v;
    Proc& p = procs_[id];
    p.exec = exec;
    p.max_output = max_output;
    AppendFrame(&outq_, kSpawn, id, Json{{"argv", req.argv}, {"env", env}}.dump());
    WakeLocked();
    cv_.wait_for(lock, kStartTimeout, [&] { return procs_[id].replied || dead_; });
    Proc& q = procs_[id];
    if (!q.replied) {
      procs_.erase(id);
      return Unavailable("the sandbox did not start the command" + RunscErrorLocked());
    }
    if (!q.error.empty()) {
      std::string e = q.error;
      procs_.erase(id);
      return Internal("the sandbox could not start the command: " + e);
    }
    q.caller_in = caller_in;
    q.caller_out = caller_out;
    WakeLocked();
    *id_out = id;
    return Status::OK();
  }

  Status AttachRaw(int64_t id, int caller_in, int caller_out) {
    std::lock_guard<std::mutex> lock(mu_);
    if (dead_) return FailedPrecondition("the sandbox is not running");
    if (std::find(live_.begin(), live_.end(), id) == live_.end() || procs_.count(id) != 0) {
      return NotFound("no detached live process " + std::to_string(id));
    }
    Proc& p = procs_[id];
    p.exec = false;
    p.replied = true;
    p.caller_in = caller_in;
    p.caller_out = caller_out;
    AppendFrame(&outq_, kAttach, id);
    WakeLocked();
    return Status::OK();
  }

  void Fail(const std::string& why) {
    std::unique_lock<std::mutex> lock(mu_);
    if (start_error_.empty()) start_error_ = why;
    StopLocked(lock, false);
  }

 private:
  // Stops the container. Graceful: the supervisor sees its input end, kills everything and
  // exits, which ends `runsc run`; otherwise (or when that takes too long) runsc is killed
  // and the container deleted.
  void StopLocked(std::unique_lock<std::mutex>& lock, bool graceful) {
    if (runsc_pid_ <= 0 && !io_.joinable()) return;
    pid_t pid = runsc_pid_;
    std::string cid = cid_;
    runsc_pid_ = -1;
    stopping_ = true;
    WakeLocked();
    std::thread io = std::move(io_);
    lock.unlock();
    if (io.joinable()) io.join();
    lock.lock();
    dead_ = true;
    for (auto& [id, p] : procs_) {
      CloseFd(p.caller_in);
      CloseFd(p.caller_out);
      if (!p.exec) dead_tail_[id] = p.tail;
    }
    CloseFd(to_sup_);  // the supervisor's stdin ends
    int from = from_sup_, err = err_fd_, wake = wake_;
    from_sup_ = err_fd_ = wake_ = -1;
    cv_.notify_all();
    lock.unlock();
    bool ended = false;
    if (pid > 0 && graceful) {
      Clock::time_point until = Clock::now() + kStopGrace;
      while (Clock::now() < until) {
        if (waitpid(pid, nullptr, WNOHANG) == pid) {
          ended = true;
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
    if (pid > 0 && !ended) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
      if (cgroup_) cgroup_->KillAll();
      std::vector<std::string> args = d_->RunscArgs();
      args.insert(args.end(), {"delete", "--force", cid});
      RunBlocking(args, std::chrono::seconds(10), nullptr);
    }
    for (int fd : {from, err, wake}) {
      if (fd >= 0) close(fd);
    }
    lock.lock();
  }

  GvisorDriver::Impl* const d_;
  SandboxSpec spec_;
  const std::string workspace_;
  const std::string bundle_;
  std::string sync_frame_;
  std::unique_ptr<Cgroup> cgroup_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  pid_t runsc_pid_ = -1;  // guarded by mu_ (and every member below)
  std::string cid_;
  int to_sup_ = -1, from_sup_ = -1, err_fd_ = -1, wake_ = -1;
  bool ready_ = false;
  bool dead_ = true;
  bool stopping_ = false;
  bool resyncing_ = false;
  std::string start_error_;
  std::string runsc_stderr_;
  std::string outq_, inbuf_;
  std::thread io_;
  int64_t next_id_ = 1;
  std::map<int64_t, Proc> procs_;
  std::map<int64_t, std::string> dead_tail_;  // stderr tails of processes of a stopped sandbox
  std::vector<int64_t> live_;
  std::vector<int> handoff_;  // proxy connections to hand to on_egress_connection
};

class GvisorProcess : public Process {
 public:
  GvisorProcess(std::shared_ptr<GvisorSandbox> box, int64_t id, int in, int out)
      : box_(std::move(box)), id_(id), in_(in), out_(out) {}
  ~GvisorProcess() override {
    Kill();
    CloseStdin();
    close(out_);
    box_->Forget(id_);
  }
  int stdin_fd() const override { return in_.load(); }
  void CloseStdin() override {
    if (int fd = in_.exchange(-1); fd >= 0) close(fd);
  }
  int stdout_fd() const override { return out_; }
  std::string StderrTail() const override { return box_->Tail(id_); }
  bool Running(int* exit_code) override { return !box_->Exited(id_, exit_code); }
  void Kill() override {
    if (!box_->Exited(id_, nullptr)) box_->KillId(id_);
  }
  int64_t id() const { return id_; }

 private:
  std::shared_ptr<GvisorSandbox> box_;
  const int64_t id_;
  std::atomic<int> in_;
  int out_;
};

Result<std::unique_ptr<Process>> MakeProcess(std::shared_ptr<GvisorSandbox> box, const SpawnRequest* req,
                                             int64_t attach_id) {
  int in[2], out[2];  // caller writes in[1], driver reads in[0]; driver writes out[1]
  if (pipe2(in, O_CLOEXEC) != 0) return Internal(Errno("pipe"));
  if (pipe2(out, O_CLOEXEC) != 0) {
    close(in[0]), close(in[1]);
    return Internal(Errno("pipe"));
  }
  fcntl(in[0], F_SETFL, fcntl(in[0], F_GETFL) | O_NONBLOCK);
  fcntl(out[1], F_SETFL, fcntl(out[1], F_GETFL) | O_NONBLOCK);
  int64_t id = attach_id;
  Status st = req != nullptr ? box->SpawnRaw(*req, false, 0, &id, in[0], out[1])
                             : box->AttachRaw(attach_id, in[0], out[1]);
  if (!st.ok()) {
    for (int fd : {in[0], in[1], out[0], out[1]}) close(fd);
    return st;
  }
  return std::unique_ptr<Process>(new GvisorProcess(std::move(box), id, in[1], out[0]));
}

Result<std::unique_ptr<Process>> GvisorSandbox::Spawn(const SpawnRequest& req) {
  return MakeProcess(shared_from_this(), &req, -1);
}

// Callers hold a unique_ptr; spawned processes share the sandbox, so the unique owner is a
// thin handle that keeps the shared object alive.
class Handle : public Sandbox {
 public:
  explicit Handle(std::shared_ptr<GvisorSandbox> b) : b_(std::move(b)) {}
  ~Handle() override { b_->Shutdown(); }
  const std::string& workspace() const override { return b_->workspace(); }
  Result<ExecResult> Exec(const ExecRequest& r) override { return b_->Exec(r); }
  Result<std::unique_ptr<Process>> Spawn(const SpawnRequest& r) override { return b_->Spawn(r); }
  void Shutdown() override { b_->Shutdown(); }
  int64_t OomKills() const override { return b_->OomKills(); }
  const std::shared_ptr<GvisorSandbox>& box() const { return b_; }

 private:
  std::shared_ptr<GvisorSandbox> b_;
};


// The root filesystem every sandbox shares, read-only: mount points, symlinks like the
// host's (/bin -> usr/bin), the supervisor and its seccomp filter, and a synthetic /etc.
Status BuildRootfs(const std::string& rootfs, const std::string& init_path, const std::string& bpf) {
  std::error_code ec;
  fs::remove_all(rootfs, ec);
  for (const char* d : {"usr", "etc", "tmp", "proc", "dev", "workspace", ".agentd"}) {
    fs::create_directories(rootfs + "/" + d, ec);
    if (ec) return Internal("cannot create " + rootfs + "/" + d + ": " + ec.message());
  }
  for (const char* top : {"bin", "sbin", "lib", "lib32", "lib64", "libx32"}) {
    std::string host = std::string("/") + top;
    if (fs::is_symlink(host, ec)) {
      fs::create_symlink(fs::read_symlink(host, ec), rootfs + host, ec);
    } else if (fs::is_directory(host, ec)) {
      fs::create_directories(rootfs + host, ec);
    }
  }
  for (const char* const* name = kEtcFiles; *name != nullptr; ++name) {
    const char* f = *name;
    std::string host = std::string("/etc/") + f;
    if (fs::is_directory(host, ec)) {
      fs::create_directories(rootfs + host, ec);
    } else if (fs::exists(host, ec)) {
      RETURN_IF_ERROR(WriteText(rootfs + host, ""));
    }
  }
  RETURN_IF_ERROR(WriteText(rootfs + "/etc/passwd",
                            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
                            "agent:x:1000:1000:agent:/workspace:/bin/sh\n"
                            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"));
  RETURN_IF_ERROR(WriteText(rootfs + "/etc/group", "root:x:0:\nagent:x:1000:\nnogroup:x:65534:\n"));
  RETURN_IF_ERROR(WriteText(rootfs + "/etc/hosts", "127.0.0.1 localhost sandbox\n::1 localhost\n"));
  RETURN_IF_ERROR(WriteText(rootfs + "/.agentd/seccomp.bpf", bpf));
  fs::copy_file(init_path, rootfs + "/.agentd/init", fs::copy_options::overwrite_existing, ec);
  if (ec) return Internal("cannot copy " + init_path + ": " + ec.message());
  chmod((rootfs + "/.agentd/init").c_str(), 0755);
  return Status::OK();
}

}  // namespace

GvisorDriver::GvisorDriver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
GvisorDriver::~GvisorDriver() = default;

const Capabilities& GvisorDriver::capabilities() const { return impl_->caps; }

std::unique_ptr<GvisorDriver> GvisorDriver::Open(const GvisorOptions& options) {
  auto impl = std::make_unique<Impl>();
  Impl& d = *impl;
  d.options = options;
  d.caps.driver = "gvisor";
  d.root = geteuid() == 0;
  std::unique_ptr<GvisorDriver> driver(new GvisorDriver(std::move(impl)));
  auto unavailable = [&](std::string why) {
    d.caps.available = false;
    d.caps.unavailable_reason = std::move(why);
    return std::move(driver);
  };
  if (!d.root) {
    // runsc's rootless mode skips most of the isolation this driver exists for.
    return unavailable("the gvisor driver needs agentd to run as root (runsc without root is "
                       "its --rootless test mode)");
  }
  if (d.options.runsc_path.empty()) d.options.runsc_path = FindOnPath("runsc");
  if (d.options.runsc_path.empty()) return unavailable("runsc is not installed (Debian: runsc)");
  if (d.options.init_path.empty()) {
    d.options.init_path = DefaultInitPath();
  }
  if (access(d.options.init_path.c_str(), X_OK) != 0) {
    return unavailable("agentd-sandbox-init not found at " + d.options.init_path);
  }
  auto bpf = BuildGvisorSeccompFilter();
  if (!bpf.ok()) return unavailable(bpf.status().message());
  std::error_code ec;
  fs::create_directories(d.options.state_dir, ec);
  if (ec) return unavailable("cannot create " + d.options.state_dir + ": " + ec.message());
  d.rootfs = d.options.state_dir + "/rootfs";
  d.runsc_root = d.options.state_dir + "/runsc";
  fs::create_directories(d.runsc_root, ec);
  Status st = BuildRootfs(d.rootfs, d.options.init_path, *bpf);
  if (!st.ok()) return unavailable(st.message());

  d.cgroups = Cgroups::Detect();
  d.caps.enforced = {"user_space_kernel:gvisor", "namespaces:gvisor(pid,mount,net,ipc,uts)",
                     "capabilities:none", "seccomp:tools(in_sentry)+sentry+gofer",
                     "network:none", "timeout:per_command", "filesystem:read_only_system",
                     "disk:tmpfs"};
  d.cgroups.Report(&d.caps);
  for (auto& e : d.caps.enforced) {
    if (e.rfind("memory:", 0) == 0 || e.rfind("cpu:", 0) == 0) {
      e += "(whole container, Sentry included)";
    }
  }
  std::erase_if(d.caps.enforced, [](const std::string& e) { return e.rfind("pids:", 0) == 0; });
  d.caps.not_enforced.erase("pids");
  d.caps.enforced.push_back("pids:rlimit_nproc(in_sentry)");
  d.caps.not_enforced["uid"] =
      "tools run as uid 1000 inside gVisor; on the host, the Sentry runs as nobody in its own "
      "user namespace and the gofer as root, and workspace files are owned by host uid 1000 "
      "(reachable only through the sandbox's root, mode 0700)";
  d.caps.not_enforced["landlock"] = "gVisor has no Landlock; the read-only system is its mounts";

  // Probe: one sandbox, one command; on kvm, one that must answer in time.
  d.caps.available = true;
  d.platform = d.options.platform.empty() ? "ptrace" : d.options.platform;
  std::string probe_root = d.options.state_dir + "/probe";
  auto probe_in_root = [&](bool checkpoint) -> Status {
    SandboxSpec spec;
    spec.id = "gvisor-probe-" + std::to_string(getpid());
    spec.root = probe_root;
    spec.limits.disk_mb = 1;
    Status result;
    {
      auto box = driver->Create(spec);
      if (!box.ok()) return box.status();
      ExecRequest req;
      req.command = "x=0; echo ok";
      req.timeout = std::chrono::milliseconds(10000);
      auto r = (*box)->Exec(req);
      if (!r.ok()) return r.status();
      if (r->stdout_data != "ok\n") return Internal("`echo ok` said " + r->stdout_data + r->stderr_data);
      if (checkpoint) {
        std::string image = d.options.state_dir + "/probe-image";
        fs::remove_all(image, ec);
        result = driver->Hibernate(**box, image);
        if (result.ok()) {
          box->reset();
          auto again = driver->Resume(spec, image);
          if (!again.ok()) {
            result = again.status();
          } else {
            auto r2 = (*again)->Exec(req);
            if (!r2.ok()) result = r2.status();
            else if (r2->stdout_data != "ok\n") result = Internal("restored sandbox said " + r2->stdout_data);
          }
        }
        fs::remove_all(image, ec);
      }
    }
    return result;
  };
  // Whatever the probe's sandbox left (its workspace mount above all) goes, however it ended.
  auto probe = [&](bool checkpoint) {
    driver->Discard(probe_root).IgnoreError();
    fs::create_directories(probe_root, ec);
    Status result = probe_in_root(checkpoint);
    driver->Discard(probe_root).IgnoreError();
    return result;
  };
  st = probe(false);
  if (!st.ok() && d.platform != "ptrace") {
    d.caps.not_enforced["platform:" + d.platform] = "the probe failed on it: " + st.message();
    d.platform = "ptrace";
    st = probe(false);
  }
  if (!st.ok()) return unavailable("the probe sandbox failed: " + st.message());
  d.caps.enforced.push_back("platform:" + d.platform);
  d.caps.available = true;
  Status cp = probe(true);
  if (cp.ok()) {
    d.caps.enforced.push_back("checkpoint");
  } else {
    d.caps.not_enforced["checkpoint"] = "runsc checkpoint/restore failed here: " + cp.message() +
                                        "; sessions keep only their workspace";
  }
  return driver;
}

Result<std::unique_ptr<Sandbox>> GvisorDriver::Create(const SandboxSpec& spec) {
  if (!impl_->caps.available) return Unavailable("gvisor driver: " + impl_->caps.unavailable_reason);
  auto box = std::make_shared<GvisorSandbox>(impl_.get(), spec);
  RETURN_IF_ERROR(box->Prepare());
  return std::unique_ptr<Sandbox>(new Handle(std::move(box)));
}

Status GvisorDriver::Discard(const std::string& root) {
  RETURN_IF_ERROR(RemoveTree(root + ".bundle"));
  return DiscardRoot(root);
}

Status GvisorDriver::Hibernate(Sandbox& box, const std::string& image_dir) {
  auto* h = dynamic_cast<Handle*>(&box);
  if (h == nullptr) return InvalidArgument("not a sandbox of the gvisor driver");
  return h->box()->Hibernate(image_dir);
}

Result<std::unique_ptr<Sandbox>> GvisorDriver::Resume(const SandboxSpec& spec, const std::string& image_dir) {
  if (!impl_->caps.available) return Unavailable("gvisor driver: " + impl_->caps.unavailable_reason);
  auto box = std::make_shared<GvisorSandbox>(impl_.get(), spec);
  RETURN_IF_ERROR(box->Prepare());
  RETURN_IF_ERROR(box->StartRestored(image_dir));
  return std::unique_ptr<Sandbox>(new Handle(std::move(box)));
}

std::vector<int64_t> GvisorDriver::LiveProcesses(Sandbox& box) {
  auto* h = dynamic_cast<Handle*>(&box);
  return h == nullptr ? std::vector<int64_t>{} : h->box()->Live();
}

Result<std::unique_ptr<Process>> GvisorDriver::Reattach(Sandbox& box, int64_t id) {
  auto* h = dynamic_cast<Handle*>(&box);
  if (h == nullptr) return InvalidArgument("not a sandbox of the gvisor driver");
  return MakeProcess(h->box(), nullptr, id);
}

int64_t GvisorDriver::ProcessId(const Process& p) const {
  auto* g = dynamic_cast<const GvisorProcess*>(&p);
  return g == nullptr ? -1 : g->id();
}

}  // namespace agentd::sandbox
