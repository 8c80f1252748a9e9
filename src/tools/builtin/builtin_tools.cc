#include "tools/builtin/builtin_tools.h"

#include <fmt/format.h>

#include <chrono>

#include "tools/builtin/workspace_files.h"

namespace agentd::tools {
namespace {

constexpr size_t kExecOutputBytes = 64 * 1024;  // per stream
constexpr size_t kListEntries = 1000;

constexpr BuiltinTool kTools[] = {
    {"exec",
     "Runs a shell command (/bin/sh -c) in the session's sandbox, with the workspace as the "
     "working directory. No network. Returns stdout, stderr (each cut at 64 KiB), the exit "
     "code, and whether it was stopped at its time limit.",
     R"({"type":"object","properties":{"command":{"type":"string","minLength":1,"maxLength":65536},"stdin":{"type":"string","maxLength":1048576},"timeout_ms":{"type":"integer","minimum":1,"maximum":3600000}},"required":["command"],"additionalProperties":false})",
     false},
    {"read_file", "Reads a UTF-8 text file of the workspace (path relative to the workspace).",
     R"({"type":"object","properties":{"path":{"type":"string","minLength":1,"maxLength":4096}},"required":["path"],"additionalProperties":false})",
     true},
    {"write_file",
     "Creates or replaces a file of the workspace with the given text, creating folders as "
     "needed.",
     R"({"type":"object","properties":{"path":{"type":"string","minLength":1,"maxLength":4096},"content":{"type":"string"}},"required":["path","content"],"additionalProperties":false})",
     true},
    {"list_files",
     "Lists the files and folders under a folder of the workspace (the whole workspace when "
     "no path is given), recursively.",
     R"({"type":"object","properties":{"path":{"type":"string","maxLength":4096}},"additionalProperties":false})",
     true},
    {"edit_file",
     "Replaces the one occurrence of `old` in a workspace file with `new`. Fails, changing "
     "nothing, when `old` occurs zero or several times.",
     R"({"type":"object","properties":{"path":{"type":"string","minLength":1,"maxLength":4096},"old":{"type":"string","minLength":1},"new":{"type":"string"}},"required":["path","old","new"],"additionalProperties":false})",
     false},
};

ToolOutcome Result(ToolOutcome::Kind kind, std::string output) {
  ToolOutcome o;
  o.kind = kind;
  o.output = std::move(output);
  return o;
}

ToolOutcome Ok(const Json& j) { return Result(ToolOutcome::Kind::kOk, DumpJson(j)); }
ToolOutcome Refused(const Status& st) { return Result(ToolOutcome::Kind::kToolError, st.message()); }

std::string Str(const Json& args, const char* key) {
  const std::string* s = FindString(args, key);
  return s ? *s : std::string();
}

ToolOutcome Exec(const Json& args, sandbox::Sandbox& box, const std::function<bool()>& abort,
                 const std::map<std::string, std::string>& env) {
  sandbox::ExecRequest req;
  req.command = Str(args, "command");
  req.env = env;
  req.stdin_data = Str(args, "stdin");
  if (auto t = args.find("timeout_ms"); t != args.end() && t->is_number_integer()) {
    req.timeout = std::chrono::milliseconds(t->get<int64_t>());
  }
  req.max_output_bytes = kExecOutputBytes;
  req.should_abort = abort;
  auto r = box.Exec(req);
  if (!r.ok()) {
    ToolOutcome o = Result(ToolOutcome::Kind::kRetryable, "the sandbox failed: " + r.status().message());
    // A sandbox that did not start never ran the command.
    o.not_sent = r.status().code() == StatusCode::kUnavailable;
    return o;
  }
  if (r->cancelled) return Result(ToolOutcome::Kind::kRetryable, "cancelled");
  Json out = {{"stdout", r->stdout_data}, {"stderr", r->stderr_data},
              {"exit_code", r->exit_code}, {"truncated", r->truncated}};
  std::string note;
  if (r->truncated) note = "output was cut at 64 KiB per stream; redirect to a file to keep all of it";
  if (r->timed_out) {
    out["timed_out"] = true;
    note += (note.empty() ? "" : "; ") + std::string("the command was stopped at its time limit");
  }
  if (r->oom_killed) {
    note += (note.empty() ? "" : "; ") + std::string("a process was killed at the memory limit");
  }
  if (!note.empty()) out["note"] = note;
  return Ok(out);
}

}  // namespace

const BuiltinTool* FindBuiltinTool(std::string_view name) {
  for (const auto& t : kTools) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

std::vector<std::string_view> BuiltinToolNames() {
  std::vector<std::string_view> names;
  for (const auto& t : kTools) names.push_back(t.name);
  return names;
}

ToolOutcome CallBuiltinTool(std::string_view name, const Json& args, sandbox::Sandbox& box,
                            const std::function<bool()>& should_abort,
                            const std::map<std::string, std::string>& env) {
  if (name == "exec") return Exec(args, box, should_abort, env);
  auto files = WorkspaceFiles::Open(box.workspace());
  if (!files.ok()) {
    ToolOutcome o = Result(ToolOutcome::Kind::kRetryable, files.status().message());
    o.not_sent = true;
    return o;
  }
  std::string path = Str(args, "path");
  if (name == "read_file") {
    auto content = files->ReadText(path);
    if (!content.ok()) return Refused(content.status());
    return Ok({{"content", *content}});
  }
  if (name == "write_file") {
    std::string content = Str(args, "content");
    if (Status st = files->Write(path, content); !st.ok()) return Refused(st);
    return Ok({{"bytes_written", content.size()}});
  }
  if (name == "list_files") {
    bool truncated = false;
    auto entries = files->List(path, true, kListEntries, &truncated);
    if (!entries.ok()) return Refused(entries.status());
    Json list = Json::array();
    for (const auto& e : *entries) {
      Json j = {{"path", e.path}, {"type", e.type}};
      if (e.type == "file") j["size"] = e.size;
      list.push_back(std::move(j));
    }
    return Ok({{"entries", std::move(list)}, {"truncated", truncated}});
  }
  if (name == "edit_file") {
    if (Status st = files->Edit(path, Str(args, "old"), Str(args, "new")); !st.ok()) {
      return Refused(st);
    }
    return Ok({{"replacements", 1}});
  }
  return Result(ToolOutcome::Kind::kToolError, fmt::format("there is no built-in tool '{}'", name));
}

}  // namespace agentd::tools
