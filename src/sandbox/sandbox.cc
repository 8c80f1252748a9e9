#include "sandbox/sandbox.h"

namespace agentd::sandbox {
namespace {

Status NoCheckpoints() {
  return FailedPrecondition("this sandbox driver cannot checkpoint sandboxes");
}

}  // namespace

Status SandboxDriver::Hibernate(Sandbox&, const std::string&) { return NoCheckpoints(); }

Result<std::unique_ptr<Sandbox>> SandboxDriver::Resume(const SandboxSpec&, const std::string&) {
  return NoCheckpoints();
}

Result<std::unique_ptr<Process>> SandboxDriver::Reattach(Sandbox&, int64_t) {
  return NoCheckpoints();
}

int64_t SandboxDriver::ProcessId(const Process&) const { return -1; }

}  // namespace agentd::sandbox
