// fake_tools: the fake tool server as a process.
//
//   fake_tools [--listen HOST:PORT] [--state-file PATH] [--io-threads N]
//
// Prints "LISTENING <port>" on one line once it accepts connections, then serves until
// SIGTERM or SIGINT. The protocol is described in fake_tools.h.
#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "fakes/tools/fake_tools.h"

namespace {

int Usage(const char* why) {
  std::fprintf(stderr,
               "fake_tools: %s\nusage: fake_tools [--listen HOST:PORT] [--state-file PATH] "
               "[--io-threads N]\n",
               why);
  return 2;
}

bool ParsePort(std::string_view s, uint16_t* out) {
  if (s.empty() || s.size() > 5) return false;
  unsigned v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<unsigned>(c - '0');
  }
  if (v > 65535) return false;
  *out = static_cast<uint16_t>(v);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  agentd::fakes::FakeToolOptions options;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    std::string value;
    std::string_view flag = arg;
    auto eq = arg.find('=');
    bool inline_value = arg.rfind("--", 0) == 0 && eq != std::string_view::npos;
    if (inline_value) {
      flag = arg.substr(0, eq);
      value = std::string(arg.substr(eq + 1));
    }
    auto next = [&]() -> bool {
      if (inline_value) return true;
      if (i + 1 >= argc) return false;
      value = argv[++i];
      return true;
    };
    if (flag == "--help" || flag == "-h") {
      Usage("serves test tools whose side effects can be counted");
      return 0;
    } else if (flag == "--listen") {
      if (!next()) return Usage("--listen needs HOST:PORT");
      auto colon = value.rfind(':');
      if (colon == std::string::npos) return Usage("--listen needs HOST:PORT");
      std::string host = value.substr(0, colon);
      if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
      }
      if (host.empty() || !ParsePort(std::string_view(value).substr(colon + 1), &options.port)) {
        return Usage("--listen needs HOST:PORT");
      }
      options.host = host;
    } else if (flag == "--state-file") {
      if (!next() || value.empty()) return Usage("--state-file needs a path");
      options.state_file = value;
    } else if (flag == "--io-threads") {
      if (!next()) return Usage("--io-threads needs a number");
      int n = std::atoi(value.c_str());
      if (n < 1 || n > 64) return Usage("--io-threads must be between 1 and 64");
      options.io_threads = n;
    } else {
      return Usage(("unknown argument " + std::string(arg)).c_str());
    }
  }

  // Block the stop signals before any thread starts, so every thread inherits the mask and
  // sigwait() below is the only place they are delivered.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto server = agentd::fakes::StartFakeTools(options);
  if (!server.ok()) {
    std::fprintf(stderr, "fake_tools: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("LISTENING %u\n", static_cast<unsigned>((*server)->port()));
  std::fflush(stdout);

  int sig = 0;
  sigwait(&stop_signals, &sig);
  (*server)->Stop();
  return 0;
}
