// The engine: session actors and the turn loop (ARCHITECTURE.md, "Data flow of one turn").
//
// Each session that has work is an Actor: its state folded from the journal, the agent
// version it pinned, and a buffer of events not yet committed. One worker at a time drives a
// session (its "strand"); API calls that change a session take the actor's mutex, stage
// events and commit them. Idle sessions are not kept in memory: an actor is loaded from the
// session's snapshot plus the journal tail when needed and dropped when no one holds it.
//
// Durability: events are staged (folded into memory) and committed in one batch right before
// every external effect, so a model's answer is durable before any tool call it asks for
// runs, and a tool's result before the next model call; intents ride in the same commits.
//
// Thread-safe. Blocking calls say so; threading is described in docs/threading.md.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <unordered_map>

#include "common/clock.h"
#include "common/json.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "audit/audit.h"
#include "engine/agent_spec.h"
#include "identity/directory.h"
#include "identity/signing_key.h"
#include "identity/vault.h"
#include "journal/state.h"
#include "model/model.h"
#include "sandbox/egress/egress_proxy.h"
#include "sandbox/sandbox.h"
#include "tools/mcp/mcp_client.h"
#include "tools/tools.h"
#include "store/store.h"

namespace agentd::engine {

struct EngineOptions {
  // Identity (all optional; without them tool calls are decided by nothing but the agent's
  // tool list, carry no token and are not audited): whose turn it is, agentd's key for the
  // per-call tokens tools get, and the audit log tool calls are recorded in.
  identity::Directory* directory = nullptr;
  const identity::SigningKey* signing_key = nullptr;
  audit::AuditLog* audit = nullptr;
  // The tenants' secrets, given to the tool calls whose definitions name them; without it
  // such calls fail.
  identity::Vault* vault = nullptr;
  std::string token_issuer = "agentd";  // iss of the tokens
  int snapshot_every = 100;       // events between snapshots of a session
  size_t max_workers = 512;       // turn-worker threads (concurrently driven sessions)
  size_t max_input_items = 1000;  // items in one turn input
  std::chrono::milliseconds drain_timeout{30000};  // SIGTERM: wait for in-flight steps
  // Sessions with no work kept in memory after their last use, least recently used leaving
  // first; 0 keeps none (every turn rebuilds its session from the snapshot and journal).
  size_t resident_idle_sessions = 64;
  // Sandboxes: each session's sandbox root is sandbox_root/<session id> (created as needed).
  std::string sandbox_root;
  sandbox::Limits sandbox_defaults;  // for limits an agent leaves at 0
  sandbox::Limits sandbox_max;       // an agent asking for more is refused (0: no maximum)
  // Host folders every sandbox sees read-only (MCP servers installed from npm, say).
  std::vector<std::string> sandbox_read_only_paths;
  // Turn limits for agents that leave them out (max_repeated_tool_calls left at 0 here too
  // takes kDefaultMaxRepeatedToolCalls).
  Budget budget_defaults;
  // Model prices for budget.max_cost_usd, by "<provider>/<model name>" or "<model name>"
  // (the first found wins). A model without one costs nothing.
  std::map<std::string, ModelPrice> prices;
};

// Which sessions' turns CancelTurns cancels. An empty field matches any session.
struct CancelFilter {
  std::string agent_id;
  std::string tenant_id;  // every session of the tenant (and of the agent, when both are set)
};

using SandboxDrivers = std::map<std::string, sandbox::SandboxDriver*>;

using ModelProviders = std::map<std::string, model::ModelProvider*>;

// Who asks the engine for something: the tenant it lands in and the principal acting.
struct Caller {
  std::string tenant_id;
  std::string principal_id;
};

struct SubmitResult {
  Json turn;
  bool created = false;  // false: an earlier turn with the same Idempotency-Key
  int64_t queued_seq = 0;  // seq of its turn.queued event (0 when not known)
};

class Engine {
 public:
  Engine(EngineOptions options, store::Store* store, ModelProviders providers, Clock* clock,
         SandboxDrivers sandbox_drivers = {});
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Schedules every session with unfinished work (after a restart). Returns how many.
  Result<size_t> Recover();
  // Stops starting new steps, lets in-flight steps finish (up to drain_timeout, then
  // abandons them unjournaled, which recovery handles) and waits for workers. Blocking.
  void DrainBlocking();
  bool Draining() const { return draining_.load(); }

  Result<Json> CreateAgent(const Json& body, const Caller& caller);
  Result<Json> UpdateAgent(const std::string& id, const Json& body);
  Result<Json> GetAgent(const std::string& id, int64_t version);
  // The tenant's agents (every tenant's when `tenant_id` is empty).
  Result<Json> ListAgents(const std::string& tenant_id, const store::Page& page);
  // The tenant an agent or session belongs to; NotFound when there is no such object.
  Result<std::string> AgentTenant(const std::string& id);
  // A session's tenant and metadata.
  Result<std::pair<std::string, Json>> SessionScope(const std::string& id);

  // The agent must be in the caller's tenant (NotFound otherwise).
  Result<Json> CreateSession(const Json& body, const Caller& caller);
  Result<Json> GetSession(const std::string& id);
  Result<Json> ListSessions(const store::SessionFilter& filter, const store::Page& page);
  Status DeleteSession(const std::string& id);
  // Cancels the session's running turn.
  Result<Json> CancelSession(const std::string& id);
  // The kill switch: cancels every queued and running turn (waiting ones included) of every
  // session the filter matches, as CancelSession does for one running turn. Returns
  // {cancelled: <turns>, sessions: [ids]}; a turn being driven ends as soon as its step
  // notices (a model or tool call in flight is interrupted). At least one field must be set.
  Result<Json> CancelTurns(const CancelFilter& filter);

  // `input` is a string or an array of message items.
  // `principal_id`, when set, is journaled as the turn's invoking principal.
  Result<SubmitResult> SubmitTurn(const std::string& session_id, const Json& input,
                                  const std::string& idempotency_key,
                                  const std::string& principal_id = "");
  Result<Json> SubmitToolOutputs(const std::string& session_id, const std::string& turn_id,
                                 const Json& body);
  // POST .../approvals {call_id, decision: approve|deny, reason?}: decides a tool call that
  // policy held for approval; `principal_id` is who decided.
  Result<Json> SubmitApproval(const std::string& session_id, const std::string& turn_id,
                              const Json& body, const std::string& principal_id);
  Result<Json> GetTurn(const std::string& session_id, const std::string& turn_id);
  Result<Json> ListTurns(const std::string& session_id, const store::Page& page);
  // {data: [event], has_more}
  Result<Json> ReadEvents(const std::string& session_id, int64_t after_seq, int limit);
  // Waits until the turn is no longer queued or running, the timeout passes or the engine
  // drains; returns the turn as stored at that point (NotFound once the session is deleted).
  Result<Json> WaitForTurnBlocking(const std::string& session_id, const std::string& turn_id,
                                   std::chrono::milliseconds timeout);
  // Blocks until an event after `after_seq` is durable, `timeout` passes or draining starts.
  void WaitForEventsBlocking(const std::string& session_id, int64_t after_seq,
                             std::chrono::milliseconds timeout);

  // The session's workspace: {data: [{path, type, size}], truncated}, from its files when
  // they are on this host, else from its latest snapshot.
  Result<Json> ListWorkspace(const std::string& session_id);
  // One file's bytes (at most `max_bytes`).
  Result<std::string> ReadWorkspaceFile(const std::string& session_id, const std::string& path,
                                        size_t max_bytes);

  // Export and import of one session: the file format is in docs/state-format.md ("Export
  // files"). ExportSession calls `begin` once the session and its agent are found (NotFound
  // before it otherwise), then `line` for each line of the file (without its '\n'); either
  // returning false stops the export with Cancelled. Blocking.
  Status ExportSession(const std::string& session_id, const std::function<bool()>& begin,
                       const std::function<bool(std::string_view)>& line);
  // Creates the session an export file describes, with its journal, turns and workspace
  // snapshots, and the agent version it runs when this agentd does not have it, all in one
  // commit. Anything wrong in the file is an error naming the line and nothing is written.
  // A session that had unfinished work resumes it as after a restart. Blocking.
  // The session (and its agent, when added) join the caller's tenant.
  Result<Json> ImportSession(std::string_view file, const Caller& caller);

  std::set<std::string> ProviderNames() const;
  size_t ResidentSessions() const;
  size_t ActiveWorkers() const { return active_workers_.load(); }

 private:
  struct Actor;
  struct Watch;
  struct SessionSandbox;
  struct RootRegistry;

  Result<std::shared_ptr<Actor>> Acquire(const std::string& session_id);
  void Release(const std::shared_ptr<Actor>& a);
  // Release's bookkeeping: the actors that leave memory go to `dropped`. actors_mu_ held.
  void UnpinLocked(const std::shared_ptr<Actor>& a, std::vector<std::shared_ptr<Actor>>* dropped);
  Status Load(Actor& a);

  // Stage/flush require a->mu held.
  Status Stage(Actor& a, std::string_view type, const std::string& turn_id, Json data);
  Status FlushLocked(Actor& a);
  void StartWorkerLocked(const std::shared_ptr<Actor>& a);
  // After tool outputs or an approval were staged for an open turn (`staged` says whether
  // staging worked): commits them, starts the worker when the turn runs again and returns
  // the turn. a->mu held.
  Result<Json> AnswerTurnLocked(const std::shared_ptr<Actor>& a, const std::string& turn_id,
                                Status staged);
  // Starts a worker for a session with unfinished work (after a restart or an import).
  void Resume(const std::string& session_id);
  void Drive(std::shared_ptr<Actor> a);
  // One step of the turn loop; returns false when the worker should stop.
  bool StepLocked(const std::shared_ptr<Actor>& a, std::unique_lock<std::mutex>& lock);
  void CallModelLocked(const std::shared_ptr<Actor>& a, std::unique_lock<std::mutex>& lock);
  void RunToolLocked(const std::shared_ptr<Actor>& a, std::unique_lock<std::mutex>& lock,
                     const std::string& call_id, bool recovering);
  // Waits up to `d` unless cancel or drain interrupts; returns false when interrupted.
  bool SleepLocked(Actor& a, std::unique_lock<std::mutex>& lock, std::chrono::milliseconds d);
  bool ShouldAbort(const Actor& a) const;
  // Decides a tool call: the agent and the principal whose turn it is must both allow
  // tools:Call on the tool. Stages the audit entry of the decision. Returns the reason the
  // model is told when refused. a.mu held.
  // `*needs_approval` says the call is allowed only once approved (and not yet approved:
  // `approved` tells); `*approval_sid` names the statement that asks.
  std::optional<std::string> RefuseToolLocked(Actor& a, const journal::TurnState& t,
                                              const std::string& call_id,
                                              const std::string& name, const Json& args,
                                              bool approved, bool* needs_approval);
  // One secret opened for one tool call: where it goes (a header or an environment
  // variable) and its value, zeroed by the destructor.
  struct ToolSecret {
    std::string name;
    std::string target;
    bool env = false;
    std::string value;
    ~ToolSecret();
  };
  struct SecretRefusal {
    std::string code;     // permission_denied | secret_missing | secret_unavailable
    std::string message;  // names the secret, never its value
  };
  // Opens the secrets `tool` names for one call the policy allowed. The principal whose
  // turn it is must be allowed secrets:Use on each (agentd:<tenant>:secret/<name>); each
  // decision is audited. Returns why the call cannot run, or fills `out`. a.mu held.
  std::optional<SecretRefusal> OpenToolSecretsLocked(Actor& a, const journal::TurnState& t,
                                                     const std::string& call_id,
                                                     const ToolDef& tool,
                                                     std::vector<ToolSecret>* out);
  // Replaces every occurrence of each secret's value in `text` (as it is, and as escaped
  // inside a JSON string) by "[secret:NAME]", so that what a tool echoes back of a secret
  // reaches neither the journal nor the model.
  static void RedactSecrets(std::string* text, const std::vector<ToolSecret>& secrets);
  // The claims of a token for a call to `audience` by the session's agent on behalf of
  // `principal_id`.
  identity::ToolTokenClaims ToolClaims(const Actor& a, const std::string& principal_id,
                                       const std::string& audience) const;
  // "Bearer <token>" for `claims` issued now by this agentd ("" without a key).
  std::string MintBearer(identity::ToolTokenClaims claims) const;
  // The headers of one call to a tool or MCP server at `audience`: a token minted for it,
  // then the call's secret headers (one named Authorization takes the token's place).
  std::vector<std::pair<std::string, std::string>> CallHeaders(
      const Actor& a, const std::string& principal_id, const std::string& audience,
      const std::vector<ToolSecret>& secrets) const;
  // The limits that apply to the session's turns: its agent's budget (or the daemon's
  // defaults) tightened by the session's own. a.mu held.
  Budget EffectiveBudget(const Actor& a) const;
  // When the current turn must stop before `next` (a budget limit reached, a loop): the
  // turn's error object; null otherwise. a.mu held.
  Json BudgetStopLocked(const Actor& a, const journal::NextAction& next) const;
  // The current turn's wall-time deadline in clock milliseconds, 0 for none. a.mu held.
  int64_t TurnDeadlineLocked(const Actor& a) const;
  // The price of the agent's model, if the table has one.
  const ModelPrice* PriceOf(const ModelDef& model) const;
  // Refuses a budget that limits cost when the model has no price (`field` names it).
  Status CheckCostBudget(const Budget& b, const ModelDef& model, const std::string& field) const;
  // Checks an agent's sandbox block against the drivers and the daemon's maxima.
  Status CheckSandbox(const AgentSpec& a) const;
  // Runs a built-in tool in the session's sandbox, creating it (and restoring its workspace
  // from the latest snapshot) first if need be. Called by the session's worker, unlocked.
  // `env` is added to an exec command's environment.
  tools::ToolOutcome RunBuiltin(const std::shared_ptr<Actor>& a, const std::string& name,
                                const Json& args, const std::string& manifest,
                                const std::map<std::string, std::string>& env = {});
  // Makes the session's sandbox if it has none (restoring snapshot `manifest` into it).
  // Called by the session's worker, unlocked.
  Status EnsureSandbox(const std::shared_ptr<Actor>& a, const std::string& manifest);
  // Starts a sandbox from the checkpoint `image` and notes in `ss` the MCP servers left
  // running in it. Worker, unlocked.
  Result<std::unique_ptr<sandbox::Sandbox>> ResumeSandbox(sandbox::SandboxDriver& driver,
                                                          const sandbox::SandboxSpec& spec,
                                                          const std::string& image,
                                                          SessionSandbox* ss);
  // The session's client of MCP server `def`, connecting (and for stdio, starting the server
  // in the sandbox) first when need be. Worker, unlocked.
  // Connecting over HTTP during turn `turn_id`: the connection's requests carry a token for
  // that turn's principal, and the secret headers the server's definition names, opened
  // for that principal (and audited) once per connection.
  Result<tools::mcp::McpClient*> McpClientFor(const std::shared_ptr<Actor>& a,
                                              const ToolDef& def, const std::string& manifest,
                                              const std::string& turn_id);
  // The tools of every MCP server of the agent, as "<server>__<tool>"; a server that cannot
  // be reached is left out (and logged). Worker, unlocked.
  std::vector<model::ToolSpec> ListMcpTools(const std::shared_ptr<Actor>& a,
                                            const std::string& manifest,
                                            const std::string& turn_id);
  // `headers`: this call's own (its token and secret headers), for servers over HTTP.
  tools::ToolOutcome RunMcp(const std::shared_ptr<Actor>& a, const ToolDef& server,
                            const std::string& tool, const Json& args, const std::string& manifest,
                            const std::string& turn_id, const std::string& call_id,
                            std::vector<std::pair<std::string, std::string>> headers);
  // Stages a workspace.snapshot for `turn_id` when a built-in tool changed the workspace since
  // the last one; the snapshot's blobs go into the same batch. a.mu held.
  void SnapshotWorkspaceLocked(Actor& a, const std::string& turn_id);
  // Journals one egress decision in the session's running turn (called on a proxy thread).
  void RecordEgress(const std::weak_ptr<Actor>& actor, const sandbox::egress::EgressEvent& e);
  std::string SandboxRoot(const std::string& session_id) const;
  // The session's latest workspace snapshot ("" when none), and its tenant in *tenant_id
  // (whose blobs hold the snapshot); NotFound for no such session.
  Result<std::string> WorkspaceManifest(const std::string& session_id, std::string* tenant_id);
  void Notify(const std::string& session_id, int64_t seq, bool rest);
  // A waiter registers before it reads what it waits on, so no notification is missed.
  std::shared_ptr<Watch> AddWatcher(const std::string& session_id);
  void RemoveWatcherLocked(const std::string& session_id, Watch& w);  // watch_mu_ held
  Json SessionObject(const store::SessionRow& row) const;
  // The latest durable object of an open turn of a resident session, if any.
  std::optional<Json> DurableOpenTurn(const std::string& session_id, const std::string& turn_id);
  Result<Json> TurnFromStore(const std::string& session_id, const std::string& turn_id);

  const EngineOptions options_;
  store::Store* const store_;
  const ModelProviders providers_;
  const SandboxDrivers sandbox_drivers_;
  // Serves the network connections of every session's sandbox (those with an egress list).
  std::unique_ptr<sandbox::egress::EgressProxy> egress_proxy_;
  const std::shared_ptr<RootRegistry> roots_;
  Clock* const clock_;
  ThreadPool workers_;

  mutable std::mutex actors_mu_;
  std::unordered_map<std::string, std::shared_ptr<Actor>> actors_;  // guarded by actors_mu_
  std::list<std::shared_ptr<Actor>> idle_;  // unpinned resident actors, newest first; actors_mu_

  std::mutex watch_mu_;
  std::unordered_map<std::string, std::shared_ptr<Watch>> watches_;  // guarded by watch_mu_

  std::atomic<bool> draining_{false};
  std::atomic<bool> abandon_{false};  // drain timed out: abort in-flight calls
  std::atomic<size_t> active_workers_{0};
  std::mutex drain_mu_;
  std::condition_variable drain_cv_;
};

}  // namespace agentd::engine
