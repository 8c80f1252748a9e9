// sandbox_probe: tries one thing a sandboxed tool must not be able to do and says what the
// kernel answered. Statically linked, so it runs under any driver. Copied into a sandbox's
// workspace by the conformance tests.
//
//   sandbox_probe ACTION [ARGS]   prints "allowed" (exit 0) or "denied: <errno name>" (exit 1)
#include <arpa/inet.h>
#include <errno.h>
#include <linux/bpf.h>
#include <linux/io_uring.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

namespace {

int Report(long rc) {
  if (rc >= 0) {
    printf("allowed\n");
    return 0;
  }
  printf("denied: %s\n", strerrorname_np(errno));
  return 1;
}

long Connect(const char* host, int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  inet_pton(AF_INET, host, &a.sin_addr);
  long rc = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  close(fd);
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return 2;
  std::string what = argv[1];
  if (what == "ptrace") return Report(ptrace(PTRACE_ATTACH, 1, nullptr, nullptr));
  if (what == "traceme") return Report(ptrace(PTRACE_TRACEME, 0, nullptr, nullptr));
  if (what == "mount") return Report(mount("none", "/tmp", "tmpfs", 0, nullptr));
  if (what == "packet") return Report(socket(AF_PACKET, SOCK_RAW, 0));
  if (what == "raw") return Report(socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
  if (what == "userns") return Report(unshare(CLONE_NEWUSER));
  if (what == "clone_userns") {
    long rc = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, nullptr, nullptr, nullptr, 0);
    if (rc == 0) _exit(0);
    return Report(rc);
  }
  if (what == "bpf") {
    union bpf_attr attr;
    memset(&attr, 0, sizeof(attr));
    return Report(syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof(attr)));
  }
  if (what == "io_uring") {
    io_uring_params p;
    memset(&p, 0, sizeof(p));
    return Report(syscall(SYS_io_uring_setup, 4, &p));
  }
  if (what == "keyctl") return Report(syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3, 0));
  if (what == "module") return Report(syscall(SYS_finit_module, 0, "", 0));
  if (what == "connect" && argc == 4) return Report(Connect(argv[2], atoi(argv[3])));
  if (what == "forks" && argc == 3) {
    // Starts up to N processes that wait; prints how many started before fork failed and
    // why ("forked K: denied: EAGAIN", or "forked N" when none failed), then ends them.
    long n = strtol(argv[2], nullptr, 10);
    std::vector<pid_t> kids;
    int err = 0;
    for (long i = 0; i < n; ++i) {
      pid_t pid = fork();
      if (pid == 0) {
        pause();
        _exit(0);
      }
      if (pid < 0) {
        err = errno;
        break;
      }
      kids.push_back(pid);
    }
    for (pid_t k : kids) kill(k, SIGKILL);
    for (pid_t k : kids) waitpid(k, nullptr, 0);
    if (err != 0) {
      printf("forked %zu: denied: %s\n", kids.size(), strerrorname_np(err));
      return 1;
    }
    printf("forked %zu\n", kids.size());
    return 0;
  }
  if (what == "memory" && argc == 3) {
    // Touches MB megabytes, one page at a time.
    size_t mb = strtoul(argv[2], nullptr, 10);
    for (size_t i = 0; i < mb; ++i) {
      char* p = static_cast<char*>(malloc(1 << 20));
      if (p == nullptr) return Report(-1);
      for (size_t j = 0; j < (1u << 20); j += 4096) p[j] = 1;
    }
    return Report(0);
  }
  fprintf(stderr, "unknown action\n");
  return 2;
}
