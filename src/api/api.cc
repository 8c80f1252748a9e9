#include "api/api.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <regex>

#include "common/json.h"
#include "common/clock.h"
#include "common/ids.h"
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

struct Api::Gate {
  std::string action;
  std::string resource;
  std::string tenant;  // the tenant the resource belongs to
  std::string reason;
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
  } else {
    const identity::Principal& p = **who;
    record.tenant_id = p.tenant_id;
    record.principal_id = p.id;
    Gate gate;
    Status allowed = Authorize(req, seg, p, &gate);
    record.action = gate.action;
    record.resource = gate.resource;
    record.reason = gate.reason;
    if (!allowed.ok()) {
      record.decision = "deny";
      rec.Respond(ProblemResponse(allowed));
    } else {
      record.decision = gate.action.empty() ? "" : "allow";
      if (audit_ && m != "GET" && m != "HEAD") {
        // A request that may change something is on the record before it does: should
        // agentd die between the change and the answer, the log still shows who started it.
        RequestRecord started = record;
        started.status = 0;
        audit_(started);
      }
      Route(req, rec, seg, p);
    }
  }
  if (!rec.answered()) {
    // Every route answers; a request that somehow did not is still on the record.
    spdlog::error("{} {}: no answer", m, req.path);
    rec.Respond(Problem(500, "internal", "the request got no answer"));
  }
}

Status Api::Authorize(const http::Request& req, const std::vector<std::string>& seg,
                      const identity::Principal& who, Gate* g) {
  const std::string& m = req.method;
  const std::string& own = who.tenant_id;
  // What an object's absence looks like: another tenant's object must look the same.
  std::string missing = fmt::format("no route for {}", req.path);
  auto set = [&](std::string action, std::string tenant, std::string_view type,
                 std::string_view id) {
    g->action = std::move(action);
    g->resource = ResourceName(tenant, type, id);
    g->tenant = std::move(tenant);
  };
  auto read_or = [&](std::string_view write_method, const char* write, const char* read) {
    return m == write_method ? std::string(write) : std::string(read);
  };
  if (seg.size() < 2 || seg[0] != "v1") return NotFound(missing);
  const std::string& col = seg[1];
  if (col == "agents") {
    if (seg.size() == 2) {
      set(read_or("POST", "agents:Create", "agents:Read"), own, "agent", "*");
    } else {
      std::string action = read_or("PUT", "agents:Update", "agents:Read");
      if (seg.size() == 4 && seg[3] == "cancel-turns") action = "sessions:Cancel";
      g->action = action;  // recorded even when the agent is not found
      auto t = engine_->AgentTenant(seg[2]);
      if (!t.ok()) return t.status();
      missing = fmt::format("agent '{}' not found", seg[2]);
      set(action, *t, "agent", seg[2]);
    }
  } else if (col == "sessions:import") {
    set("sessions:Import", own, "session", "*");
  } else if (col == "sessions") {
    if (seg.size() == 2) {
      set(read_or("POST", "sessions:Create", "sessions:Read"), own, "session", "*");
    } else {
      std::string action = "sessions:Read";
      const std::string sub = seg.size() >= 4 ? seg[3] : "";
      if (seg.size() == 3 && m == "DELETE") action = "sessions:Delete";
      if (sub == "cancel") action = "sessions:Cancel";
      if (sub == "export") action = "sessions:Export";
      if (sub == "turns" && m == "POST") action = "sessions:Invoke";
      if (sub == "turns" && seg.size() == 6 && seg[5] == "approvals") action = "tools:Approve";
      g->action = action;  // recorded even when the session is not found
      auto scope = engine_->SessionScope(seg[2]);
      if (!scope.ok()) return scope.status();
      missing = fmt::format("session '{}' not found", seg[2]);
      g->session_metadata = scope->second;
      set(action, scope->first, "session", seg[2]);
    }
  } else if (col == "tenants") {
    if (seg.size() == 2) {
      set("tenants:Create", "*", "tenant", "*");
    } else {
      if (!directory_->TenantExists(seg[2])) {
        return NotFound(fmt::format("tenant {} not found", seg[2]));
      }
      missing = fmt::format("tenant {} not found", seg[2]);
      // The kill switch: every queued and running turn of the tenant.
      const bool cancel = seg.size() == 4 && seg[3] == "cancel-turns";
      set(cancel ? "sessions:Cancel" : "tenants:Read", seg[2], "tenant", seg[2]);
    }
  } else if (col == "principals") {
    if (seg.size() == 2 && m == "POST") {
      auto b = Body(req);
      if (!b.ok()) return b.status();
      const std::string* t = FindString(*b, "tenant_id");
      if (t == nullptr) return InvalidArgument("'tenant_id' is required and must be a string");
      missing = fmt::format("tenant {} not found", *t);
      if (!directory_->TenantExists(*t)) return NotFound(missing);
      set("principals:Create", *t, "principal", "*");
    } else if (seg.size() == 2) {
      set("principals:Read", own, "principal", "*");
    } else {
      auto t = directory_->PrincipalTenant(seg[2]);
      if (!t.ok()) return t.status();
      missing = fmt::format("principal {} not found", seg[2]);
      std::string action = read_or("PATCH", "principals:Update", "principals:Read");
      if (seg.size() >= 4 && seg[3] == "api-keys" && m == "POST") {
        action = "principals:CreateApiKey";
      }
      set(action, *t, "principal", seg[2]);
    }
  } else if ((col == "groups" || col == "roles") && seg.size() <= 3) {
    const std::string kind = col == "groups" ? "group" : "role";
    const std::string prefix = col + ":";
    if (seg.size() == 2 && m == "POST") {
      auto b = Body(req);
      if (!b.ok()) return b.status();
      const std::string* t = FindString(*b, "tenant_id");
      std::string tenant = t != nullptr ? *t : own;
      missing = fmt::format("tenant {} not found", tenant);
      if (!directory_->TenantExists(tenant)) return NotFound(missing);
      set(prefix + "Create", tenant, kind, "*");
    } else if (seg.size() == 2) {
      set(prefix + "Read", own, kind, "*");
    } else {
      auto t = directory_->PolicySetTenant(kind, seg[2]);
      if (!t.ok()) return t.status();
      missing = fmt::format("{} {} not found", kind, seg[2]);
      std::string action = prefix + "Read";
      if (m == "PUT") action = prefix + "Update";
      if (m == "DELETE") action = prefix + "Delete";
      set(action, *t, kind, seg[2]);
    }
  } else if (col == "api-keys" && seg.size() == 3) {
    auto t = directory_->ApiKeyTenant(seg[2]);
    if (!t.ok()) return t.status();
    missing = fmt::format("API key {} not found", seg[2]);
    set("principals:RevokeApiKey", *t, "api-key", seg[2]);
  } else if (col == "audit" && (seg.size() == 2 || (seg.size() == 3 && seg[2] == "checkpoints"))) {
    // A tenant's chain; the system chain ("") of unauthenticated requests is nobody's tenant.
    const std::string* t = req.Query("tenant_id");
    std::string tenant = t != nullptr ? *t : own;
    missing = fmt::format("tenant {} not found", tenant);
    set("audit:Read", tenant, "audit", "*");
  } else if (col == "policies:simulate") {
    // Who the question is about decides where it lands: asking about another tenant's
    // principal needs the right to simulate there.
    auto b = Body(req);
    if (!b.ok()) return b.status();
    const std::string* pid = FindString(*b, "principal_id");
    std::string tenant = own, id = who.id;
    if (pid != nullptr && *pid != who.id) {
      auto t = directory_->PrincipalTenant(*pid);
      if (!t.ok()) return t.status();
      tenant = *t;
      id = *pid;
      missing = fmt::format("principal {} not found", *pid);
    }
    set("policies:Simulate", tenant, "principal", id);
  } else if (col == "secrets" && options_.vault != nullptr && seg.size() <= 3) {
    // A caller reaches only its own tenant's secrets: there is no way to name another's.
    set(seg.size() == 2 ? "secrets:Read" : read_or("PUT", "secrets:Write", "secrets:Read"), own,
        "secret", seg.size() == 2 ? "*" : seg[2]);
  } else {
    return NotFound(missing);
  }

  identity::Request r;
  r.action = g->action;
  r.resource = g->resource;
  r.principal = who.Context();
  r.session_metadata = g->session_metadata;
  r.time_millis = SystemClock::Default()->NowMillis();
  identity::Decision d = identity::Decide(who.PolicyPointers(), r);
  g->reason = d.sid.empty() ? std::string(identity::DecisionReasonName(d.reason)) : d.sid;
  if (d.allowed()) return Status::OK();
  // Whatever another tenant has does not exist for this caller.
  if (g->tenant != own && g->tenant != "*") return NotFound(missing);
  return PermissionDenied(fmt::format("{} is not allowed to {} on {} ({})", who.id, g->action,
                                      g->resource,
                                      d.reason == identity::DecisionReason::kExplicitDeny
                                          ? "denied by statement '" + d.sid + "'"
                                          : "no policy allows it"));
}

void Api::Route(const http::Request& req, http::Exchange& ex, const std::vector<std::string>& seg,
                const identity::Principal& who) {
  const std::string& m = req.method;
  const engine::Caller caller{who.tenant_id, who.id};
  auto reply = [&](Result<Json> r, int ok_status = 200) {
    if (!r.ok()) {
      if (r.status().code() == StatusCode::kInternal) {
        spdlog::error("{} {}: {}", m, req.path, r.status().ToString());
      }
      ex.Respond(ProblemResponse(r.status()));
    } else {
      ex.Respond(JsonResponse(ok_status, *r));
    }
  };
  auto method_not_allowed = [&](std::string allow) {
    auto r = Problem(405, "method_not_allowed",
                     fmt::format("{} is not allowed on {}; allowed: {}", m, req.path, allow));
    r.headers.emplace_back("Allow", allow);
    ex.Respond(std::move(r));
  };
  auto body = [&]() { return Body(req); };
  auto created = [&](Result<Json> r, std::string_view collection) {
    if (!r.ok()) return reply(std::move(r));
    std::string id = r->value("id", "");
    ex.Respond({201, "application/json", DumpJson(*r),
                {{"Location", fmt::format("/v1/{}/{}", collection, id)}}});
  };
  if (IsImportRequest(m, req.path)) return HandleImport(req, ex, caller);
  if ((m == "POST" || m == "PUT" || m == "PATCH") && !req.body.empty() && !JsonContentType(req)) {
    return ex.Respond(Problem(415, "unsupported_media_type",
                              fmt::format("Content-Type '{}' is not supported; send "
                                          "application/json",
                                          req.Header("content-type"))));
  }

  if (seg.empty() || seg[0] != "v1") {
    return ex.Respond(Problem(404, "not_found", fmt::format("no route for {}", req.path)));
  }

  // /v1/agents[/{id}]
  if (seg.size() >= 2 && seg[1] == "agents") {
    if (seg.size() == 2) {
      if (m == "POST") {
        auto b = body();
        if (!b.ok()) return reply(b.status());
        return created(engine_->CreateAgent(*b, caller), "agents");
      }
      if (m == "GET") {
        auto p = PageQuery(req);
        if (!p.ok()) return reply(p.status());
        return reply(engine_->ListAgents(who.tenant_id, *p));
      }
      return method_not_allowed("GET, POST");
    }
    if (seg.size() == 3) {
      if (m == "GET") {
        auto v = IntQuery(req, "version", 0, 0, INT64_MAX);
        if (!v.ok()) return reply(v.status());
        return reply(engine_->GetAgent(seg[2], *v));
      }
      if (m == "PUT") {
        auto b = body();
        if (!b.ok()) return reply(b.status());
        return reply(engine_->UpdateAgent(seg[2], *b));
      }
      return method_not_allowed("GET, PUT");
    }
    // The kill switch: every queued and running turn of the agent's sessions.
    if (seg.size() == 4 && seg[3] == "cancel-turns") {
      if (m != "POST") return method_not_allowed("POST");
      engine::CancelFilter filter;
      filter.agent_id = seg[2];
      return reply(engine_->CancelTurns(filter));
    }
  }

  // /v1/sessions...
  if (seg.size() >= 2 && seg[1] == "sessions") {
    if (seg.size() == 2) {
      if (m == "POST") {
        auto b = body();
        if (!b.ok()) return reply(b.status());
        return created(engine_->CreateSession(*b, caller), "sessions");
      }
      if (m == "GET") {
        auto p = PageQuery(req);
        if (!p.ok()) return reply(p.status());
        store::SessionFilter f;
        f.tenant_id = who.tenant_id;  // a list never crosses tenants
        if (auto* a = req.Query("agent_id")) f.agent_id = *a;
        if (auto* s = req.Query("status")) {
          f.status = *s;
          if (f.status != "idle" && f.status != "running" && f.status != "requires_action" &&
              f.status != "needs_attention") {
            return reply(InvalidArgument(
                "query parameter 'status' must be one of idle, running, requires_action, "
                "needs_attention"));
          }
        }
        return reply(engine_->ListSessions(f, *p));
      }
      return method_not_allowed("GET, POST");
    }
    const std::string& sid = seg[2];
    if (seg.size() == 3) {
      if (m == "GET") return reply(engine_->GetSession(sid));
      if (m == "DELETE") {
        Status st = engine_->DeleteSession(sid);
        if (!st.ok()) return reply(st);
        return ex.Respond({204, "", "", {}});
      }
      return method_not_allowed("GET, DELETE");
    }
    if (seg.size() == 4 && seg[3] == "cancel") {
      if (m != "POST") return method_not_allowed("POST");
      return reply(engine_->CancelSession(sid));
    }
    if (seg.size() == 4 && seg[3] == "export") {
      if (m != "GET") return method_not_allowed("GET");
      return HandleExport(ex, sid);
    }
    if (seg.size() == 4 && seg[3] == "events") {
      if (m != "GET") return method_not_allowed("GET");
      return HandleEvents(req, ex, sid);
    }
    // /v1/sessions/{id}/workspace[/{path...}]: the session's files.
    if (seg.size() >= 4 && seg[3] == "workspace") {
      if (m != "GET") return method_not_allowed("GET");
      if (seg.size() == 4) return reply(engine_->ListWorkspace(sid));
      std::string path = seg[4];
      for (size_t i = 5; i < seg.size(); ++i) path += "/" + seg[i];
      auto file = engine_->ReadWorkspaceFile(sid, path, kMaxDownloadBytes);
      if (!file.ok()) return reply(file.status());
      return ex.Respond({200, "application/octet-stream", std::move(file).value(),
                         {{"X-Content-Type-Options", "nosniff"},
                          {"Content-Disposition", "attachment"}}});
    }
    if (seg.size() >= 4 && seg[3] == "turns") {
      if (seg.size() == 4) {
        if (m == "POST") return HandleTurnsPost(req, ex, sid, who);
        if (m == "GET") {
          auto p = PageQuery(req);
          if (!p.ok()) return reply(p.status());
          return reply(engine_->ListTurns(sid, *p));
        }
        return method_not_allowed("GET, POST");
      }
      if (seg.size() == 5) {
        if (m != "GET") return method_not_allowed("GET");
        return reply(engine_->GetTurn(sid, seg[4]));
      }
      if (seg.size() == 6 && seg[5] == "approvals") {
        if (m != "POST") return method_not_allowed("POST");
        auto b = body();
        if (!b.ok()) return reply(b.status());
        return reply(engine_->SubmitApproval(sid, seg[4], *b, who.id));
      }
      if (seg.size() == 6 && seg[5] == "tool_outputs") {
        if (m != "POST") return method_not_allowed("POST");
        auto b = body();
        if (!b.ok()) return reply(b.status());
        return reply(engine_->SubmitToolOutputs(sid, seg[4], *b));
      }
    }
  }
  // Secrets: written, listed by name, never read back.
  if (seg[1] == "secrets" && options_.vault != nullptr) {
    if (seg.size() == 2) {
      if (m != "GET") return method_not_allowed("GET");
      auto list = options_.vault->List(who.tenant_id);
      if (!list.ok()) return reply(list.status());
      Json data = Json::array();
      for (const auto& info : *list) data.push_back(info.ToJson());
      return reply(Json{{"data", std::move(data)}, {"has_more", false}});
    }
    if (m != "PUT") return method_not_allowed("PUT");
    auto b = body();
    if (!b.ok()) return reply(b.status());
    FieldReader r(*b, "");
    std::string value;
    Status st = r.CheckObject();
    if (st.ok()) st = r.String("value", &value, true, identity::kMaxSecretBytes);
    if (st.ok()) st = r.NoUnknownKeys();
    if (!st.ok()) return reply(st);
    auto put = options_.vault->Put(who.tenant_id, seg[2], value);
    std::fill(value.begin(), value.end(), '\0');
    if (!put.ok()) return reply(put.status());
    return ex.Respond(
        {200, "application/json", DumpJson(put->ToJson()), {{"Cache-Control", "no-store"}}});
  }
  // Identity: tenants, principals and their API keys, policy simulation.
  if (seg.size() == 2 && seg[1] == "tenants") {
    if (m != "POST") return method_not_allowed("POST");
    auto b = body();
    if (!b.ok()) return reply(b.status());
    return created(directory_->CreateTenant(*b), "tenants");
  }
  if (seg.size() == 3 && seg[1] == "tenants") {
    if (m != "GET") return method_not_allowed("GET");
    return reply(directory_->GetTenant(seg[2]));
  }
  if (seg.size() == 4 && seg[1] == "tenants" && seg[3] == "cancel-turns") {
    if (m != "POST") return method_not_allowed("POST");
    engine::CancelFilter filter;
    filter.tenant_id = seg[2];
    return reply(engine_->CancelTurns(filter));
  }
  if (seg.size() == 2 && seg[1] == "principals") {
    if (m == "POST") {
      auto b = body();
      if (!b.ok()) return reply(b.status());
      return created(directory_->CreatePrincipal(*b), "principals");
    }
    if (m == "GET") {
      auto p = PageQuery(req);
      if (!p.ok()) return reply(p.status());
      return reply(directory_->ListPrincipals(who.tenant_id, *p));
    }
    return method_not_allowed("GET, POST");
  }
  if (seg.size() == 3 && seg[1] == "principals") {
    if (m == "GET") return reply(directory_->GetPrincipal(seg[2]));
    if (m != "PATCH") return method_not_allowed("GET, PATCH");
    auto b = body();
    if (!b.ok()) return reply(b.status());
    return reply(directory_->UpdatePrincipal(seg[2], *b));
  }
  if (seg[1] == "groups" || seg[1] == "roles") {
    const std::string kind = seg[1] == "groups" ? "group" : "role";
    if (seg.size() == 2) {
      if (m == "POST") {
        auto b = body();
        if (!b.ok()) return reply(b.status());
        return created(directory_->CreatePolicySet(kind, who.tenant_id, *b), seg[1]);
      }
      if (m != "GET") return method_not_allowed("GET, POST");
      auto p = PageQuery(req);
      if (!p.ok()) return reply(p.status());
      return reply(directory_->ListPolicySets(kind, who.tenant_id, *p));
    }
    if (m == "GET") return reply(directory_->GetPolicySet(kind, seg[2]));
    if (m == "DELETE") return reply(directory_->DeletePolicySet(kind, seg[2]));
    if (m != "PUT") return method_not_allowed("DELETE, GET, PUT");
    auto b = body();
    if (!b.ok()) return reply(b.status());
    return reply(directory_->ReplacePolicySet(kind, seg[2], *b));
  }
  if (seg.size() == 4 && seg[1] == "principals" && seg[3] == "api-keys") {
    if (m != "POST") return method_not_allowed("POST");
    Json b = Json::object();
    if (!req.body.empty()) {
      auto parsed = body();
      if (!parsed.ok()) return reply(parsed.status());
      b = *parsed;
    }
    auto key = directory_->CreateApiKey(seg[2], b);
    if (!key.ok()) return reply(key.status());
    // Shown once: no cache may keep it.
    return ex.Respond({201, "application/json", DumpJson(*key), {{"Cache-Control", "no-store"}}});
  }
  if (seg.size() == 3 && seg[1] == "api-keys") {
    if (m != "DELETE") return method_not_allowed("DELETE");
    return reply(directory_->RevokeApiKey(seg[2]));
  }
  if (seg.size() == 2 && seg[1] == "policies:simulate") {
    if (m != "POST") return method_not_allowed("POST");
    return HandleSimulate(req, ex, who);
  }
  if (seg[1] == "audit" && audit_log_ != nullptr) {
    if (m != "GET") return method_not_allowed("GET");
    return HandleAudit(req, ex, seg.size() == 3, who.tenant_id);
  }
  ex.Respond(Problem(404, "not_found", fmt::format("no route for {}", req.path)));
}

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

void Api::HandleSimulate(const http::Request& req, http::Exchange& ex,
                         const identity::Principal& who) {
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
  Json statement = nullptr;
  if (d.policy_index >= 0) {
    // Which set it came from: the principal's own policies, or a group's or role's.
    int index = d.policy_index;
    std::string source;
    for (const auto& set : subject->policy_sets) {
      if (index < static_cast<int>(set->policies.size())) {
        source = set->source;
        break;
      }
      index -= static_cast<int>(set->policies.size());
    }
    statement = {{"source", source},
                 {"policy_index", index},
                 {"statement_index", d.statement_index},
                 {"sid", d.sid.empty() ? Json(nullptr) : Json(d.sid)}};
  }
  ex.Respond(JsonResponse(200, Json{{"principal_id", subject->id},
                                    {"action", action},
                                    {"resource", resource},
                                    {"allowed", d.allowed()},
                                    {"decision", identity::EffectName(d.effect)},
                                    {"reason", identity::DecisionReasonName(d.reason)},
                                    {"statement", statement}}));
}

void Api::HandleTurnsPost(const http::Request& req, http::Exchange& ex, const std::string& sid,
                          const identity::Principal& who) {
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

void Api::HandleExport(http::Exchange& ex, const std::string& sid) {
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

void Api::HandleImport(const http::Request& req, http::Exchange& ex,
                       const engine::Caller& caller) {
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

void Api::HandleEvents(const http::Request& req, http::Exchange& ex, const std::string& sid) {
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
