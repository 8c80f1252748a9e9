// The native REST API (v1): routing, request validation, problem+json errors (RFC 9457) and
// Server-Sent Events. Handlers run on the HTTP server's blocking pool (docs/threading.md).
// The contract is docs/api/openapi.yaml.
#pragma once

#include <functional>
#include <string>

#include "api/http/server.h"
#include "common/status.h"
#include "engine/engine.h"
#include "audit/audit.h"
#include "identity/directory.h"
#include "identity/signing_key.h"
#include "identity/vault.h"

namespace agentd::api {

struct ApiOptions {
  std::chrono::milliseconds wait_timeout{300000};  // longest `wait: true` before a 202
  std::chrono::milliseconds heartbeat{15000};      // SSE comment interval on a quiet stream
  // The tenants' secrets behind PUT /v1/secrets/{name} and GET /v1/secrets; without it
  // those routes do not exist.
  identity::Vault* vault = nullptr;
};

// What the gate decided about one API request, for the audit log.
struct RequestRecord {
  std::string tenant_id;     // the principal's ("" when no one was authenticated)
  std::string principal_id;  // "" when authentication failed
  std::string action;        // "agents:Create", ...; "auth:Authenticate" for a failed sign-in
  std::string resource;      // "agentd:<tenant>:session/<id>", ...
  std::string decision;      // allow | deny
  std::string reason;        // the deciding statement's sid, or why it was refused
  int status = 0;            // the HTTP status answered; 0 for the entry made before a
                             // request that may change something runs
  std::string request_id;    // "req_...": pairs a request's two entries
  std::string method;
  std::string path;
};

// Maps a canonical status code to its HTTP status: the one table for the whole API.
int HttpStatusFor(StatusCode code);
// A problem+json response for `status`.
http::Response ProblemResponse(const Status& status);
// True for POST /v1/sessions:import, whose body (an export file) has its own size limit.
bool IsImportRequest(std::string_view method, std::string_view target);

class Api {
 public:
  // `ready` tells /readyz whether start-up (recovery) is complete.
  // Every request but /healthz, /readyz and /.well-known/ is authenticated by `directory`
  // and decided by policy; `audit` learns what was asked, decided and answered just before
  // the answer is sent (it blocks until the entry is durable, so no client sees an answer
  // whose entry a crash could lose). An allowed request other than GET is also recorded,
  // with status 0, before its handler runs, so no change can precede its entry.
  // `audit_log` serves GET /v1/audit; `signing_key` is published at /.well-known/jwks.json.
  Api(ApiOptions options, engine::Engine* engine, identity::Directory* directory,
      audit::AuditLog* audit_log, const identity::SigningKey* signing_key,
      std::function<Json()> ready_info,
      std::function<void(const RequestRecord&)> audit = nullptr);
  void Handle(const http::Request& req, http::Exchange& ex);

 private:
  struct Gate;
  // Names the action and resource of the request and decides it for `who`: OK, or the
  // error to answer (NotFound for what another tenant has, PermissionDenied otherwise).
  Status Authorize(const http::Request& req, const std::vector<std::string>& seg,
                   const identity::Principal& who, Gate* gate);
  void Route(const http::Request& req, http::Exchange& ex, const std::vector<std::string>& seg,
             const identity::Principal& who);
  void HandleAudit(const http::Request& req, http::Exchange& ex, bool checkpoints,
                   const std::string& own_tenant);
  void HandleSimulate(const http::Request& req, http::Exchange& ex,
                      const identity::Principal& who);
  void HandleTurnsPost(const http::Request& req, http::Exchange& ex, const std::string& sid,
                       const identity::Principal& who);
  void HandleEvents(const http::Request& req, http::Exchange& ex, const std::string& sid);
  void HandleExport(http::Exchange& ex, const std::string& sid);
  void HandleImport(const http::Request& req, http::Exchange& ex, const engine::Caller& caller);
  // Streams the session's events from `after` until `until` returns true for an event.
  void StreamEvents(http::Exchange& ex, const std::string& sid, int64_t after,
                    const std::string& only_turn, bool stop_at_turn_end);

  ApiOptions options_;
  engine::Engine* engine_;
  identity::Directory* directory_;
  audit::AuditLog* audit_log_;
  const identity::SigningKey* signing_key_;
  std::function<Json()> ready_info_;
  std::function<void(const RequestRecord&)> audit_;
};

}  // namespace agentd::api
