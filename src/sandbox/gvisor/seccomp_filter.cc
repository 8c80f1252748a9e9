#include "sandbox/gvisor/seccomp_filter.h"

#include <errno.h>
#include <linux/sched.h>
#include <seccomp.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <memory>

#include "sandbox/bwrap/seccomp_filter.h"

namespace agentd::sandbox {

Result<std::string> BuildGvisorSeccompFilter() {
  std::unique_ptr<void, void (*)(scmp_filter_ctx)> ctx(seccomp_init(SCMP_ACT_ALLOW),
                                                        seccomp_release);
  if (ctx == nullptr) return Internal("seccomp_init failed");
  auto fail = [](const char* what, int rc) {
    return Internal(std::string("seccomp: ") + what + ": " + strerror(-rc));
  };
  const uint32_t eperm = SCMP_ACT_ERRNO(EPERM);
  for (const char* const* name = DeniedSyscalls(); *name != nullptr; ++name) {
    int nr = seccomp_syscall_resolve_name(*name);
    if (nr == __NR_SCMP_ERROR) continue;
    if (int rc = seccomp_rule_add(ctx.get(), eperm, nr, 0); rc < 0) return fail(*name, rc);
  }
  struct Rule {
    const char* what;
    uint32_t action;
    int nr;
    unsigned args;
    scmp_arg_cmp cmp;
  };
  const Rule rules[] = {
      {"unshare", eperm, SCMP_SYS(unshare), 1, SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)},
      {"clone", eperm, SCMP_SYS(clone), 1, SCMP_A0(SCMP_CMP_MASKED_EQ, CLONE_NEWUSER, CLONE_NEWUSER)},
      {"clone3", SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0, {}},
      {"statx", SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(statx), 0, {}},
      {"socket(AF_PACKET)", eperm, SCMP_SYS(socket), 1, SCMP_A0(SCMP_CMP_EQ, AF_PACKET)},
      {"socket(SOCK_RAW)", eperm, SCMP_SYS(socket), 1, SCMP_A1(SCMP_CMP_MASKED_EQ, 0xf, SOCK_RAW)},
      {"ioctl(TIOCSTI)", eperm, SCMP_SYS(ioctl), 1,
       SCMP_A1(SCMP_CMP_MASKED_EQ, 0xffffffffu, 0x5412u /* TIOCSTI */)},
  };
  for (const Rule& r : rules) {
    int rc = r.args == 0 ? seccomp_rule_add(ctx.get(), r.action, r.nr, 0)
                         : seccomp_rule_add(ctx.get(), r.action, r.nr, 1, r.cmp);
    if (rc < 0) return fail(r.what, rc);
  }
  int fd = memfd_create("agentd-seccomp", MFD_CLOEXEC);
  if (fd < 0) return Internal(std::string("memfd_create: ") + strerror(errno));
  int rc = seccomp_export_bpf(ctx.get(), fd);
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
