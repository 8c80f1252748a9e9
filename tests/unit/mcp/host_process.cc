#include "host_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace agentd::tools::mcp::testing {
namespace {

constexpr size_t kStderrKeep = 8192;

}  // namespace

Result<std::unique_ptr<HostProcess>> HostProcess::Spawn(
    const std::vector<std::string>& argv, const std::map<std::string, std::string>& env) {
  if (argv.empty()) return InvalidArgument("empty argv");
  int in[2], out[2], err[2];
  if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0) {
    return Internal(std::string("pipe: ") + std::strerror(errno));
  }
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return Internal(std::string("fork: ") + std::strerror(errno));
  if (pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
    ::signal(SIGPIPE, SIG_DFL);
    ::execvp(args[0], args.data());
    std::fprintf(stderr, "exec %s: %s\n", args[0], std::strerror(errno));
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  ::close(err[1]);
  auto p = std::unique_ptr<HostProcess>(new HostProcess());
  p->pid_ = pid;
  p->stdin_fd_ = in[1];
  p->stdout_fd_ = out[0];
  p->stderr_fd_ = err[0];
  HostProcess* raw = p.get();
  p->stderr_reader_ = std::thread([raw] {
    char buf[4096];
    while (true) {
      ssize_t n = ::read(raw->stderr_fd_, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      std::lock_guard<std::mutex> lock(raw->mu_);
      raw->stderr_.append(buf, static_cast<size_t>(n));
      if (raw->stderr_.size() > kStderrKeep) {
        raw->stderr_.erase(0, raw->stderr_.size() - kStderrKeep);
      }
    }
  });
  return p;
}

HostProcess::~HostProcess() {
  Kill();
  if (stderr_reader_.joinable()) stderr_reader_.join();
  CloseStdin();
  for (int fd : {stdout_fd_, stderr_fd_}) {
    if (fd >= 0) ::close(fd);
  }
}

std::string HostProcess::StderrTail() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stderr_;
}

void HostProcess::Reap(int status) {
  exited_ = true;
  exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

bool HostProcess::Running(int* exit_code) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!exited_) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) Reap(status);
  }
  if (exited_ && exit_code != nullptr) *exit_code = exit_code_;
  return !exited_;
}

void HostProcess::Kill() {
  std::lock_guard<std::mutex> lock(mu_);
  if (exited_) return;
  ::kill(pid_, SIGKILL);
  int status = 0;
  if (::waitpid(pid_, &status, 0) == pid_) Reap(status);
}

std::function<Result<std::unique_ptr<sandbox::Process>>()> HostFactory(
    std::vector<std::string> argv, std::shared_ptr<SpawnCounter> counter,
    std::map<std::string, std::string> env) {
  return [argv = std::move(argv), counter = std::move(counter),
          env = std::move(env)]() -> Result<std::unique_ptr<sandbox::Process>> {
    if (counter) {
      std::lock_guard<std::mutex> lock(counter->mu);
      ++counter->spawns;
    }
    auto p = HostProcess::Spawn(argv, env);
    if (!p.ok()) return p.status();
    return std::unique_ptr<sandbox::Process>(std::move(p).value());
  };
}

}  // namespace agentd::tools::mcp::testing
