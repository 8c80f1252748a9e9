#include "sandbox/bwrap/bwrap_driver.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/magic.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <spdlog/spdlog.h>

#include "common/json.h"
#include "sandbox/bwrap/launch.h"
#include "sandbox/bwrap/namespace_mounter.h"
#include "sandbox/bwrap/seccomp_filter.h"
#include "sandbox/bwrap/spare_pool.h"
#include "sandbox/cgroup.h"
#include "sandbox/host_util.h"
#include "sandbox/supervisor_protocol.h"

namespace agentd::sandbox {
namespace {

namespace fs = std::filesystem;
using namespace host;
using Clock = std::chrono::steady_clock;

constexpr const char* kInitInside = "/.agentd/init";
constexpr const char* kInsidePath = Sandbox::kInsidePath;
constexpr int kSandboxUid = 1000;  // the uid tools see inside
constexpr std::chrono::seconds kStartTimeout{10};
constexpr std::chrono::seconds kKillGrace{5};
constexpr size_t kStderrTail = 8192;
constexpr int64_t kTmpMb = 64;  // private /tmp

#ifndef OPEN_TREE_CLONE
constexpr unsigned kOpenTreeClone = 1;
#else
constexpr unsigned kOpenTreeClone = OPEN_TREE_CLONE;
#endif

// One request to the supervisor (a process it started, or the attach), as agentd sees it.
struct Pending {
  bool replied = false;  // "spawned" or "error" arrived
  std::string error;
  int fds[3] = {-1, -1, -1};  // stdin (write), stdout (read), stderr (read)
  bool exited = false;
  int code = -1;
};

// The descriptors of one start of bwrap: the child's (in BwrapFd order) and agentd's ends.
struct StartFds {
  int child[kBwrapFds] = {-1, -1, -1, -1, -1, -1};
  int supervisor = -1;    // agentd's end of the supervisor socket
  int bwrap_stderr = -1;  // read end of bwrap's stderr

  StartFds() = default;
  StartFds(const StartFds&) = delete;
  StartFds& operator=(const StartFds&) = delete;
  ~StartFds() {
    CloseChild();
    CloseFd(supervisor);
    CloseFd(bwrap_stderr);
  }
  void CloseChild() {
    for (int& fd : child) CloseFd(fd);
  }
};

}  // namespace

struct BwrapDriver::Impl {
  // Shared locks on the copies of agentd's files made for sandbox users to reach
  // (host::PublishReachable); released last, after the spares that use them.
  struct HeldCopies {
    std::vector<int> fds;
    ~HeldCopies() {
      for (int fd : fds) close(fd);
    }
  } held_copies;
  BwrapOptions options;
  Capabilities caps;
  std::string seccomp_bpf;
  Cgroups cgroups;
  // Set when agentd is root and the kernel can move mounts. It gives a warm spare its
  // workspace when taken, and hands a sandbox whatever its uid cannot reach by path (a
  // workspace or a read-only folder under a folder closed to others, like root's home).
  std::unique_ptr<NamespaceMounter> mounter;
  bool warm_spares = false;  // spares are whole sandboxes started ahead (needs the mounter)
  bool root = false;
  std::string etc_dir;
  std::vector<std::string> layout;  // bwrap arguments shared by every sandbox

  std::atomic<int> landlock_abi{0};  // as the last sandbox to start reported it

  std::mutex mu;
  std::set<uid_t> uids_in_use;  // guarded by mu

  // Last, so destroyed first: its thread and its spares use everything above.
  std::unique_ptr<SparePool> pool;

  Result<uid_t> TakeUid() {
    std::lock_guard<std::mutex> lock(mu);
    for (uid_t slot = 0; slot < options.uid_slots; ++slot) {
      uid_t uid = options.uid_base + slot;
      if (uids_in_use.insert(uid).second) return uid;
    }
    return ResourceExhausted("every sandbox uid is in use");
  }
  void ReturnUid(uid_t uid) {
    std::lock_guard<std::mutex> lock(mu);
    uids_in_use.erase(uid);
  }

  // True when the sandbox's uid cannot reach `path` by path (a folder above it is closed
  // to others) and the mounter hands it over instead.
  bool HandedOver(const std::string& path) const {
    return mounter != nullptr && !FirstUntraversable(path).empty();
  }

  // bwrap's argv for a sandbox with `read_only_paths`. With `attach` (a warm spare, or a
  // sandbox whose workspace its uid cannot reach), /workspace is an empty folder that the
  // workspace is mounted on after the start, and the supervisor waits for that (--attach);
  // otherwise the workspace comes in as descriptor 5. Read-only folders the uid cannot
  // reach are empty folders too, mounted on by StartWarm.
  std::vector<std::string> Args(const std::vector<std::string>& read_only_paths, bool attach,
                                bool egress_proxy) const {
    std::vector<std::string> a = {
        options.bwrap_path, "--unshare-user", "--unshare-pid", "--unshare-net",
        "--unshare-ipc", "--unshare-uts", "--unshare-cgroup", "--disable-userns",
        "--uid", std::to_string(kSandboxUid), "--gid", std::to_string(kSandboxUid),
        "--hostname", "sandbox", "--new-session", "--die-with-parent", "--clearenv",
        "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
        "--setenv", "HOME", kInsidePath, "--setenv", "LANG", "C.UTF-8",
        "--setenv", "TMPDIR", "/tmp"};
    a.insert(a.end(), layout.begin(), layout.end());
    for (const auto& p : read_only_paths) {
      if (attach && HandedOver(p)) {
        a.insert(a.end(), {"--dir", p});
      } else {
        a.insert(a.end(), {"--ro-bind", p, p});
      }
    }
    if (attach) {
      a.insert(a.end(), {"--dir", kInsidePath});
    } else {
      a.insert(a.end(), {"--bind-fd", "5", kInsidePath});
    }
    a.insert(a.end(), {"--chdir", kInsidePath, "--remount-ro", "/", "--seccomp", "4", "--",
                       kInitInside, "3"});
    if (attach) {
      a.push_back("--attach");
    } else if (egress_proxy) {
      a.insert(a.end(), {"--proxy", std::to_string(kEgressProxyPort)});
    }
    a.insert(a.end(), {kInsidePath, "/tmp"});
    return a;
  }

  // Waits for a supervisor started with --attach to say it is ready. Returns the descriptor
  // of the sandbox's mount namespace that it sends, or -1 when it ends (bwrap failed) or
  // says nothing within kStartTimeout.
  static int AwaitAttachable(int supervisor) {
    std::string text;
    std::vector<int> fds;
    pollfd p{supervisor, POLLIN, 0};
    bool ready = poll(&p, 1, static_cast<int>(std::chrono::milliseconds(kStartTimeout).count())) == 1 &&
                 ReceiveMessage(supervisor, &text, &fds);
    if (ready) {
      Json m = Json::parse(text, nullptr, false);
      ready = m.is_object() && m.value("op", "") == "ready" && m.value("attach", false) &&
              fds.size() == 1;
    }
    if (!ready) {
      for (int fd : fds) close(fd);
      return -1;
    }
    return fds[0];
  }

  // Mounts a copy of the host's `path` (what is mounted below it included) on `target` in
  // the sandbox whose mount namespace is `ns`: read-only, without set-uid programs or
  // devices, when `read_only`. The sandbox's uid needs no access to the folders above it.
  Status HandOver(int ns, const std::string& path, const std::string& target,
                  bool read_only) const {
    unsigned flags = kOpenTreeClone | O_CLOEXEC | (read_only ? AT_RECURSIVE : 0);
    int tree = static_cast<int>(syscall(SYS_open_tree, AT_FDCWD, path.c_str(), flags));
    if (tree < 0) return Internal(Errno("open_tree " + path));
    Status st;
    if (read_only) {
      mount_attr attr{};
      attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
      if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr,
                  sizeof(attr)) != 0) {
        st = Internal(Errno("making " + path + " read-only"));
      }
    }
    if (st.ok()) st = mounter->MoveMountBlocking(ns, tree, target);
    close(tree);
    return st;
  }

  // Opens what a start of bwrap needs, with `workspace` (an O_PATH descriptor, taken) as its
  // workspace.
  Status OpenStart(int workspace, StartFds* f) const {
    f->child[kWorkspaceFd] = workspace;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
      return Internal(Errno("socketpair"));
    }
    f->supervisor = sv[0];
    f->child[kSupervisorFd] = sv[1];
    f->child[kInitFd] = open(options.init_path.c_str(), O_PATH | O_CLOEXEC);
    f->child[kEtcFd] = open(etc_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    f->child[kSeccompFd] = memfd_create("agentd-seccomp", MFD_CLOEXEC);
    int errpipe[2];
    if (workspace < 0 || f->child[kInitFd] < 0 || f->child[kEtcFd] < 0 ||
        f->child[kSeccompFd] < 0 || pipe2(errpipe, O_CLOEXEC) != 0) {
      return Internal(Errno("sandbox descriptors"));
    }
    f->bwrap_stderr = errpipe[0];
    f->child[kStderrFd] = errpipe[1];
    int bpf = f->child[kSeccompFd];
    if (write(bpf, seccomp_bpf.data(), seccomp_bpf.size()) !=
            static_cast<ssize_t>(seccomp_bpf.size()) ||
        lseek(bpf, 0, SEEK_SET) != 0) {
      return Internal(Errno("seccomp memfd"));
    }
    return Status::OK();
  }

  // SparePool::WarmUp: the launcher becomes bwrap on an empty /workspace, as a uid of its
  // own, and its supervisor says it is ready with its mount namespace.
  bool WarmUp(Spare* spare) {
    auto uid = TakeUid();
    if (!uid.ok()) return false;
    StartFds f;
    int stand_in = open(etc_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);  // unused by bwrap
    pid_t pid = -1;
    if (OpenStart(stand_in, &f).ok()) {
      pid = spare->Launch(EncodeOrder(*uid, Args(options.read_only_paths, true, false), environ),
                          f.child);
    }
    f.CloseChild();
    StartedSandbox s{pid, f.supervisor, f.bwrap_stderr, -1};
    s.mount_ns = pid > 0 ? AwaitAttachable(f.supervisor) : -1;
    if (s.mount_ns < 0) {
      if (pid > 0) {
        kill(pid, SIGKILL);
        waitpid(pid, nullptr, 0);
      }
      ReturnUid(*uid);
      return false;
    }
    f.supervisor = f.bwrap_stderr = -1;  // the spare's now
    spare->BecomeSandbox(s, *uid, [this](uid_t u) { ReturnUid(u); });
    return true;
  }
};

namespace {

class BwrapSandbox;

class BwrapProcess : public Process {
 public:
  BwrapProcess(std::shared_ptr<BwrapSandbox> box, int64_t id, int in, int out, int err);
  ~BwrapProcess() override;
  int stdin_fd() const override { return in_.load(); }
  int stdout_fd() const override { return out_; }
  std::string StderrTail() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return tail_;
  }
  bool Running(int* exit_code) override;
  void Kill() override;
  void CloseStdin() override {
    if (int fd = in_.exchange(-1); fd >= 0) close(fd);
  }

 private:
  std::shared_ptr<BwrapSandbox> box_;
  const int64_t id_;
  std::atomic<int> in_;
  int out_, err_;
  mutable std::mutex mu_;
  std::string tail_;  // guarded by mu_
  std::thread drain_;
};

class BwrapSandbox : public Sandbox, public std::enable_shared_from_this<BwrapSandbox> {
 public:
  BwrapSandbox(BwrapDriver::Impl* d, SandboxSpec spec, uid_t uid)
      : d_(d), spec_(std::move(spec)), uid_(uid), workspace_(spec_.root + "/workspace") {
    spec_.limits = WithDefaults(spec_.limits);
  }
  ~BwrapSandbox() override {
    Shutdown();
    if (d_->root) d_->ReturnUid(uid_);
  }

  // `spare`, when there is one, was taken for this sandbox (and a warm one's uid is uid_).
  Status Prepare(std::unique_ptr<Spare> spare) {
    const bool fresh = d_->root && !(IsTmpfs(spec_.root) && IsMountPoint(spec_.root));
    if (d_->root) {
      RETURN_IF_ERROR(MountWorkspaceFs(spec_.root, spec_.limits.disk_mb, uid_));
    }
    Status st = PrepareGroups(std::move(spare));
    // A sandbox that cannot be made leaves no mount of its own behind; one taken over from
    // an earlier run keeps its files.
    if (!st.ok() && fresh) umount2(spec_.root.c_str(), MNT_DETACH);
    return st;
  }

  Status PrepareGroups(std::unique_ptr<Spare> spare) {
    if (mkdir(workspace_.c_str(), 0755) != 0 && errno != EEXIST) {
      return Internal(Errno("mkdir " + workspace_));
    }
    // A spare's groups become the sandbox's, with the spare in them, ready to become bwrap
    // (or, warm, to take the workspace) at the first command.
    if (spare) {
      auto cg = spare->Adopt(spec_.id, spec_.limits);
      if (cg.ok()) {
        cgroup_ = std::move(cg).value();
        spare_ = std::move(spare);
        return Status::OK();
      }
    }
    auto cg = d_->cgroups.Create(spec_.id, spec_.limits);
    if (!cg.ok()) return cg.status();
    cgroup_ = std::move(cg).value();
    return Status::OK();  // the processes start with the first command
  }

  const std::string& workspace() const override { return workspace_; }
  int64_t OomKills() const override { return cgroup_ ? cgroup_->OomKills() : 0; }

  Result<ExecResult> Exec(const ExecRequest& req) override {
    std::chrono::milliseconds timeout =
        req.timeout.count() > 0 ? std::min<std::chrono::milliseconds>(
                                      req.timeout, std::chrono::milliseconds(spec_.limits.timeout_ms))
                                : std::chrono::milliseconds(spec_.limits.timeout_ms);
    int64_t ooms_before = OomKills();
    SpawnRequest spawn;
    spawn.argv = {"/bin/sh", "-c", req.command};
    spawn.env = req.env;
    int64_t id;
    int fds[3];
    RETURN_IF_ERROR(SpawnRaw(spawn, &id, fds));
    ExecResult result;
    Clock::time_point deadline = Clock::now() + timeout;
    bool killed = false;
    Pump(req, fds, deadline, id, &killed, &result);
    result.timed_out = killed && !result.cancelled;
    std::unique_lock<std::mutex> lock(mu_);
    // Output has ended; the exit report follows at once (or the sandbox died).
    bool reported = cv_.wait_for(lock, kKillGrace, [&] { return pending_[id].exited || dead_; });
    if (!reported) {
      lock.unlock();
      Fail("the supervisor did not report the end of a command");
      lock.lock();
    }
    if (!pending_[id].exited) {
      pending_.erase(id);
      return Internal("the sandbox ended while running the command" + BwrapErrorLocked());
    }
    result.exit_code = pending_[id].code;
    pending_.erase(id);
    lock.unlock();
    result.oom_killed = OomKills() > ooms_before;
    return result;
  }

  Result<std::unique_ptr<Process>> Spawn(const SpawnRequest& req) override {
    int64_t id;
    int fds[3];
    RETURN_IF_ERROR(SpawnRaw(req, &id, fds));
    return std::unique_ptr<Process>(new BwrapProcess(shared_from_this(), id, fds[0], fds[1], fds[2]));
  }

  void Shutdown() override {
    std::unique_lock<std::mutex> lock(mu_);
    StopLocked(lock);
    std::unique_ptr<Spare> spare = std::move(spare_);
    lock.unlock();
    spare.reset();  // a spare not used yet is killed and reaped; its groups stay the sandbox's
  }

  // Process support.
  bool Exited(int64_t id, int* code) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = pending_.find(id);
    if (it == pending_.end()) return false;
    if (!it->second.exited && !dead_) return false;
    if (code != nullptr) *code = it->second.exited ? it->second.code : 128 + SIGKILL;
    return true;
  }
  void KillId(int64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    if (sock_ >= 0) SendMessage(sock_, Json{{"op", "kill"}, {"id", id}}.dump(), {});
  }
  void Forget(int64_t id) {
    std::lock_guard<std::mutex> lock(mu_);
    pending_.erase(id);
  }

 private:
  Status Start() {
    // Files put in the workspace from the host (a restore, an earlier run's uid) become the
    // sandbox user's.
    if (d_->root) RETURN_IF_ERROR(ChownTree(spec_.root, uid_));
    std::unique_ptr<Spare> spare;
    {
      std::lock_guard<std::mutex> lock(mu_);
      spare = std::move(spare_);
    }
    if (spare && spare->started()) {
      Status warm = StartWarm(spare->TakeSandbox());
      spare.reset();  // the start is over: the pool may refill now
      if (warm.ok()) return warm;
      // StartWarm stopped what the spare left; the direct start uses the same groups.
      spdlog::warn("sandbox {}: the spare could not take the workspace, starting one directly: {}",
                   spec_.id, warm.ToString());
    }
    // A workspace or read-only folder the sandbox's uid cannot reach by path is mounted in
    // after bwrap has started, as for a warm spare.
    const bool attach = NeedsHandOver();
    std::vector<std::string> args =
        d_->Args(spec_.read_only_paths, attach, static_cast<bool>(spec_.on_egress_connection));
    std::vector<char*> argv;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    std::vector<std::string> procs = cgroup_->procs_files();

    // Descriptors bwrap binds (fds 5, 6, 7 in the child); an attached workspace has a
    // stand-in that bwrap does not use.
    StartFds f;
    Status opened = d_->OpenStart(
        attach ? open(d_->etc_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC)
               : open(workspace_.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC),
        &f);
    if (!opened.ok()) return Internal(opened.message() + " (" + workspace_ + ")");
    const long uid = d_->root ? static_cast<long>(uid_) : -1;
    // The spare is in the sandbox's groups already; one that has ended since it was taken
    // leaves the start to the direct way.
    pid_t pid = spare ? spare->Launch(EncodeOrder(uid, args, environ), f.child) : -1;
    if (pid < 0) {
      pid = fork();
      if (pid == 0) {
        // Only async-signal-safe calls from here to exec.
        if (!JoinCgroups(procs)) _exit(kExitCgroup);
        ExecBwrap(f.child, uid, argv.data(), environ);
      }
    }
    f.CloseChild();
    if (pid < 0) return Internal(Errno("fork"));
    std::unique_lock<std::mutex> lock(mu_);
    TrackLocked(pid, f.supervisor, f.bwrap_stderr, /*ready=*/false);
    f.supervisor = f.bwrap_stderr = -1;  // the reader's now
    if (!cv_.wait_for(lock, kStartTimeout, [&] { return ready_ || dead_; })) {
      start_error_ = "the sandbox did not start within " + std::to_string(kStartTimeout.count()) + " s";
    }
    lock.unlock();
    spare.reset();  // the start is over: the pool may refill now
    lock.lock();
    if (!ready_) {
      std::string why = start_error_.empty() ? "the sandbox failed to start" : start_error_;
      why += BwrapErrorLocked();
      StopLocked(lock);
      return Unavailable(why);
    }
    if (!attach) return Status::OK();
    int ns = std::exchange(attach_ns_, -1);
    lock.unlock();
    Status mounted = ns < 0 ? Internal("the supervisor sent no mount namespace") : HandOverAll(ns);
    if (ns >= 0) close(ns);
    lock.lock();
    return AttachLocked(lock, mounted);
  }

  // True when the sandbox's uid cannot reach its workspace, or one of its read-only
  // folders, by path: a folder above is closed to others, as root's home is.
  bool NeedsHandOver() const {
    if (!d_->mounter) return false;
    if (!FirstUntraversable(fs::path(spec_.root).parent_path().string()).empty()) return true;
    return std::any_of(spec_.read_only_paths.begin(), spec_.read_only_paths.end(),
                       [this](const std::string& p) { return d_->HandedOver(p); });
  }

  // Mounts in the sandbox (mount namespace `ns`) what Args left as empty folders: the
  // read-only folders its uid cannot reach, then the workspace.
  Status HandOverAll(int ns) {
    for (const auto& p : spec_.read_only_paths) {
      if (d_->HandedOver(p)) RETURN_IF_ERROR(d_->HandOver(ns, p, p, /*read_only=*/true));
    }
    return d_->HandOver(ns, workspace_, kInsidePath, /*read_only=*/false);
  }

  // Takes over a warm spare's sandbox: mounts the workspace in it, then tells its supervisor
  // to go on (enter the workspace, open the egress proxy, restrict itself with Landlock).
  Status StartWarm(StartedSandbox s) {
    Status mounted = HandOverAll(s.mount_ns);
    close(s.mount_ns);
    std::unique_lock<std::mutex> lock(mu_);
    TrackLocked(s.bwrap, s.supervisor, s.bwrap_stderr, /*ready=*/true);
    return AttachLocked(lock, mounted);
  }

  // Tells a supervisor waiting with --attach to go on, once `mounted` says its workspace
  // is in place; stops the sandbox when it is not, or when the supervisor fails.
  Status AttachLocked(std::unique_lock<std::mutex>& lock, const Status& mounted) {
    Json attach = {{"op", "attach"}};
    if (spec_.on_egress_connection) attach["proxy"] = kEgressProxyPort;
    auto id = mounted.ok() ? RoundTripLocked(lock, std::move(attach), "take its workspace")
                           : Result<int64_t>(mounted);
    if (!id.ok()) {
      StopLocked(lock);
      return id.status();
    }
    pending_.erase(*id);
    return Status::OK();
  }

  // Records a started bwrap (`pid`) and its descriptors, and starts reading its supervisor.
  void TrackLocked(pid_t pid, int sock, int err, bool ready) {
    bwrap_pid_ = pid;
    sock_ = sock;
    err_fd_ = err;
    dead_ = false;
    ready_ = ready;
    start_error_.clear();
    bwrap_stderr_.clear();
    reader_ = std::thread([this, sock, err] { ReadLoop(sock, err); });
  }

  std::string BwrapErrorLocked() const {
    std::string e = bwrap_stderr_;
    while (!e.empty() && (e.back() == '\n' || e.back() == ' ')) e.pop_back();
    return e.empty() ? "" : " (" + e + ")";
  }

  // Reads the supervisor's messages until the socket closes; also collects bwrap's stderr.
  void ReadLoop(int sock, int err) {
    std::string text;
    std::vector<int> fds;
    for (;;) {
      pollfd p[2] = {{sock, POLLIN, 0}, {err, POLLIN, 0}};
      int n = poll(p, err >= 0 ? 2 : 1, -1);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) break;
      if (err >= 0 && (p[1].revents & (POLLIN | POLLHUP))) {
        char buf[1024];
        ssize_t r = read(err, buf, sizeof(buf));
        std::lock_guard<std::mutex> lock(mu_);
        if (r <= 0) {
          err = -1;
        } else if (bwrap_stderr_.size() < kStderrTail) {
          bwrap_stderr_.append(buf, static_cast<size_t>(r));
        }
      }
      if (!(p[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      if (!ReceiveMessage(sock, &text, &fds)) break;
      Json m = Json::parse(text, nullptr, false);
      std::string op = m.is_object() ? m.value("op", "") : "";
      if (op == "connection") {
        // Handed on outside the lock: the proxy takes it from here.
        if (fds.size() == 1 && spec_.on_egress_connection) {
          spec_.on_egress_connection(fds[0]);
          fds.clear();
        }
        for (int fd : fds) close(fd);
        continue;
      }
      std::lock_guard<std::mutex> lock(mu_);
      if (op == "ready") {
        ready_ = true;
        d_->landlock_abi = m.value("landlock", 0);
        // Started with --attach: its mount namespace, for the workspace to be mounted in.
        if (m.value("attach", false) && fds.size() == 1 && attach_ns_ < 0) {
          attach_ns_ = fds[0];
          fds.clear();
        }
      } else if (op == "fatal") {
        start_error_ = m.value("message", "the supervisor failed");
      } else if (op == "spawned" || op == "error" || op == "exit" || op == "attached") {
        auto it = pending_.find(m.value("id", int64_t{-1}));
        if (it == pending_.end()) {
          for (int fd : fds) close(fd);
          fds.clear();
        } else if (op == "attached") {
          it->second.replied = true;
          d_->landlock_abi = m.value("landlock", 0);
        } else if (op == "exit") {
          it->second.exited = true;
          it->second.code = m.value("code", -1);
        } else {
          it->second.replied = true;
          if (op == "error" || fds.size() != 3) {
            it->second.error = m.value("message", "the supervisor passed no pipes");
            for (int fd : fds) close(fd);
          } else {
            std::copy(fds.begin(), fds.end(), it->second.fds);
          }
          fds.clear();
        }
      }
      for (int fd : fds) close(fd);
      cv_.notify_all();
    }
    std::lock_guard<std::mutex> lock(mu_);
    dead_ = true;
    cv_.notify_all();
  }

  Status SpawnRaw(const SpawnRequest& req, int64_t* id_out, int fds_out[3]) {
    std::unique_lock<std::mutex> lock(mu_);
    if (dead_ || sock_ < 0) {
      // The sandbox ended (a crash, or the kill at a limit): start a fresh one.
      StopLocked(lock);
      lock.unlock();
      RETURN_IF_ERROR(Start());
      lock.lock();
    }
    Json env = {{"PATH", "/usr/local/bin:/usr/bin:/bin"}, {"HOME", kInsidePath},
                {"LANG", "C.UTF-8"}, {"TMPDIR", "/tmp"}};
    if (spec_.on_egress_connection) {
      std::string proxy = "http://127.0.0.1:" + std::to_string(kEgressProxyPort);
      for (const char* k : {"HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy",
                            "https_proxy", "all_proxy"}) {
        env[k] = proxy;
      }
      // Servers inside the sandbox are reached directly, not through the host's proxy.
      env["NO_PROXY"] = env["no_proxy"] = "localhost,127.0.0.1,::1";
    }
    for (const auto& [k, v] : req.env) env[k] = v;
    auto id = RoundTripLocked(lock, Json{{"op", "spawn"}, {"argv", req.argv}, {"env", env}},
                              "start the command");
    if (!id.ok()) return id.status();
    Pending& p = pending_[*id];
    *id_out = *id;
    std::copy(p.fds, p.fds + 3, fds_out);
    return Status::OK();
  }

  // Sends `msg` with the next id and waits for its answer; what = what the sandbox was asked
  // to do, for the errors. The entry in pending_ stays for the caller on success.
  Result<int64_t> RoundTripLocked(std::unique_lock<std::mutex>& lock, Json msg,
                                  const std::string& what) {
    int64_t id = next_id_++;
    msg["id"] = id;
    pending_[id];
    if (!SendMessage(sock_, msg.dump(), {})) {
      pending_.erase(id);
      return Unavailable(Errno("sandbox supervisor"));
    }
    cv_.wait_for(lock, kStartTimeout, [&] { return pending_[id].replied || dead_; });
    Pending& p = pending_[id];
    if (!p.replied) {
      pending_.erase(id);
      std::string why = start_error_.empty() ? "" : ": " + start_error_;
      return Unavailable("the sandbox did not " + what + why + BwrapErrorLocked());
    }
    if (!p.error.empty()) {
      std::string e = p.error;
      pending_.erase(id);
      return Internal("the sandbox could not " + what + ": " + e);
    }
    return id;
  }

  // Feeds stdin and collects stdout/stderr until both end; kills the command at `deadline`.
  void Pump(const ExecRequest& req, int fds[3], Clock::time_point deadline, int64_t id,
            bool* killed, ExecResult* result) {
    for (int i = 0; i < 3; ++i) fcntl(fds[i], F_SETFL, fcntl(fds[i], F_GETFL) | O_NONBLOCK);
    size_t written = 0;
    if (req.stdin_data.empty()) CloseFd(fds[0]);
    std::string* sinks[2] = {&result->stdout_data, &result->stderr_data};
    Clock::time_point hard_deadline = Clock::time_point::max();
    while (fds[1] >= 0 || fds[2] >= 0) {
      Clock::time_point now = Clock::now();
      if (!*killed && req.should_abort && req.should_abort()) {
        result->cancelled = true;
        deadline = now;
      }
      if (!*killed && now >= deadline) {
        *killed = true;
        KillId(id);
        hard_deadline = now + kKillGrace;
        CloseFd(fds[0]);
      }
      if (*killed && now >= hard_deadline) {
        Fail("a command outlived its kill");
        break;
      }
      pollfd p[3];
      int n = 0;
      int which[3];
      if (fds[0] >= 0) p[n] = {fds[0], POLLOUT, 0}, which[n++] = 0;
      if (fds[1] >= 0) p[n] = {fds[1], POLLIN, 0}, which[n++] = 1;
      if (fds[2] >= 0) p[n] = {fds[2], POLLIN, 0}, which[n++] = 2;
      Clock::time_point until = *killed ? hard_deadline : deadline;
      auto wait_ms = std::chrono::duration_cast<std::chrono::milliseconds>(until - now).count();
      // Wake at least every 50 ms to poll should_abort.
      int r = poll(p, n, static_cast<int>(std::clamp<int64_t>(wait_ms + 1, 1, 50)));
      if (r < 0 && errno != EINTR) break;
      for (int i = 0; i < n && r > 0; ++i) {
        if (p[i].revents == 0) continue;
        int w = which[i];
        if (w == 0) {
          ssize_t k = write(fds[0], req.stdin_data.data() + written, req.stdin_data.size() - written);
          if (k > 0) written += static_cast<size_t>(k);
          if (k < 0 && errno != EAGAIN) CloseFd(fds[0]);  // the command stopped reading
          if (written == req.stdin_data.size()) CloseFd(fds[0]);
          continue;
        }
        char buf[16384];
        ssize_t k = read(fds[w], buf, sizeof(buf));
        if (k > 0) {
          std::string* sink = sinks[w - 1];
          size_t room = req.max_output_bytes > sink->size() ? req.max_output_bytes - sink->size() : 0;
          sink->append(buf, std::min(room, static_cast<size_t>(k)));
          if (static_cast<size_t>(k) > room) result->truncated = true;
        } else if (k == 0 || errno != EAGAIN) {
          CloseFd(fds[w]);
        }
      }
    }
    for (int i = 0; i < 3; ++i) CloseFd(fds[i]);
  }

  // Gives up on the sandbox: kills everything in it; the next command starts a fresh one.
  void Fail(const std::string& why) {
    std::unique_lock<std::mutex> lock(mu_);
    if (start_error_.empty()) start_error_ = why;
    StopLocked(lock);
  }

  void StopLocked(std::unique_lock<std::mutex>& lock) {
    if (bwrap_pid_ <= 0 && !reader_.joinable()) return;
    pid_t pid = bwrap_pid_;
    int sock = sock_;
    bwrap_pid_ = -1;
    sock_ = -1;
    std::thread reader = std::move(reader_);
    dead_ = true;
    for (auto& [id, p] : pending_) {
      for (int& fd : p.fds) CloseFd(fd);
    }
    cv_.notify_all();
    lock.unlock();
    // Closing the socket makes the supervisor kill everything and exit, ending bwrap; the
    // cgroup kill covers a supervisor that no longer listens.
    if (sock >= 0) shutdown(sock, SHUT_RDWR);
    if (cgroup_) cgroup_->KillAll();
    if (pid > 0) {
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    if (reader.joinable()) reader.join();
    if (sock >= 0) close(sock);
    lock.lock();
    CloseFd(err_fd_);
    CloseFd(attach_ns_);
  }

  BwrapDriver::Impl* const d_;
  SandboxSpec spec_;
  const uid_t uid_;
  const std::string workspace_;
  std::unique_ptr<Cgroup> cgroup_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  pid_t bwrap_pid_ = -1;  // guarded by mu_ (and every member below)
  int sock_ = -1;
  int err_fd_ = -1;
  bool ready_ = false;
  bool dead_ = true;
  std::string start_error_;
  std::string bwrap_stderr_;
  std::thread reader_;
  int64_t next_id_ = 1;
  std::map<int64_t, Pending> pending_;
  std::unique_ptr<Spare> spare_;  // taken at Create, used by the first start
  int attach_ns_ = -1;  // a supervisor's mount namespace, from its "ready" (--attach)
};

BwrapProcess::BwrapProcess(std::shared_ptr<BwrapSandbox> box, int64_t id, int in, int out, int err)
    : box_(std::move(box)), id_(id), in_(in), out_(out), err_(err) {
  drain_ = std::thread([this] {
    char buf[4096];
    ssize_t n;
    while ((n = read(err_, buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR)) {
      if (n <= 0) continue;
      std::lock_guard<std::mutex> lock(mu_);
      tail_.append(buf, static_cast<size_t>(n));
      if (tail_.size() > kStderrTail) tail_.erase(0, tail_.size() - kStderrTail);
    }
  });
}

BwrapProcess::~BwrapProcess() {
  Kill();
  CloseStdin();
  close(out_);
  drain_.join();  // the runner kills the tree, so stderr ends
  close(err_);
  box_->Forget(id_);
}

bool BwrapProcess::Running(int* exit_code) { return !box_->Exited(id_, exit_code); }

void BwrapProcess::Kill() {
  if (!box_->Exited(id_, nullptr)) box_->KillId(id_);
}


}  // namespace

BwrapDriver::BwrapDriver(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
BwrapDriver::~BwrapDriver() = default;

const Capabilities& BwrapDriver::capabilities() const { return impl_->caps; }

std::unique_ptr<BwrapDriver> BwrapDriver::Open(const BwrapOptions& options) {
  auto impl = std::make_unique<Impl>();
  Impl& d = *impl;
  d.options = options;
  d.caps.driver = "bwrap";
  d.root = geteuid() == 0;
  std::unique_ptr<BwrapDriver> driver(new BwrapDriver(std::move(impl)));
  auto unavailable = [&](std::string why) {
    d.caps.available = false;
    d.caps.unavailable_reason = std::move(why);
    return std::move(driver);
  };
  if (d.options.bwrap_path.empty()) d.options.bwrap_path = FindOnPath("bwrap");
  if (d.options.bwrap_path.empty()) return unavailable("bwrap is not installed (Debian: bubblewrap)");
  if (d.options.init_path.empty()) {
    d.options.init_path = DefaultInitPath();
  }
  if (access(d.options.init_path.c_str(), X_OK) != 0) {
    return unavailable("agentd-sandbox-init not found at " + d.options.init_path);
  }
  auto bpf = BuildSeccompFilter();
  if (!bpf.ok()) return unavailable(bpf.status().message());
  d.seccomp_bpf = std::move(bpf).value();

  // The sandbox's /etc: copies of the few host files programs need (symlinks kept as they
  // are, private keys left out), and its own passwd, group and hosts. One folder, so one
  // bind mount per sandbox instead of one per file: each mount costs bwrap about half a
  // millisecond.
  d.etc_dir = d.options.state_dir + "/etc";
  std::error_code ec;
  fs::remove_all(d.etc_dir, ec);
  fs::create_directories(d.etc_dir, ec);
  if (ec) return unavailable("cannot create " + d.etc_dir + ": " + ec.message());
  for (const char* const* name = kEtcFiles; *name != nullptr; ++name) {
    const char* f = *name;
    std::string host = std::string("/etc/") + f;
    std::error_code e;
    if (!fs::exists(fs::symlink_status(host, e))) continue;
    fs::copy(host, d.etc_dir + "/" + f,
             fs::copy_options::recursive | fs::copy_options::copy_symlinks, e);
  }
  fs::remove_all(d.etc_dir + "/ssl/private", ec);
  Status st = WriteText(d.etc_dir + "/passwd",
                        "root:x:0:0:root:/root:/usr/sbin/nologin\n"
                        "agent:x:1000:1000:agent:/workspace:/bin/sh\n"
                        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
  if (st.ok()) st = WriteText(d.etc_dir + "/group", "root:x:0:\nagent:x:1000:\nnogroup:x:65534:\n");
  if (st.ok()) st = WriteText(d.etc_dir + "/hosts", "127.0.0.1 localhost sandbox\n::1 localhost\n");
  if (!st.ok()) return unavailable(st.message());
  chmod(d.options.state_dir.c_str(), 0711);
  chmod(d.etc_dir.c_str(), 0755);
  // As root, bwrap runs as the sandbox's uid and resolves what it binds by path: agentd's
  // own files, when the folders above them are closed to others (a checkout or data
  // directory in root's 0700 home), are used from copies in kReachableDir.
  if (d.root) {
    const std::pair<std::string*, const char*> own_files[] = {
        {&d.etc_dir, "etc"}, {&d.options.init_path, "sandbox-init"}};
    for (auto [path, prefix] : own_files) {
      if (FirstUntraversable(*path).empty()) continue;
      int held = -1;
      auto copy = PublishReachable(*path, kReachableDir, prefix, &held);
      if (!copy.ok()) return unavailable(copy.status().message());
      d.held_copies.fds.push_back(held);
      *path = *copy;
    }
  }

  // The system directories, read-only; symlinks like /bin -> usr/bin kept as symlinks.
  d.layout = {"--ro-bind", "/usr", "/usr"};
  for (const char* top : {"bin", "sbin", "lib", "lib32", "lib64", "libx32"}) {
    std::string host = std::string("/") + top;
    std::error_code e;
    if (fs::is_symlink(host, e)) {
      d.layout.insert(d.layout.end(), {"--symlink", fs::read_symlink(host, e).string(), host});
    } else if (fs::is_directory(host, e)) {
      d.layout.insert(d.layout.end(), {"--ro-bind", host, host});
    }
  }
  // agentd's own files come in by descriptor (fds 6 and 7, see Start), so the sandbox's uid
  // needs no access to the folders that hold them.
  d.layout.insert(d.layout.end(), {"--ro-bind-fd", "6", kInitInside, "--ro-bind-fd", "7", "/etc"});
  d.layout.insert(d.layout.end(), {"--proc", "/proc", "--dev", "/dev", "--size",
                                   std::to_string(kTmpMb << 20), "--tmpfs", "/tmp"});

  d.cgroups = Cgroups::Detect();
  d.caps.enforced = {"namespaces:user,pid,mount,net,ipc,uts,cgroup", "capabilities:none",
                     "seccomp", "no_new_user_namespaces", "network:none",
                     "timeout:per_command", "filesystem:read_only_system"};
  d.cgroups.Report(&d.caps);
  if (d.root) {
    d.caps.enforced.push_back("disk:tmpfs");
    d.caps.enforced.push_back("uid:per_sandbox");
  } else {
    d.caps.not_enforced["disk"] = "agentd is not root: cannot mount a size-capped workspace";
    d.caps.not_enforced["uid"] = "agentd is not root: sandboxes run as agentd's own user";
  }

  // As root, what a sandbox's uid cannot reach by path is mounted into it (HandOver).
  errno = 0;
  bool can_move_mounts = syscall(SYS_open_tree, -1, "", 0) < 0 && errno != ENOSYS;
  if (d.root && can_move_mounts) d.mounter = std::make_unique<NamespaceMounter>();

  // Probe: one sandbox, one command.
  d.caps.available = true;
  std::string probe_root = d.options.state_dir + "/probe";
  driver->Discard(probe_root).IgnoreError();
  fs::create_directories(probe_root, ec);
  SandboxSpec spec;
  spec.id = "probe-" + std::to_string(getpid());
  spec.root = probe_root;
  spec.limits.disk_mb = 1;
  int landlock = 0;
  {
    auto box = driver->Create(spec);
    if (!box.ok()) {
      st = box.status();
    } else {
      ExecRequest req;
      req.command = "true";
      req.timeout = std::chrono::milliseconds(10000);
      auto r = (*box)->Exec(req);
      if (!r.ok()) st = r.status();
      else if (r->exit_code != 0) st = Internal("`true` exited with " + std::to_string(r->exit_code));
      landlock = d.landlock_abi.load();
    }
  }
  driver->Discard(probe_root).IgnoreError();
  if (!st.ok()) return unavailable("the probe sandbox failed: " + st.message());
  if (landlock > 0) {
    d.caps.enforced.push_back("landlock:abi" + std::to_string(landlock));
  } else {
    d.caps.not_enforced["landlock"] = "the kernel has no Landlock";
  }
  // As root, spares are whole sandboxes waiting for a workspace; otherwise launchers only
  // (moving a mount into a sandbox needs CAP_SYS_ADMIN over it).
  SparePool::WarmUp warm_up;
  if (d.mounter && d.options.spares > 0 && d.options.warm_spares) {
    d.warm_spares = true;
    warm_up = [&d](Spare* spare) { return d.WarmUp(spare); };
  }
  d.pool = std::make_unique<SparePool>(&d.cgroups, d.options.init_path, d.options.spares,
                                       std::move(warm_up));
  return driver;
}

Result<std::unique_ptr<Sandbox>> BwrapDriver::Create(const SandboxSpec& spec) {
  if (!impl_->caps.available) return Unavailable("bwrap driver: " + impl_->caps.unavailable_reason);
  Impl& d = *impl_;
  // Warm spares were started with the daemon's read-only folders: a sandbox that asks for
  // others starts without one.
  std::unique_ptr<Spare> spare;
  if (d.pool && (!d.warm_spares || spec.read_only_paths == d.options.read_only_paths)) {
    spare = d.pool->Take();
  }
  uid_t uid = geteuid();
  if (spare && spare->started()) {
    uid = spare->ClaimUid();
  } else if (d.root) {
    auto taken = d.TakeUid();
    if (!taken.ok()) return taken.status();
    uid = *taken;
  }
  if (d.root && !d.mounter) {
    std::string blocked = FirstUntraversable(fs::path(spec.root).parent_path().string());
    if (!blocked.empty()) {
      d.ReturnUid(uid);
      return FailedPrecondition("sandbox root " + spec.root + ": its uid cannot pass through " +
                                blocked + " (mode lacks o+x)");
    }
  }
  auto box = std::make_shared<BwrapSandbox>(&d, spec, uid);
  RETURN_IF_ERROR(box->Prepare(std::move(spare)));
  // Callers hold a unique_ptr; spawned processes share the sandbox, so the unique owner
  // is a thin handle that keeps the shared object alive.
  class Handle : public Sandbox {
   public:
    explicit Handle(std::shared_ptr<BwrapSandbox> b) : b_(std::move(b)) {}
    ~Handle() override { b_->Shutdown(); }
    const std::string& workspace() const override { return b_->workspace(); }
    Result<ExecResult> Exec(const ExecRequest& r) override { return b_->Exec(r); }
    Result<std::unique_ptr<Process>> Spawn(const SpawnRequest& r) override { return b_->Spawn(r); }
    void Shutdown() override { b_->Shutdown(); }
    int64_t OomKills() const override { return b_->OomKills(); }

   private:
    std::shared_ptr<BwrapSandbox> b_;
  };
  return std::unique_ptr<Sandbox>(new Handle(std::move(box)));
}

Status BwrapDriver::Discard(const std::string& root) {
  return DiscardRoot(root);
}

size_t BwrapDriver::ReadySpares() const { return impl_->pool ? impl_->pool->Ready() : 0; }

bool BwrapDriver::WaitForSparesBlocking(std::chrono::milliseconds timeout) const {
  return !impl_->pool || impl_->pool->WaitFullBlocking(timeout);
}

std::vector<pid_t> BwrapDriver::SparePidsForTest() const {
  return impl_->pool ? impl_->pool->PidsForTest() : std::vector<pid_t>{};
}

}  // namespace agentd::sandbox
