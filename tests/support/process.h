// Test support: real child processes (agentd, the fakes) and small HTTP helpers.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "common/http_client.h"
#include "common/json.h"
#include "common/status.h"

namespace agentd::testing {

// A child process whose stdout and stderr are captured (and copied to `log_path`).
class Process {
 public:
  static Result<std::unique_ptr<Process>> Start(const std::vector<std::string>& argv,
                                                const std::map<std::string, std::string>& env,
                                                const std::string& log_path);
  ~Process();

  // Waits until a line of output matches `re`; returns its first capture group.
  Result<std::string> WaitForLine(const std::string& re, std::chrono::milliseconds timeout);
  void Signal(int sig);
  // Waits for exit; returns the exit status (or 128+signal).
  int Wait();
  bool Running();
  pid_t pid() const { return pid_; }
  std::string Output();

 private:
  Process() = default;
  void ReadLoop(int fd);

  pid_t pid_ = -1;
  int exit_code_ = -1;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string output_;
  bool eof_ = false;
  int log_fd_ = -1;
};

// Path of a binary built next to the test (build/bin).
std::string BinPath(const std::string& name);
// A fresh temporary directory.
std::string TempDir(const std::string& tag);

struct Reply {
  int status = 0;
  Json body;
  std::string raw;
  std::map<std::string, std::string> headers;
};

// One HTTP call with a JSON body (null: no body). Fails the test on transport errors.
// A call to an agentd started by StartAgentd carries its admin key unless `headers` has an
// Authorization header of its own; an empty one sends none.
Reply Call(const std::string& method, const std::string& url, const Json& body = Json(),
           const std::vector<std::pair<std::string, std::string>>& headers = {});
// The same with a body sent as it is (its Content-Type among `headers`).
Reply CallRaw(const std::string& method, const std::string& url, std::string body,
              const std::vector<std::pair<std::string, std::string>>& headers = {});

// A fake server process ("fake_model" or "fake_tools") with its base URL.
struct FakeProcess {
  std::unique_ptr<Process> proc;
  std::string url;
};
Result<FakeProcess> StartFake(const std::string& binary, const std::string& dir,
                              std::vector<std::string> extra_args = {});

// agentd started on a free port with the given data dir.
struct Agentd {
  std::unique_ptr<Process> proc;
  std::string url;
  std::string admin_key;  // from <data dir>/admin.key
};
// `binary` is a program beside the test's own: agentd, or a mutant of it built for a test.
Result<Agentd> StartAgentd(const std::string& data_dir, const std::string& log_path,
                           std::vector<std::string> extra_args = {},
                           std::map<std::string, std::string> env = {},
                           const std::string& binary = "agentd");
// The admin key Call() sends to the agentd at `url` ("" when none is known).
std::string AdminKeyFor(const std::string& url);
// The key written to <data_dir>/admin.key ("" when there is none).
std::string ReadAdminKey(const std::string& data_dir);

}  // namespace agentd::testing
