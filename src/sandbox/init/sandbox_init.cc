// agentd-sandbox-init: the first process of every sandbox (after the driver's own init).
//
// Usage (by a driver only): agentd-sandbox-init FD [--proxy PORT | --attach] RW_DIR...
//                        or agentd-sandbox-init --stdio ... (below)
//                        or agentd-sandbox-init --launch FD (a spare launcher of the bwrap
//                           driver, outside any sandbox: src/sandbox/bwrap/launch.h)
//   FD      the SOCK_SEQPACKET socket to agentd (supervisor_protocol.h)
//   PORT    listen on 127.0.0.1:PORT and hand every connection to agentd, whose egress
//           proxy serves it (the sandbox has no other way out)
//   RW_DIR  directories that stay writable under Landlock; everything else is read-only
//   --attach  started ahead of its session (a warm spare of the bwrap driver): it says
//           "ready" with a descriptor of its mount namespace, then waits for "attach",
//           which comes once agentd has mounted the workspace; only then does it enter the
//           workspace, open the proxy listener the attach names, restrict itself with
//           Landlock and answer "attached". Nothing runs before that.
//
// It restricts itself with Landlock (inherited by everything it starts), then serves spawn
// and kill requests. Each spawned command gets a "runner" process that is a child
// subreaper: when the command ends or is killed, the runner kills whatever the command left
// behind, even processes that escaped its process group, and exits with the command's
// status.
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <linux/filter.h>
#include <linux/landlock.h>
#include <linux/seccomp.h>
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

#include <algorithm>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "sandbox/bwrap/launch.h"
#include "sandbox/supervisor_protocol.h"

namespace {

using nlohmann::json;
using agentd::sandbox::ReceiveMessage;
using agentd::sandbox::SendMessage;
namespace proto = agentd::sandbox;

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
    return pids;
  }
  // Kernels without that file (gVisor): every process whose parent we are.
  DIR* proc = opendir("/proc");
  if (proc == nullptr) return pids;
  while (dirent* e = readdir(proc)) {
    int pid = atoi(e->d_name);
    if (pid <= 0) continue;
    char stat_path[64];
    snprintf(stat_path, sizeof(stat_path), "/proc/%d/stat", pid);
    FILE* f = fopen(stat_path, "re");
    if (f == nullptr) continue;
    char line[512];
    size_t n = fread(line, 1, sizeof(line) - 1, f);
    fclose(f);
    line[n] = '\0';
    // pid (comm) state ppid ...; comm may hold spaces and parentheses.
    const char* close_paren = strrchr(line, ')');
    int ppid = 0;
    char state = 0;
    if (close_paren != nullptr && sscanf(close_paren + 1, " %c %d", &state, &ppid) == 2 &&
        ppid == getpid()) {
      pids.push_back(pid);
    }
  }
  closedir(proc);
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
    // A bare name is looked up on the PATH the sandbox was started with.
    execvpe(argv[0], argv.data(), envp.data());
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

// Starts a runner for `req` (RunCommand in a child) with pipes for its command's stdin,
// stdout and stderr. The child first closes `theirs` (descriptors of the supervisor and of
// other commands: a copy of another command's pipe would hold it open past that command's
// end), points its own stdin and stdout at /dev/null (a stray write must not reach the
// supervisor's channel), and clears its signal mask. Returns the runner's pid and the
// supervisor's ends in `ends` (stdin write, stdout read, stderr read), or -1 with errno set
// and nothing left open.
pid_t StartRunner(const json& req, const std::vector<int>& theirs, int ends[3]) {
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) != 0) return -1;
  if (pipe2(out, O_CLOEXEC) != 0) {
    int e = errno;
    close(in[0]), close(in[1]);
    errno = e;
    return -1;
  }
  if (pipe2(err, O_CLOEXEC) != 0) {
    int e = errno;
    close(in[0]), close(in[1]), close(out[0]), close(out[1]);
    errno = e;
    return -1;
  }
  pid_t runner = fork();
  if (runner == 0) {
    for (int fd : theirs) {
      if (fd >= 0) close(fd);
    }
    close(in[1]);
    close(out[0]);
    close(err[0]);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull >= 0) dup2(devnull, 0), dup2(devnull, 1);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    try {
      RunCommand(req, in[0], out[1], err[1]);
    } catch (...) {
      _exit(127);
    }
  }
  int e = errno;
  close(in[0]);
  close(out[1]);
  close(err[1]);
  if (runner < 0) {
    close(in[1]), close(out[0]), close(err[0]);
    errno = e;
    return -1;
  }
  ends[0] = in[1];
  ends[1] = out[0];
  ends[2] = err[0];
  return runner;
}


// ---- The stdio mode (supervisor_protocol.h) ----

// Loads a classic BPF seccomp program on this process (inherited by everything it starts).
bool LoadSeccomp(const char* path) {
  std::string bpf;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) bpf.append(buf, static_cast<size_t>(n));
  close(fd);
  if (n < 0 || bpf.empty() || bpf.size() % sizeof(sock_filter) != 0) return false;
  sock_fprog prog{};
  prog.len = static_cast<unsigned short>(bpf.size() / sizeof(sock_filter));
  prog.filter = reinterpret_cast<sock_filter*>(bpf.data());
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) == 0;
}

struct Child {
  pid_t runner = -1;
  int in_w = -1, out_r = -1, err_r = -1;
  std::string stdin_buf;      // received from the driver, not yet written to the process
  bool stdin_eof = false;     // the driver closed its end
  size_t out_unacked = 0;     // output bytes sent and not yet acknowledged
  bool attached = true;       // false after a restore until the driver attaches again
  bool exited = false;
};

void CloseFd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

// Closes a process's stdin, or the sending half of a proxy connection (whose other
// descriptor, a dup, stays open for reading).
void CloseWrite(int& fd) {
  if (fd >= 0) shutdown(fd, SHUT_WR);
  CloseFd(fd);
}

class StdioSupervisor {
 public:
  StdioSupervisor(int sfd, int proxy) : sfd_(sfd), proxy_(proxy) {}

  int Serve(int landlock_abi, bool seccomp) {
    fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
    fcntl(1, F_SETFL, fcntl(1, F_GETFL) | O_NONBLOCK);
    landlock_abi_ = landlock_abi;
    seccomp_ = seccomp;
    SendReady();
    bool input_open = true;
    while (input_open || !out_.empty()) {
      std::vector<pollfd> p;
      std::vector<std::pair<long long, int>> who;  // (child id, 0 stdin / 1 stdout / 2 stderr)
      p.push_back({0, static_cast<short>(input_open ? POLLIN : 0), 0});
      p.push_back({1, static_cast<short>(out_.empty() ? 0 : POLLOUT), 0});
      p.push_back({sfd_, POLLIN, 0});
      p.push_back({proxy_, static_cast<short>(proxy_ >= 0 ? POLLIN : 0), 0});
      const bool room = out_.size() < 4 * proto::kStdioWindow;
      for (auto& [id, c] : kids_) {
        if (c.in_w >= 0 && !c.stdin_buf.empty()) {
          p.push_back({c.in_w, POLLOUT, 0});
          who.push_back({id, 0});
        }
        bool credit = !c.attached || c.out_unacked < proto::kStdioWindow;
        if (room && credit && c.out_r >= 0) {
          p.push_back({c.out_r, POLLIN, 0});
          who.push_back({id, 1});
        }
        if (room && credit && c.err_r >= 0) {
          p.push_back({c.err_r, POLLIN, 0});
          who.push_back({id, 2});
        }
      }
      if (!input_open) {
        // agentd is gone: only flush what is left, briefly.
        if (poll(p.data(), 2, 1000) <= 0) break;
      } else if (poll(p.data(), p.size(), -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (p[1].revents & (POLLOUT | POLLERR | POLLHUP)) {
        ssize_t n = write(1, out_.data(), out_.size());
        if (n > 0) out_.erase(0, static_cast<size_t>(n));
        if (n < 0 && errno != EAGAIN && errno != EINTR) out_.clear();
      }
      if (!input_open) continue;
      if (p[2].revents & POLLIN) Reap();
      if (p[3].revents & POLLIN) Accept();
      for (size_t i = 4; i < p.size(); ++i) {
        if (p[i].revents == 0) continue;
        auto it = kids_.find(who[i - 4].first);
        if (it == kids_.end()) continue;
        Pump(it->first, it->second, who[i - 4].second);
      }
      if (p[0].revents & (POLLIN | POLLHUP | POLLERR)) {
        char buf[65536];
        ssize_t n = read(0, buf, sizeof(buf));
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
          input_open = false;
        } else if (n > 0) {
          in_.append(buf, static_cast<size_t>(n));
          proto::Frame f;
          int r;
          while ((r = proto::TakeFrame(&in_, &f)) == 1) Handle(f);
          if (r < 0) input_open = false;
        }
      }
      Sweep();
    }
    for (const auto& [pid, id] : runners_) kill(pid, SIGTERM);
    while (wait(nullptr) > 0) {
    }
    return 0;
  }

 private:
  // A program connected to the egress proxy address: its bytes go to agentd, whose proxy
  // serves the connection.
  void Accept() {
    int conn = accept4(proxy_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (conn < 0) return;
    int reader = fcntl(conn, F_DUPFD_CLOEXEC, 0);
    if (reader < 0) {
      close(conn);
      return;
    }
    long long id = next_connection_--;
    Child& c = kids_[id];
    c.exited = true;  // no process: it ends when both directions have
    c.in_w = conn;
    c.out_r = reader;
    proto::AppendFrame(&out_, proto::kConnection, id);
  }

  void SendReady() {
    json live = json::array();
    for (const auto& [id, c] : kids_) {
      if (!c.exited) live.push_back(id);
    }
    proto::AppendFrame(&out_, proto::kReady, 0,
                       json{{"landlock", landlock_abi_}, {"seccomp", seccomp_}, {"live", live}}.dump());
  }

  void Handle(const proto::Frame& f) {
    auto it = kids_.find(f.id);
    Child* c = it == kids_.end() ? nullptr : &it->second;
    switch (f.kind) {
      case proto::kSpawn:
        Spawn(f.id, f.payload);
        break;
      case proto::kStdin:
        if (c != nullptr && c->in_w >= 0) {
          c->stdin_buf.append(f.payload);
        } else {
          proto::AppendFrame(&out_, proto::kAckIn, f.id, proto::EncodeU64(f.payload.size()));
        }
        break;
      case proto::kStdinEof:
        if (c != nullptr) {
          c->stdin_eof = true;
          if (c->stdin_buf.empty()) CloseWrite(c->in_w);
        }
        break;
      case proto::kKill:
        if (c != nullptr && !c->exited && c->runner > 0) kill(c->runner, SIGTERM);
        break;
      case proto::kAckOut:
        if (c != nullptr) c->out_unacked -= std::min<size_t>(c->out_unacked, proto::DecodeU64(f.payload));
        break;
      case proto::kResync:
        // Whatever was queued went to a stream that no longer exists.
        out_.clear();
        for (auto& [id, k] : kids_) {
          k.out_unacked = 0;
          k.attached = false;
        }
        proto::AppendFrame(&out_, proto::kSync, 0, proto::kSyncPayload, sizeof(proto::kSyncPayload) - 1);
        SendReady();
        break;
      case proto::kAttach:
        if (c != nullptr) {
          c->attached = true;
          c->out_unacked = 0;
        }
        break;
      default:
        break;
    }
  }

  void Spawn(long long id, const std::string& payload) {
    json req = json::parse(payload, nullptr, false);
    if (kids_.count(id) != 0 || !req.is_object() || !req.contains("argv") ||
        !req["argv"].is_array() || req["argv"].empty()) {
      proto::AppendFrame(&out_, proto::kError, id, "bad request");
      return;
    }
    std::vector<int> theirs = {sfd_, proxy_};
    for (auto& [other, k] : kids_) theirs.insert(theirs.end(), {k.in_w, k.out_r, k.err_r});
    int ends[3];
    pid_t runner = StartRunner(req, theirs, ends);
    if (runner < 0) return Error(id, std::string("starting the command: ") + strerror(errno));
    for (int fd : ends) fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    Child& c = kids_[id];
    c.runner = runner;
    c.in_w = ends[0];
    c.out_r = ends[1];
    c.err_r = ends[2];
    runners_[runner] = id;
    proto::AppendFrame(&out_, proto::kSpawned, id);
  }

  void Error(long long id, const std::string& message) {
    proto::AppendFrame(&out_, proto::kError, id, message);
  }

  void Pump(long long id, Child& c, int which) {
    if (which == 0) {
      ssize_t n = write(c.in_w, c.stdin_buf.data(), c.stdin_buf.size());
      size_t done = 0;
      if (n > 0) {
        done = static_cast<size_t>(n);
      } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
        done = c.stdin_buf.size();  // the process stopped reading: drop the rest
        CloseWrite(c.in_w);
      }
      c.stdin_buf.erase(0, done);
      if (done > 0) proto::AppendFrame(&out_, proto::kAckIn, id, proto::EncodeU64(done));
      if (c.stdin_buf.empty() && c.stdin_eof) CloseWrite(c.in_w);
      return;
    }
    int& fd = which == 1 ? c.out_r : c.err_r;
    char buf[proto::kMaxDataChunk];
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) {
      if (c.attached) {
        proto::AppendFrame(&out_, which == 1 ? proto::kStdout : proto::kStderr, id, buf,
                           static_cast<size_t>(n));
        c.out_unacked += static_cast<size_t>(n);
      }
    } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
      CloseFd(fd);
      char stream = static_cast<char>(which);
      if (c.attached) proto::AppendFrame(&out_, proto::kEof, id, &stream, 1);
    }
  }

  void Reap() {
    signalfd_siginfo info;
    while (read(sfd_, &info, sizeof(info)) == sizeof(info)) {
    }
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
      auto it = runners_.find(pid);
      if (it == runners_.end()) continue;
      int32_t code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      auto k = kids_.find(it->second);
      if (k != kids_.end()) {
        k->second.exited = true;
        CloseFd(k->second.in_w);
        k->second.stdin_buf.clear();
        std::string c(4, '\0');
        for (int i = 0; i < 4; ++i) c[i] = static_cast<char>(static_cast<uint32_t>(code) >> (8 * i));
        if (k->second.attached) proto::AppendFrame(&out_, proto::kExit, it->second, c);
      }
      runners_.erase(it);
      // A runner killed by a signal (the OOM killer) left its command's tree to us.
      if (!WIFEXITED(status)) KillChildren(runners_);
    }
  }

  // Forgets processes that have ended and whose output is all sent.
  void Sweep() {
    for (auto it = kids_.begin(); it != kids_.end();) {
      Child& c = it->second;
      if (c.exited && c.out_r < 0 && c.err_r < 0 && (c.runner > 0 || c.in_w < 0)) {
        it = kids_.erase(it);
      } else {
        ++it;
      }
    }
  }

  const int sfd_;
  const int proxy_;  // egress proxy listener, or -1
  long long next_connection_ = -1;
  int landlock_abi_ = 0;
  bool seccomp_ = false;
  std::string in_, out_;
  std::map<long long, Child> kids_;
  std::map<pid_t, long long> runners_;  // runner pid -> process id
};

int MainStdio(int argc, char** argv) {
  // argv: --stdio [--proxy PORT] [--seccomp FILE] RW_DIR...
  int i = 2;
  int proxy = -1;
  if (i + 1 < argc && strcmp(argv[i], "--proxy") == 0) {
    proxy = ListenOnLoopback(atoi(argv[i + 1]));
    i += 2;
    if (proxy < 0) {
      std::string out;
      proto::AppendFrame(&out, proto::kFatal, 0, std::string("egress proxy listener: ") + strerror(errno));
      (void)!write(1, out.data(), out.size());
      return 1;
    }
  }
  const char* seccomp_file = nullptr;
  if (i + 1 < argc && strcmp(argv[i], "--seccomp") == 0) {
    seccomp_file = argv[i + 1];
    i += 2;
  }
  std::vector<std::string> rw_dirs(argv + i, argv + argc);
  std::string fatal;
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  int abi = RestrictWithLandlock(rw_dirs);
  if (abi < 0) fatal = std::string("landlock: ") + strerror(errno);
  if (fatal.empty() && seccomp_file != nullptr && !LoadSeccomp(seccomp_file)) {
    fatal = std::string("seccomp: ") + strerror(errno);
  }
  if (!fatal.empty()) {
    std::string out;
    proto::AppendFrame(&out, proto::kFatal, 0, fatal);
    (void)!write(1, out.data(), out.size());
    return 1;
  }
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGPIPE);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  if (sfd < 0) return 1;
  StdioSupervisor s(sfd, proxy);
  return s.Serve(abi, seccomp_file != nullptr);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 2 && strcmp(argv[1], "--stdio") == 0) return MainStdio(argc, argv);
  if (argc == 3 && strcmp(argv[1], "--launch") == 0) {
    return agentd::sandbox::RunSpare(atoi(argv[2]));
  }
  if (argc < 2) {
    fprintf(stderr, "usage: agentd-sandbox-init FD RW_DIR...\n");
    return 2;
  }
  int sock = atoi(argv[1]);
  int first_dir = 2;
  int proxy_port = -1;
  bool attach = false;
  if (argc > 3 && strcmp(argv[2], "--proxy") == 0) {
    first_dir = 4;
    proxy_port = atoi(argv[3]);
  } else if (argc > 2 && strcmp(argv[2], "--attach") == 0) {
    first_dir = 3;
    attach = true;
  }
  std::vector<std::string> rw_dirs(argv + first_dir, argv + argc);
  auto fatal = [&](const std::string& what) {
    SendMessage(sock, json{{"op", "fatal"}, {"message", what + ": " + strerror(errno)}}.dump(), {});
    return 1;
  };
  // Orphans of a runner that died come here, to be swept (below) instead of living on.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGPIPE);
  sigprocmask(SIG_BLOCK, &mask, nullptr);
  int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
  if (sfd < 0) return 1;

  std::string text;
  std::vector<int> fds;
  json ready = {{"op", "ready"}};
  if (attach) {
    // Wait for the workspace: say where to mount it, then take the one order expected.
    char cwd[4096];
    int ns = open("/proc/self/ns/mnt", O_RDONLY | O_CLOEXEC);
    if (getcwd(cwd, sizeof(cwd)) == nullptr || ns < 0) return fatal("waiting for a workspace");
    if (!SendMessage(sock, json{{"op", "ready"}, {"attach", true}}.dump(), {ns})) return 1;
    close(ns);
    if (!ReceiveMessage(sock, &text, &fds)) return 0;  // agentd let the spare go
    for (int fd : fds) close(fd);
    json req = json::parse(text, nullptr, false);
    if (!req.is_object() || req.value("op", "") != "attach" || !req.contains("id") ||
        !req["id"].is_number_integer()) {
      errno = EPROTO;
      return fatal("expected an attach order");
    }
    // The folder bwrap started in now has the workspace mounted on it.
    if (chdir(cwd) != 0) return fatal(std::string("entering ") + cwd);
    if (req.contains("proxy") && req["proxy"].is_number_integer()) proxy_port = req["proxy"].get<int>();
    ready = {{"op", "attached"}, {"id", req["id"]}};
  }
  int proxy = -1;  // listening socket of the egress proxy, when enabled
  if (proxy_port >= 0 && (proxy = ListenOnLoopback(proxy_port)) < 0) {
    return fatal("egress proxy listener");
  }
  int abi = RestrictWithLandlock(rw_dirs);
  if (abi < 0) return fatal("landlock");
  ready["landlock"] = abi;
  if (!SendMessage(sock, ready.dump(), {})) return 1;

  std::map<pid_t, long long> runners;  // runner pid -> request id
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
    int ends[3];
    pid_t runner = StartRunner(req, {sock, sfd, proxy}, ends);
    if (runner < 0) {
      SendMessage(sock, json{{"op", "error"}, {"id", id}, {"message", std::string("starting the command: ") + strerror(errno)}}.dump(), {});
      continue;
    }
    runners[runner] = id;
    SendMessage(sock, json{{"op", "spawned"}, {"id", id}}.dump(), {ends[0], ends[1], ends[2]});
    for (int fd : ends) close(fd);
  }
  for (const auto& [pid, rid] : runners) kill(pid, SIGTERM);
  while (wait(nullptr) > 0) {
  }
  return 0;
}
