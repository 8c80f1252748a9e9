#include "api/api.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <regex>

#include "common/json.h"
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

Api::Api(ApiOptions options, engine::Engine* engine, std::function<Json()> ready_info)
    : options_(options), engine_(engine), ready_info_(std::move(ready_info)) {}

void Api::Handle(const http::Request& req, http::Exchange& ex) {
  const auto seg = Segments(req.path);
  const std::string& m = req.method;
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
  if (IsImportRequest(m, req.path)) return HandleImport(req, ex);
  if ((m == "POST" || m == "PUT") && !req.body.empty() && !JsonContentType(req)) {
    return ex.Respond(Problem(415, "unsupported_media_type",
                              fmt::format("Content-Type '{}' is not supported; send "
                                          "application/json",
                                          req.Header("content-type"))));
  }

  if (seg.size() == 1 && (seg[0] == "healthz" || seg[0] == "readyz")) {
    if (m != "GET") return method_not_allowed("GET");
    if (seg[0] == "healthz") return reply(Json{{"status", "ok"}});
    Json info = ready_info_();
    bool ready = info.value("ready", false) && !engine_->Draining();
    info["ready"] = ready;
    return ex.Respond(JsonResponse(ready ? 200 : 503, info));
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
        return created(engine_->CreateAgent(*b), "agents");
      }
      if (m == "GET") {
        auto p = PageQuery(req);
        if (!p.ok()) return reply(p.status());
        return reply(engine_->ListAgents(*p));
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
        return created(engine_->CreateSession(*b), "sessions");
      }
      if (m == "GET") {
        auto p = PageQuery(req);
        if (!p.ok()) return reply(p.status());
        store::SessionFilter f;
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
        if (m == "POST") return HandleTurnsPost(req, ex, sid);
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
      if (seg.size() == 6 && seg[5] == "tool_outputs") {
        if (m != "POST") return method_not_allowed("POST");
        auto b = body();
        if (!b.ok()) return reply(b.status());
        return reply(engine_->SubmitToolOutputs(sid, seg[4], *b));
      }
    }
  }
  ex.Respond(Problem(404, "not_found", fmt::format("no route for {}", req.path)));
}

void Api::HandleTurnsPost(const http::Request& req, http::Exchange& ex, const std::string& sid) {
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

  auto submitted = engine_->SubmitTurn(sid, *input, req.Header("idempotency-key"));
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

void Api::HandleImport(const http::Request& req, http::Exchange& ex) {
  std::string type = MediaType(req);
  if (!type.empty() && type != "application/x-ndjson" && type != "application/jsonl" &&
      type != "application/json") {
    return ex.Respond(Problem(415, "unsupported_media_type",
                              fmt::format("Content-Type '{}' is not supported; send an export "
                                          "file as application/x-ndjson",
                                          req.Header("content-type"))));
  }
  auto r = engine_->ImportSession(req.body);
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
