#include "sandbox/bwrap/seccomp_filter.h"

#include <errno.h>
#include <string.h>
#include <fcntl.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>

namespace agentd::sandbox {
namespace {

// Refused with EPERM.
constexpr const char* kDenied[] = {
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    "mount", "umount2", "pivot_root", "fsopen", "fsmount", "fsconfig", "move_mount",
    "open_tree", "mount_setattr",
    "bpf", "perf_event_open", "userfaultfd",
    "keyctl", "add_key", "request_key",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl", "quotactl_fd",
    "open_by_handle_at", "name_to_handle_at", "lookup_dcookie",
    "setns", "personality", "uselib", "vhangup", "nfsservctl", "settimeofday",
    "clock_settime", "clock_adjtime", "adjtimex", "iopl", "ioperm",
    nullptr,
};

}  // namespace

const char* const* DeniedSyscalls() { return kDenied; }

Result<std::string> BuildSeccompFilter(const SeccompOptions& options) {
  std::unique_ptr<void, void (*)(scmp_filter_ctx)> ctx(seccomp_init(SCMP_ACT_ALLOW),
                                                        seccomp_release);
  if (ctx == nullptr) return Internal("seccomp_init failed");
  auto fail = [](const char* what, int rc) {
    return Internal(std::string("seccomp: ") + what + ": " + strerror(-rc));
  };
  const uint32_t eperm = SCMP_ACT_ERRNO(EPERM);
  for (const char* const* name = kDenied; *name != nullptr; ++name) {
    int nr = seccomp_syscall_resolve_name(*name);
    if (nr == __NR_SCMP_ERROR) continue;  // not on this architecture
    if (int rc = seccomp_rule_add(ctx.get(), eperm, nr, 0); rc < 0) return fail(*name, rc);
  }
  // New user namespaces (bwrap's --disable-userns also closes them; this is the second lock).
  int rc = seccomp_rule_add(ctx.get(), eperm, SCMP_SYS(unshare), 1,
                            SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER));
  if (rc < 0) return fail("unshare", rc);
  rc = seccomp_rule_add(ctx.get(), eperm, SCMP_SYS(clone), 1,
                        SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER));
  if (rc < 0) return fail("clone", rc);
  rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
  if (rc < 0) return fail("clone3", rc);
  if (options.statx_enosys) {
    rc = seccomp_rule_add(ctx.get(), SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(statx), 0);
    if (rc < 0) return fail("statx", rc);
  }
  // Raw and packet sockets.
  rc = seccomp_rule_add(ctx.get(), eperm, SCMP_SYS(socket), 1,
                        SCMP_A0(SCMP_CMP_EQ, AF_PACKET));
  if (rc < 0) return fail("socket(AF_PACKET)", rc);
  rc = seccomp_rule_add(ctx.get(), eperm, SCMP_SYS(socket), 1,
                        SCMP_A1(SCMP_CMP_MASKED_EQ, 0xf, SOCK_RAW));
  if (rc < 0) return fail("socket(SOCK_RAW)", rc);
  // TIOCSTI pushes input into the controlling terminal of whoever reads it next.
  rc = seccomp_rule_add(ctx.get(), eperm, SCMP_SYS(ioctl), 1,
                        SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, 0x5412u /* TIOCSTI */));
  if (rc < 0) return fail("ioctl(TIOCSTI)", rc);

  int fd = memfd_create("agentd-seccomp", MFD_CLOEXEC);
  if (fd < 0) return Internal(std::string("memfd_create: ") + strerror(errno));
  rc = seccomp_export_bpf(ctx.get(), fd);
  std::string bpf;
  if (rc == 0) {
    off_t size = lseek(fd, 0, SEEK_END);
    bpf.resize(static_cast<size_t>(size));
    if (pread(fd, bpf.data(), bpf.size(), 0) != size) rc = -EIO;
  }
  close(fd);
  if (rc < 0) return fail("export", rc);
  return bpf;
}

}  // namespace agentd::sandbox
