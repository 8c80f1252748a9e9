// agentd-sandbox-init: the first process of every sandbox (after the driver's own init).
//
// Usage (by a driver only): agentd-sandbox-init FD [--proxy PORT] RW_DIR...
//   FD      the SOCK_SEQPACKET socket to agentd (supervisor_protocol.h)
//   PORT    listen on 127.0.0.1:PORT and hand every connection to agentd, whose egress
//           proxy serves it (the sandbox has no other way out)
//   RW_DIR  directories that stay writable under Landlock; everything else is read-only
//
// It restricts itself with Landlock (inherited by everything it starts), then serves spawn
// and kill requests. Each spawned command gets a "runner" process that is a child
// subreaper: when the command ends or is killed, the runner kills whatever the command left
// behind, even processes that escaped its process group, and exits with the command's
// status.
#include <errno.h>
#include <fcntl.h>
#include <linux/landlock.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "sandbox/supervisor_protocol.h"

namespace {

using nlohmann::json;
using agentd::sandbox::ReceiveMessage;
using agentd::sandbox::SendMessage;

// Filesystem rights by Landlock ABI version (the kernel header may predate the newest).
uint64_t HandledFsRights(int abi) {
  if (abi >= 5) return (1ULL << 16) - 1;  // + IOCTL_DEV
  if (abi >= 3) return (1ULL << 15) - 1;  // + TRUNCATE
  if (abi >= 2) return (1ULL << 14) - 1;  // + REFER
  return (1ULL << 13) - 1;
}

constexpr uint64_t kReadOnlyRights =
    LANDLOCK_ACCESS_FS_EXECUTE | LANDLOCK_ACCESS_FS_READ_FILE | LANDLOCK_ACCESS_FS_READ_DIR;

// Returns the ABI enforced, 0 when the kernel has no Landlock, -1 on failure.
int RestrictWithLandlock(const std::vector<std::string>& rw_dirs) {
  int abi = static_cast<int>(
      syscall(SYS_landlock_create_ruleset, nullptr, 0, LANDLOCK_CREATE_RULESET_VERSION));
  if (abi < 0) return (errno == ENOSYS || errno == EOPNOTSUPP) ? 0 : -1;
  landlock_ruleset_attr attr{};
  attr.handled_access_fs = HandledFsRights(abi);
  int ruleset = static_cast<int>(syscall(SYS_landlock_create_ruleset, &attr, sizeof(attr), 0));
  if (ruleset < 0) return -1;
  auto add = [&](const char* path, uint64_t rights) {
    int fd = open(path, O_PATH | O_CLOEXEC);
    if (fd < 0) return errno == ENOENT;
    landlock_path_beneath_attr rule{};
    rule.allowed_access = rights & attr.handled_access_fs;
    rule.parent_fd = fd;
    bool ok = syscall(SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &rule, 0) == 0;
    close(fd);
    return ok;
  };
  bool ok = add("/", kReadOnlyRights);
  // Device nodes are written (/dev/null, /dev/tty) but never created.
  ok = ok && add("/dev", kReadOnlyRights | LANDLOCK_ACCESS_FS_WRITE_FILE);
  for (const auto& dir : rw_dirs) ok = ok && add(dir.c_str(), attr.handled_access_fs);
  if (!ok || syscall(SYS_landlock_restrict_self, ruleset, 0) != 0) {
    close(ruleset);
    return -1;
  }
  close(ruleset);
  return abi;
}

// A TCP listener on 127.0.0.1:port (the sandbox's own loopback).
int ListenOnLoopback(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(fd, 64) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

std::vector<pid_t> Children() {
  std::vector<pid_t> pids;
  char path[64];
  snprintf(path, sizeof(path), "/proc/self/task/%d/children", getpid());
  if (FILE* f = fopen(path, "re")) {
    int pid;
    while (fscanf(f, "%d", &pid) == 1) pids.push_back(pid);
    fclose(f);
  }
  return pids;
}

// Kills and reaps every child of this process except those in `keep`, repeating while
// killed children hand theirs to us (we are a subreaper), until none is left.
void KillChildren(const std::map<pid_t, long long>& keep = {}) {
  for (int round = 0; round < 100000; ++round) {
    bool any = false;
    for (pid_t pid : Children()) {
      if (keep.count(pid) != 0) continue;
      any = true;
      kill(pid, SIGKILL);
      waitpid(pid, nullptr, 0);
    }
    if (!any) return;
  }
}

[[noreturn]] void RunCommand(const json& req, int in_r, int out_w, int err_w) {
  std::vector<std::string> args = req.at("argv").get<std::vector<std::string>>();
  std::vector<std::string> env_strings;
  if (auto env = req.find("env"); env != req.end() && env->is_object()) {
    for (auto it = env->begin(); it != env->end(); ++it) {
      if (it->is_string()) env_strings.push_back(it.key() + "=" + it->get<std::string>());
    }
  }
  std::vector<char*> argv, envp;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  for (auto& e : env_strings) envp.push_back(e.data());
  envp.push_back(nullptr);

  // The runner: a subreaper that owns everything the command starts.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGTERM);
  sigprocmask(SIG_BLOCK, &mask, nullptr);

  pid_t cmd = fork();
  if (cmd < 0) _exit(127);
  if (cmd == 0) {
    sigprocmask(SIG_UNBLOCK, &mask, nullptr);
    setsid();
    dup2(in_r, 0);
    dup2(out_w, 1);
    dup2(err_w, 2);
    closefrom(3);
    // The memory limit's OOM killer picks the command before the supervisor.
    int adj = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (adj >= 0) {
      (void)!write(adj, "1000", 4);
      close(adj);
    }
    execve(argv[0], argv.data(), envp.data());
    dprintf(2, "cannot run %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  close(in_r);
  close(out_w);
  close(err_w);
  int code = -1;
  for (;;) {
    int sig = 0;
    sigwait(&mask, &sig);
    if (sig == SIGTERM) {
      kill(-cmd, SIGKILL);
      kill(cmd, SIGKILL);
      if (code < 0) code = 128 + SIGKILL;
      break;
    }
    int status;
    pid_t p;
    while ((p = waitpid(-1, &status, WNOHANG)) > 0) {
      if (p == cmd) code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    if (code >= 0) break;
  }
  kill(-cmd, SIGKILL);
  KillChildren();
  _exit(code);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: agentd-sandbox-init FD RW_DIR...\n");
    return 2;
  }
  int sock = atoi(argv[1]);
  int first_dir = 2;
  int proxy = -1;  // listening socket of the egress proxy, when enabled
  if (argc > 3 && strcmp(argv[2], "--proxy") == 0) {
    first_dir = 4;
    proxy = ListenOnLoopback(atoi(argv[3]));
    if (proxy < 0) {
      SendMessage(sock, json{{"op", "fatal"}, {"message", std::string("egress proxy listener: ") + strerror(errno)}}.dump(), {});
      return 1;
    }
  }
  std::vector<std::string> rw_dirs(argv + first_dir, argv + argc);
  // Orphans of a runner that died come here, to be swept (below) instead of living on.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  int abi = RestrictWithLandlock(rw_dirs);
  if (abi < 0) {
    SendMessage(sock, json{{"op", "fatal"}, {"message", std::string("landlock: ") + strerror(errno)}}.dump(), {});
    return 1;
  }
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGPIPE);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
  if (sfd < 0) return 1;
  if (!SendMessage(sock, json{{"op", "ready"}, {"landlock", abi}}.dump(), {})) return 1;

  std::map<pid_t, long long> runners;  // runner pid -> request id
  std::string text;
  std::vector<int> fds;
  for (;;) {
    pollfd p[3] = {{sock, POLLIN, 0}, {sfd, POLLIN, 0}, {proxy, POLLIN, 0}};
    if (poll(p, proxy >= 0 ? 3 : 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[1].revents & POLLIN) {
      signalfd_siginfo info;
      while (read(sfd, &info, sizeof(info)) == sizeof(info)) {
        if (info.ssi_signo != SIGCHLD) continue;
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
          auto it = runners.find(pid);
          if (it == runners.end()) continue;
          int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
          SendMessage(sock, json{{"op", "exit"}, {"id", it->second}, {"code", code}}.dump(), {});
          runners.erase(it);
          // A runner killed by a signal (the OOM killer) left its command's tree to us.
          if (!WIFEXITED(status)) KillChildren(runners);
        }
        break;
      }
    }
    if (proxy >= 0 && (p[2].revents & POLLIN)) {
      // A program connected to the proxy address: agentd decides and serves it.
      int conn = accept4(proxy, nullptr, nullptr, SOCK_CLOEXEC);
      if (conn >= 0) {
        SendMessage(sock, json{{"op", "connection"}, {"id", 0}}.dump(), {conn});
        close(conn);
      }
    }
    if (!(p[0].revents & (POLLIN | POLLHUP | POLLERR))) continue;
    if (!ReceiveMessage(sock, &text, &fds)) break;  // agentd is gone
    for (int fd : fds) close(fd);
    json req = json::parse(text, nullptr, false);
    if (!req.is_object() || !req.contains("id") || !req["id"].is_number_integer()) continue;
    long long id = req["id"].get<long long>();
    std::string op = req.value("op", "");
    if (op == "kill") {
      for (const auto& [pid, rid] : runners) {
        if (rid == id) kill(pid, SIGTERM);
      }
      continue;
    }
    if (op != "spawn" || !req.contains("argv") || !req["argv"].is_array() || req["argv"].empty()) {
      SendMessage(sock, json{{"op", "error"}, {"id", id}, {"message", "bad request"}}.dump(), {});
      continue;
    }
    int in[2], out[2], err[2];
    if (pipe2(in, O_CLOEXEC) != 0) continue;
    if (pipe2(out, O_CLOEXEC) != 0) {
      close(in[0]), close(in[1]);
      continue;
    }
    if (pipe2(err, O_CLOEXEC) != 0) {
      close(in[0]), close(in[1]), close(out[0]), close(out[1]);
      continue;
    }
    pid_t runner = fork();
    if (runner == 0) {
      close(sock);
      close(sfd);
      if (proxy >= 0) close(proxy);
      sigprocmask(SIG_UNBLOCK, &mask, nullptr);
      close(in[1]);
      close(out[0]);
      close(err[0]);
      try {
        RunCommand(req, in[0], out[1], err[1]);
      } catch (...) {
        _exit(127);
      }
    }
    close(in[0]);
    close(out[1]);
    close(err[1]);
    if (runner < 0) {
      SendMessage(sock, json{{"op", "error"}, {"id", id}, {"message", std::string("fork: ") + strerror(errno)}}.dump(), {});
    } else {
      runners[runner] = id;
      SendMessage(sock, json{{"op", "spawned"}, {"id", id}}.dump(), {in[1], out[0], err[0]});
    }
    close(in[1]);
    close(out[0]);
    close(err[0]);
  }
  for (const auto& [pid, rid] : runners) kill(pid, SIGTERM);
  while (wait(nullptr) > 0) {
  }
  return 0;
}
