// MCP client: agentd's side of the Model Context Protocol, for tools served by MCP servers.
//
// One McpClient talks to one server, over stdio (a process inside the session's sandbox,
// newline-delimited JSON-RPC on its stdin/stdout) or Streamable HTTP (one POST per message,
// answered with JSON or a Server-Sent Events stream). It speaks both eras of the protocol
// and finds out which one the server speaks when it connects, as the 2026-07-28
// specification says (basic/versioning.mdx, "Backward Compatibility"):
//   - stateless (2026-07-28): no handshake; every request carries the protocol version,
//     client capabilities and client info in `params._meta` (and, on HTTP, the
//     MCP-Protocol-Version, Mcp-Method, Mcp-Name and x-mcp-header Mcp-Param-* headers; a
//     tool whose x-mcp-header annotation is invalid is left out of tools/list on HTTP, as
//     the binding requires). The client probes with `server/discover`; a DiscoverResult or
//     UnsupportedProtocolVersionError (-32022) identifies a modern server.
//   - handshake (2025-11-25, 2025-06-18, also 2025-03-26): any other error, an HTTP 4xx
//     without a modern JSON-RPC error, or no answer to the probe within
//     `discover_timeout` means a legacy server: `initialize` + `notifications/initialized`,
//     then Mcp-Session-Id (HTTP) on every request. A stdio server that did not answer the
//     probe is restarted before `initialize`, since it may be in an undefined state.
//
// Failures are Status codes, never exceptions or hangs:
//   server process exited / connection refused  -> Unavailable (with the stderr tail)
//   no answer within the call's timeout          -> DeadlineExceeded
//   caller's should_abort() returned true        -> Cancelled (notifications/cancelled sent)
//   a line or message over max_message_bytes     -> ResourceExhausted
//   stdout line that is not JSON, malformed result -> Internal
//   JSON-RPC error from the server               -> InvalidArgument (-32602, -32600),
//                                                   NotFound (-32601), Internal (others)
//   HTTP error without a JSON-RPC error body     -> Unauthenticated (401), PermissionDenied
//                                                   (403), NotFound (404), Unavailable (408,
//                                                   429, 5xx), FailedPrecondition (others)
// After a stdio connection broke (exit, garbage, oversized line) the next call spawns a
// fresh process through the factory and connects again (ClientOptions::auto_reconnect);
// ReconnectBlocking() does the same on demand.
//
// The era found is remembered across reconnects (a handshake-era server is not probed again
// unless initialize then fails), as the 2026-07-28 versioning page recommends.
//
// What the client does not do: OAuth (credentials come from HttpTarget::headers), sampling
// (a server asking for it gets -32601, or FailedPrecondition for an input_required round),
// elicitation (declined: agentd runs unattended), roots (an empty list), the deprecated
// HTTP+SSE transport of 2024-11-05, the optional standalone GET stream of handshake-era HTTP
// and subscriptions/listen on stateless HTTP (list changes there are seen through ttlMs or
// ListToolsBlocking(true); on stdio both eras deliver them).
//
// Thread-safe: several threads may call tools at once; on stdio one reader thread per
// connection dispatches responses by JSON-RPC id, so calls proceed concurrently.
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

namespace agentd::tools::mcp {

inline constexpr const char* kStatelessVersion = "2026-07-28";
inline constexpr const char* kVersion20251125 = "2025-11-25";
inline constexpr const char* kVersion20250618 = "2025-06-18";
inline constexpr const char* kVersion20250326 = "2025-03-26";

// Which kind of protocol revision the connected server speaks.
enum class Era { kHandshake, kStateless };

// Spawns a fresh server process (inside the session's sandbox, usually Sandbox::Spawn).
using ProcessFactory = std::function<Result<std::unique_ptr<sandbox::Process>>()>;

struct ClientOptions {
  // Names the server in error messages and logs ("github"); also its tool namespace.
  std::string server_name = "mcp";
  // Revisions the client may use, most preferred first. Without a stateless revision the
  // client goes straight to `initialize`; without handshake ones it never falls back.
  std::vector<std::string> protocol_versions = {kStatelessVersion, kVersion20251125,
                                                kVersion20250618, kVersion20250326};
  std::string client_name = "agentd";    // clientInfo.name
  std::string client_version = "0.1.0";  // clientInfo.version
  // How long the whole connect (probe, handshake) may take.
  std::chrono::milliseconds connect_timeout{30000};
  // How long a `server/discover` probe waits before the server is taken for a legacy one
  // that ignores unknown requests.
  std::chrono::milliseconds discover_timeout{3000};
  // Timeout of tools/list and other short requests.
  std::chrono::milliseconds request_timeout{30000};
  // Largest JSON-RPC message accepted from the server (one stdio line, one SSE event or
  // one JSON body).
  size_t max_message_bytes = 16u << 20;
  // Reconnect (a new process for stdio) when a call finds the connection broken.
  bool auto_reconnect = true;
  // Closing a stdio connection closes the server's stdin and waits this long for it to exit
  // before killing it (the specification's shutdown sequence).
  std::chrono::milliseconds shutdown_grace{2000};
  // Called (on a transport thread, without locks held) when the server says its tool list
  // changed; the next ListToolsBlocking() fetches it again in any case.
  std::function<void()> on_tools_changed;
};

// Streamable HTTP endpoint of a server.
struct HttpTarget {
  std::string url;  // the MCP endpoint, e.g. "http://127.0.0.1:3001/mcp"
  // Added to every request (from the tool definition: Authorization, API keys, ...).
  std::vector<std::pair<std::string, std::string>> headers;
  std::chrono::milliseconds connect_timeout{5000};  // TCP connect
  // When set, every request connects to this IP address (see HttpRequest::connect_address).
  std::string connect_address;
  // When set, called for every request (on the caller's or a transport thread, with none of
  // the client's locks held) for headers that change, such as a short-lived token; each
  // replaces a header of `headers` of the same name. A tools/call's own
  // CallOptions::headers replace these in turn.
  std::function<std::vector<std::pair<std::string, std::string>>()> fresh_headers;
};

// A tool as the server describes it in tools/list.
struct McpTool {
  std::string name;
  std::string title;        // "" when absent
  std::string description;  // "" when absent
  Json input_schema = Json::object();
  Json output_schema;  // null when the tool declares none
  Json annotations;    // null when absent
};

struct ProgressUpdate {
  double progress = 0;
  std::optional<double> total;
  std::string message;
};

struct CallOptions {
  std::chrono::milliseconds timeout{60000};
  // Polled while the call runs; returning true cancels it (notifications/cancelled on stdio
  // and handshake-era HTTP, the stream closed on stateless HTTP) and the call returns
  // Cancelled.
  std::function<bool()> should_abort;
  // When set, the request asks for progress (`_meta.progressToken`) and each
  // notifications/progress for it is passed here, on a transport thread, before the call
  // returns; never after.
  std::function<void(const ProgressUpdate&)> on_progress;
  // Streamable HTTP only: headers of this call alone (a token minted for it, a secret); each
  // replaces a header of the target of the same name.
  std::vector<std::pair<std::string, std::string>> headers;
};

// The CallToolResult. A tool's own failure is `is_error` with an OK Status.
struct CallResult {
  Json content = Json::array();  // ContentBlock[] as sent
  Json structured_content;       // null when absent
  bool is_error = false;
};

class McpClient {
 public:
  // Spawns the server through `factory` and connects. Blocking.
  static Result<std::unique_ptr<McpClient>> ConnectStdioBlocking(ClientOptions options,
                                                                 ProcessFactory factory);
  // Connects to a Streamable HTTP endpoint. Blocking.
  static Result<std::unique_ptr<McpClient>> ConnectHttpBlocking(ClientOptions options,
                                                                HttpTarget target);

  // Closes the connection: a stdio process is killed, an HTTP session deleted.
  ~McpClient();
  McpClient(const McpClient&) = delete;
  McpClient& operator=(const McpClient&) = delete;

  // All tools, following nextCursor. Served from a cache until the server announces a
  // change (notifications/tools/list_changed), its ttlMs runs out (stateless era), the
  // client reconnects, or `refresh` is true. Blocking.
  Result<std::vector<McpTool>> ListToolsBlocking(bool refresh = false);

  // tools/call. Blocking; see CallOptions for timeout, cancellation and progress.
  Result<CallResult> CallToolBlocking(const std::string& name, const Json& arguments,
                                      const CallOptions& options = {});

  // Taking over a live stdio server: after the sandbox that runs it was hibernated and
  // resumed, the server process still has its state and its protocol session, so a new
  // client continues that session (no probe, no handshake, no reused request id).
  //
  // What this client knows of its server's session, as JSON to keep beside the sandbox's
  // image: era, protocol version, capabilities, server info, instructions and the next
  // request id. FailedPrecondition for an HTTP client or one whose connection broke.
  Result<Json> SaveSession() const;
  // A client over `live` (a handle on the running server process) continuing the session
  // `saved` describes; checks the server answers (tools/list) before returning. `factory`
  // spawns a fresh server when this one later dies, as for ConnectStdioBlocking. Blocking.
  static Result<std::unique_ptr<McpClient>> ResumeStdioBlocking(
      ClientOptions options, ProcessFactory factory, std::unique_ptr<sandbox::Process> live,
      const Json& saved);

  // Drops the current connection (killing a stdio process) and connects again, spawning a
  // fresh process for stdio. Blocking.
  Status ReconnectBlocking();

  // What the last successful connect found.
  Era era() const;
  std::string protocol_version() const;
  Json server_capabilities() const;
  Json server_info() const;  // Implementation {name, version, ...}; null when not sent
  std::string instructions() const;

  struct Impl;

 private:
  explicit McpClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Tool names given to the model are namespaced per server as "<server>__<tool>", and must be
// valid OpenAI function names: 1 to 64 characters of [a-zA-Z0-9_-]. Names that do not fit
// are rejected, not rewritten: a sanitised name could collide with another tool's or change
// when the server renames a tool, and the model would call the wrong one.
inline constexpr size_t kMaxFunctionNameLength = 64;
bool IsValidFunctionName(std::string_view name);
// InvalidArgument (naming the server, the tool and the rule broken) when `server` is empty,
// contains "__" or a character outside the set, or the joined name is not a valid function
// name.
Result<std::string> NamespacedToolName(std::string_view server, std::string_view tool);
// Splits "<server>__<tool>" at the first "__"; false when `name` has none or either side
// is empty.
bool SplitNamespacedToolName(std::string_view name, std::string* server, std::string* tool);

}  // namespace agentd::tools::mcp
