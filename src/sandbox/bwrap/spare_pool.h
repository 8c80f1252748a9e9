// Spare launchers for the bwrap driver: processes already placed in a fresh set of cgroups,
// waiting to become a sandbox's bwrap (launch.h says why and how). A warm spare (a pool
// given a WarmUp) goes one step further: it is a whole sandbox, bwrap and supervisor,
// started on no workspace, which the driver attaches when a session takes it.
//
// The pool owns a background thread that keeps `size` spares ready: it creates their groups
// (no limits), forks each spare the way the driver forks bwrap, and waits for it to say it is
// ready. It replaces a spare that dies, and never hands one out. A spare that is taken is
// the taker's: it gets the sandbox's limits and name on its groups (Adopt), then an order
// (Launch), and is destroyed when the start it served is over.
//
// The refill waits while a taken spare is still alive (up to kRefillHold after the take):
// moving a process into a cgroup holds the kernel's cgroup mutex through the grace period,
// and the taker's start needs that mutex too (renaming its groups).
//
// Groups of a spare are named "<agentd pid>-spare-<n>", so Cgroups' removal of stale groups
// covers those of an agentd that was killed (its spares exit when their socket closes).
//
// Thread-safe. Destroying the pool stops its thread and kills, reaps and removes every spare
// it still holds.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "sandbox/bwrap/launch.h"
#include "sandbox/cgroup.h"

namespace agentd::sandbox {

class SparePool;

// A warm spare's sandbox: bwrap and its supervisor (started with --attach), running in the
// spare's groups with no workspace yet.
struct StartedSandbox {
  pid_t bwrap = -1;
  int supervisor = -1;    // agentd's end of the supervisor socket
  int bwrap_stderr = -1;  // read end of bwrap's stderr
  int mount_ns = -1;      // the sandbox's mount namespace, where its workspace goes
};

// One spare. Destroying it before Launch kills and reaps the process and removes its groups
// (unless Adopt took them).
class Spare {
 public:
  Spare(pid_t pid, int sock, std::unique_ptr<Cgroup> cgroup)
      : pid_(pid), sock_(sock), cgroup_(std::move(cgroup)) {}
  ~Spare();
  Spare(const Spare&) = delete;
  Spare& operator=(const Spare&) = delete;

  pid_t pid() const { return pid_; }
  // False once the process has ended (or broke the protocol).
  bool Alive() const;
  // Sets `limits` on the spare's groups, names them after sandbox `name` (where the host
  // allows renaming) and hands them over. On failure the spare keeps its groups.
  Result<std::unique_ptr<Cgroup>> Adopt(const std::string& name, const Limits& limits);
  // Sends the order; the spare becomes bwrap. Returns the pid, which is then the caller's to
  // reap, or -1 when the spare is gone (errno set), which leaves the spare to be destroyed.
  pid_t Launch(const std::string& order, const int fds[kBwrapFds]);

  // Warm spares: after Launch, the spare holds the sandbox that bwrap started, which runs
  // as `uid`; `release_uid` gives the uid back if the spare goes unused.
  void BecomeSandbox(StartedSandbox sandbox, uid_t uid, std::function<void(uid_t)> release_uid);
  bool started() const { return started_; }
  // The uid becomes the caller's to give back.
  uid_t ClaimUid();
  // Hands the sandbox over (after Adopt); the spare is then empty.
  StartedSandbox TakeSandbox();

 private:
  friend class SparePool;  // polls sock_ to notice a spare's end; sets pool_ when taken
  pid_t pid_;  // the launcher, which becomes bwrap
  int sock_;   // the launcher's socket, or a started sandbox's supervisor socket
  std::unique_ptr<Cgroup> cgroup_;
  SparePool* pool_ = nullptr;  // the pool it was taken from, told when it is gone
  bool started_ = false;
  int bwrap_stderr_ = -1;
  int mount_ns_ = -1;
  uid_t uid_ = 0;
  std::function<void(uid_t)> release_uid_;  // empty once claimed
};

class SparePool {
 public:
  // Turns a ready launcher into a started sandbox (Launch, then BecomeSandbox), on the
  // pool's thread. False when it could not; it then leaves nothing running.
  using WarmUp = std::function<bool(Spare*)>;

  // `init_path`: agentd-sandbox-init. Starts the thread when `size` > 0. With `warm_up`,
  // every spare is started that far before it is handed out.
  SparePool(const Cgroups* cgroups, std::string init_path, int size, WarmUp warm_up = nullptr);
  ~SparePool();

  // A ready spare, or nullptr when none is (the caller starts bwrap itself). Never blocks
  // on a spare being made. The spare must be destroyed before the pool.
  std::unique_ptr<Spare> Take();
  size_t Ready() const;
  // Waits until `size` spares are ready. Returns false at the timeout.
  bool WaitFullBlocking(std::chrono::milliseconds timeout) const;
  std::vector<pid_t> PidsForTest() const;

 private:
  friend class Spare;  // Settled
  void Run();
  std::unique_ptr<Spare> Make();
  void Wake();
  void Settled();  // a taken spare is gone

  const Cgroups* const cgroups_;
  const std::string init_path_;
  const size_t size_;
  const WarmUp warm_up_;
  int wake_fd_ = -1;  // eventfd: Take and the destructor wake the thread

  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  std::deque<std::unique_ptr<Spare>> ready_;          // GUARDED_BY(mu_)
  int taken_ = 0;  // spares taken, not yet destroyed; GUARDED_BY(mu_)
  // No refill before this while taken_ > 0. GUARDED_BY(mu_)
  std::chrono::steady_clock::time_point hold_until_;
  std::chrono::steady_clock::time_point settled_at_;  // last taken spare gone; GUARDED_BY(mu_)
  bool stop_ = false;                                 // GUARDED_BY(mu_)
  std::thread thread_;
};

}  // namespace agentd::sandbox
