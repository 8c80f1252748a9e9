// Internal to the MCP client: one live transport to a server (a stdio process or an HTTP
// endpoint) that carries JSON-RPC requests and notifications. The client above it knows the
// protocol's eras and methods; a Connection knows framing, ids, progress tokens,
// cancellation on its transport, and answers the server's own requests (ping).
//
// Thread-safe: Call() may run on several threads at once.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/json.h"
#include "common/status.h"
#include "sandbox/sandbox.h"
#include "tools/mcp/mcp_client.h"

namespace agentd::tools::mcp::internal {

// JSON-RPC error codes the client acts on.
inline constexpr int64_t kParseError = -32700;
inline constexpr int64_t kInvalidRequest = -32600;
inline constexpr int64_t kMethodNotFound = -32601;
inline constexpr int64_t kInvalidParams = -32602;
inline constexpr int64_t kHeaderMismatch = -32020;
inline constexpr int64_t kMissingRequiredClientCapability = -32021;
inline constexpr int64_t kUnsupportedProtocolVersion = -32022;
// Not a JSON-RPC code: an HTTP error status whose body was no JSON-RPC error.
inline constexpr int64_t kHttpStatusError = -1;

struct RpcError {
  int64_t code = 0;
  std::string message;
  Json data;
};

// The server's answer to one request: a result or a JSON-RPC error.
struct RpcReply {
  Json result;
  std::optional<RpcError> error;
  int http_status = 0;  // HTTP only
};

struct RequestOptions {
  std::chrono::steady_clock::time_point deadline;
  std::function<bool()> should_abort;
  // notifications/progress params for this request; set => params._meta.progressToken.
  std::function<void(const Json& params)> on_progress;
  // Stateless-era HTTP only: Mcp-Param-* headers mirrored from the arguments (x-mcp-header).
  std::vector<std::pair<std::string, std::string>> extra_headers;
  // HTTP only, every era: headers of this request alone, replacing any of the same name.
  std::vector<std::pair<std::string, std::string>> headers;
};

// Server notifications the connection does not consume itself (list_changed, ...).
using NotificationSink = std::function<void(const std::string& method, const Json& params)>;

class Connection {
 public:
  virtual ~Connection() = default;
  // Sends a request and waits for its answer. A non-OK Status is a transport failure,
  // a timeout (DeadlineExceeded) or the caller's abort (Cancelled).
  virtual Result<RpcReply> Call(const std::string& method, Json params,
                                const RequestOptions& options) = 0;
  virtual Status Notify(const std::string& method, Json params) = 0;
  // Sends a request whose answer nobody waits for (subscriptions/listen); stdio only.
  virtual Status SendDetached(const std::string& method, Json params) = 0;
  // The revision in use: selects HTTP headers (MCP-Protocol-Version, Mcp-Method, ...).
  // "" before a handshake-era initialize.
  virtual void SetProtocolVersion(const std::string& version) = 0;
  // True once the connection cannot carry requests any more; `why` says why.
  virtual bool Broken(Status* why) = 0;
  // The JSON-RPC id the next request gets (ids are never reused within a session).
  virtual int64_t NextRequestId() const = 0;
};

// `first_request_id` > 1 continues a session whose earlier requests used lower ids.
Result<std::unique_ptr<Connection>> StartStdioConnection(std::unique_ptr<sandbox::Process> process,
                                                         const ClientOptions& options,
                                                         NotificationSink sink,
                                                         int64_t first_request_id = 1);
std::unique_ptr<Connection> StartHttpConnection(const HttpTarget& target,
                                                const ClientOptions& options,
                                                NotificationSink sink);

// The answer to a request the server sent us: `ping` gets an empty result, anything else
// -32601 (the client declares no capabilities, so servers have nothing else to ask).
Json AnswerServerRequest(const Json& request);

// Incremental Server-Sent Events parser (the WHATWG event stream format): feed bytes, get
// each event's data. Comments and `event` fields are ignored; `id` and `retry` are kept for
// resuming a stream (2025-11-25 SEP-1699).
class SseParser {
 public:
  explicit SseParser(size_t max_event_bytes) : max_event_bytes_(max_event_bytes) {}
  // Calls `on_event` with each complete event's data; fails when an event or a line grows
  // over the limit.
  Status Feed(std::string_view bytes, const std::function<void(std::string)>& on_event);
  // Forgets a partial line and event when a stream ended; the last event id and retry stay.
  void EndStream();
  // The last `id` field seen ("" when none) and the last `retry` field in ms (0: none).
  const std::string& last_event_id() const { return last_event_id_; }
  int64_t retry_ms() const { return retry_ms_; }

 private:
  size_t max_event_bytes_;
  std::string line_;
  std::string data_;
  bool has_data_ = false;
  bool skip_lf_ = false;
  std::string last_event_id_;
  int64_t retry_ms_ = 0;
};

// A header value as the 2026-07-28 Streamable HTTP binding encodes it ("Value Encoding"):
// as is when plain header-safe ASCII, else "=?base64?<Base64 of the UTF-8>?=".
std::string HeaderValue(std::string_view v);

// One `x-mcp-header` annotation of a tool's inputSchema: the property's path from the
// schema root (through `properties` only) and the header name's suffix.
struct HeaderParam {
  std::vector<std::string> path;
  std::string name;  // the header is "Mcp-Param-" + name
};
// The annotations of `input_schema`; InvalidArgument naming the rule broken when one is
// invalid (2026-07-28 streamable-http.mdx, "Schema Extension"): such a tool must not be
// offered on Streamable HTTP.
Result<std::vector<HeaderParam>> CollectHeaderParams(const Json& input_schema);
// The Mcp-Param-* headers for a call with `arguments` (absent or null values: no header).
std::vector<std::pair<std::string, std::string>> HeaderParamHeaders(
    const std::vector<HeaderParam>& params, const Json& arguments);

// The first `max` bytes of `s` for error messages, with "..." when cut.
std::string Excerpt(std::string_view s, size_t max = 200);

}  // namespace agentd::tools::mcp::internal
