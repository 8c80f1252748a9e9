// The command line shared by the fake servers' programs (fake_model, fake_tools):
//
//   NAME [--listen HOST:PORT] [EXTRA_FLAG VALUE] [--io-threads N]
//
// Prints "LISTENING <port>" on one line once the server accepts connections, then serves
// until SIGTERM or SIGINT.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/stop_signals.h"

namespace agentd::fakes {

struct FakeServerProgram {
  const char* name;        // "fake_model"
  const char* about;       // what --help says it does
  const char* extra_flag;  // the program's own flag taking a value, e.g. "--require-key"
  const char* extra_meta;  // its value in the usage line, e.g. "KEY"
};

namespace fake_main_internal {

inline int Usage(const FakeServerProgram& p, const std::string& why) {
  std::fprintf(stderr, "%s: %s\nusage: %s [--listen HOST:PORT] [%s %s] [--io-threads N]\n",
               p.name, why.c_str(), p.name, p.extra_flag, p.extra_meta);
  return 2;
}

inline bool ParsePort(std::string_view s, uint16_t* out) {
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

}  // namespace fake_main_internal

// Parses the flags into `options` (its host, port and io_threads; the extra flag's value
// into *extra), starts the server with `start(options)` and serves until a stop signal.
// Returns the process's exit status.
template <typename Options, typename Start>
int RunFakeServerMain(int argc, char** argv, const FakeServerProgram& program, Options& options,
                      std::string* extra, Start start) {
  using fake_main_internal::Usage;
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
      Usage(program, program.about);
      return 0;
    } else if (flag == "--listen") {
      if (!next()) return Usage(program, "--listen needs HOST:PORT");
      auto colon = value.rfind(':');
      if (colon == std::string::npos) return Usage(program, "--listen needs HOST:PORT");
      std::string host = value.substr(0, colon);
      if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
      }
      if (host.empty() ||
          !fake_main_internal::ParsePort(std::string_view(value).substr(colon + 1), &options.port)) {
        return Usage(program, "--listen needs HOST:PORT");
      }
      options.host = host;
    } else if (flag == program.extra_flag) {
      if (!next() || value.empty()) {
        return Usage(program, std::string(program.extra_flag) + " needs " + program.extra_meta);
      }
      *extra = value;
    } else if (flag == "--io-threads") {
      if (!next()) return Usage(program, "--io-threads needs a number");
      int n = std::atoi(value.c_str());
      if (n < 1 || n > 64) return Usage(program, "--io-threads must be between 1 and 64");
      options.io_threads = n;
    } else {
      return Usage(program, "unknown argument " + std::string(arg));
    }
  }

  StopSignals stop_signals;  // before any thread starts

  auto server = start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "%s: %s\n", program.name, server.status().ToString().c_str());
    return 1;
  }
  std::printf("LISTENING %u\n", static_cast<unsigned>((*server)->port()));
  std::fflush(stdout);

  stop_signals.WaitBlocking();
  (*server)->Stop();
  return 0;
}

}  // namespace agentd::fakes
