// agentctl's exit codes: the one table that maps an outcome to the process exit code.
//
//   0  success
//   1  any other error (including an HTTP status no row names, e.g. 3xx)
//   2  usage error: bad arguments, an unreadable or invalid -f file, a bad --server URL
//   3  not found (HTTP 404)
//   4  invalid request (HTTP 400, 413, 415, 422)
//   5  conflict or failed precondition (HTTP 409, 412)
//   6  server unreachable, timed out, busy or failing (no connection, HTTP 429, 5xx)
//   7  unauthenticated or forbidden (HTTP 401, 403)
//   8  the turn ended failed or cancelled
//   9  the turn stopped in requires_action: it needs client tool outputs
//  10  `audit verify` found a problem in the audit log
//
// HTTP statuses come from the server's responses; Status codes come from the transport
// (common/http_client.h) and from local checks made before anything is sent. Both are looked
// up in kExitCodeTable (exit_codes.cc), which also renders the `agentctl --help` footer.
#pragma once

#include <string>

#include "common/status.h"

namespace agentd::cli {

enum class ExitCode : int {
  kOk = 0,
  kError = 1,
  kUsage = 2,
  kNotFound = 3,
  kInvalidRequest = 4,
  kConflict = 5,
  kUnavailable = 6,
  kUnauthenticated = 7,
  kTurnFailed = 8,
  kRequiresAction = 9,
  kVerifyFailed = 10,
};

inline int ToInt(ExitCode code) { return static_cast<int>(code); }

// The exit code for a response with this HTTP status: kOk for 2xx, the table's row otherwise,
// kError for a status no row names.
ExitCode ExitCodeForHttpStatus(int http_status);

// The exit code for a failure that produced no HTTP response (transport or local check).
ExitCode ExitCodeForStatus(const Status& status);

// The "Exit codes:" block printed at the end of `agentctl --help`, one line per code.
std::string ExitCodeHelp();

}  // namespace agentd::cli
