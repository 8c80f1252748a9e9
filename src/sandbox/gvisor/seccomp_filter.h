// The seccomp filter the supervisor loads on itself inside a gVisor sandbox, where gVisor's
// Sentry enforces it on the tools (runsc also filters the Sentry and gofer on the host).
//
// The bwrap driver's deny list (bwrap/seccomp_filter.h), plus one answer gVisor needs:
// statx answers ENOSYS, because this runsc (Debian 12, 20221219) refuses the
// AT_NO_AUTOMOUNT flag that coreutils passes with EINVAL, which breaks ls, stat and cp;
// on ENOSYS the C library falls back to fstatat, which gVisor serves.
#pragma once

#include <string>

#include "common/status.h"

namespace agentd::sandbox {

// The filter as a classic BPF program (an array of struct sock_filter).
Result<std::string> BuildGvisorSeccompFilter();

}  // namespace agentd::sandbox
