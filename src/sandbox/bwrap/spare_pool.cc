#include "sandbox/bwrap/spare_pool.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>

extern char** environ;

namespace agentd::sandbox {
namespace {

using Clock = std::chrono::steady_clock;

constexpr std::chrono::seconds kReadyTimeout{10};
// How long a taken spare may hold up the refill: a sandbox created long before its first
// command (a restore in between) keeps its spare unused meanwhile.
constexpr std::chrono::seconds kRefillHold{1};
// And the refill waits this long after the start a spare served: that sandbox's first
// command runs then, and should not share the CPUs with a fork and an exec it does not need.
constexpr std::chrono::milliseconds kAfterStart{50};
// After a spare could not be made, the next try waits this long, doubled per failure in a
// row up to kMaxBackoff (a host whose cgroups refuse us should not be hammered).
constexpr std::chrono::milliseconds kBackoff{100};
constexpr std::chrono::milliseconds kMaxBackoff{30000};

void Reap(pid_t pid) {
  while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
  }
}

}  // namespace

Spare::~Spare() {
  // A waiting spare exits when its socket closes; so does a started sandbox's supervisor.
  if (sock_ >= 0) close(sock_);
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    Reap(pid_);
  }
  cgroup_.reset();  // if still ours: kills what is left in the groups and removes them
  for (int fd : {bwrap_stderr_, mount_ns_}) {
    if (fd >= 0) close(fd);
  }
  if (release_uid_) release_uid_(uid_);
  if (pool_ != nullptr) pool_->Settled();
}

void Spare::BecomeSandbox(StartedSandbox sandbox, uid_t uid, std::function<void(uid_t)> release_uid) {
  started_ = true;
  pid_ = sandbox.bwrap;
  sock_ = sandbox.supervisor;
  bwrap_stderr_ = sandbox.bwrap_stderr;
  mount_ns_ = sandbox.mount_ns;
  uid_ = uid;
  release_uid_ = std::move(release_uid);
}

uid_t Spare::ClaimUid() {
  release_uid_ = nullptr;
  return uid_;
}

StartedSandbox Spare::TakeSandbox() {
  StartedSandbox s{pid_, sock_, bwrap_stderr_, mount_ns_};
  pid_ = -1;
  sock_ = bwrap_stderr_ = mount_ns_ = -1;
  return s;
}

bool Spare::Alive() const {
  if (pid_ <= 0 || sock_ < 0) return false;
  // A spare sends nothing after "ready": anything readable is its end (or a broken one).
  pollfd p{sock_, POLLIN, 0};
  return poll(&p, 1, 0) == 0;
}

Result<std::unique_ptr<Cgroup>> Spare::Adopt(const std::string& name, const Limits& limits) {
  if (!cgroup_) return FailedPrecondition("the spare's groups were taken already");
  RETURN_IF_ERROR(cgroup_->SetLimits(limits));
  // The name is for people reading the hierarchy; a spare's name carries agentd's pid just
  // the same, which is all that stale-group removal reads, so a host that cannot rename
  // (cgroup v2) keeps it.
  cgroup_->Rename(name).IgnoreError();
  return std::move(cgroup_);
}

pid_t Spare::Launch(const std::string& order, const int fds[kBwrapFds]) {
  if (pid_ <= 0 || !SendOrder(sock_, order, fds)) return -1;
  pid_t pid = pid_;
  pid_ = -1;
  close(sock_);
  sock_ = -1;
  return pid;
}

SparePool::SparePool(const Cgroups* cgroups, std::string init_path, int size, WarmUp warm_up)
    : cgroups_(cgroups), init_path_(std::move(init_path)),
      size_(static_cast<size_t>(std::max(size, 0))), warm_up_(std::move(warm_up)) {
  if (size_ == 0) return;
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) return;  // no pool: every sandbox starts the direct way
  thread_ = std::thread([this] { Run(); });
}

SparePool::~SparePool() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  Wake();
  if (thread_.joinable()) thread_.join();
  ready_.clear();
  if (wake_fd_ >= 0) close(wake_fd_);
}

void SparePool::Wake() {
  if (wake_fd_ < 0) return;
  uint64_t one = 1;
  (void)!write(wake_fd_, &one, sizeof(one));
}

std::unique_ptr<Spare> SparePool::Take() {
  std::unique_ptr<Spare> taken;
  std::vector<std::unique_ptr<Spare>> dead;
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!ready_.empty() && !taken) {
      std::unique_ptr<Spare> s = std::move(ready_.front());
      ready_.pop_front();
      if (s->Alive()) {
        taken = std::move(s);
        taken->pool_ = this;
        ++taken_;
        hold_until_ = Clock::now() + kRefillHold;
      } else {
        dead.push_back(std::move(s));
      }
    }
  }
  Wake();
  return taken;  // `dead` are reaped and removed here, outside the lock
}

void SparePool::Settled() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --taken_;
    settled_at_ = Clock::now();
  }
  Wake();
}

size_t SparePool::Ready() const {
  std::lock_guard<std::mutex> lock(mu_);
  return ready_.size();
}

bool SparePool::WaitFullBlocking(std::chrono::milliseconds timeout) const {
  std::unique_lock<std::mutex> lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return stop_ || ready_.size() >= size_; }) &&
         ready_.size() >= size_;
}

std::vector<pid_t> SparePool::PidsForTest() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<pid_t> pids;
  for (const auto& s : ready_) pids.push_back(s->pid());
  return pids;
}

void SparePool::Run() {
  int failures = 0;
  Clock::time_point retry_at = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    std::vector<std::unique_ptr<Spare>> dead;
    for (auto it = ready_.begin(); it != ready_.end();) {
      if ((*it)->Alive()) {
        ++it;
      } else {
        dead.push_back(std::move(*it));
        it = ready_.erase(it);
      }
    }
    if (!dead.empty()) {
      lock.unlock();
      dead.clear();
      lock.lock();
      continue;
    }
    Clock::time_point due =
        std::max(retry_at, taken_ > 0 ? hold_until_ : settled_at_ + kAfterStart);
    if (ready_.size() < size_ && Clock::now() >= due) {
      lock.unlock();
      std::unique_ptr<Spare> spare = Make();
      lock.lock();
      if (spare) {
        failures = 0;
        ready_.push_back(std::move(spare));
        cv_.notify_all();
      } else {
        auto wait = std::min<std::chrono::milliseconds>(kBackoff * (1 << std::min(failures, 10)),
                                                        kMaxBackoff);
        ++failures;
        retry_at = Clock::now() + wait;
      }
      continue;
    }
    // Sleep until woken (a spare taken or settled, the pool stopping), a spare ends, or a
    // refill is due.
    std::vector<pollfd> p = {{wake_fd_, POLLIN, 0}};
    for (const auto& s : ready_) p.push_back({s->sock_, POLLIN, 0});
    int timeout = -1;
    if (ready_.size() < size_) {
      auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(due - Clock::now());
      timeout = static_cast<int>(std::max<int64_t>(ms.count() + 1, 0));
    }
    lock.unlock();
    // A descriptor polled here may be closed meanwhile by the sandbox that took its spare;
    // at worst that wakes the loop once, which then looks at the pool as it is.
    poll(p.data(), p.size(), timeout);
    uint64_t drained;
    (void)!read(wake_fd_, &drained, sizeof(drained));
    lock.lock();
  }
}

std::unique_ptr<Spare> SparePool::Make() {
  // Process-wide, so that two drivers in one agentd never share a group.
  static std::atomic<uint64_t> next{0};
  auto cg = cgroups_->Create("spare-" + std::to_string(++next), Limits{});
  if (!cg.ok()) return nullptr;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return nullptr;
  std::string path = init_path_;
  char launch[] = "--launch", fd[] = "3";
  char* argv[] = {path.data(), launch, fd, nullptr};
  const std::vector<std::string> procs = (*cg)->procs_files();
  pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls from here to exec. This is the slow part that the spare
    // exists to do ahead of time.
    if (!JoinCgroups(procs)) _exit(kExitCgroup);
    if (sv[1] == 3 ? fcntl(3, F_SETFD, 0) != 0 : dup2(sv[1], 3) != 3) _exit(kExitFds);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0 || dup2(devnull, 0) != 0 || dup2(devnull, 1) != 1) _exit(kExitDevNull);
    close_range(4, ~0U, 0);  // stderr stays agentd's, for what the spare may have to say
    ResetSignals();
    execve(argv[0], argv, environ);
    _exit(kExitExec);
  }
  close(sv[1]);
  if (pid < 0) {
    close(sv[0]);
    return nullptr;
  }
  auto spare = std::make_unique<Spare>(pid, sv[0], std::move(cg).value());
  Clock::time_point deadline = Clock::now() + kReadyTimeout;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return nullptr;
    pollfd p[2] = {{sv[0], POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    int n = poll(p, 2, static_cast<int>(left.count()));
    if (n < 0 && errno != EINTR) return nullptr;
    if (p[1].revents & POLLIN) {
      uint64_t drained;
      (void)!read(wake_fd_, &drained, sizeof(drained));
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return nullptr;
    }
    if (p[0].revents != 0) {
      char c = 0;
      if (recv(sv[0], &c, 1, MSG_DONTWAIT) != 1 || c != 'r') return nullptr;
      if (warm_up_ && !warm_up_(spare.get())) return nullptr;
      return spare;
    }
  }
}

}  // namespace agentd::sandbox
