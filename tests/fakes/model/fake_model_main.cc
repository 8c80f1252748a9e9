// fake_model: the fake OpenAI-compatible Chat Completions server as a process.
//
//   fake_model [--listen HOST:PORT] [--require-key KEY] [--io-threads N]
//
// Prints "LISTENING <port>" on one line once it accepts connections, then serves until
// SIGTERM or SIGINT. The protocol is described in fake_model.h.
#include "fakes/fake_server_main.h"
#include "fakes/model/fake_model.h"

int main(int argc, char** argv) {
  agentd::fakes::FakeModelOptions options;
  return agentd::fakes::RunFakeServerMain(
      argc, argv,
      {"fake_model", "serves a scriptable fake of the OpenAI Chat Completions API",
       "--require-key", "KEY"},
      options, &options.require_key, agentd::fakes::StartFakeModel);
}
