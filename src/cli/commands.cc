#include "cli/commands.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <iterator>
#include <optional>
#include <set>
#include <string_view>
#include <thread>
#include <utility>

#include "cli/audit_verify.h"
#include "cli/client.h"
#include "cli/exit_codes.h"
#include "cli/format.h"
#include "cli/sse_parser.h"
#include "cli/yaml_json.h"

namespace agentd::cli {
namespace {

constexpr const char* kDefaultServer = "http://127.0.0.1:8080";
// `events --follow`: consecutive failed connection attempts before giving up, and the pause
// before each new attempt.
constexpr int kMaxReconnects = 5;
constexpr std::chrono::seconds kReconnectDelay{1};
// A stream that stayed open this long was a working connection, not a failed attempt.
constexpr std::chrono::seconds kHealthyStream{10};

struct Context {
  ApiClient client;
  bool json = false;
};

// ---- output -------------------------------------------------------------------------------

void Out(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

void Err(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stderr);
  std::fflush(stderr);
}

ExitCode Fail(ExitCode code, std::string_view message) {
  Err(fmt::format("error: {}\n", Sanitize(message, true)));
  return code;
}

ExitCode FailStatus(const Status& status) {
  return Fail(ExitCodeForStatus(status), status.message());
}

ExitCode FailResponse(const ApiResponse& response) {
  return Fail(ExitCodeForHttpStatus(response.http_status),
              FormatProblem(ProblemFromResponse(response)));
}

// ---- requests -----------------------------------------------------------------------------

// Sends a request and returns its parsed JSON body (null when empty). On any failure prints
// the error and returns nullopt with `*exit` set.
std::optional<Json> Call(Context& ctx, std::string_view method, const std::string& path,
                         const Json* body, ExitCode* exit, const Headers& extra = {}) {
  Result<ApiResponse> r = ctx.client.CallBlocking(method, path, body, extra);
  if (!r.ok()) {
    *exit = FailStatus(r.status());
    return std::nullopt;
  }
  if (!r->ok()) {
    *exit = FailResponse(*r);
    return std::nullopt;
  }
  Result<Json> j = ParseResponseJson(*r, "the server's response");
  if (!j.ok()) {
    *exit = FailStatus(j.status());
    return std::nullopt;
  }
  *exit = ExitCode::kOk;
  return std::move(j).value();
}

std::string Seg(std::string_view id) { return UrlEncode(id); }

const Json& DataArray(const Json& page) {
  static const Json kEmpty = Json::array();
  if (page.is_object()) {
    auto it = page.find("data");
    if (it != page.end() && it->is_array()) return *it;
  }
  return kEmpty;
}

bool HasMore(const Json& page) {
  if (!page.is_object()) return false;
  auto it = page.find("has_more");
  return it != page.end() && it->is_boolean() && it->get<bool>();
}

// Fetches a list endpoint ({"data":[…],"has_more","next_cursor"}). With `all` it follows
// next_cursor and returns one combined page.
std::optional<Json> FetchList(Context& ctx, const std::string& path,
                              std::vector<std::pair<std::string, std::string>> params, bool all,
                              ExitCode* exit) {
  Json combined = Json::array();
  std::set<std::string> seen_cursors;
  while (true) {
    std::optional<Json> page = Call(ctx, "GET", path + QueryString(params), nullptr, exit);
    if (!page) return std::nullopt;
    if (!all) return page;
    for (const Json& item : DataArray(*page)) combined.push_back(item);
    std::string cursor = FieldText(*page, "next_cursor");
    if (!HasMore(*page) || cursor.empty() || !seen_cursors.insert(cursor).second) break;
    bool replaced = false;
    for (auto& [k, v] : params) {
      if (k == "cursor") {
        v = cursor;
        replaced = true;
      }
    }
    if (!replaced) params.emplace_back("cursor", cursor);
  }
  return Json{{"data", std::move(combined)}, {"has_more", false}, {"next_cursor", nullptr}};
}

ExitCode PrintList(Context& ctx, const Json& page, const std::vector<std::string>& header,
                   std::vector<std::string> (*row)(const Json&), std::string_view more_hint) {
  if (ctx.json) {
    Out(PrettyJson(page) + "\n");
    return ExitCode::kOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const Json& item : DataArray(page)) rows.push_back(row(item));
  Out(FormatTable(header, rows));
  std::string cursor = FieldText(page, "next_cursor");
  if (HasMore(page) && !cursor.empty()) {
    Err(fmt::format("(more: add --all, or --cursor {}{})\n", OneLine(cursor, 200), more_hint));
  }
  return ExitCode::kOk;
}

ExitCode PrintObject(Context& ctx, const Json& obj, const std::vector<std::string>& order) {
  Out(ctx.json ? PrettyJson(obj) + "\n" : DescribeObject(obj, order));
  return ExitCode::kOk;
}

Result<Json> LoadObjectFile(const std::string& path) {
  ASSIGN_OR_RETURN(Json doc, LoadDocumentFileBlocking(path));
  if (!doc.is_object()) {
    return InvalidArgument(fmt::format("{} must hold a mapping (a JSON object), not a {}",
                                       path == "-" ? "stdin" : path, doc.type_name()));
  }
  return doc;
}

// ---- agents -------------------------------------------------------------------------------

const std::vector<std::string> kAgentOrder = {"id",    "version",    "name",
                                              "model", "tools",      "turn_policy",
                                              "retry", "created_at", "instructions"};
const std::vector<std::string> kSessionOrder = {"id",         "agent_id",  "agent_version",
                                                "status",     "last_seq",  "metadata",
                                                "created_at", "updated_at"};
const std::vector<std::string> kTurnOrder = {"id",    "session_id",  "status",
                                             "usage", "created_at",  "completed_at",
                                             "error", "output_text", "output"};

ExitCode AgentsCreate(Context& ctx, const std::string& file) {
  Result<Json> doc = LoadObjectFile(file);
  if (!doc.ok()) return FailStatus(doc.status());
  ExitCode exit;
  std::optional<Json> agent = Call(ctx, "POST", "/v1/agents", &*doc, &exit);
  if (!agent) return exit;
  Out(ctx.json ? PrettyJson(*agent) + "\n" : OneLine(FieldText(*agent, "id")) + "\n");
  return ExitCode::kOk;
}

ExitCode AgentsUpdate(Context& ctx, const std::string& id, const std::string& file) {
  Result<Json> doc = LoadObjectFile(file);
  if (!doc.ok()) return FailStatus(doc.status());
  ExitCode exit;
  std::optional<Json> agent = Call(ctx, "PUT", "/v1/agents/" + Seg(id), &*doc, &exit);
  if (!agent) return exit;
  if (ctx.json) {
    Out(PrettyJson(*agent) + "\n");
  } else {
    Out(fmt::format("{} version {}\n", OneLine(FieldText(*agent, "id")),
                    OneLine(FieldText(*agent, "version"))));
  }
  return ExitCode::kOk;
}

ExitCode AgentsList(Context& ctx, int limit, const std::string& cursor, bool all) {
  ExitCode exit;
  std::optional<Json> page = FetchList(
      ctx, "/v1/agents", {{"limit", limit > 0 ? std::to_string(limit) : ""}, {"cursor", cursor}},
      all, &exit);
  if (!page) return exit;
  return PrintList(ctx, *page, AgentHeader(), &AgentRow, "");
}

ExitCode GetAndPrint(Context& ctx, const std::string& path, const std::vector<std::string>& order) {
  ExitCode exit;
  std::optional<Json> obj = Call(ctx, "GET", path, nullptr, &exit);
  if (!obj) return exit;
  return PrintObject(ctx, *obj, order);
}

// ---- sessions -----------------------------------------------------------------------------

ExitCode SessionsCreate(Context& ctx, const std::string& agent,
                        const std::vector<std::string>& metadata_args) {
  Result<Json> metadata = ParseMetadataArgs(metadata_args);
  if (!metadata.ok()) return FailStatus(metadata.status());
  Json body = {{"agent_id", agent}, {"metadata", *metadata}};
  ExitCode exit;
  std::optional<Json> session = Call(ctx, "POST", "/v1/sessions", &body, &exit);
  if (!session) return exit;
  Out(ctx.json ? PrettyJson(*session) + "\n" : OneLine(FieldText(*session, "id")) + "\n");
  return ExitCode::kOk;
}

ExitCode SessionsList(Context& ctx, const std::string& agent, const std::string& status, int limit,
                      const std::string& cursor, bool all) {
  ExitCode exit;
  std::optional<Json> page = FetchList(ctx, "/v1/sessions",
                                       {{"agent_id", agent},
                                        {"status", status},
                                        {"limit", limit > 0 ? std::to_string(limit) : ""},
                                        {"cursor", cursor}},
                                       all, &exit);
  if (!page) return exit;
  return PrintList(ctx, *page, SessionHeader(), &SessionRow, "");
}

ExitCode SessionsDelete(Context& ctx, const std::string& id) {
  ExitCode exit;
  std::optional<Json> body = Call(ctx, "DELETE", "/v1/sessions/" + Seg(id), nullptr, &exit);
  if (!body) return exit;
  if (ctx.json) {
    if (!body->is_null()) Out(PrettyJson(*body) + "\n");
  } else {
    Out(fmt::format("deleted {}\n", OneLine(id)));
  }
  return ExitCode::kOk;
}

// Writes the session's export file to `out` ("-": stdout). A file is made readable by its
// owner only: it holds the whole conversation.
ExitCode SessionsExport(Context& ctx, const std::string& id, const std::string& out) {
  Result<ApiResponse> r = ctx.client.TransferBlocking(
      "GET", "/v1/sessions/" + Seg(id) + "/export", "", "", size_t{4} << 30);
  if (!r.ok()) return FailStatus(r.status());
  if (!r->ok()) return FailResponse(*r);
  // The server sends the end record last; without it the download was cut short.
  size_t last = r->body.rfind('\n', r->body.size() >= 2 ? r->body.size() - 2 : 0);
  std::string_view tail = std::string_view(r->body).substr(last == std::string::npos ? 0 : last + 1);
  if (tail.find("\"kind\":\"end\"") == std::string_view::npos) {
    return Fail(ExitCode::kUnavailable, "the export ended early (no end record); try again");
  }
  if (out == "-") {
    Out(r->body);
    return ExitCode::kOk;
  }
  int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    return Fail(ExitCode::kUsage, fmt::format("cannot create {}: {}", out, std::strerror(errno)));
  }
  bool ok = true;
  for (size_t off = 0; ok && off < r->body.size();) {
    ssize_t n = ::write(fd, r->body.data() + off, r->body.size() - off);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) off += static_cast<size_t>(n);
  }
  ok = ::close(fd) == 0 && ok;
  if (!ok) {
    ::unlink(out.c_str());
    return Fail(ExitCode::kError, fmt::format("cannot write {}", out));
  }
  if (!ctx.json) Err(fmt::format("wrote {} ({} bytes)\n", out, r->body.size()));
  return ExitCode::kOk;
}

ExitCode SessionsImport(Context& ctx, const std::string& path) {
  std::string file;
  if (path == "-") {
    file.assign(std::istreambuf_iterator<char>(std::cin), {});
  } else {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      return Fail(ExitCode::kUsage, fmt::format("cannot read {}: {}", path, std::strerror(errno)));
    }
    file.assign(std::istreambuf_iterator<char>(in), {});
  }
  if (file.empty()) return Fail(ExitCode::kUsage, fmt::format("{} is empty", path));
  Result<ApiResponse> r = ctx.client.TransferBlocking("POST", "/v1/sessions:import",
                                                      std::move(file), "application/x-ndjson",
                                                      16u << 20);
  if (!r.ok()) return FailStatus(r.status());
  if (!r->ok()) return FailResponse(*r);
  Result<Json> session = ParseResponseJson(*r, "the server's response");
  if (!session.ok()) return FailStatus(session.status());
  Out(ctx.json ? PrettyJson(*session) + "\n" : OneLine(FieldText(*session, "id")) + "\n");
  return ExitCode::kOk;
}

ExitCode SessionsCancel(Context& ctx, const std::string& id) {
  ExitCode exit;
  Json empty = Json::object();
  std::optional<Json> session =
      Call(ctx, "POST", "/v1/sessions/" + Seg(id) + "/cancel", &empty, &exit);
  if (!session) return exit;
  if (ctx.json) {
    Out(PrettyJson(*session) + "\n");
  } else {
    Out(fmt::format("{}: {}\n", OneLine(FieldText(*session, "id")),
                    OneLine(FieldText(*session, "status"))));
  }
  return ExitCode::kOk;
}

// ---- turns --------------------------------------------------------------------------------

// How a finished turn ends the command: the answer, the error or the pending calls, and the
// exit code. `pending` is used for requires_action.
ExitCode FinishTurn(Context& ctx, const std::string& session, const std::string& turn_id,
                    const std::string& status, const Json& holder, const Json& pending) {
  if (status == "completed") {
    if (!ctx.json) {
      std::string text = Sanitize(FieldText(holder, "output_text"), true);
      if (!text.empty()) Out(text + (text.back() == '\n' ? "" : "\n"));
    }
    return ExitCode::kOk;
  }
  if (status == "failed") {
    const Json* error = holder.is_object() && holder.contains("error") ? &holder["error"] : nullptr;
    std::string why;
    if (error != nullptr && error->is_object()) {
      std::string code = FieldText(*error, "code");
      std::string message = FieldText(*error, "message");
      why = code.empty() ? message : message.empty() ? code : code + ": " + message;
    } else if (error != nullptr) {
      why = ValueText(*error);
    }
    return Fail(ExitCode::kTurnFailed, why.empty()
                                           ? fmt::format("turn {} failed", turn_id)
                                           : fmt::format("turn {} failed: {}", turn_id, why));
  }
  if (status == "cancelled" || status == "canceled") {
    return Fail(ExitCode::kTurnFailed, fmt::format("turn {} was cancelled", turn_id));
  }
  if (status == "requires_action") {
    if (!ctx.json) Out(FormatPendingCalls(session, turn_id, pending));
    return ExitCode::kRequiresAction;
  }
  Err(fmt::format("turn {} is {}; see `agentctl turns get {} {}`\n", OneLine(turn_id, 80),
                  OneLine(status, 40), OneLine(session, 80), OneLine(turn_id, 80)));
  return ExitCode::kOk;
}

ExitCode FinishTurnObject(Context& ctx, const std::string& session, const Json& turn) {
  Json pending;
  if (turn.is_object() && turn.contains("pending")) {
    pending = turn["pending"];
  } else {
    pending = PendingFromOutput(turn.is_object() && turn.contains("output") ? turn["output"]
                                                                            : Json::array());
  }
  return FinishTurn(ctx, session, FieldText(turn, "id"), FieldText(turn, "status"), turn, pending);
}

// Parses one SSE event's data as an agentd event; warns and returns nullopt when it is not.
std::optional<Json> ParseEvent(const SseEvent& e) {
  Result<Json> j = ParseJson(e.data, "event data");
  if (!j.ok() || !j->is_object()) {
    Err(fmt::format("warning: skipping a malformed '{}' event\n", OneLine(e.type, 80)));
    return std::nullopt;
  }
  Json event = std::move(j).value();
  // The SSE fields fill in what the JSON leaves out.
  if (!event.contains("type") && e.type != "message") event["type"] = e.type;
  if (!event.contains("seq") && !e.id.empty()) {
    char* end = nullptr;
    long long seq = std::strtoll(e.id.c_str(), &end, 10);
    if (end != nullptr && *end == '\0') event["seq"] = seq;
  }
  return event;
}

int64_t SeqOf(const Json& event) {
  if (!event.is_object()) return -1;
  auto it = event.find("seq");
  return it != event.end() && it->is_number_integer() ? it->get<int64_t>() : -1;
}

// Follows /v1/sessions/S/events as a stream from `after` (-1: the server's default start),
// reconnecting with Last-Event-ID after a drop. `on_event` returns false to stop, which is a
// success; giving up after kMaxReconnects failed attempts is kUnavailable.
ExitCode FollowEvents(Context& ctx, const std::string& session, int64_t after,
                      const std::function<bool(const Json&)>& on_event) {
  int64_t last = after;
  int failures = 0;
  std::string last_error;
  while (true) {
    Headers headers;
    if (last >= 0) headers.emplace_back("Last-Event-ID", std::to_string(last));
    std::string path = "/v1/sessions/" + Seg(session) + "/events" +
                       QueryString({{"after", last >= 0 ? std::to_string(last) : ""}});
    bool stopped = false;
    bool received = false;
    auto started = std::chrono::steady_clock::now();
    Result<ApiResponse> r =
        ctx.client.StreamBlocking("GET", path, nullptr, headers, [&](const SseEvent& e) {
          std::optional<Json> event = ParseEvent(e);
          if (!event) return true;
          int64_t seq = SeqOf(*event);
          if (seq >= 0 && last >= 0 && seq <= last) return true;  // already shown
          if (seq >= 0) last = seq;
          received = true;
          if (!on_event(*event)) {
            stopped = true;
            return false;
          }
          return true;
        });
    if (stopped) return ExitCode::kOk;
    if (r.ok() && !r->ok()) {
      int st = r->http_status;
      if (st != 429 && st < 500) return FailResponse(*r);  // retrying cannot help
      last_error = FormatProblem(ProblemFromResponse(*r));
    } else if (r.ok()) {
      if (r->content_type != "text/event-stream" && !received) {
        return Fail(ExitCode::kError,
                    fmt::format("the server answered {} instead of an event "
                                "stream (HTTP {})",
                                r->content_type.empty() ? "no content type" : r->content_type,
                                r->http_status));
      }
      last_error = "the server closed the stream";
    } else {
      if (ExitCodeForStatus(r.status()) != ExitCode::kUnavailable) return FailStatus(r.status());
      last_error = r.status().message();
    }
    bool healthy = received || std::chrono::steady_clock::now() - started >= kHealthyStream;
    failures = healthy ? 0 : failures + 1;
    if (failures >= kMaxReconnects) {
      return Fail(ExitCode::kUnavailable,
                  fmt::format("lost the event stream: {} (gave up after {} attempts)", last_error,
                              failures));
    }
    Err(fmt::format("{}; reconnecting in {}s\n", Sanitize(last_error, false),
                    kReconnectDelay.count()));
    std::this_thread::sleep_for(kReconnectDelay);
  }
}

ExitCode RunTurnWait(Context& ctx, const std::string& session, const std::string& text,
                     const Headers& headers) {
  Json body = {{"input", text}, {"wait", true}};
  ExitCode exit;
  std::optional<Json> turn =
      Call(ctx, "POST", "/v1/sessions/" + Seg(session) + "/turns", &body, &exit, headers);
  if (!turn) return exit;
  if (ctx.json) Out(PrettyJson(*turn) + "\n");
  return FinishTurnObject(ctx, session, *turn);
}

ExitCode RunTurn(Context& ctx, const std::string& session, std::string text,
                 const std::string& idempotency_key, bool no_stream) {
  if (text == "-") text.assign(std::istreambuf_iterator<char>(std::cin), {});
  Headers headers;
  if (!idempotency_key.empty()) headers.emplace_back("Idempotency-Key", idempotency_key);
  if (no_stream) return RunTurnWait(ctx, session, text, headers);

  std::string turn_id;
  int64_t last_seq = -1;
  std::optional<Json> terminal;
  auto handle = [&](const Json& event) {
    std::string type = FieldText(event, "type");
    std::string event_turn = FieldText(event, "turn_id");
    if (!turn_id.empty() && !event_turn.empty() && event_turn != turn_id) return true;
    if (turn_id.empty()) turn_id = event_turn;
    last_seq = std::max(last_seq, SeqOf(event));
    if (ctx.json) {
      Out(CompactJson(event) + "\n");
    } else if (!IsDeltaEventType(type)) {
      Err(SummarizeEvent(event) + "\n");
    }
    if (IsTerminalEventType(type)) {
      terminal = event;
      return false;
    }
    return true;
  };

  Json body = {{"input", text}, {"stream", true}};
  Result<ApiResponse> r = ctx.client.StreamBlocking(
      "POST", "/v1/sessions/" + Seg(session) + "/turns", &body, headers, [&](const SseEvent& e) {
        std::optional<Json> event = ParseEvent(e);
        return !event || handle(*event);
      });
  if (!terminal) {
    if (r.ok() && !r->ok()) return FailResponse(*r);
    if (r.ok() && r->content_type == "application/json") {
      // The server answered with the turn object rather than a stream.
      Result<Json> turn = ParseResponseJson(*r, "the server's response");
      if (!turn.ok()) return FailStatus(turn.status());
      if (ctx.json) Out(PrettyJson(*turn) + "\n");
      return FinishTurnObject(ctx, session, *turn);
    }
    if (last_seq < 0) {
      std::string why =
          r.ok() ? "the server ended the stream before the turn started" : r.status().message();
      if (!r.ok() && ExitCodeForStatus(r.status()) != ExitCode::kUnavailable) {
        return FailStatus(r.status());
      }
      return Fail(ExitCode::kUnavailable,
                  fmt::format("{}; the turn may have started: check `agentctl turns list {}`", why,
                              session));
    }
    Err(fmt::format(
        "the stream ended before the turn finished ({}); following the session's "
        "events from seq {}\n",
        r.ok() ? "closed by the server" : Sanitize(r.status().message(), false), last_seq));
    ExitCode code = FollowEvents(ctx, session, last_seq, handle);
    if (code != ExitCode::kOk) return code;
    if (!terminal) return Fail(ExitCode::kError, "the event stream ended without a result");
  }
  std::string type = FieldText(*terminal, "type");
  const Json& data = terminal->contains("data") ? (*terminal)["data"] : Json::object();
  std::string status = type.substr(type.find('.') + 1);
  if (turn_id.empty()) turn_id = FieldText(*terminal, "turn_id");
  const Json pending =
      data.is_object() && data.contains("pending") ? data["pending"] : Json::array();
  return FinishTurn(ctx, session, turn_id, status, data, pending);
}

ExitCode TurnsList(Context& ctx, const std::string& session, int limit, const std::string& cursor,
                   bool all) {
  ExitCode exit;
  std::optional<Json> page = FetchList(
      ctx, "/v1/sessions/" + Seg(session) + "/turns",
      {{"limit", limit > 0 ? std::to_string(limit) : ""}, {"cursor", cursor}}, all, &exit);
  if (!page) return exit;
  return PrintList(ctx, *page, TurnHeader(), &TurnRow, "");
}

ExitCode ToolOutputs(Context& ctx, const std::string& session, const std::string& turn,
                     const std::vector<std::string>& call_ids,
                     const std::vector<std::string>& outputs) {
  Result<Json> body = BuildToolOutputs(call_ids, outputs);
  if (!body.ok()) return FailStatus(body.status());
  ExitCode exit;
  std::optional<Json> result =
      Call(ctx, "POST", "/v1/sessions/" + Seg(session) + "/turns/" + Seg(turn) + "/tool_outputs",
           &*body, &exit);
  if (!result) return exit;
  if (ctx.json) {
    Out(PrettyJson(*result) + "\n");
  } else {
    Out(fmt::format("turn {}: {}\n", OneLine(FieldText(*result, "id")),
                    OneLine(FieldText(*result, "status"))));
    Err(fmt::format("follow it with: agentctl events {} --follow\n", OneLine(session, 80)));
  }
  return ExitCode::kOk;
}

// ---- events -------------------------------------------------------------------------------

ExitCode Events(Context& ctx, const std::string& session, int64_t after, int limit, bool follow) {
  if (follow) {
    int shown = 0;
    if (!ctx.json) Out(EventLineHeader() + "\n");
    return FollowEvents(ctx, session, after, [&](const Json& event) {
      Out((ctx.json ? CompactJson(event) : FormatEventLine(event)) + "\n");
      return limit <= 0 || ++shown < limit;
    });
  }
  Json events = Json::array();
  int64_t cursor = after;
  while (true) {
    int want = limit > 0 ? limit - static_cast<int>(events.size()) : 0;
    std::string path = "/v1/sessions/" + Seg(session) + "/events" +
                       QueryString({{"after", cursor >= 0 ? std::to_string(cursor) : ""},
                                    {"limit", want > 0 ? std::to_string(want) : ""}});
    ExitCode exit;
    std::optional<Json> page = Call(ctx, "GET", path, nullptr, &exit);
    if (!page) return exit;
    const Json& data = DataArray(*page);
    for (const Json& e : data) events.push_back(e);
    if (!HasMore(*page) || data.empty()) break;
    if (limit > 0 && events.size() >= static_cast<size_t>(limit)) break;
    int64_t next = SeqOf(data.back());
    if (next <= cursor) break;  // the server did not advance: stop rather than loop
    cursor = next;
  }
  if (ctx.json) {
    Out(PrettyJson(Json{{"data", events}, {"has_more", false}}) + "\n");
    return ExitCode::kOk;
  }
  std::vector<std::vector<std::string>> rows;
  for (const Json& e : events) rows.push_back(EventRow(e));
  Out(FormatTable(EventHeader(), rows));
  return ExitCode::kOk;
}

// ---- health -------------------------------------------------------------------------------

ExitCode Health(Context& ctx) {
  Json all = Json::object();
  ExitCode worst = ExitCode::kOk;
  for (const char* path : {"/healthz", "/readyz"}) {
    Result<ApiResponse> r = ctx.client.CallBlocking("GET", path, nullptr);
    if (!r.ok()) return FailStatus(r.status());
    Result<Json> body = ParseResponseJson(*r, path);
    Json value = body.ok() ? *body : Json(r->body);
    std::string name = std::string(path).substr(1);
    all[name] = value;
    if (!ctx.json)
      Out(fmt::format("{} (HTTP {}): {}\n", name, r->http_status,
                      OneLine(CompactJson(value), 2000)));
    if (!r->ok() && worst == ExitCode::kOk) {
      worst = ExitCodeForHttpStatus(r->http_status);
      Err(fmt::format("error: {} answered HTTP {}\n", path, r->http_status));
    }
  }
  if (ctx.json) Out(PrettyJson(all) + "\n");
  return worst;
}

}  // namespace

Result<Json> ParseMetadataArgs(const std::vector<std::string>& args) {
  Json out = Json::object();
  for (const std::string& a : args) {
    size_t eq = a.find('=');
    if (eq == std::string::npos || eq == 0) {
      return InvalidArgument(fmt::format("--metadata '{}' must be key=value", a));
    }
    std::string key = a.substr(0, eq);
    if (out.contains(key))
      return InvalidArgument(fmt::format("--metadata key '{}' given twice", key));
    out[key] = a.substr(eq + 1);
  }
  return out;
}

Result<Json> BuildToolOutputs(const std::vector<std::string>& call_ids,
                              const std::vector<std::string>& outputs) {
  if (call_ids.empty()) return InvalidArgument("give at least one --call-id ID --output TEXT pair");
  if (call_ids.size() != outputs.size()) {
    return InvalidArgument(
        fmt::format("{} --call-id but {} --output: give one --output per "
                    "--call-id, in the same order",
                    call_ids.size(), outputs.size()));
  }
  Json list = Json::array();
  for (size_t i = 0; i < call_ids.size(); ++i) {
    list.push_back({{"call_id", call_ids[i]}, {"output", outputs[i]}});
  }
  return Json{{"outputs", std::move(list)}};
}

int RunAgentctlBlocking(int argc, char** argv) {
  CLI::App app{"agentctl: command-line client for agentd's HTTP API"};
  app.fallthrough();  // global options may follow the subcommand
  app.footer(
      "\nEnvironment:\n"
      "  AGENTD_URL      server URL when --server is not given (default " +
      std::string(kDefaultServer) +
      ")\n"
      "  AGENTD_API_KEY  API key, sent as a bearer token\n\n" +
      ExitCodeHelp());
  app.require_subcommand(1);

  std::string server = kDefaultServer;
  if (const char* env = std::getenv("AGENTD_URL"); env != nullptr && *env != '\0') server = env;
  bool json = false;
  int timeout_s = 60;
  app.add_option("--server", server, "agentd base URL (env AGENTD_URL)")->capture_default_str();
  app.add_flag("--json", json,
               "print the server's JSON instead of tables (JSON lines for streams)");
  app.add_option("--timeout", timeout_s, "seconds to wait for a non-streaming request")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();

  std::function<ExitCode(Context&)> action;
  auto on = [&](CLI::App* cmd, std::function<ExitCode(Context&)> fn) {
    cmd->callback([&action, fn = std::move(fn)] { action = fn; });
  };

  // Option storage shared by the subcommands (only one runs).
  std::string file, id, agent, status, cursor, session, turn, text, idem;
  std::vector<std::string> metadata, call_ids, outputs;
  int limit = 0;
  int64_t after = -1;
  bool all = false, no_stream = false, follow = false;

  auto* agents = app.add_subcommand("agents", "create, list, inspect and update agents");
  agents->require_subcommand(1);
  {
    auto* c =
        agents->add_subcommand("create", "create an agent from a YAML or JSON file; prints its id");
    c->add_option("-f,--file", file, "agent definition (YAML or JSON; - for stdin)")->required();
    on(c, [&](Context& ctx) { return AgentsCreate(ctx, file); });

    auto* l = agents->add_subcommand("list", "list agents");
    l->add_option("--limit", limit, "page size")->check(CLI::PositiveNumber);
    l->add_option("--cursor", cursor, "start at this page cursor");
    l->add_flag("--all", all, "follow next_cursor through every page");
    on(l, [&](Context& ctx) { return AgentsList(ctx, limit, cursor, all); });

    auto* g = agents->add_subcommand("get", "show an agent");
    g->add_option("ID", id, "agent id")->required();
    on(g, [&](Context& ctx) { return GetAndPrint(ctx, "/v1/agents/" + Seg(id), kAgentOrder); });

    auto* u =
        agents->add_subcommand("update", "replace an agent's definition (makes a new version)");
    u->add_option("ID", id, "agent id")->required();
    u->add_option("-f,--file", file, "agent definition (YAML or JSON; - for stdin)")->required();
    on(u, [&](Context& ctx) { return AgentsUpdate(ctx, id, file); });
  }

  auto* sessions =
      app.add_subcommand("sessions", "create, list, inspect, cancel and delete sessions");
  sessions->require_subcommand(1);
  {
    auto* c = sessions->add_subcommand("create", "start a session of an agent; prints its id");
    c->add_option("--agent", agent, "agent id")->required();
    c->add_option("--metadata", metadata, "key=value (repeatable)");
    on(c, [&](Context& ctx) { return SessionsCreate(ctx, agent, metadata); });

    auto* l = sessions->add_subcommand("list", "list sessions");
    l->add_option("--agent", agent, "only sessions of this agent");
    l->add_option("--status", status, "only sessions in this status")
        ->check(CLI::IsMember({"idle", "running", "requires_action", "needs_attention"}));
    l->add_option("--limit", limit, "page size")->check(CLI::PositiveNumber);
    l->add_option("--cursor", cursor, "start at this page cursor");
    l->add_flag("--all", all, "follow next_cursor through every page");
    on(l, [&](Context& ctx) { return SessionsList(ctx, agent, status, limit, cursor, all); });

    auto* g = sessions->add_subcommand("get", "show a session");
    g->add_option("ID", id, "session id")->required();
    on(g, [&](Context& ctx) { return GetAndPrint(ctx, "/v1/sessions/" + Seg(id), kSessionOrder); });

    auto* d = sessions->add_subcommand("delete", "delete a session");
    d->add_option("ID", id, "session id")->required();
    on(d, [&](Context& ctx) { return SessionsDelete(ctx, id); });

    auto* x = sessions->add_subcommand("cancel", "cancel the session's running turn");
    x->add_option("ID", id, "session id")->required();
    on(x, [&](Context& ctx) { return SessionsCancel(ctx, id); });

    auto* e = sessions->add_subcommand(
        "export", "write a session's export file: its journal, agent and workspace");
    e->add_option("ID", id, "session id")->required();
    e->add_option("-o,--output", file, "where to write it (a new file; - for stdout)")
        ->required();
    on(e, [&](Context& ctx) { return SessionsExport(ctx, id, file); });

    auto* im = sessions->add_subcommand(
        "import", "create a session from an export file (from this or another agentd)");
    im->add_option("FILE", file, "the export file; - reads stdin")->required();
    on(im, [&](Context& ctx) { return SessionsImport(ctx, file); });
  }

  {
    auto* t = app.add_subcommand("turn", "send TEXT to a session and stream the turn as it runs");
    t->footer(
        "\nPrints one line per event on stderr as the turn runs, then the answer on stdout.\n"
        "With --json, prints every event as one JSON line on stdout instead.\n"
        "Exits 0 when the turn completed, 8 when it failed or was cancelled, and 9 when it\n"
        "stopped in requires_action (answer with `agentctl tool-outputs`).\n" +
        app.get_footer());
    t->add_option("SESSION", session, "session id")->required();
    t->add_option("TEXT", text, "the input; - reads stdin")->required();
    t->add_option("--idempotency-key", idem,
                  "retrying with the same key never runs the turn twice");
    t->add_flag("--no-stream", no_stream, "wait for the turn and print it, without streaming");
    on(t, [&](Context& ctx) { return RunTurn(ctx, session, text, idem, no_stream); });
  }

  auto* turns = app.add_subcommand("turns", "list and inspect a session's turns");
  turns->require_subcommand(1);
  {
    auto* l = turns->add_subcommand("list", "list a session's turns");
    l->add_option("SESSION", session, "session id")->required();
    l->add_option("--limit", limit, "page size")->check(CLI::PositiveNumber);
    l->add_option("--cursor", cursor, "start at this page cursor");
    l->add_flag("--all", all, "follow next_cursor through every page");
    on(l, [&](Context& ctx) { return TurnsList(ctx, session, limit, cursor, all); });

    auto* g = turns->add_subcommand("get", "show a turn");
    g->add_option("SESSION", session, "session id")->required();
    g->add_option("TURN", turn, "turn id")->required();
    on(g, [&](Context& ctx) {
      return GetAndPrint(ctx, "/v1/sessions/" + Seg(session) + "/turns/" + Seg(turn), kTurnOrder);
    });
  }

  {
    auto* o = app.add_subcommand(
        "tool-outputs", "answer a requires_action turn with the results of its client tool calls");
    o->add_option("SESSION", session, "session id")->required();
    o->add_option("TURN", turn, "turn id")->required();
    o->add_option("--call-id", call_ids, "a pending call's id (repeatable)")->required();
    o->add_option("--output", outputs, "that call's result, paired in order with --call-id")
        ->required();
    on(o, [&](Context& ctx) { return ToolOutputs(ctx, session, turn, call_ids, outputs); });
  }

  {
    auto* e = app.add_subcommand("events", "print a session's event journal");
    e->add_option("SESSION", session, "session id")->required();
    e->add_option("--after", after, "only events with a larger seq")->check(CLI::NonNegativeNumber);
    e->add_option("--limit", limit, "print at most this many events")->check(CLI::PositiveNumber);
    e->add_flag("--follow,-F", follow,
                "keep streaming new events until interrupted, reconnecting after drops");
    on(e, [&](Context& ctx) { return Events(ctx, session, after, limit, follow); });
  }

  auto* audit = app.add_subcommand("audit", "check the tamper-evident audit log");
  audit->require_subcommand(1);
  {
    auto* v = audit->add_subcommand(
        "verify",
        "check the audit log's hash chains and signed checkpoints, through the server or "
        "offline on a copy of a data directory");
    v->footer("\nPrints OK with counts per chain, or every problem found with its seq.\n"
              "Exits 10 when a problem is found. Entries after a chain's last checkpoint\n"
              "are reported as not yet covered: a cut there cannot be detected.\n");
    v->add_option("--data-dir", file, "verify offline: a data directory, or a copy of one");
    v->add_option("--public-key", text,
                  "agentd's Ed25519 public key: base64url, or a file with it, a JWK or a JWKS");
    auto* t = v->add_option("--tenant", id, "only this tenant's chain (\"\" is the system chain)");
    on(v, [&, t](Context& ctx) {
      AuditVerifyArgs a{file, text, id, t->count() > 0, ctx.json};
      return file.empty() ? AuditVerifyLive(ctx.client, a) : AuditVerifyOffline(a);
    });
  }

  {
    auto* h = app.add_subcommand("health", "print the server's /healthz and /readyz");
    on(h, [&](Context& ctx) { return Health(ctx); });
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);  // --help
  } catch (const CLI::ParseError& e) {
    (void)app.exit(e);  // prints the problem and a pointer to --help
    return ToInt(ExitCode::kUsage);
  }
  if (!action) return ToInt(ExitCode::kUsage);

  ClientOptions options;
  options.server = server;
  if (const char* key = std::getenv("AGENTD_API_KEY"); key != nullptr) options.api_key = key;
  options.timeout = std::chrono::seconds(timeout_s);
  Context ctx{ApiClient(std::move(options)), json};
  try {
    return ToInt(action(ctx));
  } catch (const std::exception& e) {
    // Our code does not throw; this is the wrapper that catches what a library might.
    return ToInt(Fail(ExitCode::kError, fmt::format("internal error: {}", e.what())));
  }
}

}  // namespace agentd::cli
