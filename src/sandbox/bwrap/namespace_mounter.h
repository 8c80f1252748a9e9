// Moves a mount into another process's mount namespace: how the bwrap driver gives a warm
// spare (spare_pool.h) its session's workspace after the sandbox has started.
//
// setns(CLONE_NEWNS) refuses a thread that shares its filesystem context (root and working
// folder) with others, which every std::thread of agentd does. So one thread, started with
// the mounter, unshares its context (CLONE_FS) and serves the moves one at a time: it enters
// the target namespace, moves the mount onto the target path there, and returns to
// agentd's own namespace. Needs CAP_SYS_ADMIN over the target namespace (agentd as root).
//
// Thread-safe. Destroying the mounter stops its thread.
#pragma once

#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

#include "common/status.h"

namespace agentd::sandbox {

class NamespaceMounter {
 public:
  NamespaceMounter();
  ~NamespaceMounter();
  NamespaceMounter(const NamespaceMounter&) = delete;
  NamespaceMounter& operator=(const NamespaceMounter&) = delete;

  // Attaches `tree` (a detached mount from open_tree(OPEN_TREE_CLONE)) on `target`, an
  // absolute path in mount namespace `ns` (a descriptor of /proc/PID/ns/mnt). Blocks until
  // it is done. The descriptors stay the caller's.
  Status MoveMountBlocking(int ns, int tree, const std::string& target);

 private:
  void Run();
  Status MoveInThread(int ns, int tree, const std::string& target);

  int home_ = -1;  // agentd's own mount namespace

  std::mutex call_mu_;  // one request at a time
  std::mutex mu_;
  std::condition_variable cv_;
  // The request in flight, GUARDED_BY(mu_).
  bool pending_ = false;
  int ns_ = -1;
  int tree_ = -1;
  std::string target_;
  bool done_ = false;
  Status result_;
  bool stop_ = false;
  std::string broken_;  // set when the thread cannot serve (no private context, or stranded)
  std::thread thread_;
};

}  // namespace agentd::sandbox
