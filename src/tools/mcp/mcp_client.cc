// The MCP client: era detection, the handshake or per-request metadata, tools/list with its
// cache, tools/call with progress, cancellation and input_required rounds, reconnection.
#include "tools/mcp/mcp_client.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>

#include "tools/mcp/connection.h"

namespace agentd::tools::mcp {

using internal::Connection;
using internal::RequestOptions;
using internal::RpcReply;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr int kMaxListPages = 1000;
constexpr int kMaxInputRounds = 8;

bool IsModernVersion(const std::string& v) { return v >= kStatelessVersion; }

bool Contains(const std::vector<std::string>& list, const std::string& v) {
  return std::find(list.begin(), list.end(), v) != list.end();
}

std::string Join(const std::vector<std::string>& list) {
  std::string out;
  for (const auto& s : list) out += (out.empty() ? "" : ", ") + s;
  return out;
}

// The first of `ours` (in our preference order) that `theirs` lists, modern ones only.
std::string PickModern(const std::vector<std::string>& ours, const Json& theirs) {
  if (!theirs.is_array()) return "";
  for (const auto& v : ours) {
    if (!IsModernVersion(v)) continue;
    for (const auto& t : theirs) {
      if (t.is_string() && t.get<std::string>() == v) return v;
    }
  }
  return "";
}

Status RpcStatus(const std::string& server, const std::string& method,
                 const internal::RpcError& e) {
  std::string msg = fmt::format("MCP server '{}' answered {} with error {}: {}", server, method,
                                e.code, e.message);
  if (e.code == internal::kHttpStatusError) {
    msg = fmt::format("MCP server '{}' answered {} with {}", server, method, e.message);
    int http = e.data.is_object() ? e.data.value("http_status", 0) : 0;
    if (http == 401) return Status(StatusCode::kUnauthenticated, msg);
    if (http == 403) return Status(StatusCode::kPermissionDenied, msg);
    if (http == 404) return NotFound(msg);
    if (http == 408 || http == 429 || http >= 500) return Unavailable(msg);
    return FailedPrecondition(msg);
  }
  switch (e.code) {
    case internal::kInvalidParams:
    case internal::kInvalidRequest:
      return InvalidArgument(msg);
    case internal::kMethodNotFound:
      return NotFound(msg);
    case internal::kHeaderMismatch:
    case internal::kMissingRequiredClientCapability:
    case internal::kUnsupportedProtocolVersion:
      return FailedPrecondition(msg);
    default:
      return Internal(msg);
  }
}

Result<McpTool> ParseTool(const Json& t) {
  if (!t.is_object()) return Internal("a tool that is not an object");
  const std::string* name = FindString(t, "name");
  if (name == nullptr || name->empty()) return Internal("a tool without a name");
  McpTool tool;
  tool.name = *name;
  if (const std::string* s = FindString(t, "title")) tool.title = *s;
  if (const std::string* s = FindString(t, "description")) tool.description = *s;
  if (t.contains("inputSchema")) {
    if (!t["inputSchema"].is_object()) {
      return Internal(fmt::format("tool '{}' has an inputSchema that is not an object", *name));
    }
    tool.input_schema = t["inputSchema"];
  }
  if (t.contains("outputSchema") && t["outputSchema"].is_object()) {
    tool.output_schema = t["outputSchema"];
  }
  if (t.contains("annotations") && t["annotations"].is_object()) {
    tool.annotations = t["annotations"];
  }
  return tool;
}

}  // namespace

struct McpClient::Impl {
  ClientOptions options;
  ProcessFactory factory;          // stdio
  std::optional<HttpTarget> http;  // Streamable HTTP

  std::mutex connect_mu;         // one connect at a time; held while connecting
  bool known_handshake = false;  // GUARDED_BY(connect_mu): the last connect found that era

  mutable std::mutex mu;
  std::shared_ptr<Connection> conn;               // GUARDED_BY(mu)
  Era era = Era::kHandshake;                      // GUARDED_BY(mu)
  std::string version;                            // GUARDED_BY(mu)
  Json capabilities = Json::object();             // GUARDED_BY(mu)
  Json server_info;                               // GUARDED_BY(mu)
  std::string instructions;                       // GUARDED_BY(mu)
  std::vector<McpTool> tools;                     // GUARDED_BY(mu)
  bool tools_valid = false;                       // GUARDED_BY(mu)
  std::optional<Clock::time_point> tools_expiry;  // GUARDED_BY(mu)
  uint64_t tools_generation = 0;                  // GUARDED_BY(mu): bumped by list_changed
  // Stateless-era HTTP: each listed tool's x-mcp-header annotations.
  std::map<std::string, std::vector<internal::HeaderParam>> header_params;  // GUARDED_BY(mu)

  bool StatelessHttp() const {
    std::lock_guard<std::mutex> lock(mu);
    return http.has_value() && era == Era::kStateless;
  }

  // Connections are destroyed outside `mu`: a stdio connection joins its reader thread,
  // which may be waiting for `mu` in OnNotification.
  ~Impl() {
    std::shared_ptr<Connection> old;
    {
      std::lock_guard<std::mutex> lock(mu);
      old = std::move(conn);
    }
  }

  const std::string& server() const { return options.server_name; }

  void OnNotification(const std::string& method, const Json&) {
    if (method != "notifications/tools/list_changed") return;
    {
      std::lock_guard<std::mutex> lock(mu);
      tools_valid = false;
      ++tools_generation;
    }
    if (options.on_tools_changed) options.on_tools_changed();
  }

  Json ModernMeta(const std::string& v) const {
    return Json{{"io.modelcontextprotocol/protocolVersion", v},
                {"io.modelcontextprotocol/clientCapabilities", Json::object()},
                {"io.modelcontextprotocol/clientInfo",
                 {{"name", options.client_name}, {"version", options.client_version}}}};
  }

  Result<std::unique_ptr<Connection>> NewConnection() {
    auto sink = [this](const std::string& method, const Json& params) {
      OnNotification(method, params);
    };
    if (http) return internal::StartHttpConnection(*http, options, sink);
    if (!factory) return FailedPrecondition("no process factory");
    auto proc = factory();
    if (!proc.ok()) {
      return Status(proc.status().code(), fmt::format("MCP server '{}': cannot start: {}", server(),
                                                      proc.status().message()));
    }
    return internal::StartStdioConnection(std::move(proc).value(), options, sink);
  }

  struct Connected {
    std::unique_ptr<Connection> conn;
    Era era = Era::kHandshake;
    std::string version;
    Json capabilities = Json::object();
    Json server_info;
    std::string instructions;
  };

  // Probes with server/discover, falls back to initialize. Blocking.
  Result<Connected> Connect(bool probe) {
    Clock::time_point deadline = Clock::now() + options.connect_timeout;
    std::vector<std::string> modern, legacy;
    for (const auto& v : options.protocol_versions) {
      (IsModernVersion(v) ? modern : legacy).push_back(v);
    }
    if (modern.empty() && legacy.empty()) {
      return InvalidArgument("ClientOptions.protocol_versions is empty");
    }
    Connected c;
    ASSIGN_OR_RETURN(c.conn, NewConnection());
    if (!modern.empty() && probe) {
      std::string v = modern.front();
      for (int attempt = 0;; ++attempt) {
        c.conn->SetProtocolVersion(v);
        RequestOptions ro;
        ro.deadline = std::min(deadline, Clock::now() + options.discover_timeout);
        auto r = c.conn->Call("server/discover", Json{{"_meta", ModernMeta(v)}}, ro);
        if (r.ok() && !r->error) {
          const Json& res = r->result;
          std::string chosen = PickModern(
              modern, res.contains("supportedVersions") ? res["supportedVersions"] : Json::array());
          if (chosen.empty()) {
            return FailedPrecondition(fmt::format(
                "MCP server '{}' supports protocol versions {} but the client only {}", server(),
                res.contains("supportedVersions") ? DumpJson(res["supportedVersions"]) : "[]",
                Join(modern)));
          }
          c.era = Era::kStateless;
          c.version = chosen;
          c.conn->SetProtocolVersion(chosen);
          if (res.contains("capabilities") && res["capabilities"].is_object()) {
            c.capabilities = res["capabilities"];
          }
          if (const std::string* s = FindString(res, "instructions")) c.instructions = *s;
          if (res.contains("_meta") && res["_meta"].is_object() &&
              res["_meta"].contains("io.modelcontextprotocol/serverInfo")) {
            c.server_info = res["_meta"]["io.modelcontextprotocol/serverInfo"];
          }
          return c;
        }
        if (r.ok() && r->error->code == internal::kUnsupportedProtocolVersion) {
          // A modern server without our preferred version: retry with a common one.
          const Json& data = r->error->data;
          std::string chosen =
              PickModern(modern, data.is_object() && data.contains("supported") ? data["supported"]
                                                                                : Json::array());
          // A second refusal of a version the server says it supports ends the retries.
          if (chosen.empty() || attempt >= 2) {
            return FailedPrecondition(fmt::format(
                "MCP server '{}' supports protocol versions {} but the client only {}", server(),
                data.is_object() && data.contains("supported") ? DumpJson(data["supported"])
                                                               : "(none listed)",
                Join(options.protocol_versions)));
          }
          v = chosen;
          continue;
        }
        if (r.ok() && (r->error->code == internal::kHeaderMismatch ||
                       r->error->code == internal::kMissingRequiredClientCapability)) {
          return RpcStatus(server(), "server/discover", *r->error);
        }
        if (legacy.empty()) {
          if (!r.ok()) return r.status();
          return FailedPrecondition(fmt::format(
              "MCP server '{}' does not speak protocol version {} (server/discover: {})", server(),
              Join(modern), r->error->message));
        }
        if (!r.ok()) {
          if (r.status().code() != StatusCode::kDeadlineExceeded &&
              r.status().code() != StatusCode::kUnavailable) {
            return r.status();
          }
          if (http && r.status().code() == StatusCode::kUnavailable) return r.status();
          // No answer or a stdio server that died on the unknown method: a legacy server in
          // an unknown state; start afresh before initialize.
          if (!http) {
            c.conn.reset();
            ASSIGN_OR_RETURN(c.conn, NewConnection());
          }
        }
        break;  // a legacy server
      }
    }
    // The handshake era.
    if (legacy.empty()) {
      return FailedPrecondition(
          fmt::format("MCP server '{}': no handshake-era version allowed", server()));
    }
    const std::string& want = legacy.front();
    c.conn->SetProtocolVersion("");
    RequestOptions ro;
    ro.deadline = deadline;
    Json params = {
        {"protocolVersion", want},
        {"capabilities", Json::object()},
        {"clientInfo", {{"name", options.client_name}, {"version", options.client_version}}}};
    auto r = c.conn->Call("initialize", std::move(params), ro);
    if (!r.ok()) return r.status();
    if (r->error) return RpcStatus(server(), "initialize", *r->error);
    const Json& res = r->result;
    const std::string* got = FindString(res, "protocolVersion");
    if (got == nullptr) {
      return Internal(
          fmt::format("MCP server '{}' answered initialize without protocolVersion", server()));
    }
    if (!Contains(legacy, *got)) {
      return FailedPrecondition(
          fmt::format("MCP server '{}' speaks protocol version {}; the client speaks {}", server(),
                      *got, Join(options.protocol_versions)));
    }
    c.era = Era::kHandshake;
    c.version = *got;
    c.conn->SetProtocolVersion(*got);
    if (res.contains("capabilities") && res["capabilities"].is_object()) {
      c.capabilities = res["capabilities"];
    }
    if (res.contains("serverInfo")) c.server_info = res["serverInfo"];
    if (const std::string* s = FindString(res, "instructions")) c.instructions = *s;
    RETURN_IF_ERROR(c.conn->Notify("notifications/initialized", Json()));
    return c;
  }

  // Connects and installs the connection, replacing `stale` (when it is still current).
  Status Install(const std::shared_ptr<Connection>& stale, bool force) {
    std::lock_guard<std::mutex> connect_lock(connect_mu);
    std::shared_ptr<Connection> old;
    {
      std::lock_guard<std::mutex> lock(mu);
      if (!force && conn != stale) return Status::OK();  // someone reconnected meanwhile
      old = std::move(conn);
    }
    old.reset();  // kills the old process before a new one starts (unless a call holds it)
    // The era is a property of the server: once it is known to be a handshake-era one, a
    // reconnect goes straight to initialize (no probe, no wait for a silent server) and
    // probes again only if that fails (2026-07-28 versioning.mdx: cache, re-probe on failure).
    auto connected = Connect(/*probe=*/!known_handshake);
    if (!connected.ok() && known_handshake) {
      spdlog::info("MCP server '{}': initialize failed ({}); probing its protocol era again",
                   server(), connected.status().message());
      connected = Connect(/*probe=*/true);
    }
    if (!connected.ok()) return connected.status();
    Connected c = std::move(connected).value();
    known_handshake = c.era == Era::kHandshake;
    std::shared_ptr<Connection> fresh(std::move(c.conn));
    bool listen = false;
    Json listen_params;
    {
      std::lock_guard<std::mutex> lock(mu);
      conn = fresh;
      era = c.era;
      version = c.version;
      capabilities = c.capabilities;
      server_info = c.server_info;
      instructions = c.instructions;
      tools_valid = false;
      ++tools_generation;
      listen = era == Era::kStateless && !http && capabilities.contains("tools") &&
               capabilities["tools"].is_object() &&
               capabilities["tools"].value("listChanged", false);
      listen_params = {{"_meta", ModernMeta(version)},
                       {"notifications", {{"toolsListChanged", true}}}};
    }
    if (listen) {
      // 2026-07-28 delivers list_changed only on a subscriptions/listen stream.
      Status st = fresh->SendDetached("subscriptions/listen", std::move(listen_params));
      if (!st.ok()) {
        spdlog::warn("MCP server '{}': subscriptions/listen: {}", server(), st.message());
      }
    }
    return Status::OK();
  }

  // The live connection, reconnecting when it broke and auto_reconnect allows.
  Result<std::shared_ptr<Connection>> Live() {
    std::shared_ptr<Connection> c;
    {
      std::lock_guard<std::mutex> lock(mu);
      c = conn;
    }
    Status why;
    if (c != nullptr && !c->Broken(&why)) return c;
    if (c != nullptr && !options.auto_reconnect) return why;
    RETURN_IF_ERROR(Install(c, false));
    std::lock_guard<std::mutex> lock(mu);
    if (conn == nullptr)
      return Unavailable(fmt::format("MCP server '{}' is not connected", server()));
    return conn;
  }

  // One request with the era's metadata; a JSON-RPC error becomes a Status. Handles
  // input_required results (2026-07-28 MRTR) by retrying with requestState and declining
  // what agentd cannot provide. Blocking.
  // `rpc_code` (optional) receives the JSON-RPC error code when the server answered with one.
  Result<Json> Request(const std::string& method, Json params, const RequestOptions& ro,
                       int64_t* rpc_code = nullptr) {
    if (!params.is_object()) params = Json::object();
    for (int attempt = 0;; ++attempt) {
      ASSIGN_OR_RETURN(std::shared_ptr<Connection> c, Live());
      std::string v;
      Era e;
      {
        std::lock_guard<std::mutex> lock(mu);
        v = version;
        e = era;
      }
      Json p = params;
      if (e == Era::kStateless) {
        Json meta = ModernMeta(v);
        if (p.contains("_meta") && p["_meta"].is_object()) meta.update(p["_meta"]);
        p["_meta"] = std::move(meta);
      }
      auto r = c->Call(method, std::move(p), ro);
      if (!r.ok()) {
        Status why;
        // A handshake-era HTTP session the server forgot: initialize again, once.
        if (attempt == 0 && http && r.status().code() == StatusCode::kUnavailable &&
            c->Broken(&why) && options.auto_reconnect) {
          continue;
        }
        return r.status();
      }
      if (r->error) {
        if (rpc_code != nullptr) *rpc_code = r->error->code;
        return RpcStatus(server(), method, *r->error);
      }
      Json result = std::move(r->result);
      if (!result.is_object()) {
        return Internal(
            fmt::format("MCP server '{}' answered {} with a result that is not an "
                        "object",
                        server(), method));
      }
      std::string type = result.value("resultType", std::string("complete"));
      if (type == "complete") return result;
      if (type != "input_required" || e != Era::kStateless) {
        return Internal(fmt::format("MCP server '{}' answered {} with unknown resultType '{}'",
                                    server(), method, Excerpt(type)));
      }
      if (attempt >= kMaxInputRounds) {
        return Internal(fmt::format("MCP server '{}' asked for input more than {} times in {}",
                                    server(), kMaxInputRounds, method));
      }
      RETURN_IF_ERROR(AnswerInputRequired(method, result, &params));
    }
  }

  static std::string Excerpt(const std::string& s) { return internal::Excerpt(s, 80); }

  // Fills `params` for the retry of an input_required result: elicitation is declined and
  // roots are empty (agentd runs unattended and exposes no roots); sampling is refused.
  Status AnswerInputRequired(const std::string& method, const Json& result, Json* params) {
    params->erase("inputResponses");
    params->erase("requestState");
    if (result.contains("requestState") && result["requestState"].is_string()) {
      (*params)["requestState"] = result["requestState"];
    }
    if (result.contains("inputRequests") && result["inputRequests"].is_object()) {
      Json responses = Json::object();
      for (const auto& [key, req] : result["inputRequests"].items()) {
        const std::string* m = FindString(req, "method");
        std::string what = m != nullptr ? *m : "";
        if (what == "elicitation/create") {
          responses[key] = {{"action", "decline"}};
        } else if (what == "roots/list") {
          responses[key] = {{"roots", Json::array()}};
        } else {
          return FailedPrecondition(fmt::format(
              "MCP server '{}' needs '{}' from the client to finish {}; agentd does not provide it",
              server(), Excerpt(what), method));
        }
      }
      if (!responses.empty()) (*params)["inputResponses"] = std::move(responses);
    }
    if (!params->contains("requestState") && !params->contains("inputResponses")) {
      return Internal(
          fmt::format("MCP server '{}' answered {} with an input_required result "
                      "that asks for nothing",
                      server(), method));
    }
    return Status::OK();
  }
};

McpClient::McpClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
McpClient::~McpClient() = default;

Result<std::unique_ptr<McpClient>> McpClient::ConnectStdioBlocking(ClientOptions options,
                                                                   ProcessFactory factory) {
  if (!factory) return InvalidArgument("ConnectStdioBlocking needs a process factory");
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->factory = std::move(factory);
  RETURN_IF_ERROR(impl->Install(nullptr, true));
  return std::unique_ptr<McpClient>(new McpClient(std::move(impl)));
}

Result<std::unique_ptr<McpClient>> McpClient::ConnectHttpBlocking(ClientOptions options,
                                                                  HttpTarget target) {
  if (target.url.rfind("http://", 0) != 0 && target.url.rfind("https://", 0) != 0) {
    return InvalidArgument(
        fmt::format("MCP server URL '{}' is not http(s)", internal::Excerpt(target.url, 200)));
  }
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->http = std::move(target);
  RETURN_IF_ERROR(impl->Install(nullptr, true));
  return std::unique_ptr<McpClient>(new McpClient(std::move(impl)));
}

Result<std::vector<McpTool>> McpClient::ListToolsBlocking(bool refresh) {
  uint64_t generation;
  {
    std::lock_guard<std::mutex> lock(impl_->mu);
    bool fresh =
        impl_->tools_valid && (!impl_->tools_expiry || Clock::now() < *impl_->tools_expiry);
    if (!refresh && fresh) {
      Status why;
      if (impl_->conn != nullptr && !impl_->conn->Broken(&why)) return impl_->tools;
    }
    generation = impl_->tools_generation;
  }
  std::vector<McpTool> tools;
  std::map<std::string, std::vector<internal::HeaderParam>> header_params;
  bool check_headers = impl_->StatelessHttp();
  std::set<std::string> cursors;
  std::optional<int64_t> ttl_ms;
  Json cursor;
  for (int page = 0;; ++page) {
    if (page >= kMaxListPages) {
      return Internal(fmt::format("MCP server '{}' lists tools over more than {} pages",
                                  impl_->server(), kMaxListPages));
    }
    Json params = Json::object();
    if (!cursor.is_null()) params["cursor"] = cursor;
    RequestOptions ro;
    ro.deadline = Clock::now() + impl_->options.request_timeout;
    ASSIGN_OR_RETURN(Json result, impl_->Request("tools/list", std::move(params), ro));
    if (!result.contains("tools") || !result["tools"].is_array()) {
      return Internal(fmt::format("MCP server '{}' answered tools/list without a tools array",
                                  impl_->server()));
    }
    for (const auto& t : result["tools"]) {
      auto tool = ParseTool(t);
      if (!tool.ok()) {
        spdlog::warn("MCP server '{}': skipping {}", impl_->server(), tool.status().message());
        continue;
      }
      if (check_headers) {
        // 2026-07-28 Streamable HTTP: a tool with an invalid x-mcp-header annotation is left
        // out of the list, so one bad definition does not make the others unusable.
        auto params = internal::CollectHeaderParams(tool->input_schema);
        if (!params.ok()) {
          spdlog::warn("MCP server '{}': leaving out tool '{}': {}", impl_->server(), tool->name,
                       params.status().message());
          continue;
        }
        header_params[tool->name] = std::move(params).value();
      }
      tools.push_back(std::move(tool).value());
    }
    if (result.contains("ttlMs") && result["ttlMs"].is_number()) {
      int64_t t = std::max<int64_t>(0, result["ttlMs"].get<int64_t>());
      ttl_ms = ttl_ms ? std::min(*ttl_ms, t) : t;
    }
    const std::string* next = FindString(result, "nextCursor");
    if (next == nullptr || next->empty()) break;
    if (!cursors.insert(*next).second) {
      return Internal(fmt::format("MCP server '{}' repeats tools/list cursor '{}'", impl_->server(),
                                  internal::Excerpt(*next, 80)));
    }
    cursor = *next;
  }
  std::lock_guard<std::mutex> lock(impl_->mu);
  // A list_changed that arrived while paging makes this list stale already.
  if (generation == impl_->tools_generation) {
    impl_->tools = tools;
    impl_->header_params = std::move(header_params);
    impl_->tools_valid = true;
    impl_->tools_expiry.reset();
    if (ttl_ms) impl_->tools_expiry = Clock::now() + milliseconds(*ttl_ms);
  }
  return tools;
}

Result<CallResult> McpClient::CallToolBlocking(const std::string& name, const Json& arguments,
                                               const CallOptions& options) {
  if (options.should_abort && options.should_abort()) {
    return Cancelled(fmt::format("MCP server '{}': tools/call {} cancelled", impl_->server(),
                                 internal::Excerpt(name, 80)));
  }
  Json params = {{"name", name}, {"arguments", arguments.is_null() ? Json::object() : arguments}};
  RequestOptions ro;
  ro.deadline = Clock::now() + options.timeout;
  ro.should_abort = options.should_abort;
  ro.headers = options.headers;
  if (options.on_progress) {
    ro.on_progress = [&options](const Json& p) {
      ProgressUpdate u;
      if (p.contains("progress") && p["progress"].is_number())
        u.progress = p["progress"].get<double>();
      if (p.contains("total") && p["total"].is_number()) u.total = p["total"].get<double>();
      if (const std::string* m = FindString(p, "message")) u.message = *m;
      options.on_progress(u);
    };
  }
  // Stateless HTTP: the arguments annotated with x-mcp-header are mirrored into Mcp-Param-*
  // headers. A tool not listed yet is looked up first; when the server says the headers do
  // not match (HeaderMismatch), the annotations may have changed: list again, retry once.
  bool stateless_http = impl_->StatelessHttp();
  auto headers_for = [&](bool refresh) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      if (attempt == 1 || refresh) ListToolsBlocking(refresh).status().IgnoreError();
      std::lock_guard<std::mutex> lock(impl_->mu);
      auto it = impl_->header_params.find(name);
      if (it != impl_->header_params.end()) {
        ro.extra_headers = internal::HeaderParamHeaders(it->second, params["arguments"]);
        return;
      }
    }
  };
  if (stateless_http) headers_for(false);
  int64_t rpc_code = 0;
  auto called = impl_->Request("tools/call", params, ro, &rpc_code);
  if (!called.ok() && stateless_http && rpc_code == internal::kHeaderMismatch) {
    headers_for(true);
    called = impl_->Request("tools/call", params, ro);
  }
  if (!called.ok()) return called.status();
  Json result = std::move(called).value();
  CallResult out;
  if (result.contains("content")) {
    if (!result["content"].is_array()) {
      return Internal(
          fmt::format("MCP server '{}' answered tools/call {} with content that is "
                      "not an array",
                      impl_->server(), internal::Excerpt(name, 80)));
    }
    out.content = std::move(result["content"]);
  } else if (!result.contains("structuredContent")) {
    return Internal(fmt::format("MCP server '{}' answered tools/call {} without content",
                                impl_->server(), internal::Excerpt(name, 80)));
  }
  if (result.contains("structuredContent")) out.structured_content = result["structuredContent"];
  if (result.contains("isError") && result["isError"].is_boolean()) {
    out.is_error = result["isError"].get<bool>();
  }
  return out;
}

Result<Json> McpClient::SaveSession() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  if (impl_->http) return FailedPrecondition("only a stdio client's session can be saved");
  Status why;
  if (impl_->conn == nullptr || impl_->conn->Broken(&why)) {
    return FailedPrecondition(fmt::format("MCP server '{}' is not connected", impl_->server()));
  }
  return Json{{"era", impl_->era == Era::kStateless ? "stateless" : "handshake"},
              {"protocol_version", impl_->version},
              {"capabilities", impl_->capabilities},
              {"server_info", impl_->server_info},
              {"instructions", impl_->instructions},
              {"next_request_id", impl_->conn->NextRequestId()}};
}

Result<std::unique_ptr<McpClient>> McpClient::ResumeStdioBlocking(
    ClientOptions options, ProcessFactory factory, std::unique_ptr<sandbox::Process> live,
    const Json& saved) {
  if (!factory) return InvalidArgument("ResumeStdioBlocking needs a process factory");
  auto bad = [&](std::string_view why) {
    return InvalidArgument(
        fmt::format("MCP server '{}': saved session is unusable: {}", options.server_name, why));
  };
  if (!saved.is_object()) return bad("not an object");
  std::string era = saved.value("era", "");
  const Json& version = saved.contains("protocol_version") ? saved["protocol_version"] : Json();
  const Json& next_id = saved.contains("next_request_id") ? saved["next_request_id"] : Json();
  if (era != "stateless" && era != "handshake") return bad("unknown era");
  if (!version.is_string() || !Contains(options.protocol_versions, version.get<std::string>()) ||
      IsModernVersion(version.get<std::string>()) != (era == "stateless")) {
    return bad("a protocol version this client does not speak");
  }
  if (!next_id.is_number_integer() || next_id.get<int64_t>() < 1) return bad("no request id");
  auto impl = std::make_unique<Impl>();
  impl->options = std::move(options);
  impl->factory = std::move(factory);
  Impl* raw = impl.get();
  auto sink = [raw](const std::string& method, const Json& params) {
    raw->OnNotification(method, params);
  };
  ASSIGN_OR_RETURN(auto conn, internal::StartStdioConnection(std::move(live), impl->options,
                                                             sink, next_id.get<int64_t>()));
  conn->SetProtocolVersion(version.get<std::string>());
  impl->known_handshake = era == "handshake";
  impl->conn = std::shared_ptr<Connection>(std::move(conn));
  impl->era = era == "stateless" ? Era::kStateless : Era::kHandshake;
  impl->version = version.get<std::string>();
  if (saved.contains("capabilities") && saved["capabilities"].is_object()) {
    impl->capabilities = saved["capabilities"];
  }
  if (saved.contains("server_info")) impl->server_info = saved["server_info"];
  impl->instructions = saved.value("instructions", "");
  auto client = std::unique_ptr<McpClient>(new McpClient(std::move(impl)));
  // The server must still be there and in its session; a failure here leaves the caller to
  // start afresh.
  const bool reconnect = client->impl_->options.auto_reconnect;
  client->impl_->options.auto_reconnect = false;  // not yet: the check is of this process
  auto listed = client->ListToolsBlocking(true);
  client->impl_->options.auto_reconnect = reconnect;
  if (!listed.ok()) return listed.status();
  return client;
}

Status McpClient::ReconnectBlocking() { return impl_->Install(nullptr, true); }

Era McpClient::era() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->era;
}
std::string McpClient::protocol_version() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->version;
}
Json McpClient::server_capabilities() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->capabilities;
}
Json McpClient::server_info() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->server_info;
}
std::string McpClient::instructions() const {
  std::lock_guard<std::mutex> lock(impl_->mu);
  return impl_->instructions;
}

}  // namespace agentd::tools::mcp
