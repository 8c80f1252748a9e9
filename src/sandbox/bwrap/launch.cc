#include "sandbox/bwrap/launch.h"

#include <errno.h>
#include <stdint.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <memory>

namespace agentd::sandbox {
namespace {

// Longest order accepted: bwrap's argv (a few hundred bytes plus the read-only paths) and
// the environment.
constexpr size_t kMaxOrder = 1 << 20;

// The header of an order's message: one buffer and room for the descriptors.
struct OrderHeader {
  OrderHeader(void* data, size_t size) : iov{data, size} {
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
  }
  OrderHeader(const OrderHeader&) = delete;  // msg points into itself
  OrderHeader& operator=(const OrderHeader&) = delete;

  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kBwrapFds)] = {};
  iovec iov;
  msghdr msg{};
};

}  // namespace

void ResetSignals() {
  struct sigaction dfl;
  memset(&dfl, 0, sizeof(dfl));
  dfl.sa_handler = SIG_DFL;
  // SIGKILL and SIGSTOP refuse and need no reset. The C library refuses its own signals
  // (32 and 33, which its threads use), but a parent may have left them ignored, and an
  // ignored disposition survives exec: those are reset with the system call itself.
  struct KernelSigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)();
    uint64_t mask;
  } kernel_dfl{SIG_DFL, 0, nullptr, 0};
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sigaction(sig, &dfl, nullptr) != 0 && sig != SIGKILL && sig != SIGSTOP) {
      syscall(SYS_rt_sigaction, sig, &kernel_dfl, nullptr, sizeof(kernel_dfl.mask));
    }
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
}

bool JoinCgroups(const std::vector<std::string>& procs_files) {
  for (const auto& f : procs_files) {
    int fd = open(f.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0) return false;
    bool ok = write(fd, "0", 1) == 1;
    close(fd);
    if (!ok) return false;
  }
  return true;
}

void ExecBwrap(const int fds[kBwrapFds], long uid, char* const argv[], char* const envp[]) {
  if (uid >= 0) {
    const auto id = static_cast<uid_t>(uid);
    if (setgroups(0, nullptr) != 0 || setresgid(id, id, id) != 0 || setresuid(id, id, id) != 0) {
      _exit(kExitUid);
    }
  }
  // dup2 to the fixed numbers the arguments name; the sources are all above 7 or are moved
  // there first, so no dup2 overwrites a source still needed.
  int src[kBwrapFds];
  for (int i = 0; i < kBwrapFds; ++i) {
    src[i] = fds[i];
    if (src[i] <= 7 && (src[i] = fcntl(src[i], F_DUPFD_CLOEXEC, 8)) < 0) _exit(kExitFds);
  }
  for (int i = kSupervisorFd; i <= kEtcFd; ++i) {
    if (dup2(src[i], 3 + i) != 3 + i) _exit(kExitFds);
  }
  if (dup2(src[kStderrFd], 2) != 2) _exit(kExitFds);
  int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull < 0 || dup2(devnull, 0) != 0 || dup2(devnull, 1) != 1) _exit(kExitDevNull);
  close_range(8, ~0U, 0);
  ResetSignals();
  execve(argv[0], argv, envp);
  _exit(kExitExec);
}

std::string EncodeOrder(long uid, const std::vector<std::string>& argv, char* const envp[]) {
  std::string out = uid >= 0 ? std::to_string(uid) : "-";
  out.push_back('\0');
  out += std::to_string(argv.size());
  out.push_back('\0');
  for (const auto& a : argv) out.append(a.c_str(), a.size() + 1);
  for (char* const* e = envp; e != nullptr && *e != nullptr; ++e) out.append(*e, strlen(*e) + 1);
  return out;
}

bool SendOrder(int sock, const std::string& order, const int fds[kBwrapFds]) {
  if (order.size() > kMaxOrder) {
    errno = E2BIG;
    return false;
  }
  OrderHeader h(const_cast<char*>(order.data()), order.size());
  cmsghdr* c = CMSG_FIRSTHDR(&h.msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int) * kBwrapFds);
  memcpy(CMSG_DATA(c), fds, sizeof(int) * kBwrapFds);
  ssize_t n;
  do {
    n = sendmsg(sock, &h.msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n == static_cast<ssize_t>(order.size());
}

int RunSpare(int sock) {
  fcntl(sock, F_SETFD, FD_CLOEXEC);
  ssize_t n;
  do {
    n = send(sock, "r", 1, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n != 1) return 0;

  // Not zeroed: the pages of the buffer cost nothing until the order is written into them.
  std::unique_ptr<char[]> text(new char[kMaxOrder + 1]);
  OrderHeader h(text.get(), kMaxOrder + 1);
  msghdr& msg = h.msg;
  do {
    n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  if (n <= 0) return 0;  // the driver let the spare go
  int fds[kBwrapFds];
  int got = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
      got = static_cast<int>((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
      if (got == kBwrapFds) memcpy(fds, CMSG_DATA(c), sizeof(fds));
    }
  }
  if (got != kBwrapFds || (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0) return kExitOrder;

  // Split "<uid>\0<argc>\0<argv...>\0<env...>\0" in place.
  const size_t size = static_cast<size_t>(n);
  if (text[size - 1] != '\0') return kExitOrder;
  std::vector<char*> fields;
  for (size_t at = 0; at < size; at += strlen(&text[at]) + 1) fields.push_back(&text[at]);
  if (fields.size() < 3) return kExitOrder;
  long uid = strcmp(fields[0], "-") == 0 ? -1 : strtol(fields[0], nullptr, 10);
  size_t argc = strtoul(fields[1], nullptr, 10);
  if (argc == 0 || argc > fields.size() - 2) return kExitOrder;
  std::vector<char*> argv(fields.begin() + 2, fields.begin() + 2 + static_cast<long>(argc));
  argv.push_back(nullptr);
  std::vector<char*> envp(fields.begin() + 2 + static_cast<long>(argc), fields.end());
  envp.push_back(nullptr);
  ExecBwrap(fds, uid, argv.data(), envp.data());
}

}  // namespace agentd::sandbox
