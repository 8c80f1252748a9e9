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

// Where the object a route acts on belongs: what decides the tenant of its resource.
enum class Scope : uint8_t {
  kOwn,           // the caller's own tenant (collections; names only a tenant has: secrets)
  kInstallation,  // the installation itself ("agentd:*:tenant/*"): operator tenant only
  kPath,          // the object its first path parameter names ({agent}, {session}, ...)
  kBodyTenant,    // the tenant the body's `tenant_id` names (the caller's when absent)
  kQueryTenant,   // the tenant the query's `tenant_id` names (the caller's when absent)
  kBodyPrincipal, // the principal the body's `principal_id` names (the caller when absent)
};

class Api;
struct ApiCall;  // one request on its way to a route's handler (api.cc)

// One route of the API. The gate names its action and resource from this entry alone, so a
// route cannot be served without the gate having decided it.
struct RouteSpec {
  std::string_view method;
  // "/v1/sessions/{session}/turns/{turn}": `{name}` matches one segment; a last `{path*}`
  // matches the rest. The first parameter names the object for Scope::kPath: one of
  // agent, session, principal, group, role, api-key, tenant; `{secret}` is a name in the
  // caller's own tenant.
  std::string_view path;
  std::string_view action;  // the policy action (identity::kKnownActions)
  std::string_view type;    // the resource type in agentd:<tenant>:<type>/<id>
  Scope scope = Scope::kOwn;
  bool tenant_required = false;     // Scope::kBodyTenant: the body must name the tenant
  std::string_view agent_field;     // a body field naming an agent that must be in reach
  // The request gives policies to someone (a principal, group, role, or an API key that
  // acts as its principal): the caller must hold what it gives (identity/grant.h).
  bool grants = false;
  enum class Needs : uint8_t { kNothing, kVault, kAuditLog } needs = Needs::kNothing;
  void (Api::*handle)(ApiCall&) = nullptr;
};

class Api {
 public:
  // `ready` tells /readyz whether start-up (recovery) is complete.
  // Every request but /healthz, /readyz and /.well-known/ is authenticated by `directory`
  // and decided by the gate: the route (Routes()), the tenant wall, then policy;
  // `audit` learns what was asked, decided and answered just before
  // the answer is sent (it blocks until the entry is durable, so no client sees an answer
  // whose entry a crash could lose). An allowed request other than GET is also recorded,
  // with status 0, before its handler runs, so no change can precede its entry.
  // `audit_log` serves GET /v1/audit; `signing_key` is published at /.well-known/jwks.json.
  Api(ApiOptions options, engine::Engine* engine, identity::Directory* directory,
      audit::AuditLog* audit_log, const identity::SigningKey* signing_key,
      std::function<Json()> ready_info,
      std::function<void(const RequestRecord&)> audit = nullptr);
  void Handle(const http::Request& req, http::Exchange& ex);

  // Every route the API serves (with a vault and an audit log), in matching order.
  static const std::vector<RouteSpec>& Routes();

 private:
  struct Gate;
  // Names the action and resource of `route` and decides it for `who`: the tenant wall
  // first, then policy, then (for routes that grant) what the caller holds. OK, or the
  // error to answer: NotFound for whatever lies beyond the wall, with the detail an id that
  // exists nowhere gets; PermissionDenied otherwise.
  Status Authorize(const http::Request& req, const RouteSpec& route,
                   const std::vector<std::string>& params, const identity::Principal& who,
                   Gate* gate);
  // The tenant of the object `kind` `id` names (and a session's metadata), or NotFound.
  Status ResolveObject(std::string_view kind, const std::string& id, Gate* gate);
  // For a route that grants: OK when the caller holds every policy the request gives.
  // `body` is the request's, parsed: an object.
  Status CheckGrants(const Json& body, const RouteSpec& route,
                     const std::vector<std::string>& params, const identity::Principal& who);

  void CreateAgent(ApiCall& c);
  void ListAgents(ApiCall& c);
  void GetAgent(ApiCall& c);
  void UpdateAgent(ApiCall& c);
  void CancelAgentTurns(ApiCall& c);
  void CreateSession(ApiCall& c);
  void ListSessions(ApiCall& c);
  void ImportSession(ApiCall& c);
  void GetSession(ApiCall& c);
  void DeleteSession(ApiCall& c);
  void CancelSession(ApiCall& c);
  void ExportSession(ApiCall& c);
  void SessionEvents(ApiCall& c);
  void ListWorkspace(ApiCall& c);
  void ReadWorkspaceFile(ApiCall& c);
  void PostTurn(ApiCall& c);
  void ListTurns(ApiCall& c);
  void GetTurn(ApiCall& c);
  void PostApproval(ApiCall& c);
  void PostToolOutputs(ApiCall& c);
  void ListSecrets(ApiCall& c);
  void PutSecret(ApiCall& c);
  void CreateTenant(ApiCall& c);
  void GetTenant(ApiCall& c);
  void CancelTenantTurns(ApiCall& c);
  void CreatePrincipal(ApiCall& c);
  void ListPrincipals(ApiCall& c);
  void GetPrincipal(ApiCall& c);
  void UpdatePrincipal(ApiCall& c);
  void CreateApiKey(ApiCall& c);
  void RevokeApiKey(ApiCall& c);
  void CreatePolicySet(ApiCall& c);
  void ListPolicySets(ApiCall& c);
  void GetPolicySet(ApiCall& c);
  void ReplacePolicySet(ApiCall& c);
  void DeletePolicySet(ApiCall& c);
  void Simulate(ApiCall& c);
  void ReadAudit(ApiCall& c);
  void ReadAuditCheckpoints(ApiCall& c);

  void HandleAudit(const http::Request& req, http::Exchange& ex, bool checkpoints,
                   const std::string& own_tenant);
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
