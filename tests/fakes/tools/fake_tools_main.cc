// fake_tools: the fake tool server as a process.
//
//   fake_tools [--listen HOST:PORT] [--state-file PATH] [--io-threads N]
//
// Prints "LISTENING <port>" on one line once it accepts connections, then serves until
// SIGTERM or SIGINT. The protocol is described in fake_tools.h.
#include "fakes/fake_server_main.h"
#include "fakes/tools/fake_tools.h"

int main(int argc, char** argv) {
  agentd::fakes::FakeToolOptions options;
  return agentd::fakes::RunFakeServerMain(
      argc, argv,
      {"fake_tools", "serves test tools whose side effects can be counted", "--state-file",
       "PATH"},
      options, &options.state_file, agentd::fakes::StartFakeTools);
}
