// `agentctl audit verify`: checks the audit log's hash chains and signed checkpoints
// (src/audit/verify.h), either offline on a copy of a data directory or through a live
// server's `GET /v1/audit` and `GET /v1/audit/checkpoints`. Prints "OK" with counts per
// chain, or each problem with its seq; returns ExitCode::kVerifyFailed when any is found.
#pragma once

#include <string>

#include "cli/client.h"
#include "cli/exit_codes.h"

namespace agentd::cli {

struct AuditVerifyArgs {
  std::string data_dir;    // offline: the data directory (or a copy of it); "" for live
  std::string public_key;  // base64url key, or a file with one or with a JWK / JWKS; "": none
  std::string tenant;      // the chain to check
  bool tenant_given = false;  // false: every chain (offline) or the caller's (live)
  bool json = false;          // print the reports as JSON
};

// Reads the database read-only; never writes to the directory's files. Blocking.
ExitCode AuditVerifyOffline(const AuditVerifyArgs& args);
// Blocking.
ExitCode AuditVerifyLive(ApiClient& client, const AuditVerifyArgs& args);

}  // namespace agentd::cli
