// agentctl's commands: the CLI11 command tree and one handler per command. Handlers talk to
// agentd through ApiClient, print results to stdout (tables by default, the server's JSON with
// --json) and errors to stderr as "error: <detail> (HTTP <status>)", and return an ExitCode
// from the table in exit_codes.h.
#pragma once

#include <string>
#include <vector>

#include "common/json.h"
#include "common/status.h"

namespace agentd::cli {

// Parses and runs one agentctl command line; returns the process exit code. Reads the
// environment (AGENTD_URL, AGENTD_API_KEY). Blocking.
int RunAgentctlBlocking(int argc, char** argv);

// {"k":"v",...} from "k=v" arguments (the value may contain '='). Fails with InvalidArgument
// on an argument without '=' or with an empty key, or on a repeated key.
Result<Json> ParseMetadataArgs(const std::vector<std::string>& args);

// The tool_outputs request body {"outputs":[{call_id,output},...]} pairing the i-th
// --call-id with the i-th --output. Fails with InvalidArgument when the counts differ or none
// are given.
Result<Json> BuildToolOutputs(const std::vector<std::string>& call_ids,
                              const std::vector<std::string>& outputs);

}  // namespace agentd::cli
