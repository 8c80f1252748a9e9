// fake_mcp_server: an MCP server for the client's tests, speaking the real wire protocol and
// misbehaving on demand.
//
//   fake_mcp_server [--era 2025-06-18|2025-11-25|2026-07-28|dual] [--transport stdio|http]
//                   [--page-size N] [--silent-discover] [--garbage-banner]
//
// --era           which revision it speaks: a handshake one (initialize, Mcp-Session-Id on
//                 HTTP; server/discover is an unknown method), the stateless 2026-07-28 one
//                 (server/discover, per-request _meta, MCP-Protocol-Version/Mcp-Method/
//                 Mcp-Name checked on HTTP, initialize refused), or dual (both). Default
//                 2025-11-25.
// --transport     stdio (newline-delimited JSON-RPC on stdin/stdout) or http (Streamable
//                 HTTP on 127.0.0.1, endpoint /mcp, prints "LISTENING <port>"). Default stdio.
// --page-size     tools per tools/list page (default 4), so clients must follow nextCursor.
// --silent-discover  a handshake-era server that never answers requests before initialize
//                 (some legacy servers drop them), to test the probe timeout.
// --garbage-banner   writes a line that is not JSON to stdout at start.
// --require-header NAME:VALUE  (HTTP) answers 401 to any request without that header.
// --log-header NAME  (HTTP) prints "HEADER <JSON-RPC method> <value>" for each POST.
//
// Tools (tools/call):
//   echo {text}            text content
//   add {a,b}              text content and structuredContent {sum} (has an outputSchema)
//   fail                   isError: true
//   slow {ms}              answers after ms; a cancelled call (notifications/cancelled, or the
//                          HTTP stream closed) never answers and is counted
//   progress {steps}       one notifications/progress per step (when the request has a
//                          progressToken), then text "done"
//   garbage                answers with a line (stdio) or body (HTTP) that is not JSON
//   never                  never answers
//   exit                   writes to stderr and exits with code 3 mid-call
//   huge {bytes}           a text content of that many bytes
//   change_tools           adds tool "extra" and sends notifications/tools/list_changed (on the
//                          subscriptions/listen stream in the stateless era)
//   cancelled_count        text: how many calls were cancelled so far
//   ping_client            (handshake era) sends the client `ping` and `bogus/method`
//                          requests and answers with what came back
//   ask_input              (stateless era) answers input_required with an elicitation and a
//                          requestState; the retry gets text "input: <action>"
//   forget_session         (HTTP handshake era) forgets every session: the next request
//                          gets 404
//   bad.name               a tool whose name is no valid OpenAI function name
//   regional {region,count}  both annotated x-mcp-header; on stateless HTTP the fake checks
//                          Mcp-Param-Region (Base64 sentinel decoded) and Mcp-Param-Count
//   bad_header {amount}    an x-mcp-header on a number: clients on HTTP must leave it out
//   rename_header          regional's Region header becomes Zone (the server expects
//                          Mcp-Param-Zone from then on)
//   drop_stream            (handshake HTTP) ends the event stream after a priming event
//                          (id ev-1, retry 200 ms); the answer comes on GET with Last-Event-ID
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "api/http/server.h"
#include "common/json.h"
#include "common/stop_signals.h"

namespace {

using agentd::Json;
using std::chrono::milliseconds;

constexpr const char* kModern = "2026-07-28";

struct Flags {
  std::string era = "2025-11-25";
  bool http = false;
  size_t page_size = 4;
  bool silent_discover = false;
  bool garbage_banner = false;
  std::string required_header;  // lower-cased name
  std::string required_value;
  std::string logged_header;  // lower-cased name
  std::string exit_file;  // written when stdin ends (a clean shutdown)
};

Flags g_flags;
bool Legacy() { return g_flags.era != kModern; }
bool ModernOk() { return g_flags.era == kModern || g_flags.era == "dual"; }
bool LegacyOk() { return g_flags.era != kModern; }

// Where the messages of one request go: stdout (stdio) or the request's HTTP exchange.
class Channel {
 public:
  virtual ~Channel() = default;
  virtual void Send(const Json& msg) = 0;
  virtual void SendRaw(const std::string& bytes) = 0;
  // False once the peer is gone (HTTP stream closed).
  virtual bool Alive() { return true; }
  // HTTP: sends a priming event (id, retry) and ends the stream without answering.
  virtual bool DropStream() { return false; }
};

std::mutex g_out_mu;
std::FILE* g_trace = nullptr;  // FAKE_MCP_TRACE=<file>: every stdio line in and out

void Trace(const char* dir, const std::string& line) {
  if (g_trace == nullptr) return;
  std::fprintf(g_trace, "%s %s%s", dir, line.c_str(),
               line.empty() || line.back() != '\n' ? "\n" : "");
  std::fflush(g_trace);
}

class StdoutChannel : public Channel {
 public:
  void Send(const Json& msg) override { SendRaw(agentd::DumpJson(msg) + "\n"); }
  void SendRaw(const std::string& bytes) override {
    std::lock_guard<std::mutex> lock(g_out_mu);
    Trace(">", bytes);
    std::fwrite(bytes.data(), 1, bytes.size(), stdout);
    std::fflush(stdout);
  }
};

Json Response(const Json& id, Json result) {
  return Json{{"jsonrpc", "2.0"}, {"id", id}, {"result", std::move(result)}};
}
Json ErrorResponse(const Json& id, int code, const std::string& message, Json data = Json()) {
  Json e = {{"code", code}, {"message", message}};
  if (!data.is_null()) e["data"] = std::move(data);
  return Json{{"jsonrpc", "2.0"}, {"id", id}, {"error", std::move(e)}};
}
Json Text(const std::string& text) { return Json::array({Json{{"type", "text"}, {"text", text}}}); }

class FakeServer {
 public:
  FakeServer() {
    auto tool = [](const std::string& name, Json props = Json::object()) {
      return Json{{"name", name},
                  {"description", "fake tool " + name},
                  {"inputSchema", {{"type", "object"}, {"properties", std::move(props)}}}};
    };
    tools_ = {tool("echo", {{"text", {{"type", "string"}}}}),
              tool("add", {{"a", {{"type", "number"}}}, {"b", {{"type", "number"}}}}),
              tool("fail"),
              tool("slow", {{"ms", {{"type", "integer"}}}}),
              tool("progress", {{"steps", {{"type", "integer"}}}}),
              tool("garbage"),
              tool("never"),
              tool("exit"),
              tool("huge", {{"bytes", {{"type", "integer"}}}}),
              tool("change_tools"),
              tool("cancelled_count"),
              tool("counter"),
              tool("ping_client"),
              tool("ask_input"),
              tool("forget_session"),
              tool("bad.name"),
              tool("regional", {{"region", {{"type", "string"}, {"x-mcp-header", "Region"}}},
                                {"count", {{"type", "integer"}, {"x-mcp-header", "Count"}}}}),
              tool("bad_header", {{"amount", {{"type", "number"}, {"x-mcp-header", "Amount"}}}}),
              tool("drop_stream"),
              tool("rename_header")};
    tools_[1]["outputSchema"] = {
        {"type", "object"}, {"properties", {{"sum", {{"type", "number"}}}}}, {"required", {"sum"}}};
  }

  // Handles one client message. Runs on its own thread (stdio) or a handler thread (HTTP).
  void Handle(const Json& msg, Channel& ch) {
    const std::string* method = agentd::FindString(msg, "method");
    bool has_id = msg.contains("id") && !msg["id"].is_null();
    if (method == nullptr) {
      if (has_id) {  // an answer to one of our requests
        std::lock_guard<std::mutex> lock(mu_);
        answers_[agentd::DumpJson(msg["id"])] = msg;
        cv_.notify_all();
      }
      return;
    }
    Json params =
        msg.contains("params") && msg["params"].is_object() ? msg["params"] : Json::object();
    if (!has_id) {
      if (*method == "notifications/initialized") {
        std::lock_guard<std::mutex> lock(mu_);
        initialized_ = true;
      } else if (*method == "notifications/cancelled" && params.contains("requestId")) {
        std::lock_guard<std::mutex> lock(mu_);
        cancelled_ids_.insert(agentd::DumpJson(params["requestId"]));
        cv_.notify_all();
      }
      return;
    }
    const Json& id = msg["id"];
    Json meta =
        params.contains("_meta") && params["_meta"].is_object() ? params["_meta"] : Json::object();
    const std::string* version =
        agentd::FindString(meta, "io.modelcontextprotocol/protocolVersion");
    bool modern_request = version != nullptr;

    if (*method == "initialize") {
      if (!LegacyOk()) {
        ch.Send(ErrorResponse(id, -32601,
                              "initialize is not supported: this server speaks 2026-07-28 only"));
        return;
      }
      const std::string* want = agentd::FindString(params, "protocolVersion");
      std::string v = g_flags.era == "dual" ? "2025-11-25" : g_flags.era;
      if (want != nullptr && (*want == "2025-11-25" || *want == "2025-06-18") &&
          g_flags.era == "dual") {
        v = *want;
      }
      ch.Send(Response(id, {{"protocolVersion", v},
                            {"capabilities", {{"tools", {{"listChanged", true}}}}},
                            {"serverInfo", {{"name", "fake_mcp_server"}, {"version", "1.0.0"}}},
                            {"instructions", "a fake server for tests"}}));
      return;
    }
    if (modern_request) {
      if (!ModernOk()) {
        if (*method == "server/discover" && g_flags.silent_discover) return;
        ch.Send(ErrorResponse(id, -32601, "Method not found"));
        return;
      }
      if (*version != kModern) {
        ch.Send(ErrorResponse(id, -32022, "Unsupported protocol version",
                              {{"supported", {kModern}}, {"requested", *version}}));
        return;
      }
      if (!meta.contains("io.modelcontextprotocol/clientCapabilities")) {
        ch.Send(ErrorResponse(id, -32602, "missing io.modelcontextprotocol/clientCapabilities"));
        return;
      }
    } else {
      if (!LegacyOk()) {
        ch.Send(ErrorResponse(id, -32602, "missing io.modelcontextprotocol/protocolVersion"));
        return;
      }
      bool init;
      {
        std::lock_guard<std::mutex> lock(mu_);
        init = initialized_;
      }
      if (!init && *method != "ping" && !g_flags.http) {
        if (g_flags.silent_discover) return;
        ch.Send(ErrorResponse(id, -32600, "not initialized"));
        return;
      }
    }

    if (*method == "server/discover") {
      ch.Send(Response(id, Complete({{"supportedVersions", {kModern}},
                                     {"capabilities", {{"tools", {{"listChanged", true}}}}},
                                     {"instructions", "a fake server for tests"},
                                     {"ttlMs", 0},
                                     {"cacheScope", "public"}})));
    } else if (*method == "ping") {
      ch.Send(Response(id, Json::object()));
    } else if (*method == "tools/list") {
      ListTools(id, params, modern_request, ch);
    } else if (*method == "tools/call") {
      CallTool(id, params, modern_request, ch);
    } else if (*method == "subscriptions/listen" && modern_request && !g_flags.http) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        listen_id_ = id;
      }
      ch.Send(Json{{"jsonrpc", "2.0"},
                   {"method", "notifications/subscriptions/acknowledged"},
                   {"params",
                    {{"notifications", {{"toolsListChanged", true}}},
                     {"_meta", {{"io.modelcontextprotocol/subscriptionId", id}}}}}});
    } else {
      ch.Send(ErrorResponse(id, -32601, "Method not found: " + *method));
    }
  }

  std::string RegionHeader() {
    std::lock_guard<std::mutex> lock(mu_);
    return region_header_;
  }

  // The response a drop_stream call left for the resumed stream; null when none.
  Json TakeResumeResponse() {
    std::lock_guard<std::mutex> lock(mu_);
    Json r = std::move(resume_response_);
    resume_response_ = Json();
    return r;
  }

  void ForgetSessions() {
    std::lock_guard<std::mutex> lock(mu_);
    sessions_.clear();
  }
  std::string NewSession() {
    std::lock_guard<std::mutex> lock(mu_);
    std::string sid = "session-" + std::to_string(++session_counter_);
    sessions_.insert(sid);
    return sid;
  }
  bool KnownSession(const std::string& sid) {
    std::lock_guard<std::mutex> lock(mu_);
    return sessions_.count(sid) > 0;
  }

 private:
  static Json Complete(Json result) {
    result["resultType"] = "complete";
    result["_meta"] = {{"io.modelcontextprotocol/serverInfo",
                        {{"name", "fake_mcp_server"}, {"version", "1.0.0"}}}};
    return result;
  }

  void ListTools(const Json& id, const Json& params, bool modern, Channel& ch) {
    size_t start = 0;
    if (const std::string* cursor = agentd::FindString(params, "cursor")) {
      if (cursor->size() < 2 || (*cursor)[0] != 'c') {
        ch.Send(ErrorResponse(id, -32602, "invalid cursor"));
        return;
      }
      start = std::strtoul(cursor->c_str() + 1, nullptr, 10);
    }
    std::vector<Json> all;
    {
      std::lock_guard<std::mutex> lock(mu_);
      all = tools_;
    }
    Json page = Json::array();
    for (size_t i = start; i < all.size() && i < start + g_flags.page_size; ++i) {
      page.push_back(all[i]);
    }
    Json result = {{"tools", page}};
    if (start + g_flags.page_size < all.size()) {
      result["nextCursor"] = "c" + std::to_string(start + g_flags.page_size);
    }
    if (modern) {
      result["ttlMs"] = 60000;
      result["cacheScope"] = "public";
      result = Complete(std::move(result));
    }
    ch.Send(Response(id, std::move(result)));
  }

  bool Cancelled(const Json& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return cancelled_ids_.count(agentd::DumpJson(id)) > 0;
  }

  void CountCancel() {
    std::lock_guard<std::mutex> lock(mu_);
    ++cancelled_count_;
  }

  void CallTool(const Json& id, const Json& params, bool modern, Channel& ch) {
    std::string name = params.value("name", std::string());
    Json args = params.contains("arguments") && params["arguments"].is_object()
                    ? params["arguments"]
                    : Json::object();
    Json meta = params.contains("_meta") ? params["_meta"] : Json::object();
    auto done = [&](Json result) {
      if (modern) result = Complete(std::move(result));
      ch.Send(Response(id, std::move(result)));
    };
    if (name == "echo") {
      done({{"content", Text(args.value("text", std::string()))}});
    } else if (name == "add") {
      double sum = args.value("a", 0.0) + args.value("b", 0.0);
      Json structured = {{"sum", sum}};
      done({{"content", Text(agentd::DumpJson(structured))}, {"structuredContent", structured}});
    } else if (name == "fail") {
      done({{"content", Text("it failed")}, {"isError", true}});
    } else if (name == "slow") {
      auto until = std::chrono::steady_clock::now() + milliseconds(args.value("ms", 1000));
      while (std::chrono::steady_clock::now() < until) {
        if (Cancelled(id) || !ch.Alive()) {
          CountCancel();
          return;
        }
        std::this_thread::sleep_for(milliseconds(10));
      }
      done({{"content", Text("slept")}});
    } else if (name == "progress") {
      int steps = args.value("steps", 3);
      for (int i = 1; i <= steps; ++i) {
        if (meta.is_object() && meta.contains("progressToken")) {
          ch.Send(Json{{"jsonrpc", "2.0"},
                       {"method", "notifications/progress"},
                       {"params",
                        {{"progressToken", meta["progressToken"]},
                         {"progress", i},
                         {"total", steps},
                         {"message", "step " + std::to_string(i)}}}});
        }
        std::this_thread::sleep_for(milliseconds(20));
      }
      done({{"content", Text("done")}});
    } else if (name == "garbage") {
      ch.SendRaw("this is not json {\n");
    } else if (name == "never") {
      while (ch.Alive() && !Cancelled(id)) std::this_thread::sleep_for(milliseconds(50));
    } else if (name == "exit") {
      std::fprintf(stderr, "fake_mcp_server: exiting in the middle of a call as asked\n");
      std::fflush(stderr);
      ::_exit(3);
    } else if (name == "huge") {
      done({{"content", Text(std::string(static_cast<size_t>(args.value("bytes", 1024)), 'x'))}});
    } else if (name == "change_tools") {
      Json listen_id;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (tools_.back()["name"] != "extra") {
          tools_.push_back(Json{{"name", "extra"}, {"inputSchema", {{"type", "object"}}}});
        }
        listen_id = listen_id_;
      }
      Json note = {{"jsonrpc", "2.0"}, {"method", "notifications/tools/list_changed"}};
      if (!modern) {
        ch.Send(note);
      } else if (!listen_id.is_null()) {
        note["params"] = {{"_meta", {{"io.modelcontextprotocol/subscriptionId", listen_id}}}};
        ch.Send(note);
      }
      done({{"content", Text("changed")}});
    } else if (name == "counter") {
      // State that lives only in this process: how many times it was called.
      int n;
      {
        std::lock_guard<std::mutex> lock(mu_);
        n = ++counter_;
      }
      done({{"content", Text(std::to_string(n))}});
    } else if (name == "cancelled_count") {
      int n;
      {
        std::lock_guard<std::mutex> lock(mu_);
        n = cancelled_count_;
      }
      done({{"content", Text(std::to_string(n))}});
    } else if (name == "ping_client") {
      static std::atomic<int> counter{0};
      int n = ++counter;
      Json ping_id = "srv-ping-" + std::to_string(n);
      Json bogus_id = "srv-bogus-" + std::to_string(n);
      ch.Send(Json{{"jsonrpc", "2.0"}, {"id", ping_id}, {"method", "ping"}});
      ch.Send(Json{{"jsonrpc", "2.0"}, {"id", bogus_id}, {"method", "bogus/method"}});
      std::unique_lock<std::mutex> lock(mu_);
      bool got = cv_.wait_for(lock, std::chrono::seconds(10), [&] {
        return answers_.count(agentd::DumpJson(ping_id)) &&
               answers_.count(agentd::DumpJson(bogus_id));
      });
      if (!got) {
        lock.unlock();
        done({{"content", Text("no answer")}, {"isError", true}});
        return;
      }
      Json ping = answers_[agentd::DumpJson(ping_id)];
      Json bogus = answers_[agentd::DumpJson(bogus_id)];
      lock.unlock();
      Json summary = {{"ping", ping.contains("result") ? ping["result"] : Json()},
                      {"bogus", bogus.contains("error") ? bogus["error"]["code"] : Json()}};
      done({{"content", Text(agentd::DumpJson(summary))}, {"structuredContent", summary}});
    } else if (name == "ask_input") {
      const std::string* state = agentd::FindString(params, "requestState");
      if (state != nullptr && *state == "state-1" && params.contains("inputResponses") &&
          params["inputResponses"].contains("confirm")) {
        std::string action = params["inputResponses"]["confirm"].value("action", std::string("?"));
        done({{"content", Text("input: " + action)}});
        return;
      }
      Json result = {
          {"resultType", "input_required"},
          {"requestState", "state-1"},
          {"inputRequests",
           {{"confirm",
             {{"method", "elicitation/create"},
              {"params",
               {{"message", "go ahead?"},
                {"requestedSchema", {{"type", "object"}, {"properties", Json::object()}}}}}}}}}};
      ch.Send(Response(id, std::move(result)));
    } else if (name == "rename_header") {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& t : tools_) {
        if (t["name"] == "regional") {
          t["inputSchema"]["properties"]["region"]["x-mcp-header"] = "Zone";
        }
      }
      region_header_ = "Zone";
      done({{"content", Text("renamed")}});
    } else if (name == "drop_stream") {
      // 2025-11-25 SEP-1699: the answer comes on the GET stream the client resumes with.
      {
        std::lock_guard<std::mutex> lock(mu_);
        resume_response_ = Response(id, {{"content", Text("resumed")}});
      }
      if (!ch.DropStream()) done({{"content", Text("not on HTTP")}, {"isError", true}});
    } else if (name == "forget_session") {
      ForgetSessions();
      done({{"content", Text("forgotten")}});
    } else if (name == "regional") {
      done({{"content", Text("region=" + args.value("region", std::string("-")) +
                             " count=" + (args.contains("count") ? args["count"].dump() : "-"))}});
    } else if (name == "bad_header") {
      done({{"content", Text("bad_header")}});
    } else if (name == "extra") {
      done({{"content", Text("extra")}});
    } else {
      ch.Send(ErrorResponse(id, -32602, "Unknown tool: " + name));
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Json> tools_;
  bool initialized_ = false;
  std::set<std::string> cancelled_ids_;
  int cancelled_count_ = 0;
  int counter_ = 0;
  std::map<std::string, Json> answers_;
  Json listen_id_;
  std::set<std::string> sessions_;
  int session_counter_ = 0;
  Json resume_response_;
  std::string region_header_ = "Region";
};

FakeServer* g_server = nullptr;

// --- stdio ---------------------------------------------------------------------------------

int RunStdio() {
  if (g_flags.garbage_banner) {
    std::printf("fake_mcp_server starting up\n");
    std::fflush(stdout);
  }
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.empty()) continue;
    {
      std::lock_guard<std::mutex> lock(g_out_mu);
      Trace("<", line);
    }
    auto parsed = agentd::ParseJson(line, "message");
    if (!parsed.ok()) {
      StdoutChannel ch;
      ch.Send(ErrorResponse(Json(), -32700, "Parse error"));
      continue;
    }
    Json msg = std::move(parsed).value();
    // Notifications and subscriptions/listen in order, before what follows them (initialized
    // before the first request, the listen stream before a change); requests on threads.
    if (!msg.contains("id") || msg.value("method", std::string()) == "subscriptions/listen") {
      StdoutChannel ch;
      g_server->Handle(msg, ch);
      continue;
    }
    std::thread([msg = std::move(msg)] {
      StdoutChannel ch;
      g_server->Handle(msg, ch);
    }).detach();
  }
  if (!g_flags.exit_file.empty()) {
    std::FILE* f = std::fopen(g_flags.exit_file.c_str(), "w");
    if (f != nullptr) {
      std::fputs("stdin closed\n", f);
      std::fclose(f);
    }
  }
  return 0;
}

// --- HTTP ----------------------------------------------------------------------------------

class HttpChannel : public Channel {
 public:
  HttpChannel(agentd::http::Exchange& ex, std::vector<std::pair<std::string, std::string>> headers)
      : ex_(ex), headers_(std::move(headers)) {}

  void Send(const Json& msg) override {
    bool response = !msg.contains("method") && msg.contains("id");
    if (response && !streaming_) {
      agentd::http::Response r;
      r.status = 200;
      r.body = agentd::DumpJson(msg);
      r.headers = headers_;
      ex_.Respond(std::move(r));
      answered_ = true;
      return;
    }
    if (!streaming_) {
      auto h = headers_;
      h.emplace_back("Cache-Control", "no-cache");
      alive_ = ex_.StartStream(200, "text/event-stream", h);
      streaming_ = true;
    }
    alive_ = alive_ && ex_.Write("event: message\ndata: " + agentd::DumpJson(msg) + "\n\n");
    if (response) {
      ex_.EndStream();
      answered_ = true;
    }
  }

  void SendRaw(const std::string& bytes) override {
    agentd::http::Response r;
    r.status = 200;
    r.body = bytes;
    r.headers = headers_;
    ex_.Respond(std::move(r));
    answered_ = true;
  }

  // A stream that is open gets an SSE comment now and then; its failure means the client
  // closed it (the stateless era's cancellation).
  bool Alive() override {
    if (ex_.Stopping()) return false;
    if (!streaming_) {
      auto h = headers_;
      alive_ = ex_.StartStream(200, "text/event-stream", h);
      streaming_ = true;
    }
    alive_ = alive_ && ex_.Write(":\n\n");
    return alive_;
  }

  bool DropStream() override {
    if (streaming_) return false;
    ex_.StartStream(200, "text/event-stream", headers_);
    ex_.Write("id: ev-1\nretry: 200\ndata: \n\n");
    ex_.EndStream();
    streaming_ = true;
    answered_ = true;
    return true;
  }

  void Finish() {
    if (answered_) return;
    if (streaming_) {
      ex_.EndStream();
    } else {
      agentd::http::Response r;
      r.status = 202;
      r.body = "";
      ex_.Respond(std::move(r));
    }
  }

 private:
  agentd::http::Exchange& ex_;
  std::vector<std::pair<std::string, std::string>> headers_;
  bool streaming_ = false;
  bool alive_ = true;
  bool answered_ = false;
};

// Undoes the "=?base64?...?=" sentinel encoding of header values.
std::string DecodeHeader(const std::string& v) {
  if (v.size() < 11 || v.rfind("=?base64?", 0) != 0 || v.substr(v.size() - 2) != "?=") return v;
  std::string in = v.substr(9, v.size() - 11), out;
  auto val = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int d = val(c);
    if (d < 0) break;
    acc = (acc << 6) | static_cast<uint32_t>(d);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  return out;
}

void RespondError(agentd::http::Exchange& ex, int status, const Json& id, int code,
                  const std::string& message, Json data = Json()) {
  agentd::http::Response r;
  r.status = status;
  r.body = agentd::DumpJson(ErrorResponse(id, code, message, std::move(data)));
  ex.Respond(std::move(r));
}

void HandleHttp(const agentd::http::Request& req, agentd::http::Exchange& ex) {
  if (req.path != "/mcp") {
    agentd::http::Response r;
    r.status = 404;
    r.body = "{}";
    ex.Respond(std::move(r));
    return;
  }
  if (req.method == "DELETE" && Legacy()) {
    agentd::http::Response r;
    r.status = 200;
    ex.Respond(std::move(r));
    return;
  }
  if (!g_flags.required_header.empty() &&
      req.Header(g_flags.required_header) != g_flags.required_value) {
    agentd::http::Response r;
    r.status = 401;
    r.body = R"({"error":"unauthorized"})";
    ex.Respond(std::move(r));
    return;
  }
  if (req.method == "GET" && Legacy() && !req.Header("last-event-id").empty()) {
    Json response = g_server->TakeResumeResponse();
    if (!response.is_null()) {
      ex.StartStream(200, "text/event-stream", {});
      ex.Write("id: ev-2\ndata: " + agentd::DumpJson(response) + "\n\n");
      ex.EndStream();
      return;
    }
  }
  if (req.method != "POST") {
    agentd::http::Response r;
    r.status = 405;
    ex.Respond(std::move(r));
    return;
  }
  auto parsed = agentd::ParseJson(req.body, "body");
  if (!parsed.ok() || !parsed->is_object()) {
    RespondError(ex, 400, Json(), -32700, "Parse error");
    return;
  }
  Json msg = std::move(parsed).value();
  const std::string* method = agentd::FindString(msg, "method");
  if (!g_flags.logged_header.empty()) {
    std::printf("HEADER %s %s\n", method != nullptr ? method->c_str() : "-",
                req.Header(g_flags.logged_header).c_str());
    std::fflush(stdout);
  }
  Json id = msg.contains("id") ? msg["id"] : Json();
  Json params =
      msg.contains("params") && msg["params"].is_object() ? msg["params"] : Json::object();
  const std::string* version = nullptr;
  if (params.contains("_meta") && params["_meta"].is_object()) {
    version = agentd::FindString(params["_meta"], "io.modelcontextprotocol/protocolVersion");
  }
  std::vector<std::pair<std::string, std::string>> headers;

  if (version != nullptr && ModernOk()) {
    // Stateless era: the headers must mirror the body (Server Validation).
    if (req.Header("mcp-protocol-version") != *version) {
      RespondError(ex, 400, id, -32020, "Header mismatch: MCP-Protocol-Version");
      return;
    }
    if (*version != kModern) {
      RespondError(ex, 400, id, -32022, "Unsupported protocol version",
                   {{"supported", {kModern}}, {"requested", *version}});
      return;
    }
    if (method != nullptr && req.Header("mcp-method") != *method) {
      RespondError(ex, 400, id, -32020, "Header mismatch: Mcp-Method");
      return;
    }
    if (method != nullptr && *method == "tools/call" &&
        req.Header("mcp-name") != params.value("name", std::string())) {
      RespondError(ex, 400, id, -32020, "Header mismatch: Mcp-Name");
      return;
    }
    if (method != nullptr && *method == "tools/call" && params.value("name", "") == "regional") {
      // x-mcp-header: Mcp-Param-Region / Mcp-Param-Count must mirror the arguments.
      Json args = params.contains("arguments") ? params["arguments"] : Json::object();
      std::string want_region = args.contains("region") ? args["region"].get<std::string>() : "";
      std::string want_count = args.contains("count") ? args["count"].dump() : "";
      std::string region_header = "mcp-param-" + g_server->RegionHeader();
      for (char& ch : region_header) ch = static_cast<char>(std::tolower(ch));
      if (DecodeHeader(req.Header(region_header)) != want_region ||
          req.Header("mcp-param-count") != want_count) {
        RespondError(ex, 400, id, -32020, "Header mismatch: Mcp-Param-Region or Mcp-Param-Count");
        return;
      }
    }
  } else if (version == nullptr && !LegacyOk()) {
    RespondError(ex, 400, id, -32602,
                 "missing io.modelcontextprotocol/protocolVersion; this server speaks 2026-07-28");
    return;
  } else if (version != nullptr) {
    // A handshake-era server does not know server/discover and has no session for it.
    RespondError(ex, 400, Json(), -32000, "Bad Request: No valid session ID provided");
    return;
  }
  if (version == nullptr) {
    // Handshake era: sessions.
    if (method != nullptr && *method == "initialize") {
      headers.emplace_back("Mcp-Session-Id", g_server->NewSession());
    } else {
      std::string sid = req.Header("mcp-session-id");
      if (sid.empty()) {
        RespondError(ex, 400, Json(), -32000, "Bad Request: No valid session ID provided");
        return;
      }
      if (!g_server->KnownSession(sid)) {
        RespondError(ex, 404, Json(), -32001, "Session not found");
        return;
      }
      headers.emplace_back("Mcp-Session-Id", sid);
    }
  }
  HttpChannel ch(ex, headers);
  g_server->Handle(msg, ch);
  ch.Finish();
}

int RunHttp() {
  agentd::StopSignals stop_signals;
  agentd::http::ServerOptions so;
  so.host = "127.0.0.1";
  so.port = 0;
  so.pool_name = "fake_mcp";
  agentd::http::Server server(so, HandleHttp);
  agentd::Status st = server.Start();
  if (!st.ok()) {
    std::fprintf(stderr, "fake_mcp_server: %s\n", st.ToString().c_str());
    return 1;
  }
  std::printf("LISTENING %u\n", static_cast<unsigned>(server.port()));
  std::fflush(stdout);
  stop_signals.WaitBlocking();
  server.Stop();
  return 0;
}

int Usage(const std::string& why) {
  std::fprintf(stderr,
               "fake_mcp_server: %s\nusage: fake_mcp_server [--era 2025-06-18|2025-11-25|"
               "2026-07-28|dual] [--transport stdio|http] [--page-size N] [--silent-discover] "
               "[--garbage-banner] [--require-header NAME:VALUE] [--log-header NAME]\n",
               why.c_str());
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (arg == "--era") {
      g_flags.era = value();
      if (g_flags.era != "2025-06-18" && g_flags.era != "2025-11-25" && g_flags.era != kModern &&
          g_flags.era != "dual") {
        return Usage("unknown era " + g_flags.era);
      }
    } else if (arg == "--transport") {
      std::string t = value();
      if (t != "stdio" && t != "http") return Usage("unknown transport " + t);
      g_flags.http = t == "http";
    } else if (arg == "--page-size") {
      int n = std::atoi(value().c_str());
      if (n < 1) return Usage("--page-size must be positive");
      g_flags.page_size = static_cast<size_t>(n);
    } else if (arg == "--silent-discover") {
      g_flags.silent_discover = true;
    } else if (arg == "--exit-file") {
      g_flags.exit_file = value();
    } else if (arg == "--garbage-banner") {
      g_flags.garbage_banner = true;
    } else if (arg == "--log-header") {
      g_flags.logged_header = value();
      for (char& c : g_flags.logged_header) c = static_cast<char>(std::tolower(c));
    } else if (arg == "--require-header") {
      std::string h = value();
      auto colon = h.find(':');
      if (colon == std::string::npos) return Usage("--require-header needs NAME:VALUE");
      g_flags.required_header = h.substr(0, colon);
      for (char& c : g_flags.required_header) c = static_cast<char>(std::tolower(c));
      g_flags.required_value = h.substr(colon + 1);
      while (!g_flags.required_value.empty() && g_flags.required_value[0] == ' ') {
        g_flags.required_value.erase(0, 1);
      }
    } else {
      return Usage("unknown argument " + std::string(arg));
    }
  }
  if (const char* trace = std::getenv("FAKE_MCP_TRACE")) g_trace = std::fopen(trace, "a");
  FakeServer server;
  g_server = &server;
  return g_flags.http ? RunHttp() : RunStdio();
}
