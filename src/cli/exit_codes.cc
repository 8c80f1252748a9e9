#include "cli/exit_codes.h"

#include <fmt/format.h>

#include <array>
#include <string_view>
#include <utility>

namespace agentd::cli {
namespace {

struct HttpRange {
  int first = 0;
  int last = 0;  // inclusive; {0, 0} marks an unused slot
};

struct ExitCodeRow {
  ExitCode code;
  std::string_view meaning;
  std::array<HttpRange, 4> http;
  std::array<StatusCode, 3> status_codes;  // kOk marks an unused slot
};

constexpr StatusCode kNone = StatusCode::kOk;

// The table. Rows do not overlap, so the first match is the only match.
constexpr std::array<ExitCodeRow, 11> kExitCodeTable = {{
    {ExitCode::kOk, "success", {{{200, 299}}}, {kNone}},
    {ExitCode::kError, "other error", {}, {kNone}},
    {ExitCode::kUsage,
     "usage error: bad arguments, unreadable or invalid -f file, bad --server URL",
     {},
     {StatusCode::kInvalidArgument}},
    {ExitCode::kNotFound, "not found", {{{404, 404}}}, {kNone}},
    {ExitCode::kInvalidRequest,
     "invalid request",
     {{{400, 400}, {413, 413}, {415, 415}, {422, 422}}},
     {kNone}},
    {ExitCode::kConflict, "conflict or failed precondition", {{{409, 409}, {412, 412}}}, {kNone}},
    {ExitCode::kUnavailable,
     "server unreachable, timed out, busy or failing",
     {{{429, 429}, {500, 599}}},
     {StatusCode::kUnavailable, StatusCode::kDeadlineExceeded}},
    {ExitCode::kUnauthenticated,
     "unauthenticated or forbidden",
     {{{401, 401}, {403, 403}}},
     {kNone}},
    {ExitCode::kTurnFailed, "the turn ended failed or cancelled", {}, {kNone}},
    {ExitCode::kRequiresAction,
     "the turn stopped in requires_action: it needs client tool outputs",
     {},
     {kNone}},
    {ExitCode::kVerifyFailed, "audit verify found a problem in the audit log", {}, {kNone}},
}};

std::string DescribeHttp(const ExitCodeRow& row) {
  std::string out;
  for (const HttpRange& r : row.http) {
    if (r.first == 0) continue;
    if (!out.empty()) out += ", ";
    if (r.first == r.last) {
      out += fmt::format("{}", r.first);
    } else if (r.first % 100 == 0 && r.last == r.first + 99) {
      out += fmt::format("{}xx", r.first / 100);
    } else {
      out += fmt::format("{}-{}", r.first, r.last);
    }
  }
  return out;
}

}  // namespace

ExitCode ExitCodeForHttpStatus(int http_status) {
  for (const ExitCodeRow& row : kExitCodeTable) {
    for (const HttpRange& r : row.http) {
      if (r.first != 0 && http_status >= r.first && http_status <= r.last) return row.code;
    }
  }
  return ExitCode::kError;
}

ExitCode ExitCodeForStatus(const Status& status) {
  if (status.ok()) return ExitCode::kOk;
  for (const ExitCodeRow& row : kExitCodeTable) {
    for (StatusCode c : row.status_codes) {
      if (c != kNone && c == status.code()) return row.code;
    }
  }
  return ExitCode::kError;
}

std::string ExitCodeHelp() {
  std::string out = "Exit codes:\n";
  for (const ExitCodeRow& row : kExitCodeTable) {
    std::string http = DescribeHttp(row);
    if (row.code == ExitCode::kOk || http.empty()) {
      out += fmt::format("  {}  {}\n", ToInt(row.code), row.meaning);
    } else {
      out += fmt::format("  {}  {} (HTTP {})\n", ToInt(row.code), row.meaning, http);
    }
  }
  return out;
}

}  // namespace agentd::cli
