#include "sandbox/gvisor/seccomp_filter.h"

#include "sandbox/bwrap/seccomp_filter.h"

namespace agentd::sandbox {

Result<std::string> BuildGvisorSeccompFilter() {
  SeccompOptions options;
  options.statx_enosys = true;
  return BuildSeccompFilter(options);
}

}  // namespace agentd::sandbox
