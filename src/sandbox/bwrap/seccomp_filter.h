// The seccomp filter of sandboxed processes, built with libseccomp.
//
// Default allow, with a deny list of what a tool never needs and an attacker wants: tracing
// other processes, mounting, BPF, kernel keyrings, io_uring (a large attack surface that
// seccomp cannot see into), loading kernels and modules, raw and packet sockets, new user
// namespaces (unshare/clone with CLONE_NEWUSER; clone3, whose flags seccomp cannot read,
// answers ENOSYS so that the C library falls back to clone), and other host-wide switches.
// Syscalls of any other architecture (32-bit entry points) kill the process.
#pragma once

#include <string>

#include "common/status.h"

namespace agentd::sandbox {

struct SeccompOptions {
  // statx answers ENOSYS, so the C library falls back to fstatat: for gVisor releases that
  // reject flags coreutils passes to statx (src/sandbox/gvisor/README.md).
  bool statx_enosys = false;
};

// The filter as a classic BPF program, ready for bwrap's --seccomp FD.
Result<std::string> BuildSeccompFilter(const SeccompOptions& options = {});

// Names of the syscalls the filter refuses (for /readyz and docs).
const char* const* DeniedSyscalls();

}  // namespace agentd::sandbox
