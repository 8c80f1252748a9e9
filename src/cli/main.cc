// agentctl: the command-line client for agentd. See commands.h for the commands and
// exit_codes.h for what the exit status means.
#include "cli/commands.h"

int main(int argc, char** argv) { return agentd::cli::RunAgentctlBlocking(argc, argv); }
