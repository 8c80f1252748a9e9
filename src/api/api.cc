#include "api/api.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <regex>

#include "common/json.h"
#include "common/clock.h"
#include "common/ids.h"
#include "identity/grant.h"
#include "identity/tenant_wall.h"
#include "journal/events.h"

namespace agentd::api {

int HttpStatusFor(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return 200;
    case StatusCode::kInvalidArgument: return 400;
    case StatusCode::kUnauthenticated: return 401;
    case StatusCode::kPermissionDenied: return 403;
    case StatusCode::kNotFound: return 404;
    case StatusCode::kAlreadyExists: return 409;
    case StatusCode::kFailedPrecondition: return 409;
    case StatusCode::kAborted: return 409;
    case StatusCode::kCancelled: return 409;
    case StatusCode::kResourceExhausted: return 429;
    case StatusCode::kUnprocessable: return 422;
    case StatusCode::kInternal: return 500;
    case StatusCode::kUnavailable: return 503;
    case StatusCode::kDeadlineExceeded: return 504;
  }
  return 500;
}

namespace {

std::string Title(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Internal Server Error";
  }
}

http::Response Problem(int status, std::string_view code, std::string detail) {
  Json body = {{"type", fmt::format("urn:agentd:problem:{}", code)},
               {"title", Title(status)},
               {"status", status},
               {"detail", std::move(detail)},
               {"code", code}};
  return {status, "application/problem+json", DumpJson(body), {}};
}

http::Response JsonResponse(int status, const Json& body) {
  return {status, "application/json", DumpJson(body), {}};
}

// The largest workspace file GET /v1/sessions/{id}/workspace/{path} serves.
constexpr size_t kMaxDownloadBytes = 64u << 20;

// Splits "/v1/sessions/x/turns" into {"v1","sessions","x","turns"}.
std::vector<std::string> Segments(const std::string& path) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < path.size()) {
    while (i < path.size() && path[i] == '/') ++i;
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    if (j > i) out.push_back(path.substr(i, j - i));
    i = j;
  }
  return out;
}

// The media type of `req` without parameters, lower-cased ("" when none).
std::string MediaType(const http::Request& req) {
  std::string ct = req.Header("content-type");
  std::string base = ct.substr(0, ct.find(';'));
  while (!base.empty() && base.back() == ' ') base.pop_back();
  for (auto& c : base) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return base;
}

// A body is JSON whatever it is labelled; a label that says otherwise is refused (415) before
// the body is looked at. No Content-Type at all is accepted (curl -d without -H), and an
// empty body may carry any label (curl -X POST sends a form type).
bool JsonContentType(const http::Request& req) {
  std::string base = MediaType(req);
  return base.empty() || base == "application/json" ||
         (base.size() > 5 && base.substr(base.size() - 5) == "+json");
}

Result<Json> Body(const http::Request& req) { return ParseJson(req.body, "request body"); }

Result<int64_t> IntQuery(const http::Request& req, const std::string& name, int64_t def,
                         int64_t min, int64_t max) {
  const std::string* v = req.Query(name);
  if (v == nullptr) return def;
  static const std::regex re("^-?[0-9]{1,18}$");
  if (!std::regex_match(*v, re)) {
    return InvalidArgument(fmt::format("query parameter '{}' must be an integer", name));
  }
  int64_t x = std::stoll(*v);
  if (x < min || x > max) {
    return InvalidArgument(
        fmt::format("query parameter '{}' must be between {} and {}", name, min, max));
  }
  return x;
}

Result<store::Page> PageQuery(const http::Request& req) {
  store::Page p;
  ASSIGN_OR_RETURN(int64_t limit, IntQuery(req, "limit", 50, 1, 1000));
  p.limit = static_cast<int>(limit);
  if (const std::string* c = req.Query("cursor")) {
    static const std::regex re("^[0-9]{1,18}$");
    if (!std::regex_match(*c, re)) {
      return InvalidArgument("query parameter 'cursor' is not a cursor this server gave out");
    }
    p.cursor = *c;
  }
  return p;
}

bool WantsEventStream(const http::Request& req) {
  return req.Header("accept").find("text/event-stream") != std::string::npos;
}

std::string SseFrame(const Json& event) {
  return fmt::format("id: {}\nevent: {}\ndata: {}\n\n", event.value("seq", int64_t{0}),
                     event.value("type", ""), DumpJson(event));
}

bool EndsTurnStream(const std::string& type) {
  return journal::IsTurnTerminal(type) || type == journal::ev::kTurnRequiresAction ||
         type == journal::ev::kToolCallApprovalRequested ||
         type == journal::ev::kSessionNeedsAttention;
}

}  // namespace

bool IsImportRequest(std::string_view method, std::string_view target) {
  return method == "POST" && target.substr(0, target.find('?')) == "/v1/sessions:import";
}

http::Response ProblemResponse(const Status& status) {
  int code = HttpStatusFor(status.code());
  std::string detail = status.message();
  if (status.code() == StatusCode::kInternal) detail = "internal error; see the server log";
  return Problem(code, StatusCodeSlug(status.code()), detail);
}

Api::Api(ApiOptions options, engine::Engine* engine, identity::Directory* directory,
         audit::AuditLog* audit_log, const identity::SigningKey* signing_key,
         std::function<Json()> ready_info, std::function<void(const RequestRecord&)> audit)
    : options_(options),
      engine_(engine),
      directory_(directory),
      audit_log_(audit_log),
      signing_key_(signing_key),
      ready_info_(std::move(ready_info)),
      audit_(std::move(audit)) {}

namespace {

// Passes everything through, calling `before_answer` with the status first, once: the
// request's audit entry is durable before the client sees any answer.
class RecordingExchange final : public http::Exchange {
 public:
  RecordingExchange(http::Exchange& inner, std::function<void(int status)> before_answer)
      : inner_(inner), before_answer_(std::move(before_answer)) {}
  void Respond(http::Response response) override {
    Answering(response.status);
    inner_.Respond(std::move(response));
  }
  bool StartStream(int status, std::string content_type,
                   std::vector<std::pair<std::string, std::string>> headers) override {
    Answering(status);
    return inner_.StartStream(status, std::move(content_type), std::move(headers));
  }
  bool Write(std::string_view chunk) override { return inner_.Write(chunk); }
  void EndStream() override { inner_.EndStream(); }
  bool Stopping() const override { return inner_.Stopping(); }
  bool answered() const { return answered_; }

 private:
  void Answering(int status) {
    if (answered_) return;
    answered_ = true;
    before_answer_(status);
  }

  http::Exchange& inner_;
  std::function<void(int)> before_answer_;
  bool answered_ = false;
};

std::string ResourceName(const std::string& tenant, std::string_view type,
                         std::string_view id) {
  return fmt::format("agentd:{}:{}/{}", tenant, type, id);
}

}  // namespace

struct ApiCall {
  const http::Request& req;
  http::Exchange& ex;
  const identity::Principal& who;
  const std::vector<std::string>& params;  // the route's path parameters, in order
  const std::string& arg(size_t i) const { return params[i]; }
  engine::Caller caller() const { return engine::Caller{who.tenant_id, who.id}; }
};

namespace {

using Needs = RouteSpec::Needs;

// Answers `r` as JSON, or its error as problem+json.
void Reply(ApiCall& c, Result<Json> r, int ok_status = 200) {
  if (!r.ok()) {
    if (r.status().code() == StatusCode::kInternal) {
      spdlog::error("{} {}: {}", c.req.method, c.req.path, r.status().ToString());
    }
    return c.ex.Respond(ProblemResponse(r.status()));
  }
  c.ex.Respond(JsonResponse(ok_status, *r));
}

// 201 with the new object and its Location.
void Created(ApiCall& c, Result<Json> r, std::string_view collection) {
  if (!r.ok()) return Reply(c, std::move(r));
  std::string id = r->value("id", "");
  c.ex.Respond({201, "application/json", DumpJson(*r),
                {{"Location", fmt::format("/v1/{}/{}", collection, id)}}});
}

// The path segments of a route's template, and whether a segment is a parameter.
bool IsParam(std::string_view seg) { return seg.size() > 2 && seg.front() == '{' && seg.back() == '}'; }

// Matches `seg` (the request's path) against `pattern`; the parameters into `params`.
bool MatchPath(std::string_view pattern, const std::vector<std::string>& seg,
               std::vector<std::string>* params) {
  params->clear();
  size_t i = 0;
  size_t pos = 0;
  while (pos < pattern.size()) {
    while (pos < pattern.size() && pattern[pos] == '/') ++pos;
    size_t end = pattern.find('/', pos);
    if (end == std::string_view::npos) end = pattern.size();
    std::string_view part = pattern.substr(pos, end - pos);
    pos = end;
    if (part.empty()) continue;
    if (part == "{path*}") {
      if (i >= seg.size()) return false;
      std::string rest = seg[i];
      for (size_t k = i + 1; k < seg.size(); ++k) rest += "/" + seg[k];
      params->push_back(std::move(rest));
      return true;
    }
    if (i >= seg.size()) return false;
    if (IsParam(part)) {
      params->push_back(seg[i]);
    } else if (part != seg[i]) {
      return false;
    }
    ++i;
  }
  return i == seg.size();
}

// The first parameter of a route's template ("" when it has none).
std::string_view FirstParam(std::string_view pattern) {
  size_t open = pattern.find('{');
  if (open == std::string_view::npos) return {};
  size_t close = pattern.find('}', open);
  return pattern.substr(open + 1, close - open - 1);
}

}  // namespace

const std::vector<RouteSpec>& Api::Routes() {
  using S = Scope;
  static const std::vector<RouteSpec> routes = {
      {"POST", "/v1/agents", "agents:Create", "agent", S::kOwn, false, "", false, Needs::kNothing,
       &Api::CreateAgent},
      {"GET", "/v1/agents", "agents:Read", "agent", S::kOwn, false, "", false, Needs::kNothing,
       &Api::ListAgents},
      {"GET", "/v1/agents/{agent}", "agents:Read", "agent", S::kPath, false, "", false,
       Needs::kNothing, &Api::GetAgent},
      {"PUT", "/v1/agents/{agent}", "agents:Update", "agent", S::kPath, false, "", false,
       Needs::kNothing, &Api::UpdateAgent},
      {"POST", "/v1/agents/{agent}/cancel-turns", "sessions:Cancel", "agent", S::kPath, false, "",
       false, Needs::kNothing, &Api::CancelAgentTurns},
      {"POST", "/v1/sessions", "sessions:Create", "session", S::kOwn, false, "agent_id", false,
       Needs::kNothing, &Api::CreateSession},
      {"GET", "/v1/sessions", "sessions:Read", "session", S::kOwn, false, "", false,
       Needs::kNothing, &Api::ListSessions},
      {"POST", "/v1/sessions:import", "sessions:Import", "session", S::kOwn, false, "", false,
       Needs::kNothing, &Api::ImportSession},
      {"GET", "/v1/sessions/{session}", "sessions:Read", "session", S::kPath, false, "", false,
       Needs::kNothing, &Api::GetSession},
      {"DELETE", "/v1/sessions/{session}", "sessions:Delete", "session", S::kPath, false, "",
       false, Needs::kNothing, &Api::DeleteSession},
      {"POST", "/v1/sessions/{session}/cancel", "sessions:Cancel", "session", S::kPath, false, "",
       false, Needs::kNothing, &Api::CancelSession},
      {"GET", "/v1/sessions/{session}/export", "sessions:Export", "session", S::kPath, false, "",
       false, Needs::kNothing, &Api::ExportSession},
      {"GET", "/v1/sessions/{session}/events", "sessions:Read", "session", S::kPath, false, "",
       false, Needs::kNothing, &Api::SessionEvents},
      {"GET", "/v1/sessions/{session}/workspace", "sessions:Read", "session", S::kPath, false, "",
       false, Needs::kNothing, &Api::ListWorkspace},
      {"GET", "/v1/sessions/{session}/workspace/{path*}", "sessions:Read", "session", S::kPath,
       false, "", false, Needs::kNothing, &Api::ReadWorkspaceFile},
      {"POST", "/v1/sessions/{session}/turns", "sessions:Invoke", "session", S::kPath, false, "",
       false, Needs::kNothing, &Api::PostTurn},
      {"GET", "/v1/sessions/{session}/turns", "sessions:Read", "session", S::kPath, false, "",
       false, Needs::kNothing, &Api::ListTurns},
      {"GET", "/v1/sessions/{session}/turns/{turn}", "sessions:Read", "session", S::kPath, false,
       "", false, Needs::kNothing, &Api::GetTurn},
      {"POST", "/v1/sessions/{session}/turns/{turn}/approvals", "tools:Approve", "session",
       S::kPath, false, "", false, Needs::kNothing, &Api::PostApproval},
      {"POST", "/v1/sessions/{session}/turns/{turn}/tool_outputs", "sessions:Invoke", "session",
       S::kPath, false, "", false, Needs::kNothing, &Api::PostToolOutputs},
      {"GET", "/v1/secrets", "secrets:Read", "secret", S::kOwn, false, "", false, Needs::kVault,
       &Api::ListSecrets},
      {"PUT", "/v1/secrets/{secret}", "secrets:Write", "secret", S::kOwn, false, "", false,
       Needs::kVault, &Api::PutSecret},
      {"POST", "/v1/tenants", "tenants:Create", "tenant", S::kInstallation, false, "", false,
       Needs::kNothing, &Api::CreateTenant},
      {"GET", "/v1/tenants/{tenant}", "tenants:Read", "tenant", S::kPath, false, "", false,
       Needs::kNothing, &Api::GetTenant},
      {"POST", "/v1/tenants/{tenant}/cancel-turns", "sessions:Cancel", "tenant", S::kPath, false,
       "", false, Needs::kNothing, &Api::CancelTenantTurns},
      {"POST", "/v1/principals", "principals:Create", "principal", S::kBodyTenant, true, "", true,
       Needs::kNothing, &Api::CreatePrincipal},
      {"GET", "/v1/principals", "principals:Read", "principal", S::kOwn, false, "", false,
       Needs::kNothing, &Api::ListPrincipals},
      {"GET", "/v1/principals/{principal}", "principals:Read", "principal", S::kPath, false, "",
       false, Needs::kNothing, &Api::GetPrincipal},
      {"PATCH", "/v1/principals/{principal}", "principals:Update", "principal", S::kPath, false,
       "", true, Needs::kNothing, &Api::UpdatePrincipal},
      {"POST", "/v1/principals/{principal}/api-keys", "principals:CreateApiKey", "principal",
       S::kPath, false, "", true, Needs::kNothing, &Api::CreateApiKey},
      {"DELETE", "/v1/api-keys/{api-key}", "principals:RevokeApiKey", "api-key", S::kPath, false,
       "", false, Needs::kNothing, &Api::RevokeApiKey},
      {"POST", "/v1/groups", "groups:Create", "group", S::kBodyTenant, false, "", true,
       Needs::kNothing, &Api::CreatePolicySet},
      {"GET", "/v1/groups", "groups:Read", "group", S::kOwn, false, "", false, Needs::kNothing,
       &Api::ListPolicySets},
      {"GET", "/v1/groups/{group}", "groups:Read", "group", S::kPath, false, "", false,
       Needs::kNothing, &Api::GetPolicySet},
      {"PUT", "/v1/groups/{group}", "groups:Update", "group", S::kPath, false, "", true,
       Needs::kNothing, &Api::ReplacePolicySet},
      {"DELETE", "/v1/groups/{group}", "groups:Delete", "group", S::kPath, false, "", false,
       Needs::kNothing, &Api::DeletePolicySet},
      {"POST", "/v1/roles", "roles:Create", "role", S::kBodyTenant, false, "", true,
       Needs::kNothing, &Api::CreatePolicySet},
      {"GET", "/v1/roles", "roles:Read", "role", S::kOwn, false, "", false, Needs::kNothing,
       &Api::ListPolicySets},
      {"GET", "/v1/roles/{role}", "roles:Read", "role", S::kPath, false, "", false,
       Needs::kNothing, &Api::GetPolicySet},
      {"PUT", "/v1/roles/{role}", "roles:Update", "role", S::kPath, false, "", true,
       Needs::kNothing, &Api::ReplacePolicySet},
      {"DELETE", "/v1/roles/{role}", "roles:Delete", "role", S::kPath, false, "", false,
       Needs::kNothing, &Api::DeletePolicySet},
      {"POST", "/v1/policies:simulate", "policies:Simulate", "principal", S::kBodyPrincipal,
       false, "", false, Needs::kNothing, &Api::Simulate},
      {"GET", "/v1/audit", "audit:Read", "audit", S::kQueryTenant, false, "", false,
       Needs::kAuditLog, &Api::ReadAudit},
      {"GET", "/v1/audit/checkpoints", "audit:Read", "audit", S::kQueryTenant, false, "", false,
       Needs::kAuditLog, &Api::ReadAuditCheckpoints},
  };
  return routes;
}

struct Api::Gate {
  std::string action;
  std::string resource;
  std::string tenant;  // the tenant the resource belongs to
  std::string id = "*";
  std::string reason;
  // What the caller meets when the resource is beyond its reach: what an id that exists
  // nowhere gets.
  std::string missing;
  Json session_metadata = Json::object();
};

void Api::Handle(const http::Request& req, http::Exchange& ex) {
  const auto seg = Segments(req.path);
  const std::string& m = req.method;
  if (seg.size() == 1 && (seg[0] == "healthz" || seg[0] == "readyz")) {
    if (m != "GET") {
      auto r = Problem(405, "method_not_allowed",
                       fmt::format("{} is not allowed on {}; allowed: GET", m, req.path));
      r.headers.emplace_back("Allow", "GET");
      return ex.Respond(std::move(r));
    }
    if (seg[0] == "healthz") return ex.Respond(JsonResponse(200, Json{{"status", "ok"}}));
    Json info = ready_info_();
    bool ready = info.value("ready", false) && !engine_->Draining();
    info["ready"] = ready;
    return ex.Respond(JsonResponse(ready ? 200 : 503, info));
  }
  // The keys tools verify agentd's tokens with: public by nature.
  if (seg.size() == 2 && seg[0] == ".well-known" && seg[1] == "jwks.json" &&
      signing_key_ != nullptr) {
    if (m != "GET") {
      auto r = Problem(405, "method_not_allowed",
                       fmt::format("{} is not allowed on {}; allowed: GET", m, req.path));
      r.headers.emplace_back("Allow", "GET");
      return ex.Respond(std::move(r));
    }
    http::Response r = JsonResponse(200, identity::JwksDocument({signing_key_}));
    r.content_type = "application/jwk-set+json";
    r.headers.emplace_back("Cache-Control", "public, max-age=300");
    return ex.Respond(std::move(r));
  }

  RequestRecord record;
  record.request_id = NewId("req_");
  record.method = m;
  record.path = req.path;
  RecordingExchange rec(ex, [&](int status) {
    record.status = status;
    if (audit_) audit_(record);
  });
  auto who = directory_->Authenticate(req.Header("authorization"));
  if (!who.ok()) {
    record.action = "auth:Authenticate";
    record.decision = "deny";
    record.reason = who.status().message();
    auto r = Problem(401, "unauthenticated", who.status().message());
    r.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"agentd\"");
    rec.Respond(std::move(r));
    return;
  }
  const identity::Principal& p = **who;
  record.tenant_id = p.tenant_id;
  record.principal_id = p.id;

  // The route: the first whose path and method match. A path that matches with another
  // method is answered 405 once the gate has let the caller see the object it names.
  const RouteSpec* route = nullptr;
  const RouteSpec* path_only = nullptr;
  std::vector<std::string> params;
  std::string allow;
  for (const RouteSpec& r : Routes()) {
    if ((r.needs == Needs::kVault && options_.vault == nullptr) ||
        (r.needs == Needs::kAuditLog && audit_log_ == nullptr)) {
      continue;
    }
    std::vector<std::string> got;
    if (!MatchPath(r.path, seg, &got)) continue;
    if (r.method == m) {
      route = &r;
      params = std::move(got);
      break;
    }
    if (path_only == nullptr) {
      path_only = &r;
      params = std::move(got);
    }
    if (allow.find(r.method) == std::string::npos) allow += (allow.empty() ? "" : ", ") + std::string(r.method);
  }
  Gate gate;
  Status allowed;
  if (route == nullptr && path_only == nullptr) {
    allowed = NotFound(fmt::format("no route for {}", req.path));
  } else if (route == nullptr) {
    // Whether the object exists is for those who reach it; a wrong method says nothing more.
    gate.missing = fmt::format("no route for {}", req.path);
    Status found = path_only->scope == Scope::kPath
                       ? ResolveObject(FirstParam(path_only->path), params[0], &gate)
                       : Status::OK();
    if (path_only->scope != Scope::kPath) gate.tenant = p.tenant_id;
    if (!found.ok()) {
      allowed = found;
    } else if (!identity::ReachesTenant(p, gate.tenant)) {
      allowed = NotFound(gate.missing);
    } else {
      record.decision = "deny";
      record.reason = "method not allowed";
      auto r = Problem(405, "method_not_allowed",
                       fmt::format("{} is not allowed on {}; allowed: {}", m, req.path, allow));
      r.headers.emplace_back("Allow", allow);
      rec.Respond(std::move(r));
      return;
    }
  } else {
    allowed = Authorize(req, *route, params, p, &gate);
  }
  record.action = gate.action;
  record.resource = gate.resource;
  record.reason = gate.reason;
  if (!allowed.ok()) {
    record.decision = "deny";
    if (record.reason.empty()) record.reason = allowed.message();
    rec.Respond(ProblemResponse(allowed));
    return;
  }
  record.decision = "allow";
  if (audit_ && m != "GET" && m != "HEAD") {
    // A request that may change something is on the record before it does: should
    // agentd die between the change and the answer, the log still shows who started it.
    RequestRecord started = record;
    started.status = 0;
    audit_(started);
  }
  if ((m == "POST" || m == "PUT" || m == "PATCH") && !req.body.empty() && !JsonContentType(req) &&
      !IsImportRequest(m, req.path)) {
    rec.Respond(Problem(415, "unsupported_media_type",
                        fmt::format("Content-Type '{}' is not supported; send application/json",
                                    req.Header("content-type"))));
  } else {
    ApiCall call{req, rec, p, params};
    (this->*(route->handle))(call);
  }
  if (!rec.answered()) {
    // Every route answers; a request that somehow did not is still on the record.
    spdlog::error("{} {}: no answer", m, req.path);
    rec.Respond(Problem(500, "internal", "the request got no answer"));
  }
}

Status Api::ResolveObject(std::string_view kind, const std::string& id, Gate* g) {
  g->id = id;
  Result<std::string> tenant = NotFound("");
  if (kind == "agent") {
    tenant = engine_->AgentTenant(id);
  } else if (kind == "session") {
    auto scope = engine_->SessionScope(id);
    if (!scope.ok()) return scope.status();
    g->session_metadata = scope->second;
    tenant = scope->first;
  } else if (kind == "principal") {
    tenant = directory_->PrincipalTenant(id);
  } else if (kind == "group" || kind == "role") {
    tenant = directory_->PolicySetTenant(std::string(kind), id);
  } else if (kind == "api-key") {
    tenant = directory_->ApiKeyTenant(id);
  } else if (kind == "tenant") {
    if (!directory_->TenantExists(id)) return NotFound(fmt::format("tenant {} not found", id));
    tenant = id;
  } else {
    return Internal(fmt::format("the gate knows no object kind '{}'", kind));
  }
  if (!tenant.ok()) return tenant.status();
  g->tenant = *tenant;
  // The same words as for an id that exists nowhere: the lookups above say them.
  static const std::map<std::string_view, std::string_view> kMissing = {
      {"agent", "agent '{}' not found"},     {"session", "session '{}' not found"},
      {"principal", "principal {} not found"}, {"group", "group {} not found"},
      {"role", "role {} not found"},         {"api-key", "API key {} not found"},
      {"tenant", "tenant {} not found"}};
  g->missing = fmt::format(fmt::runtime(kMissing.at(kind)), id);
  return Status::OK();
}

Status Api::Authorize(const http::Request& req, const RouteSpec& route,
                      const std::vector<std::string>& params, const identity::Principal& who,
                      Gate* g) {
  g->action = std::string(route.action);
  g->missing = fmt::format("no route for {}", req.path);
  // The body, parsed once for every step below that reads it (an empty one reads as {}:
  // a POST of an API key may send none).
  const Result<Json> body = req.body.empty() ? Result<Json>(Json::object()) : Body(req);
  // Where the resource lives.
  switch (route.scope) {
    case Scope::kOwn:
      g->tenant = who.tenant_id;
      if (FirstParam(route.path) == "secret") g->id = params[0];
      break;
    case Scope::kInstallation:
      g->tenant = "*";
      break;
    case Scope::kPath:
      RETURN_IF_ERROR(ResolveObject(FirstParam(route.path), params[0], g));
      break;
    case Scope::kBodyTenant:
    case Scope::kQueryTenant: {
      const std::string* t = nullptr;
      if (route.scope == Scope::kBodyTenant) {
        if (!body.ok()) return body.status();
        t = FindString(*body, "tenant_id");
        if (t == nullptr && route.tenant_required) {
          return InvalidArgument("'tenant_id' is required and must be a string");
        }
      } else {
        t = req.Query("tenant_id");
      }
      g->tenant = t != nullptr ? *t : who.tenant_id;
      g->missing = fmt::format("tenant {} not found", g->tenant);
      // The system chain ("") of unauthenticated requests is no tenant's, and exists.
      if (route.scope == Scope::kBodyTenant && !directory_->TenantExists(g->tenant)) {
        return NotFound(g->missing);
      }
      break;
    }
    case Scope::kBodyPrincipal: {
      if (!body.ok()) return body.status();
      const std::string* pid = FindString(*body, "principal_id");
      g->tenant = who.tenant_id;
      g->id = who.id;
      if (pid != nullptr && *pid != who.id) RETURN_IF_ERROR(ResolveObject("principal", *pid, g));
      break;
    }
  }
  g->resource = ResourceName(g->tenant, route.type, g->id);

  // The tenant wall, before any policy: beyond it, every object looks like one that exists
  // nowhere, whatever the caller's policies say (docs/security.md, "Tenants are walls").
#ifndef AGENTD_MUTANT_NO_TENANT_WALL  // only tenant_wall_mutant builds without it
  if (!identity::ReachesTenant(who, g->tenant)) {
    g->reason = "tenant_wall";
    return NotFound(g->missing);
  }
#endif
  // An object the request refers to in its body must be within reach too.
  if (!route.agent_field.empty()) {
    const std::string* aid = body.ok() ? FindString(*body, route.agent_field) : nullptr;
    if (aid != nullptr) {
      // One that exists nowhere is answered the same way, before policy, so that the two
      // cannot be told apart by whether the caller may create sessions.
      auto t = engine_->AgentTenant(*aid);
      if (!t.ok()) return t.status();
      if (!identity::ReachesTenant(who, *t)) {
        g->reason = "tenant_wall";
        return NotFound(fmt::format("agent '{}' not found", *aid));
      }
    }
  }

  identity::Request r;
  r.action = g->action;
  r.resource = g->resource;
  r.principal = who.Context();
  r.session_metadata = g->session_metadata;
  r.time_millis = SystemClock::Default()->NowMillis();
  identity::Decision d = identity::Decide(who.PolicyPointers(), r);
  g->reason = d.sid.empty() ? std::string(identity::DecisionReasonName(d.reason)) : d.sid;
  if (!d.allowed()) {
    return PermissionDenied(fmt::format("{} is not allowed to {} on {} ({})", who.id, g->action,
                                        g->resource,
                                        d.reason == identity::DecisionReason::kExplicitDeny
                                            ? "denied by statement '" + d.sid + "'"
                                            : "no policy allows it"));
  }
  if (route.grants) {
    // A body that does not parse is the handler's to refuse, naming the mistake.
    Status held = body.ok() && body->is_object() ? CheckGrants(*body, route, params, who)
                                                 : Status::OK();
    if (!held.ok()) {
      g->reason = "exceeds_caller";
      return held;
    }
  }
  return Status::OK();
}

namespace {

// The documents of a body's `policies`, parsed; those that do not parse are left to the
// handler, which refuses them with the place of the mistake.
std::vector<identity::Policy> BodyPolicies(const Json& body) {
  std::vector<identity::Policy> out;
  auto ps = body.find("policies");
  if (ps == body.end() || !ps->is_array()) return out;
  for (const auto& doc : *ps) {
    auto p = identity::ParsePolicy(DumpJson(doc));
    if (p.ok()) out.push_back(std::move(p).value());
  }
  return out;
}

std::vector<std::string> BodyNames(const Json& body, const char* field) {
  std::vector<std::string> out;
  auto v = body.find(field);
  if (v == body.end() || !v->is_array()) return out;
  for (const auto& x : *v) {
    if (x.is_string()) out.push_back(x.get<std::string>());
  }
  return out;
}

bool MentionsAttributes(const identity::Policy& p) {
  for (const auto& st : p.statements()) {
    for (const auto& c : st.conditions) {
      if (c.key.kind == identity::ConditionKey::Kind::kPrincipalAttribute) return true;
    }
  }
  return false;
}

}  // namespace

Status Api::CheckGrants(const Json& body, const RouteSpec& route,
                        const std::vector<std::string>& params, const identity::Principal& who) {
  const std::string action(route.action);
  identity::GrantTarget target;
  std::vector<identity::Policy> given = BodyPolicies(body);
  std::vector<identity::GrantedPolicy> granted;
  std::vector<std::shared_ptr<const identity::PolicySet>> sets;  // keeps granted alive
  auto grant_set = [&](const std::shared_ptr<const identity::PolicySet>& set) {
    if (!set) return;
    sets.push_back(set);
    for (size_t i = 0; i < set->policies.size(); ++i) {
      granted.push_back({&set->policies[i], fmt::format("{} policies[{}]", set->source, i)});
    }
  };
  auto join_sets = [&](const std::vector<std::string>& names, const char* kind,
                       const std::vector<std::string>& already) -> Status {
    for (const auto& name : names) {
      if (std::find(already.begin(), already.end(), name) != already.end()) continue;
      ASSIGN_OR_RETURN(auto set, directory_->FindPolicySet(target.tenant, kind, name));
      if (!set && std::string_view(kind) == "group") {
        // A group made later brings its policies to those who named it before: joining
        // one that does not exist gives whatever it will hold.
        static const auto* unbounded = [] {
          auto made = std::make_shared<identity::PolicySet>();
          made->policies.push_back(*identity::ParsePolicy(
              R"({"version":"2026-11-01","statements":[{"sid":"whatever-it-will-hold",)"
              R"("effect":"allow","actions":["*"],"resources":["*"]}]})"));
          return new std::shared_ptr<const identity::PolicySet>(std::move(made));
        }();
        sets.push_back(*unbounded);
        granted.push_back({&(*unbounded)->policies[0],
                           fmt::format("group/{} (not in the tenant yet)", name)});
        continue;
      }
      grant_set(set);
    }
    return Status::OK();
  };
  std::shared_ptr<const identity::Principal> subject;
  if (action == "principals:Create" || action == "groups:Create" || action == "roles:Create") {
    const std::string* t = FindString(body, "tenant_id");
    target.tenant = t != nullptr ? *t : who.tenant_id;
  } else {
    // An existing principal, group or role: the gate found it.
    std::string_view kind = FirstParam(route.path);
    if (kind == "principal") {
      ASSIGN_OR_RETURN(subject, directory_->LoadPrincipal(params[0]));
      target.tenant = subject->tenant_id;
      target.principal_id = subject->id;
    } else {
      ASSIGN_OR_RETURN(target.tenant, directory_->PolicySetTenant(std::string(kind), params[0]));
    }
  }
  target.clamped = target.tenant != directory_->operator_tenant();
  for (size_t i = 0; i < given.size(); ++i) {
    granted.push_back({&given[i], fmt::format("policies[{}]", i)});
  }
  if (action == "principals:Create") {
    RETURN_IF_ERROR(join_sets(BodyNames(body, "groups"), "group", {}));
    RETURN_IF_ERROR(join_sets(BodyNames(body, "roles"), "role", {}));
  } else if (action == "principals:Update") {
    RETURN_IF_ERROR(join_sets(BodyNames(body, "groups"), "group", subject->groups));
    RETURN_IF_ERROR(join_sets(BodyNames(body, "roles"), "role", subject->roles));
    // New attributes can satisfy conditions on principal.attributes: whoever changes them
    // must hold what those statements allow.
    if (auto a = body.find("attributes"); a != body.end() && *a != subject->attributes) {
      for (const auto& set : subject->policy_sets) {
        for (size_t i = 0; i < set->policies.size(); ++i) {
          if (!MentionsAttributes(set->policies[i])) continue;
          sets.push_back(set);
          granted.push_back(
              {&set->policies[i], fmt::format("{} policies[{}]", set->source, i)});
        }
      }
    }
  } else if (action == "principals:CreateApiKey") {
    // A key acts as its principal: making one for another principal hands out all it holds.
    granted.clear();
    if (subject->id != who.id) {
      for (const auto& set : subject->policy_sets) grant_set(set);
    }
  }
  if (granted.empty()) return Status::OK();
  std::vector<const identity::Policy*> holder = who.PolicyPointers();
  identity::PatternVariables vars{who.id, who.tenant_id};
  return identity::CheckGrantHeld(holder, vars, granted, target);
}

// ---- handlers ---------------------------------------------------------------------------

void Api::CreateAgent(ApiCall& c) {
  auto b = Body(c.req);
  if (!b.ok()) return Reply(c, b.status());
  Created(c, engine_->CreateAgent(*b, c.caller()), "agents");
}

void Api::ListAgents(ApiCall& c) {
  auto p = PageQuery(c.req);
  if (!p.ok()) return Reply(c, p.status());
  Reply(c, engine_->ListAgents(c.who.tenant_id, *p));
}

void Api::GetAgent(ApiCall& c) {
  auto v = IntQuery(c.req, "version", 0, 0, INT64_MAX);
  if (!v.ok()) return Reply(c, v.status());
  Reply(c, engine_->GetAgent(c.arg(0), *v));
}

void Api::UpdateAgent(ApiCall& c) {
  auto b = Body(c.req);
  if (!b.ok()) return Reply(c, b.status());
  Reply(c, engine_->UpdateAgent(c.arg(0), *b));
}

// The kill switches: every queued and running turn of an agent's sessions, or a tenant's.
void Api::CancelAgentTurns(ApiCall& c) {
  engine::CancelFilter filter;
  filter.agent_id = c.arg(0);
  Reply(c, engine_->CancelTurns(filter));
}

void Api::CancelTenantTurns(ApiCall& c) {
  engine::CancelFilter filter;
  filter.tenant_id = c.arg(0);
  Reply(c, engine_->CancelTurns(filter));
}

void Api::CreateSession(ApiCall& c) {
  auto b = Body(c.req);
  if (!b.ok()) return Reply(c, b.status());
  Created(c, engine_->CreateSession(*b, c.caller()), "sessions");
}

void Api::ListSessions(ApiCall& c) {
  auto p = PageQuery(c.req);
  if (!p.ok()) return Reply(c, p.status());
  store::SessionFilter f;
  f.tenant_id = c.who.tenant_id;  // a list never crosses tenants
  if (auto* a = c.req.Query("agent_id")) f.agent_id = *a;
  if (auto* s = c.req.Query("status")) {
    f.status = *s;
    if (f.status != "idle" && f.status != "running" && f.status != "requires_action" &&
        f.status != "needs_attention") {
      return Reply(c, InvalidArgument("query parameter 'status' must be one of idle, running, "
                                      "requires_action, needs_attention"));
    }
  }
  Reply(c, engine_->ListSessions(f, *p));
}

void Api::GetSession(ApiCall& c) { Reply(c, engine_->GetSession(c.arg(0))); }

void Api::DeleteSession(ApiCall& c) {
  Status st = engine_->DeleteSession(c.arg(0));
  if (!st.ok()) return Reply(c, st);
  c.ex.Respond({204, "", "", {}});
}

void Api::CancelSession(ApiCall& c) { Reply(c, engine_->CancelSession(c.arg(0))); }

void Api::ListWorkspace(ApiCall& c) { Reply(c, engine_->ListWorkspace(c.arg(0))); }

void Api::ReadWorkspaceFile(ApiCall& c) {
  auto file = engine_->ReadWorkspaceFile(c.arg(0), c.arg(1), kMaxDownloadBytes);
  if (!file.ok()) return Reply(c, file.status());
  c.ex.Respond({200, "application/octet-stream", std::move(file).value(),
                {{"X-Content-Type-Options", "nosniff"}, {"Content-Disposition", "attachment"}}});
}

void Api::ListTurns(ApiCall& c) {
  auto p = PageQuery(c.req);
  if (!p.ok()) return Reply(c, p.status());
  Reply(c, engine_->ListTurns(c.arg(0), *p));
}

void Api::GetTurn(ApiCall& c) { Reply(c, engine_->GetTurn(c.arg(0), c.arg(1))); }

void Api::PostApproval(ApiCall& c) {
  auto b = Body(c.req);
  if (!b.ok()) return Reply(c, b.status());
  Reply(c, engine_->SubmitApproval(c.arg(0), c.arg(1), *b, c.who.id));
}

void Api::PostToolOutputs(ApiCall& c) {
  auto b = Body(c.req);
  if (!b.ok()) return Reply(c, b.status());
  Reply(c, engine_->SubmitToolOutputs(c.arg(0), c.arg(1), *b));
}

// Secrets: written, listed by name, never read back.
void Api::ListSecrets(ApiCall& c) {
  auto list = options_.vault->List(c.who.tenant_id);
  if (!list.ok()) return Reply(c, list.status());
  Json data = Json::array();
  for (const auto& info : *list) data.push_back(info.ToJson());
  Reply(c, Json{{"data", std::move(data)}, {"has_more", false}});
}

void Api::PutSecret(ApiCall& c) {
  auto b = Body(c.req);
  if (!b.ok()) return Reply(c, b.status());
  FieldReader r(*b, "");
  std::string value;
  Status st = r.CheckObject();
  if (st.ok()) st = r.String("value", &value, true, identity::kMaxSecretBytes);
  if (st.ok()) st = r.NoUnknownKeys();
  if (!st.ok()) return Reply(c, st);
  auto put = options_.vault->Put(c.who.tenant_id, c.arg(0), value);
  std::fill(value.begin(), value.end(), '\0');
  if (!put.ok()) return Reply(c, put.status());
  c.ex.Respond(
      {200, "application/json", DumpJson(put->ToJson()), {{"Cache-Control", "no-store"}}});
}

void Api::CreateTenant(ApiCall& c) {
  auto b = Body(c.req);
  if (!b.ok()) return Reply(c, b.status());
  Created(c, directory_->CreateTenant(*b), "tenants");
}

void Api::GetTenant(ApiCall& c) { Reply(c, directory_->GetTenant(c.arg(0))); }

void Api::CreatePrincipal(ApiCall& c) {
  auto b = Body(c.req);
  if (!b.ok()) return Reply(c, b.status());
  Created(c, directory_->CreatePrincipal(*b), "principals");
}

void Api::ListPrincipals(ApiCall& c) {
  auto p = PageQuery(c.req);
  if (!p.ok()) return Reply(c, p.status());
  Reply(c, directory_->ListPrincipals(c.who.tenant_id, *p));
}

void Api::GetPrincipal(ApiCall& c) { Reply(c, directory_->GetPrincipal(c.arg(0))); }

void Api::UpdatePrincipal(ApiCall& c) {
  auto b = Body(c.req);
  if (!b.ok()) return Reply(c, b.status());
  Reply(c, directory_->UpdatePrincipal(c.arg(0), *b));
}

void Api::CreateApiKey(ApiCall& c) {
  Json b = Json::object();
  if (!c.req.body.empty()) {
    auto parsed = Body(c.req);
    if (!parsed.ok()) return Reply(c, parsed.status());
    b = *parsed;
  }
  auto key = directory_->CreateApiKey(c.arg(0), b);
  if (!key.ok()) return Reply(c, key.status());
  // Shown once: no cache may keep it.
  c.ex.Respond({201, "application/json", DumpJson(*key), {{"Cache-Control", "no-store"}}});
}

void Api::RevokeApiKey(ApiCall& c) { Reply(c, directory_->RevokeApiKey(c.arg(0))); }

namespace {
// "group" for /v1/groups..., "role" for /v1/roles...
std::string PolicySetKind(const http::Request& req) {
  return req.path.starts_with("/v1/groups") ? "group" : "role";
}
}  // namespace

void Api::CreatePolicySet(ApiCall& c) {
  auto b = Body(c.req);
  if (!b.ok()) return Reply(c, b.status());
  const std::string kind = PolicySetKind(c.req);
  Created(c, directory_->CreatePolicySet(kind, c.who.tenant_id, *b), kind + "s");
}

void Api::ListPolicySets(ApiCall& c) {
  auto p = PageQuery(c.req);
  if (!p.ok()) return Reply(c, p.status());
  Reply(c, directory_->ListPolicySets(PolicySetKind(c.req), c.who.tenant_id, *p));
}

void Api::GetPolicySet(ApiCall& c) {
  Reply(c, directory_->GetPolicySet(PolicySetKind(c.req), c.arg(0)));
}

void Api::ReplacePolicySet(ApiCall& c) {
  auto b = Body(c.req);
  if (!b.ok()) return Reply(c, b.status());
  Reply(c, directory_->ReplacePolicySet(PolicySetKind(c.req), c.arg(0), *b));
}

void Api::DeletePolicySet(ApiCall& c) {
  Reply(c, directory_->DeletePolicySet(PolicySetKind(c.req), c.arg(0)));
}

void Api::ReadAudit(ApiCall& c) { HandleAudit(c.req, c.ex, false, c.who.tenant_id); }

void Api::ReadAuditCheckpoints(ApiCall& c) { HandleAudit(c.req, c.ex, true, c.who.tenant_id); }

void Api::HandleAudit(const http::Request& req, http::Exchange& ex, bool checkpoints,
                      const std::string& own_tenant) {
  // The gate has checked the caller may read this tenant's chain.
  const std::string* t = req.Query("tenant_id");
  const std::string tenant = t != nullptr ? *t : own_tenant;
  if (checkpoints) {
    auto r = audit_log_->Checkpoints(tenant);
    if (!r.ok()) return ex.Respond(ProblemResponse(r.status()));
    return ex.Respond(JsonResponse(200, *r));
  }
  audit::AuditQuery q;
  q.filter.tenant_id = tenant;
  auto after = IntQuery(req, "after_seq", 0, 0, INT64_MAX);
  if (!after.ok()) return ex.Respond(ProblemResponse(after.status()));
  q.filter.after_seq = *after;
  auto limit = IntQuery(req, "limit", 100, 1, 1000);
  if (!limit.ok()) return ex.Respond(ProblemResponse(limit.status()));
  q.limit = static_cast<int>(*limit);
  if (const std::string* c = req.Query("cursor")) q.cursor = *c;
  if (const std::string* v = req.Query("action")) q.filter.action = *v;
  if (const std::string* v = req.Query("principal")) q.filter.principal = *v;
  if (const std::string* v = req.Query("decision")) q.filter.decision = *v;
  if (const std::string* v = req.Query("resource_prefix")) q.filter.resource_prefix = *v;
  for (auto [name, out] : {std::pair{"since", &q.filter.since_ms}, {"until", &q.filter.until_ms}}) {
    if (const std::string* v = req.Query(name)) {
      auto ms = ParseRfc3339(*v);
      if (!ms) {
        return ex.Respond(ProblemResponse(
            InvalidArgument(fmt::format("query parameter '{}' must be an RFC 3339 date-time", name))));
      }
      *out = *ms;
    }
  }
  auto r = audit_log_->Query(q);
  if (!r.ok()) return ex.Respond(ProblemResponse(r.status()));
  ex.Respond(JsonResponse(200, *r));
}

void Api::Simulate(ApiCall& c) {
  const http::Request& req = c.req;
  http::Exchange& ex = c.ex;
  const identity::Principal& who = c.who;
  auto fail = [&](const Status& st) { ex.Respond(ProblemResponse(st)); };
  auto b = Body(req);
  if (!b.ok()) return fail(b.status());
  FieldReader r(*b, "");
  std::string principal_id, action, resource, time;
  const Json *context = nullptr;
  Status st = r.CheckObject();
  if (st.ok()) st = r.String("principal_id", &principal_id, false, 64);
  if (st.ok()) st = r.String("action", &action, true, 128);
  if (st.ok()) st = r.String("resource", &resource, true, 1024);
  if (st.ok()) st = r.Value("context", &context, false);
  if (st.ok()) st = r.NoUnknownKeys();
  if (!st.ok()) return fail(st);
  identity::Request q;
  q.action = action;
  q.resource = resource;
  q.time_millis = SystemClock::Default()->NowMillis();
  if (context != nullptr) {
    FieldReader c(*context, "context");
    const Json *metadata = nullptr, *args = nullptr;
    std::string tool, agent;
    st = c.CheckObject();
    if (st.ok()) st = c.Value("session_metadata", &metadata, false);
    if (st.ok()) st = c.String("tool_name", &tool, false, 256);
    if (st.ok()) st = c.Value("tool_arguments", &args, false);
    if (st.ok()) st = c.String("agent_id", &agent, false, 64);
    if (st.ok()) st = c.String("time", &time, false, 64);
    if (st.ok()) st = c.NoUnknownKeys();
    if (!st.ok()) return fail(st);
    if (metadata != nullptr && !metadata->is_object()) {
      return fail(InvalidArgument("'context.session_metadata' must be an object"));
    }
    if (metadata != nullptr) q.session_metadata = *metadata;
    if (args != nullptr) q.tool_arguments = *args;
    if (!tool.empty()) q.tool_name = tool;
    if (!agent.empty()) q.agent_id = agent;
    if (!time.empty()) {
      auto t = ParseRfc3339(time);
      if (!t) return fail(InvalidArgument("'context.time' must be an RFC 3339 date-time"));
      q.time_millis = *t;
    }
  }
  auto loaded = directory_->LoadPrincipal(principal_id.empty() ? who.id : principal_id);
  if (!loaded.ok()) return fail(loaded.status());
  const std::shared_ptr<const identity::Principal>& subject = *loaded;
  q.principal = subject->Context();
  identity::Decision d = identity::Decide(subject->PolicyPointers(), q);
  // Which statement decided, and which set it came from: the principal's own policies, or
  // a group's or role's.
  auto describe = [&](const identity::Decision& dd) -> Json {
    if (dd.policy_index < 0) return nullptr;
    int index = dd.policy_index;
    std::string source;
    for (const auto& set : subject->policy_sets) {
      if (index < static_cast<int>(set->policies.size())) {
        source = set->source;
        break;
      }
      index -= static_cast<int>(set->policies.size());
    }
    return {{"source", source},
            {"policy_index", index},
            {"statement_index", dd.statement_index},
            {"sid", dd.sid.empty() ? Json(nullptr) : Json(dd.sid)}};
  };
  Json out = {{"principal_id", subject->id}, {"action", action}, {"resource", resource}};
  if (!identity::ReachesTenant(*subject, identity::ResourceTenant(resource))) {
    // The wall decides before policy, as the gate does: whatever the principal's policies
    // say of this resource is clamped to its own tenant. `clamped_statement` names the
    // statement that would have allowed it, had the wall not been there.
    out["allowed"] = false;
    out["decision"] = "deny";
    out["reason"] = "tenant_wall";
    out["statement"] = nullptr;
    out["clamped_statement"] = d.allowed() ? describe(d) : Json(nullptr);
    out["detail"] = fmt::format(
        "{} is in tenant {}, which no principal of tenant {} reaches, whatever its policies "
        "say",
        resource, identity::ResourceTenant(resource).empty() ? "(none)" : identity::ResourceTenant(resource),
        subject->tenant_id);
    return ex.Respond(JsonResponse(200, out));
  }
  out["allowed"] = d.allowed();
  out["decision"] = identity::EffectName(d.effect);
  out["reason"] = identity::DecisionReasonName(d.reason);
  out["statement"] = describe(d);
  ex.Respond(JsonResponse(200, out));
}

void Api::PostTurn(ApiCall& c) {
  const http::Request& req = c.req;
  http::Exchange& ex = c.ex;
  const identity::Principal& who = c.who;
  const std::string& sid = c.arg(0);
  auto b = Body(req);
  if (!b.ok()) return ex.Respond(ProblemResponse(b.status()));
  FieldReader r(*b, "");
  const Json* input = nullptr;
  bool wait = false, stream = false;
  Status st = r.CheckObject();
  if (st.ok()) st = r.Value("input", &input, true);
  if (st.ok()) st = r.Bool("wait", &wait, false);
  if (st.ok()) st = r.Bool("stream", &stream, false);
  if (st.ok()) st = r.NoUnknownKeys();
  if (!st.ok()) return ex.Respond(ProblemResponse(st));
  if (WantsEventStream(req)) stream = true;

  auto submitted = engine_->SubmitTurn(sid, *input, req.Header("idempotency-key"), who.id);
  if (!submitted.ok()) return ex.Respond(ProblemResponse(submitted.status()));
  Json turn = submitted->turn;
  const std::string tid = turn.value("id", "");
  std::vector<std::pair<std::string, std::string>> headers = {
      {"Location", fmt::format("/v1/sessions/{}/turns/{}", sid, tid)}};
  if (!submitted->created) headers.emplace_back("Idempotent-Replayed", "true");

  if (stream) {
    if (!ex.StartStream(200, "text/event-stream", headers)) return;
    int64_t from = submitted->queued_seq > 0 ? submitted->queued_seq - 1 : 0;
    StreamEvents(ex, sid, from, tid, true);
    return;
  }
  if (wait) {
    auto t = engine_->WaitForTurnBlocking(sid, tid, options_.wait_timeout);
    if (!t.ok()) return ex.Respond(ProblemResponse(t.status()));
    std::string status = t->value("status", "");
    bool resting = status != "queued" && status != "running";
    return ex.Respond({resting ? 200 : 202, "application/json", DumpJson(*t), headers});
  }
  ex.Respond({submitted->created ? 202 : 200, "application/json", DumpJson(turn), headers});
}

void Api::ExportSession(ApiCall& c) {
  http::Exchange& ex = c.ex;
  const std::string& sid = c.arg(0);
  bool streaming = false;
  std::string chunk;  // lines are sent in chunks of about 64 KiB
  Status st = engine_->ExportSession(
      sid,
      [&] {
        streaming = ex.StartStream(
            200, "application/x-ndjson",
            {{"Content-Disposition",
              fmt::format("attachment; filename=\"{}.agentd-export.jsonl\"", sid)}});
        return streaming;
      },
      [&](std::string_view line) {
        chunk.append(line);
        chunk += '\n';
        if (chunk.size() < (64u << 10)) return true;
        bool ok = ex.Write(chunk);
        chunk.clear();
        return ok;
      });
  if (!streaming) return ex.Respond(ProblemResponse(st));
  // A failure after the first line leaves the file without its end record, which is how an
  // importer knows it is incomplete.
  if (!st.ok() && st.code() != StatusCode::kCancelled) {
    spdlog::error("export of session {} stopped: {}", sid, st.ToString());
  }
  if (st.ok() && !chunk.empty() && !ex.Write(chunk)) return;
  ex.EndStream();
}

void Api::ImportSession(ApiCall& c) {
  const http::Request& req = c.req;
  http::Exchange& ex = c.ex;
  const engine::Caller caller = c.caller();
  std::string type = MediaType(req);
  if (!type.empty() && type != "application/x-ndjson" && type != "application/jsonl" &&
      type != "application/json") {
    return ex.Respond(Problem(415, "unsupported_media_type",
                              fmt::format("Content-Type '{}' is not supported; send an export "
                                          "file as application/x-ndjson",
                                          req.Header("content-type"))));
  }
  auto r = engine_->ImportSession(req.body, caller);
  if (!r.ok()) return ex.Respond(ProblemResponse(r.status()));
  std::string id = r->value("id", "");
  ex.Respond({201, "application/json", DumpJson(*r),
              {{"Location", fmt::format("/v1/sessions/{}", id)}}});
}

void Api::SessionEvents(ApiCall& c) {
  const http::Request& req = c.req;
  http::Exchange& ex = c.ex;
  const std::string& sid = c.arg(0);
  auto after = IntQuery(req, "after", 0, 0, INT64_MAX);
  if (!after.ok()) return ex.Respond(ProblemResponse(after.status()));
  auto limit = IntQuery(req, "limit", 100, 1, 1000);
  if (!limit.ok()) return ex.Respond(ProblemResponse(limit.status()));
  if (!WantsEventStream(req)) {
    auto page = engine_->ReadEvents(sid, *after, static_cast<int>(*limit));
    if (!page.ok()) return ex.Respond(ProblemResponse(page.status()));
    return ex.Respond(JsonResponse(200, *page));
  }
  int64_t from = *after;
  std::string last_id = req.Header("last-event-id");
  if (!last_id.empty()) {
    static const std::regex re("^[0-9]{1,18}$");
    if (!std::regex_match(last_id, re)) {
      return ex.Respond(ProblemResponse(InvalidArgument("Last-Event-ID must be a sequence number")));
    }
    from = std::stoll(last_id);
  }
  // Check the session exists before committing to a 200 stream.
  auto probe = engine_->GetSession(sid);
  if (!probe.ok()) return ex.Respond(ProblemResponse(probe.status()));
  if (!ex.StartStream(200, "text/event-stream", {})) return;
  StreamEvents(ex, sid, from, "", false);
}

void Api::StreamEvents(http::Exchange& ex, const std::string& sid, int64_t after,
                       const std::string& only_turn, bool stop_at_turn_end) {
  auto last_write = std::chrono::steady_clock::now();
  while (!ex.Stopping()) {
    auto page = engine_->ReadEvents(sid, after, 500);
    if (!page.ok()) {
      ex.Write(fmt::format("event: error\ndata: {}\n\n",
                           DumpJson({{"detail", page.status().message()}})));
      break;
    }
    for (const auto& e : (*page)["data"]) {
      after = e.value("seq", after);
      const Json& turn_id = e["turn_id"];
      if (!only_turn.empty() && !(turn_id.is_string() && turn_id.get<std::string>() == only_turn)) {
        continue;
      }
      if (!ex.Write(SseFrame(e))) return;
      last_write = std::chrono::steady_clock::now();
      if (stop_at_turn_end && EndsTurnStream(e.value("type", ""))) {
        ex.EndStream();
        return;
      }
    }
    if ((*page)["has_more"].get<bool>()) continue;
    engine_->WaitForEventsBlocking(sid, after, options_.heartbeat);
    if (std::chrono::steady_clock::now() - last_write >= options_.heartbeat) {
      if (!ex.Write(": keep-alive\n\n")) return;
      last_write = std::chrono::steady_clock::now();
    }
  }
  ex.EndStream();
}

}  // namespace agentd::api
