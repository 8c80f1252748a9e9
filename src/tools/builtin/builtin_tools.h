// The built-in tools: `exec`, `read_file`, `write_file`, `list_files`, `edit_file`, all
// working on the calling session's sandbox and workspace (docs/api/openapi.yaml, "Tool").
//
// `exec` runs inside the sandbox; the file tools work on the workspace from the host through
// WorkspaceFiles (openat2 beneath the workspace), which is the same folder the sandbox sees
// as /workspace. Every refusal is a tool error whose text says why.
#pragma once

#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "sandbox/sandbox.h"
#include "tools/tools.h"

namespace agentd::tools {

struct BuiltinTool {
  std::string_view name;
  std::string_view description;
  std::string_view parameters;  // JSON Schema text
  // Running it twice with the same arguments has the effect of running it once.
  bool idempotent;
};

// nullptr when `name` is not a built-in tool.
const BuiltinTool* FindBuiltinTool(std::string_view name);
std::vector<std::string_view> BuiltinToolNames();

// One call. `args` has been checked against the tool's schema. The output is JSON text:
//   exec       {stdout, stderr, exit_code, truncated, timed_out?, note?}
//   read_file  {content}      write_file {bytes_written}
//   list_files {entries: [{path, type, size}], truncated}   edit_file {replacements: 1}
// A sandbox that cannot start is kRetryable with not_sent set. `env` is added to the
// environment of an `exec` command (the other tools run no process).
ToolOutcome CallBuiltinTool(std::string_view name, const Json& args, sandbox::Sandbox& box,
                            const std::function<bool()>& should_abort,
                            const std::map<std::string, std::string>& env = {});

}  // namespace agentd::tools
