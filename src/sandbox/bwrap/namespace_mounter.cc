#include "sandbox/bwrap/namespace_mounter.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "sandbox/host_util.h"

namespace agentd::sandbox {
namespace {

#ifndef MOVE_MOUNT_F_EMPTY_PATH
constexpr unsigned kMoveMountEmptyPath = 0x00000004;
#else
constexpr unsigned kMoveMountEmptyPath = MOVE_MOUNT_F_EMPTY_PATH;
#endif

}  // namespace

NamespaceMounter::NamespaceMounter() {
  home_ = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
  if (home_ < 0) {
    broken_ = host::Errno("/proc/self/ns/mnt");
    return;
  }
  thread_ = std::thread([this] { Run(); });
}

NamespaceMounter::~NamespaceMounter() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (home_ >= 0) close(home_);
}

Status NamespaceMounter::MoveMountBlocking(int ns, int tree, const std::string& target) {
  std::lock_guard<std::mutex> call(call_mu_);
  std::unique_lock<std::mutex> lock(mu_);
  if (!broken_.empty()) return Unavailable("cannot mount into a sandbox: " + broken_);
  ns_ = ns;
  tree_ = tree;
  target_ = target;
  done_ = false;
  pending_ = true;
  cv_.notify_all();
  cv_.wait(lock, [&] { return done_; });
  return result_;
}

void NamespaceMounter::Run() {
  // From here on this thread's root and working folder are its own.
  if (unshare(CLONE_FS) != 0) {
    std::lock_guard<std::mutex> lock(mu_);
    broken_ = host::Errno("unshare(CLONE_FS)");
  }
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    cv_.wait(lock, [&] { return stop_ || pending_; });
    if (pending_) {
      pending_ = false;
      result_ = broken_.empty() ? MoveInThread(ns_, tree_, target_)
                                : Unavailable("cannot mount into a sandbox: " + broken_);
      done_ = true;
      cv_.notify_all();
      continue;
    }
    if (stop_) return;
  }
}

Status NamespaceMounter::MoveInThread(int ns, int tree, const std::string& target) {
  if (setns(ns, CLONE_NEWNS) != 0) return Internal(host::Errno("entering the sandbox's mount namespace"));
  Status st;
  if (syscall(SYS_move_mount, tree, "", AT_FDCWD, target.c_str(), kMoveMountEmptyPath) != 0) {
    st = Internal(host::Errno("mounting on " + target + " in the sandbox"));
  }
  if (setns(home_, CLONE_NEWNS) != 0) {
    // Stranded in a sandbox's namespace: refuse every later move rather than make it here.
    broken_ = host::Errno("returning from a sandbox's mount namespace");
    return Internal(broken_);
  }
  return st;
}

}  // namespace agentd::sandbox
