// Agent definitions: parsing and validating what POST/PUT /v1/agents accept, and the
// canonical agent object stored per version. Pure functions; thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/json.h"
#include "common/retry.h"
#include "common/status.h"
#include "identity/policy.h"
#include "sandbox/egress/egress_policy.h"
#include "sandbox/sandbox.h"

namespace agentd::engine {

struct ModelDef {
  std::string provider;  // e.g. "openai-chat"
  std::string name;
  std::string base_url;
  std::string api_key_env;  // name of agentd's environment variable holding the key
  int64_t timeout_ms = 120000;
};

struct ToolDef {
  std::string type;  // "http" | "client" | "builtin" | "mcp" (a server: `name` is its namespace)
  std::string name;
  std::string description;
  Json parameters;  // JSON Schema (object)
  std::string url;  // http; mcp over Streamable HTTP
  int64_t timeout_ms = 30000;
  bool idempotent = false;
  // mcp: a stdio server started in the session's sandbox (argv, environment), or the
  // headers of every request to an HTTP one. A value "env:NAME" is read from agentd's
  // environment variable NAME when the server is reached, and never stored.
  std::vector<std::string> command;
  std::map<std::string, std::string> env;
  std::map<std::string, std::string> headers;
  // Secrets of the session's tenant given to the tool at call time, never stored in the
  // agent: request header -> secret name (http tools), environment variable -> secret name
  // (the exec built-in). Written "secret:NAME" in the agent object.
  std::map<std::string, std::string> secret_headers;
  std::map<std::string, std::string> secret_env;
};

// Where the agent's built-in tools run. Limits left at 0 take the daemon's defaults.
struct SandboxDef {
  std::string driver = "bwrap";
  sandbox::Limits limits;
  // Where the sandbox may connect, through the egress proxy; empty: no network at all.
  sandbox::egress::EgressPolicy egress;
};

// Limits on one turn's work (docs/api/openapi.yaml, "Budget"). A field at 0 sets no limit;
// every limit counts per turn, from the journal (journal::TurnState), and is checked before
// each step: once one is reached, no further model or tool call starts and the turn fails.
struct Budget {
  int64_t max_tokens = 0;       // total tokens of the turn's model calls
  int64_t max_model_calls = 0;  // completed model calls
  int64_t max_tool_calls = 0;   // tool calls started (a retry is the same call)
  double max_turn_seconds = 0;  // wall time since turn.started
  double max_cost_usd = 0;      // model cost from the daemon's price table
  // Loop detection: this many consecutive calls of one tool with the same arguments run; the
  // next identical one stops the turn. 0: the daemon's default.
  int64_t max_repeated_tool_calls = 0;

  bool empty() const;
  // Only the limits that are set.
  Json ToJson() const;
  // Each limit the smaller of the two where both are set, else the one that is.
  Budget Tightened(const Budget& other) const;
  // Limits left at 0 take those of `defaults`.
  Budget WithDefaults(const Budget& defaults) const;
};

// Loop detection when neither the agent, its session nor the daemon's config sets
// max_repeated_tool_calls. Lenient, since a tool that polls repeats itself legitimately.
inline constexpr int64_t kDefaultMaxRepeatedToolCalls = 25;

// What one model costs, from the daemon's price table.
struct ModelPrice {
  double input_per_million_usd = 0;
  double output_per_million_usd = 0;
};

// Validates a budget object; errors name the field under `path` ("budget.max_tokens").
Result<Budget> ParseBudget(const Json& j, const std::string& path);

struct AgentSpec {
  std::string id;
  int64_t version = 0;
  std::string name;
  std::string instructions;
  ModelDef model;
  std::vector<ToolDef> tools;
  SandboxDef sandbox;
  RetryPolicy retry;
  std::string turn_policy = "enqueue";  // enqueue | reject
  Budget budget;
  // What the agent may do (identity/policy.h), as documents and compiled. Empty: it may call
  // the tools it declares and nothing else. Either way a call also needs the permission of
  // the principal whose turn it is.
  Json policy_documents = Json::array();
  std::vector<identity::Policy> policies;
  int64_t created_ms = 0;

  const ToolDef* FindTool(const std::string& name) const;
  // True when a tool needs the session's sandbox.
  bool UsesSandbox() const;
  bool UsesMcp() const;
  Json ToJson() const;
};

// Validates a request body. `providers` are the registered model provider names. The
// result has no id, version or created_ms yet. Errors name the offending field.
Result<AgentSpec> ParseAgentSpec(const Json& body, const std::set<std::string>& providers);
// Reads a stored agent object back (trusted input written by ToJson()).
Result<AgentSpec> AgentFromJson(const Json& stored);

// A turn's input as the API takes it (a string, or an array of at most `max_items` message
// items), as canonical message items.
Result<Json> ParseTurnInput(const Json& input, size_t max_items);
// A session's metadata: an object of at most 64 string values.
Status CheckSessionMetadata(const Json& metadata);

}  // namespace agentd::engine
