// The `gvisor` driver: each sandbox is one runsc (gVisor) container, so a tool's system
// calls are served by gVisor's user-space kernel (the Sentry) instead of the host's, with
// no network, a read-only system, the workspace at /workspace and cgroup limits around
// the whole container (src/sandbox/gvisor/README.md).
//
// runsc cannot hand host descriptors to processes inside, so the supervisor
// (agentd-sandbox-init) runs as the container's process in its "stdio" mode
// (supervisor_protocol.h) and every spawned process's stdin/stdout/stderr travel as frames
// over the container's stdin and stdout. The driver turns them back into pipes for Spawn.
//
// Where runsc's checkpoint works, Hibernate() saves a running sandbox, live processes
// included, to an image folder, and Resume() brings it back (in this or a later agentd);
// capabilities() lists "checkpoint" then, and otherwise says why not in not_enforced.
//
// Thread-safe, like every SandboxDriver.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "sandbox/sandbox.h"

namespace agentd::sandbox {

struct GvisorOptions {
  std::string runsc_path;  // empty: found on PATH
  std::string init_path;   // agentd-sandbox-init; empty: beside the running executable
  std::string state_dir;   // the driver's own files (root filesystem, bundles, runsc state)
  // runsc --platform: "ptrace" works everywhere; "kvm" is tried by the probe and replaced by
  // ptrace (with the reason in capabilities) when it does not run a command.
  std::string platform = "ptrace";
};

class GvisorDriver : public SandboxDriver {
 public:
  // Probes the host (starts one sandbox, runs `true`, and checkpoints and restores it) and
  // records what it can enforce. A host where runsc cannot run still gives a driver, one
  // whose Create fails with the reason capabilities() gives.
  static std::unique_ptr<GvisorDriver> Open(const GvisorOptions& options);
  ~GvisorDriver() override;

  const Capabilities& capabilities() const override;
  Result<std::unique_ptr<Sandbox>> Create(const SandboxSpec& spec) override;
  Status Discard(const std::string& root) override;

  // Checkpoints (capability "checkpoint"; sandbox.h). Hibernate fails with
  // FailedPrecondition when the sandbox is not running. Commands still running in a
  // hibernated sandbox end with an error.
  Status Hibernate(Sandbox& box, const std::string& image_dir) override;
  Result<std::unique_ptr<Sandbox>> Resume(const SandboxSpec& spec,
                                          const std::string& image_dir) override;
  Result<std::unique_ptr<Process>> Reattach(Sandbox& box, int64_t id) override;
  int64_t ProcessId(const Process& p) const override;
  // The processes of a resumed sandbox that were still running when it was saved.
  std::vector<int64_t> LiveProcesses(Sandbox& box);

  struct Impl;

 private:
  explicit GvisorDriver(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace agentd::sandbox
