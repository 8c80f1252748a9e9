// A sandbox::Process run directly on the host (fork/exec with pipes), for the MCP client's
// tests: the real one comes from a SandboxDriver, which these tests do not need.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/status.h"
#include "sandbox/sandbox.h"

namespace agentd::tools::mcp::testing {

class HostProcess final : public sandbox::Process {
 public:
  // Starts argv[0] (searched in PATH) with the current environment plus `env`.
  static Result<std::unique_ptr<HostProcess>> Spawn(
      const std::vector<std::string>& argv, const std::map<std::string, std::string>& env = {});
  ~HostProcess() override;

  int stdin_fd() const override { return stdin_fd_; }
  int stdout_fd() const override { return stdout_fd_; }
  std::string StderrTail() const override;
  bool Running(int* exit_code) override;
  void Kill() override;
  void CloseStdin() override {
    if (int fd = stdin_fd_.exchange(-1); fd >= 0) ::close(fd);
  }
  pid_t pid() const { return pid_; }

 private:
  HostProcess() = default;
  void Reap(int status);

  pid_t pid_ = -1;
  std::atomic<int> stdin_fd_{-1};
  int stdout_fd_ = -1;
  int stderr_fd_ = -1;
  std::thread stderr_reader_;
  mutable std::mutex mu_;
  std::string stderr_;   // GUARDED_BY(mu_), the last 8 KiB
  bool exited_ = false;  // GUARDED_BY(mu_)
  int exit_code_ = 0;    // GUARDED_BY(mu_)
};

// A ProcessFactory for McpClient that spawns `argv` and counts the spawns.
struct SpawnCounter {
  std::mutex mu;
  int spawns = 0;
};
std::function<Result<std::unique_ptr<sandbox::Process>>()> HostFactory(
    std::vector<std::string> argv, std::shared_ptr<SpawnCounter> counter = nullptr,
    std::map<std::string, std::string> env = {});

}  // namespace agentd::tools::mcp::testing
