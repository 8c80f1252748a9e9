// The `bwrap` driver: bubblewrap with every namespace unshared, a seccomp filter, Landlock,
// cgroup limits and a size-capped workspace filesystem (docs/security.md).
//
// One sandbox is one bwrap process tree that lives as long as the Sandbox object: bwrap,
// the supervisor (agentd-sandbox-init) and whatever the supervisor runs. When agentd runs as
// root, each sandbox also runs as its own unprivileged host uid (so an escape from the
// namespaces lands in an account that owns nothing but that workspace) on its own tmpfs of
// `disk_mb`; otherwise it runs as agentd's user on a plain directory, and reports the disk
// limit as not enforced.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "sandbox/sandbox.h"

namespace agentd::sandbox {

struct BwrapOptions {
  std::string bwrap_path;  // empty: found on PATH
  std::string init_path;   // agentd-sandbox-init; empty: beside the running executable
  std::string state_dir;   // the driver's own files (a synthetic /etc); created if missing
  // Sandboxes run as host uids uid_base + slot (when agentd is root).
  uid_t uid_base = 1000000000;
  uid_t uid_slots = 65536;
  // Spares kept ready (spare_pool.h), each in its own cgroups, so that a sandbox's start
  // does not wait for the kernel to move a process into its groups. As root a spare is a
  // whole sandbox (bwrap and its supervisor) waiting for a workspace, which is mounted into
  // it when a session takes it; otherwise it is an idle launcher that becomes bwrap then.
  // 0: none; every sandbox starts by forking and joining its groups itself.
  int spares = 1;
  // False keeps spares as launchers even as root.
  bool warm_spares = true;
  // The folders a spare binds read-only (the SandboxSpec::read_only_paths the daemon gives
  // every sandbox). A sandbox that asks for other folders starts without a spare.
  std::vector<std::string> read_only_paths;
};

class BwrapDriver : public SandboxDriver {
 public:
  // Probes the host (starts one sandbox and runs `true` in it) and records what it can
  // enforce. A host where bwrap cannot run still gives a driver, one whose Create fails
  // with the reason capabilities() gives.
  static std::unique_ptr<BwrapDriver> Open(const BwrapOptions& options);
  ~BwrapDriver() override;

  const Capabilities& capabilities() const override;
  Result<std::unique_ptr<Sandbox>> Create(const SandboxSpec& spec) override;
  // Removes a sandbox's root folder and the filesystem mounted on it (its workspace files
  // are gone after this: snapshot them first). The sandbox must not be running.
  Status Discard(const std::string& root) override;

  // Spare launchers ready now.
  size_t ReadySpares() const;
  // Waits until BwrapOptions::spares spares are ready (at once when that is 0). Returns
  // false at the timeout.
  bool WaitForSparesBlocking(std::chrono::milliseconds timeout) const;
  std::vector<pid_t> SparePidsForTest() const;

  struct Impl;

 private:
  explicit BwrapDriver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace agentd::sandbox
