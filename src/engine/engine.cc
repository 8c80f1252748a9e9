#include "engine/engine.h"

#include <sodium.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <list>
#include <optional>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/http_client.h"
#include "common/ids.h"
#include "identity/tenant_wall.h"
#include "journal/events.h"
#include "journal/state.h"
#include "memory/context.h"
#include "sandbox/host_util.h"
#include "sandbox/workspace/workspace.h"
#include "tools/builtin/builtin_tools.h"
#include "tools/builtin/workspace_files.h"
#include "tools/json_schema.h"
#include "tools/mcp/mcp_client.h"
#include "tools/tools.h"

namespace agentd::engine {

namespace ev = journal::ev;
using journal::NextKind;
using journal::SessionState;
using journal::TurnState;

// A session's sandbox while its actor is in memory. Destroying it stops the sandbox's
// processes; a workspace whose files are all in the store (snapshotted after the last tool
// that could change them) leaves the host too, and comes back from the store when the
// session next needs it. One with unsnapshotted changes (agentd stopped mid-turn) stays on
// the host, where the next sandbox of the session takes it over.
//
// Where the driver can checkpoint, a sandbox running stdio MCP servers is hibernated
// instead of stopped when the session leaves memory: its processes, with their state, wait
// in an image beside the root (kept on the host with it), and the next sandbox of the
// session resumes from the image and takes the servers over (see EnsureSandbox).
// Sandbox roots that have a sandbox on them (running, stopping or hibernating). A session's
// next sandbox waits until its previous one has let go of the root: an actor leaving memory
// may still be stopping (or hibernating, which takes a second or more) its sandbox while the
// session is loaded again for its next turn.
struct Engine::RootRegistry {
  std::mutex mu;
  std::condition_variable cv;
  std::set<std::string> busy;  // guarded by mu

  void Take(const std::string& root) {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return busy.count(root) == 0; });
    busy.insert(root);
  }
  void Give(const std::string& root) {
    std::lock_guard lock(mu);
    busy.erase(root);
    cv.notify_all();
  }
};

struct Engine::SessionSandbox {
  sandbox::SandboxDriver* driver = nullptr;
  std::string root;
  std::shared_ptr<RootRegistry> roots;  // holds `root` for as long as this lives
  std::unique_ptr<sandbox::Sandbox> box;
  // The last snapshot's or restore's manifest, so the next snapshot reads only what changed.
  std::optional<sandbox::workspace::Manifest> manifest;
  bool dirty = false;    // a built-in tool ran since the last snapshot; guarded by Actor::mu
  bool discard = false;  // the session was deleted; guarded by Actor::mu
  bool hibernated = false;  // the sandbox is in its image: the root stays on the host
  std::mutex mu;
  // The sandbox process id of each stdio MCP server (for hibernation); guarded by mu.
  std::map<std::string, int64_t> mcp_process;
  // Servers left running in the image this sandbox resumed from: process id and saved
  // client session, taken (and erased) by McpClientFor; guarded by mu.
  std::map<std::string, std::pair<int64_t, Json>> resumed_servers;

  static std::string ImageDir(const std::string& root) { return root + ".image"; }

  // Hibernates the sandbox when the driver can and a stdio MCP server runs in it; `mcp` are
  // the session's clients, still connected (they are destroyed after this).
  void HibernateWith(const std::map<std::string, std::unique_ptr<tools::mcp::McpClient>>& mcp) {
    if (driver == nullptr || box == nullptr || discard) return;
    if (!driver->capabilities().Enforces("checkpoint")) return;
    Json servers = Json::object();
    {
      std::lock_guard lock(mu);
      for (const auto& [name, pid] : mcp_process) {
        auto client = mcp.find(name);
        if (client == mcp.end()) continue;
        auto saved = client->second->SaveSession();
        if (saved.ok()) servers[name] = {{"process", pid}, {"session", *saved}};
      }
    }
    if (servers.empty()) return;  // nothing alive worth an image
    std::string image = ImageDir(root);
    sandbox::host::RemoveTree(image).IgnoreError();
    auto started = std::chrono::steady_clock::now();
    Status st = driver->Hibernate(*box, image);
    if (st.ok()) {
      st = sandbox::host::WriteText(image + "/agentd-live.json",
                     DumpJson({{"format", 1}, {"servers", std::move(servers)}}));
    }
    if (!st.ok()) {
      spdlog::warn("sandbox {}: not hibernated ({}); its MCP servers stop and start afresh",
                   root, st.ToString());
      sandbox::host::RemoveTree(image).IgnoreError();
      return;
    }
    hibernated = true;
    spdlog::info("sandbox {}: hibernated with {} live MCP server(s) in {} ms", root,
                 servers.size(),
                 std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::steady_clock::now() - started)
                     .count());
  }

  ~SessionSandbox() {
    box.reset();
    if (driver != nullptr) {
      if (discard) sandbox::host::RemoveTree(ImageDir(root)).IgnoreError();
      if (discard || (!dirty && !hibernated)) {
        if (Status st = driver->Discard(root); !st.ok()) {
          spdlog::warn("sandbox root {}: {}", root, st.ToString());
        }
      }
    }
    if (roots) roots->Give(root);
  }
};

struct Engine::Actor {
  explicit Actor(std::string sid) : id(std::move(sid)) {}
  // The sandbox outlives the MCP clients (stdio servers run in it), and is hibernated, when
  // it can be, while they still run.
  ~Actor() {
    if (sandbox) sandbox->HibernateWith(mcp);
    mcp.clear();
    sandbox.reset();
  }
  const std::string id;
  std::string tenant_id;  // set by Load
  // The agent's permissions when it declares none: calling its own tools.
  std::optional<identity::Policy> implicit_policy;  // set by Load
  std::mutex mu;
  std::condition_variable cv;  // wakes backoff sleeps on cancel or drain
  bool loaded = false;
  Status load_status;
  SessionState state;  // guarded by mu; includes staged, uncommitted events
  AgentSpec agent;     // guarded by mu; the version the session pinned
  store::WriteBatch staged;  // guarded by mu; events and projections not yet committed
  // Turn rows to write with the next batch. A turn that ended is serialised at once (it
  // leaves the state); an open one only at flush, once per batch rather than once per event.
  std::map<std::string, store::TurnRow> staged_turns;  // guarded by mu
  std::set<std::string> dirty_turns;                   // open turns; guarded by mu
  // What the session row in the store says; the row is rewritten only when these change.
  std::string stored_status;  // guarded by mu
  bool stored_active = false;  // guarded by mu
  // Open turns after the last commit: the status their stored row has. The row is rewritten
  // only when it changes or the turn ends; readers get the latest durable object from
  // `state` (see DurableOpenTurn), so it is never serialised for nobody.
  std::map<std::string, std::string> stored_turn_status;  // guarded by mu
  // The conversation as the provider last encoded it; guarded by mu.
  std::unique_ptr<model::EncodeCache> encode_cache;
  // Created by the session's worker on the first built-in tool call; the pointer is written
  // under mu by that worker only, which may read it unlocked.
  std::unique_ptr<SessionSandbox> sandbox;
  // Connected MCP servers by name, made by the worker like `sandbox` (and destroyed before
  // it: stdio servers run in it). Their tools' input schemas by model-facing name
  // ("<server>__<tool>"), from the last listing; both guarded by mu for writes.
  std::map<std::string, std::unique_ptr<tools::mcp::McpClient>> mcp;
  std::map<std::string, Json> mcp_schemas;
  int64_t events_since_snapshot = 0;  // guarded by mu
  bool worker_active = false;         // guarded by mu
  // Set under mu: memory is ahead of a failed commit, the session was deleted or it did not
  // load. Atomic so that Release can drop such an actor without taking mu.
  std::atomic<bool> broken{false};
  bool deleted = false;               // guarded by mu
  std::string cancel_turn;            // guarded by mu; cancellation requested for this turn
  // The running turn's wall-time deadline (clock ms, 0: none), set by the worker before each
  // step; atomic so that ShouldAbort reads it on other threads.
  std::atomic<int64_t> turn_deadline_ms{0};
  int pins = 0;                       // guarded by Engine::actors_mu_
  // Position in Engine::idle_ while unpinned and kept resident; guarded by actors_mu_.
  std::optional<std::list<std::shared_ptr<Actor>>::iterator> idle_pos;
};

struct Engine::Watch {
  std::condition_variable cv;
  int64_t seq = 0;    // highest durable seq seen
  int64_t rests = 0;  // durable batches in which some turn came to rest
  int waiters = 0;
};

namespace {

Json ErrorJson(std::string_view code, const std::string& message) {
  return {{"code", code}, {"message", message}};
}

std::string OutputText(const Json& output) {
  return output.is_string() ? output.get<std::string>() : DumpJson(output);
}

}  // namespace

Engine::Engine(EngineOptions options, store::Store* store, ModelProviders providers,
               Clock* clock, SandboxDrivers sandbox_drivers)
    : options_(options),
      store_(store),
      providers_(std::move(providers)),
      sandbox_drivers_(std::move(sandbox_drivers)),
      egress_proxy_(std::make_unique<sandbox::egress::EgressProxy>([] {
        sandbox::egress::EgressProxyOptions o;
        o.max_connections = 1024;
        o.max_connections_per_owner = 64;  // one session cannot take them all
        return o;
      }())),
      roots_(std::make_shared<RootRegistry>()),
      clock_(clock),
      workers_("turns", 0, options.max_workers) {}

Engine::~Engine() {
  DrainBlocking();
  workers_.Shutdown();
  egress_proxy_->Shutdown();
  // The sessions still in memory leave it together: stopping a sandbox, or hibernating one
  // (a second or more for gVisor), takes a while each, and shutdown should not add them up.
  std::vector<std::shared_ptr<Actor>> resident;
  {
    std::lock_guard lock(actors_mu_);
    for (auto& [id, a] : actors_) resident.push_back(std::move(a));
    actors_.clear();
    idle_.clear();
  }
  std::atomic<size_t> next{0};
  std::vector<std::thread> leaving;
  for (size_t t = 0; t < std::min<size_t>(8, resident.size()); ++t) {
    leaving.emplace_back([&] {
      for (size_t i; (i = next.fetch_add(1)) < resident.size();) resident[i].reset();
    });
  }
  for (auto& t : leaving) t.join();
}

std::set<std::string> Engine::ProviderNames() const {
  std::set<std::string> out;
  for (const auto& [k, v] : providers_) out.insert(k);
  return out;
}

size_t Engine::ResidentSessions() const {
  std::lock_guard lock(actors_mu_);
  return actors_.size();
}

// ---------------------------------------------------------------------------------------
// Agents

Result<Json> Engine::CreateAgent(const Json& body, const Caller& caller) {
  ASSIGN_OR_RETURN(AgentSpec a, ParseAgentSpec(body, ProviderNames()));
  RETURN_IF_ERROR(CheckSandbox(a));
  RETURN_IF_ERROR(CheckCostBudget(a.budget, a.model, "budget.max_cost_usd"));
  a.id = NewId("agt_");
  a.version = 1;
  a.created_ms = clock_->NowMillis();
  Json j = a.ToJson();
  store::WriteBatch b;
  b.agents.push_back({a.id, a.version, a.name, DumpJson(j), a.created_ms, caller.tenant_id});
  RETURN_IF_ERROR(store_->CommitBlocking(std::move(b)));
  j["tenant_id"] = caller.tenant_id;
  return j;
}

Result<Json> Engine::UpdateAgent(const std::string& id, const Json& body) {
  ASSIGN_OR_RETURN(auto current, store_->GetAgent(id, 0));
  if (!current) return NotFound(fmt::format("agent '{}' not found", id));
  ASSIGN_OR_RETURN(AgentSpec a, ParseAgentSpec(body, ProviderNames()));
  RETURN_IF_ERROR(CheckSandbox(a));
  RETURN_IF_ERROR(CheckCostBudget(a.budget, a.model, "budget.max_cost_usd"));
  a.id = id;
  a.version = current->version + 1;
  a.created_ms = clock_->NowMillis();
  Json j = a.ToJson();
  store::WriteBatch b;
  b.agents.push_back({a.id, a.version, a.name, DumpJson(j), a.created_ms, current->tenant_id});
  Status st = store_->CommitBlocking(std::move(b));
  if (st.code() == StatusCode::kAlreadyExists) {
    return Aborted(fmt::format("agent '{}' was updated concurrently; retry", id));
  }
  RETURN_IF_ERROR(st);
  j["tenant_id"] = current->tenant_id;
  return j;
}

namespace {

// The agent as served: its stored definition and the tenant it belongs to.
Result<Json> AgentObject(const store::AgentRow& row) {
  ASSIGN_OR_RETURN(Json j, ParseJson(row.spec, "stored agent"));
  j["tenant_id"] = row.tenant_id;
  return j;
}

}  // namespace

Result<Json> Engine::GetAgent(const std::string& id, int64_t version) {
  ASSIGN_OR_RETURN(auto row, store_->GetAgent(id, version));
  if (!row) return NotFound(fmt::format("agent '{}' not found", id));
  return AgentObject(*row);
}

Result<std::string> Engine::AgentTenant(const std::string& id) {
  ASSIGN_OR_RETURN(auto row, store_->GetAgent(id, 0));
  if (!row) return NotFound(fmt::format("agent '{}' not found", id));
  return row->tenant_id;
}

Result<std::pair<std::string, Json>> Engine::SessionScope(const std::string& id) {
  ASSIGN_OR_RETURN(auto row, store_->GetSession(id));
  if (!row) return NotFound(fmt::format("session '{}' not found", id));
  auto meta = ParseJson(row->metadata, "stored session metadata");
  return std::make_pair(row->tenant_id, meta.ok() ? *meta : Json::object());
}

Result<Json> Engine::ListAgents(const std::string& tenant_id, const store::Page& page) {
  ASSIGN_OR_RETURN(auto rows, store_->ListAgents(tenant_id, page));
  Json data = Json::array();
  for (const auto& r : rows.first) {
    ASSIGN_OR_RETURN(Json j, AgentObject(r));
    data.push_back(std::move(j));
  }
  return Json{{"object", "list"},
              {"data", data},
              {"has_more", !rows.second.empty()},
              {"next_cursor", rows.second.empty() ? Json() : Json(rows.second)}};
}

// ---------------------------------------------------------------------------------------
// Sessions

Json Engine::SessionObject(const store::SessionRow& r) const {
  Json meta = Json::object();
  try {
    meta = Json::parse(r.metadata);
  } catch (const std::exception&) {
  }
  Json j = {{"object", "session"},
            {"id", r.id},
            {"agent_id", r.agent_id},
            {"agent_version", r.agent_version},
            {"tenant_id", r.tenant_id},
            {"status", r.status},
            {"metadata", meta},
            {"last_seq", r.last_seq},
            {"created_at", FormatRfc3339(r.created_ms)},
            {"updated_at", FormatRfc3339(r.updated_ms)}};
  // The session's budget lives in its session.created event only.
  Json budget;
  if (auto first = store_->ReadEvents(r.id, 0, 1); first.ok() && !first->empty()) {
    if (auto d = ParseJson(first->front().data, "session.created"); d.ok()) {
      budget = d->value("budget", Json());
    }
  }
  j["budget"] = std::move(budget);
  return j;
}

Result<Json> Engine::CreateSession(const Json& body, const Caller& caller) {
  FieldReader r(body, "");
  RETURN_IF_ERROR(r.CheckObject());
  std::string agent_id;
  RETURN_IF_ERROR(r.String("agent_id", &agent_id, true, 64));
  const Json* metadata = nullptr;
  RETURN_IF_ERROR(r.Value("metadata", &metadata, false));
  const Json* budget_json = nullptr;
  RETURN_IF_ERROR(r.Value("budget", &budget_json, false));
  RETURN_IF_ERROR(r.NoUnknownKeys());
  Json meta = metadata ? *metadata : Json::object();
  RETURN_IF_ERROR(CheckSessionMetadata(meta));
  std::optional<Budget> budget;
  if (budget_json) {
    ASSIGN_OR_RETURN(budget, ParseBudget(*budget_json, "budget"));
  }
  ASSIGN_OR_RETURN(auto agent, store_->GetAgent(agent_id, 0));
  // Another tenant's agent does not exist for this caller.
  if (!agent || agent->tenant_id != caller.tenant_id) {
    return NotFound(fmt::format("agent '{}' not found", agent_id));
  }
  Json created = {{"agent_id", agent_id}, {"agent_version", agent->version}, {"metadata", meta}};
  if (!caller.principal_id.empty()) created["created_by"] = caller.principal_id;
  if (budget) {
    // A session only tightens its agent's limits: the journal keeps the limits that apply,
    // each the smaller of the two (a looser one is clamped to the agent's).
    ASSIGN_OR_RETURN(Json aj, ParseJson(agent->spec, "stored agent"));
    ASSIGN_OR_RETURN(AgentSpec spec, AgentFromJson(aj));
    RETURN_IF_ERROR(CheckCostBudget(*budget, spec.model, "budget.max_cost_usd"));
    created["budget"] = spec.budget.Tightened(*budget).ToJson();
  }

  std::string sid = NewId("ses_");
  int64_t now = clock_->NowMillis();
  store::EventRecord e{sid, 1, std::string(ev::kSessionCreated), "", now, DumpJson(created)};
  store::SessionRow row{sid,  agent_id, agent->version, "idle", DumpJson(meta),
                        now,  now,      1,              false,  caller.tenant_id};
  store::WriteBatch b;
  b.events.push_back(e);
  b.sessions.push_back(row);
  RETURN_IF_ERROR(store_->CommitBlocking(std::move(b)));
  return SessionObject(row);
}

Result<Json> Engine::GetSession(const std::string& id) {
  ASSIGN_OR_RETURN(auto row, store_->GetSession(id));
  if (!row) return NotFound(fmt::format("session '{}' not found", id));
  return SessionObject(*row);
}

Result<Json> Engine::ListSessions(const store::SessionFilter& filter, const store::Page& page) {
  ASSIGN_OR_RETURN(auto rows, store_->ListSessions(filter, page));
  Json data = Json::array();
  for (const auto& r : rows.first) data.push_back(SessionObject(r));
  return Json{{"object", "list"},
              {"data", data},
              {"has_more", !rows.second.empty()},
              {"next_cursor", rows.second.empty() ? Json() : Json(rows.second)}};
}

Status Engine::DeleteSession(const std::string& id) {
  ASSIGN_OR_RETURN(auto a, Acquire(id));
  Status st;
  {
    std::unique_lock lock(a->mu);
    a->deleted = true;
    a->broken = true;  // nothing more may be staged for this session
    if (a->sandbox) a->sandbox->discard = true;
    a->cancel_turn = a->state.current_turn;
    a->cv.notify_all();
    a->staged = {};
    a->staged_turns.clear();
    a->dirty_turns.clear();
    store::WriteBatch b;
    b.delete_sessions.push_back(id);
    st = store_->CommitBlocking(std::move(b));
  }
  // Whoever waits on the session (wait: true, streams) looks again and finds it gone.
  if (st.ok()) Notify(id, INT64_MAX, true);
  // A workspace left on the host by an earlier run, with no sandbox in memory to take it.
  bool leftover = false;
  {
    std::lock_guard lock(a->mu);
    leftover = st.ok() && !a->sandbox;
  }
  if (auto d = sandbox_drivers_.find(a->agent.sandbox.driver);
      leftover && d != sandbox_drivers_.end() && std::filesystem::exists(SandboxRoot(id))) {
    d->second->Discard(SandboxRoot(id)).IgnoreError();
  }
  if (leftover) sandbox::host::RemoveTree(SessionSandbox::ImageDir(SandboxRoot(id))).IgnoreError();
  Release(a);
  return st;
}

Result<Json> Engine::CancelSession(const std::string& id) {
  ASSIGN_OR_RETURN(auto a, Acquire(id));
  Status st;
  {
    std::unique_lock lock(a->mu);
    if (a->state.current_turn.empty()) {
      st = FailedPrecondition(fmt::format("session '{}' has no running turn", id));
    } else if (a->worker_active) {
      a->cancel_turn = a->state.current_turn;
      a->cv.notify_all();
    } else {
      st = Stage(*a, ev::kTurnCancelled, a->state.current_turn,
                 {{"reason", "cancelled by request"}});
      if (st.ok()) st = FlushLocked(*a);
      if (st.ok() && !a->state.queue.empty()) StartWorkerLocked(a);
    }
  }
  Release(a);
  RETURN_IF_ERROR(st);
  return GetSession(id);
}

Result<Json> Engine::CancelTurns(const CancelFilter& filter) {
  if (filter.agent_id.empty() && filter.tenant_id.empty()) {
    return InvalidArgument("cancelling turns needs an agent or a tenant");
  }
  if (!filter.agent_id.empty()) {
    ASSIGN_OR_RETURN(auto agent, store_->GetAgent(filter.agent_id, 0));
    if (!agent) return NotFound(fmt::format("agent '{}' not found", filter.agent_id));
  }
  std::vector<std::string> ids;
  // Only sessions with an open turn: running (or queued), or waiting for someone.
  for (const char* status : {"running", "requires_action", "needs_attention"}) {
    store::SessionFilter f;
    f.agent_id = filter.agent_id;
    f.tenant_id = filter.tenant_id;
    f.status = status;
    store::Page page;
    page.limit = 500;
    while (true) {
      ASSIGN_OR_RETURN(auto rows, store_->ListSessions(f, page));
      for (const auto& row : rows.first) ids.push_back(row.id);
      if (rows.second.empty()) break;
      page.cursor = rows.second;
    }
  }
  int64_t cancelled = 0;
  Json sessions = Json::array();
  const Json reason = {{"reason", "cancelled by an operator (cancel-turns)"}};
  for (const auto& id : ids) {
    auto acquired = Acquire(id);
    if (!acquired.ok()) {
      if (acquired.status().code() == StatusCode::kNotFound) continue;  // deleted meanwhile
      return acquired.status();
    }
    std::shared_ptr<Actor> a = std::move(acquired).value();
    Status st;
    int64_t here = 0;
    {
      std::unique_lock lock(a->mu);
      // Queued turns end at once; they never start.
      std::vector<std::string> queued = a->state.queue;
      for (const auto& tid : queued) {
        st = Stage(*a, ev::kTurnCancelled, tid, reason);
        if (!st.ok()) break;
        ++here;
      }
      // The running turn: by its worker when one drives it, else here (as CancelSession).
      const std::string current = a->state.current_turn;
      if (st.ok() && !current.empty()) {
        ++here;
        if (a->worker_active) {
          a->cancel_turn = current;
          a->cv.notify_all();
        } else {
          st = Stage(*a, ev::kTurnCancelled, current, reason);
        }
      }
      if (st.ok()) st = FlushLocked(*a);
    }
    Release(a);
    RETURN_IF_ERROR(st);
    if (here > 0) {
      cancelled += here;
      sessions.push_back(id);
    }
  }
  return Json{{"cancelled", cancelled}, {"sessions", std::move(sessions)}};
}

// ---------------------------------------------------------------------------------------
// Actors

Result<std::shared_ptr<Engine::Actor>> Engine::Acquire(const std::string& session_id) {
  std::shared_ptr<Actor> a;
  {
    std::lock_guard lock(actors_mu_);
    auto& slot = actors_[session_id];
    if (!slot) slot = std::make_shared<Actor>(session_id);
    a = slot;
    if (a->idle_pos) {
      idle_.erase(*a->idle_pos);
      a->idle_pos.reset();
    }
    ++a->pins;
  }
  std::unique_lock lock(a->mu);
  if (!a->loaded) {
    a->load_status = Load(*a);
    a->loaded = true;
    if (!a->load_status.ok()) a->broken = true;  // never kept: the next caller tries again
  }
  Status st = a->load_status;
  if (st.ok() && (a->broken || a->deleted)) {
    st = a->deleted ? NotFound(fmt::format("session '{}' not found", session_id))
                    : Unavailable("session is being reloaded; retry");
  }
  lock.unlock();
  if (!st.ok()) {
    Release(a);
    return st;
  }
  return a;
}

void Engine::Release(const std::shared_ptr<Actor>& a) {
  std::vector<std::shared_ptr<Actor>> dropped;
  {
    std::lock_guard lock(actors_mu_);
    UnpinLocked(a, &dropped);
  }
  // Those taken out of memory are destroyed on a worker, not on the caller's thread (an API
  // request): stopping or hibernating a sandbox takes a while.
  if (!dropped.empty()) workers_.Submit([gone = std::move(dropped)]() mutable { gone.clear(); });
}

void Engine::UnpinLocked(const std::shared_ptr<Actor>& a,
                         std::vector<std::shared_ptr<Actor>>* dropped) {
  if (--a->pins > 0) return;
  auto drop = [this, dropped](const std::shared_ptr<Actor>& victim) {
    auto it = actors_.find(victim->id);
    if (it != actors_.end() && it->second == victim) {
      dropped->push_back(std::move(it->second));
      actors_.erase(it);
    }
  };
  if (a->broken) {
    drop(a);
    return;
  }
  // Kept for its next turn (most recently used first), so a busy session is not rebuilt from
  // the store every turn; the least recently used beyond the limit leave memory.
  idle_.push_front(a);
  a->idle_pos = idle_.begin();
  while (idle_.size() > options_.resident_idle_sessions) {
    std::shared_ptr<Actor> victim = std::move(idle_.back());
    idle_.pop_back();
    victim->idle_pos.reset();
    drop(victim);
  }
}

Status Engine::Load(Actor& a) {
  ASSIGN_OR_RETURN(auto row, store_->GetSession(a.id));
  if (!row) return NotFound(fmt::format("session '{}' not found", a.id));
  a.stored_status = row->status;
  a.stored_active = row->active;
  a.tenant_id = row->tenant_id;
  ASSIGN_OR_RETURN(auto snap, store_->GetSnapshot(a.id));
  if (snap) {
    ASSIGN_OR_RETURN(Json sj, ParseJson(snap->state, "snapshot"));
    ASSIGN_OR_RETURN(a.state, journal::StateFromJson(std::move(sj)));
  }
  while (true) {
    ASSIGN_OR_RETURN(auto events, store_->ReadEvents(a.id, a.state.last_seq, 1000));
    for (const auto& e : events) RETURN_IF_ERROR(journal::Apply(a.state, e));
    if (events.size() < 1000) break;
  }
  a.events_since_snapshot = a.state.last_seq - (snap ? snap->seq : 0);
  ASSIGN_OR_RETURN(auto agent_row, store_->GetAgent(a.state.agent_id, a.state.agent_version));
  if (!agent_row) {
    return Internal(fmt::format("agent '{}' version {} of session '{}' is missing",
                                a.state.agent_id, a.state.agent_version, a.id));
  }
  ASSIGN_OR_RETURN(Json aj, ParseJson(agent_row->spec, "stored agent"));
  ASSIGN_OR_RETURN(a.agent, AgentFromJson(aj));
  if (a.agent.policies.empty()) {
    Json own = {{"version", identity::kPolicyVersion},
                {"statements", Json::array({{{"sid", "declared-tools"},
                                             {"effect", "allow"},
                                             {"actions", Json::array({"tools:Call"})},
                                             {"resources", Json::array({fmt::format(
                                                 "agentd:{}:tool/{}/*", a.tenant_id,
                                                 a.agent.id)})}}})}};
    ASSIGN_OR_RETURN(a.implicit_policy, identity::ParsePolicy(DumpJson(own)));
  }
  return Status::OK();
}

std::optional<std::string> Engine::RefuseToolLocked(Actor& a, const TurnState& t,
                                                    const std::string& call_id,
                                                    const std::string& name, const Json& args,
                                                    bool approved, bool* needs_approval) {
  *needs_approval = false;
  if (options_.directory == nullptr) return std::nullopt;
  identity::Request r;
  r.action = "tools:Call";
  r.resource = fmt::format("agentd:{}:tool/{}/{}", a.tenant_id, a.agent.id, name);
  r.session_metadata = a.state.metadata;
  r.agent_id = a.agent.id;
  r.tool_name = name;
  r.tool_arguments = args;
  r.time_millis = clock_->NowMillis();
  std::vector<const identity::Policy*> agent_policies;
  for (const auto& p : a.agent.policies) agent_policies.push_back(&p);
  if (a.implicit_policy) agent_policies.push_back(&*a.implicit_policy);

  std::optional<std::string> refusal;
  std::string denied_by = "none", sid;
  bool allowed = false;
  if (t.principal_id.empty()) {
    // A turn from before identities were journaled: the agent's permissions alone.
    identity::Decision d = identity::Decide(agent_policies, r);
    allowed = d.allowed();
    *needs_approval = d.requires_approval;
    sid = d.sid;
    if (!allowed) denied_by = "agent";
  } else if (auto p = options_.directory->LoadPrincipal(t.principal_id); !p.ok()) {
    denied_by = "principal";
    refusal = "the principal this turn acts for no longer exists";
  } else if (!identity::ReachesTenant(**p, a.tenant_id)) {
    // The tenant wall holds for tool calls as for API requests, whatever policies say.
    denied_by = "principal";
    refusal = fmt::format("permission denied: tools:Call on {} is not allowed (the principal "
                          "this turn acts for is of another tenant)",
                          r.resource);
  } else {
    r.principal = (*p)->Context();
    identity::IntersectionDecision d =
        identity::DecideIntersection(agent_policies, (*p)->PolicyPointers(), r);
    allowed = d.allowed();
    *needs_approval = d.requires_approval;
    denied_by = identity::DeniedByName(d.denied_by);
    sid = !d.agent.allowed() ? d.agent.sid : d.principal.sid;
  }
  if (!allowed && !refusal) {
    refusal = fmt::format("permission denied: tools:Call on {} is not allowed ({} policy{})",
                          r.resource, denied_by == "both" ? "agent and principal" : denied_by,
                          sid.empty() ? "" : ", statement '" + sid + "'");
  }
  if (options_.audit != nullptr) {
    unsigned char digest[32];
    const std::string canonical = DumpJson(args);
    crypto_hash_sha256(digest, reinterpret_cast<const unsigned char*>(canonical.data()),
                       canonical.size());
    char hex[65];
    sodium_bin2hex(hex, sizeof hex, digest, sizeof digest);
    audit::AuditEntry e;
    e.tenant_id = a.tenant_id;
    e.time_ms = r.time_millis;
    e.principal = t.principal_id;
    e.action = "tools:Call";
    e.resource = r.resource;
    e.decision = allowed ? "allow" : "deny";
    e.result = !allowed ? "refused" : *needs_approval && !approved ? "awaiting_approval"
                                                                   : "started";
    e.data = DumpJson(Json{{"agent_id", a.agent.id},
                           {"session_id", a.id},
                           {"turn_id", t.id},
                           {"call_id", call_id},
                           {"args_sha256", hex},
                           {"denied_by", denied_by}});
    if (Status st = options_.audit->Stage(a.staged, std::move(e)); !st.ok()) {
      spdlog::error("audit of tool call {} failed: {}", call_id, st.ToString());
    }
  }
  return refusal;
}

Engine::ToolSecret::~ToolSecret() { sodium_memzero(value.data(), value.size()); }

std::optional<Engine::SecretRefusal> Engine::OpenToolSecretsLocked(
    Actor& a, const TurnState& t, const std::string& call_id, const ToolDef& tool,
    std::vector<ToolSecret>* out) {
  struct Ref {
    const std::string* target;
    const std::string* name;
    bool env;
  };
  std::vector<Ref> refs;
  for (const auto& [h, n] : tool.secret_headers) refs.push_back({&h, &n, false});
  for (const auto& [v, n] : tool.secret_env) refs.push_back({&v, &n, true});
  if (refs.empty()) return std::nullopt;
  if (options_.vault == nullptr) {
    return SecretRefusal{"secret_unavailable", "this agentd has no secrets vault"};
  }
  std::shared_ptr<const identity::Principal> principal;
  if (options_.directory != nullptr && !t.principal_id.empty()) {
    auto p = options_.directory->LoadPrincipal(t.principal_id);
    if (!p.ok()) {
      return SecretRefusal{"permission_denied",
                           "the principal this turn acts for no longer exists"};
    }
    principal = *p;
  }
  for (const Ref& ref : refs) {
    identity::Request r;
    r.action = "secrets:Use";
    r.resource = fmt::format("agentd:{}:secret/{}", a.tenant_id, *ref.name);
    r.session_metadata = a.state.metadata;
    r.agent_id = a.agent.id;
    r.tool_name = tool.name;
    r.time_millis = clock_->NowMillis();
    // Decided for the principal whose turn it is; a turn that has none (journaled before
    // identities) uses no secret. Without a directory nothing decides, as for tools:Call.
    bool allowed = options_.directory == nullptr;
    std::string sid;
    if (principal) {
      r.principal = principal->Context();
      identity::Decision d = identity::Decide(principal->PolicyPointers(), r);
      allowed = d.allowed() && identity::ReachesTenant(*principal, a.tenant_id);
      sid = d.sid;
    }
    std::optional<SecretRefusal> refusal;
    std::string value;
    if (!allowed) {
      refusal = SecretRefusal{
          "permission_denied",
          fmt::format("permission denied: secrets:Use on {} is not allowed (principal policy{})",
                      r.resource, sid.empty() ? "" : ", statement '" + sid + "'")};
    } else if (auto opened = options_.vault->Open(a.tenant_id, *ref.name); opened.ok()) {
      value = std::move(opened).value();
    } else if (opened.status().code() == StatusCode::kNotFound) {
      refusal = SecretRefusal{
          "secret_missing",
          fmt::format("tool '{}' needs secret '{}', which the tenant does not have", tool.name,
                      *ref.name)};
    } else {
      spdlog::warn("session {}: {}", a.id, opened.status().ToString());
      refusal = SecretRefusal{"secret_unavailable",
                              fmt::format("secret '{}' cannot be opened", *ref.name)};
    }
    if (options_.audit != nullptr) {
      audit::AuditEntry e;
      e.tenant_id = a.tenant_id;
      e.time_ms = r.time_millis;
      e.principal = t.principal_id;
      e.action = "secrets:Use";
      e.resource = r.resource;
      e.decision = allowed ? "allow" : "deny";
      e.result = !refusal ? "opened" : allowed ? refusal->code : "refused";
      e.data = DumpJson(Json{{"agent_id", a.agent.id},
                             {"session_id", a.id},
                             {"turn_id", t.id},
                             {"call_id", call_id},
                             {"tool", tool.name}});
      if (Status st = options_.audit->Stage(a.staged, std::move(e)); !st.ok()) {
        spdlog::error("audit of secret use by call {} failed: {}", call_id, st.ToString());
      }
    }
    if (refusal) {
      sodium_memzero(value.data(), value.size());
      return refusal;
    }
    out->push_back({*ref.name, *ref.target, ref.env, std::move(value)});
  }
  return std::nullopt;
}

void Engine::RedactSecrets(std::string* text, const std::vector<ToolSecret>& secrets) {
  for (const auto& s : secrets) {
    const std::string mark = "[secret:" + s.name + "]";
    std::string escaped = DumpJson(Json(s.value));
    escaped = escaped.substr(1, escaped.size() - 2);
    const std::string* needles[] = {&s.value, &escaped};
    for (const std::string* needle : needles) {
      if (needle->empty()) continue;
      for (size_t at = text->find(*needle); at != std::string::npos;
           at = text->find(*needle, at + mark.size())) {
        text->replace(at, needle->size(), mark);
      }
    }
    sodium_memzero(escaped.data(), escaped.size());
  }
}

identity::ToolTokenClaims Engine::ToolClaims(const Actor& a, const std::string& principal_id,
                                             const std::string& audience) const {
  identity::ToolTokenClaims c;
  c.tenant = a.tenant_id;
  c.subject = principal_id;
  c.actor = a.agent.id;
  c.session_id = a.id;
  c.audience = audience;
  return c;
}

std::vector<std::pair<std::string, std::string>> Engine::CallHeaders(
    const Actor& a, const std::string& principal_id, const std::string& audience,
    const std::vector<ToolSecret>& secrets) const {
  std::vector<std::pair<std::string, std::string>> headers;
  // Who the call is for, in a token minted for this call and this tool alone; the caller's
  // own credential never leaves agentd.
  if (std::string token = MintBearer(ToolClaims(a, principal_id, audience)); !token.empty()) {
    headers.emplace_back("Authorization", std::move(token));
  }
  for (const auto& secret : secrets) {
    if (!secret.env) SetHeader(headers, secret.target, secret.value);
  }
  return headers;
}

std::string Engine::MintBearer(identity::ToolTokenClaims c) const {
  if (options_.signing_key == nullptr) return "";
  c.issuer = options_.token_issuer;
  c.issued_at = clock_->NowMillis() / 1000;
  return "Bearer " + identity::MintToolToken(*options_.signing_key, c);
}

Status Engine::Stage(Actor& a, std::string_view type, const std::string& turn_id, Json data) {
  if (a.broken) return Unavailable("session cannot record events");
  // The workspace is snapshotted whenever the turn ends or stops to wait for someone.
  if (a.sandbox && a.sandbox->dirty &&
      (journal::IsTurnTerminal(type) || type == ev::kTurnRequiresAction ||
       type == ev::kSessionNeedsAttention)) {
    SnapshotWorkspaceLocked(a, turn_id);
  }
  // A tool call's outcome names the tool, so a reader of one event knows what it is about.
  if ((type == ev::kToolCallCompleted || type == ev::kToolCallFailed) && !data.contains("name")) {
    auto t = a.state.open_turns.find(turn_id);
    if (t != a.state.open_turns.end()) {
      std::string call_id = data.value("call_id", "");
      auto c = std::find_if(t->second.calls.begin(), t->second.calls.end(),
                            [&](const journal::ToolCallState& c) { return c.call_id == call_id; });
      if (c != t->second.calls.end()) data["name"] = c->name;
    }
  }
  store::EventRecord e{a.id, a.state.last_seq + 1, std::string(type), turn_id,
                       clock_->NowMillis(), DumpJson(data)};
  journal::ApplyEffect effect;
  Status st = journal::Apply(a.state, e, data, &effect);
  if (!st.ok()) {
    // Our own event did not fit our own state: a bug, but never a crash.
    spdlog::error("session {}: {}", a.id, st.ToString());
    a.broken = true;
    return Internal("internal state error");
  }
  if (effect.ended) {
    a.staged_turns[effect.ended->id] = journal::TurnRowOf(a.id, *effect.ended);
    a.dirty_turns.erase(effect.ended->id);
  } else if (effect.turn) {
    a.dirty_turns.insert(effect.turn->id);
  }
  a.staged.events.push_back(std::move(e));
  ++a.events_since_snapshot;
  return Status::OK();
}

Status Engine::FlushLocked(Actor& a) {
  if (a.staged.events.empty()) return Status::OK();
  if (a.broken) return Unavailable("session cannot record events");
  store::WriteBatch b = std::move(a.staged);
  a.staged = {};
  std::vector<std::string> ended_turns;
  for (auto& [id, row] : a.staged_turns) {
    ended_turns.push_back(id);
    b.turns.push_back(std::move(row));
  }
  a.staged_turns.clear();
  std::vector<std::pair<std::string, std::string>> new_statuses;  // open turns' rows written
  for (const auto& id : a.dirty_turns) {
    auto it = a.state.open_turns.find(id);
    if (it == a.state.open_turns.end()) continue;
    auto known = a.stored_turn_status.find(id);
    if (known == a.stored_turn_status.end() || known->second != it->second.status) {
      b.turns.push_back(journal::TurnRowOf(a.id, it->second));
      new_statuses.emplace_back(id, it->second.status);
    }
  }
  a.dirty_turns.clear();
  const SessionState& s = a.state;
  std::string status = s.Status();
  bool active = s.Active();
  bool session_changed = status != a.stored_status || active != a.stored_active;
  if (session_changed) {
    // The row exists since the session's creation: the upsert leaves its tenant alone.
    b.sessions.push_back({s.id, s.agent_id, s.agent_version, status, DumpJson(s.metadata),
                          s.created_ms, s.updated_ms, s.last_seq, active, ""});
  }
  if (a.events_since_snapshot >= options_.snapshot_every) {
    b.snapshots.push_back({s.id, s.last_seq, journal::StateToText(a.state)});
    a.events_since_snapshot = 0;
  }
  int64_t seq = s.last_seq;
  bool rest = false;  // a turn ended or now waits for someone
  for (const auto& e : b.events) {
    rest = rest || journal::IsTurnTerminal(e.type) || e.type == ev::kTurnRequiresAction ||
           e.type == ev::kToolCallApprovalRequested ||
           e.type == ev::kSessionNeedsAttention;
  }
  // The actor's mutex stays held until the commit is durable: batches of one session are
  // committed strictly one after another, so a failed batch can never leave a gap that a
  // later batch of the same session would skip over.
  Status st = store_->CommitBlocking(std::move(b));
  if (!st.ok()) {
    spdlog::error("session {}: journal commit failed: {}", a.id, st.ToString());
    a.broken = true;
    std::lock_guard lock(actors_mu_);
    auto it = actors_.find(a.id);
    if (it != actors_.end() && it->second.get() == &a) actors_.erase(it);
    return st;
  }
  if (session_changed) {
    a.stored_status = std::move(status);
    a.stored_active = active;
  }
  for (const auto& id : ended_turns) a.stored_turn_status.erase(id);
  for (auto& [id, status] : new_statuses) a.stored_turn_status[id] = std::move(status);
  Notify(a.id, seq, rest);
  return Status::OK();
}

void Engine::Notify(const std::string& session_id, int64_t seq, bool rest) {
  std::lock_guard lock(watch_mu_);
  auto it = watches_.find(session_id);
  if (it == watches_.end()) return;
  it->second->seq = std::max(it->second->seq, seq);
  if (rest) ++it->second->rests;
  it->second->cv.notify_all();
}

std::shared_ptr<Engine::Watch> Engine::AddWatcher(const std::string& session_id) {
  std::lock_guard lock(watch_mu_);
  auto& slot = watches_[session_id];
  if (!slot) slot = std::make_shared<Watch>();
  ++slot->waiters;
  return slot;
}

void Engine::RemoveWatcherLocked(const std::string& session_id, Watch& w) {
  if (--w.waiters == 0) watches_.erase(session_id);
}

Result<Json> Engine::WaitForTurnBlocking(const std::string& session_id, const std::string& turn_id,
                                         std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::shared_ptr<Watch> w = AddWatcher(session_id);
  auto unregister = [&] {
    std::lock_guard lock(watch_mu_);
    RemoveWatcherLocked(session_id, *w);
  };
  // The stored turn is read once per batch in which some turn came to rest (and once at the
  // start, after registering, so no such batch is missed), not once per event.
  while (true) {
    int64_t rests;
    {
      std::lock_guard lock(watch_mu_);
      rests = w->rests;
    }
    Result<Json> t = GetTurn(session_id, turn_id);
    if (!t.ok()) {
      unregister();
      return t;
    }
    std::string status = t->value("status", "");
    bool resting = status != "queued" && status != "running";
    std::unique_lock lock(watch_mu_);
    if (resting || draining_.load() ||
        !w->cv.wait_until(lock, deadline,
                          [&] { return w->rests != rests || draining_.load(); })) {
      lock.unlock();
      unregister();
      return t;
    }
  }
}

void Engine::WaitForEventsBlocking(const std::string& session_id, int64_t after_seq,
                                   std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  std::shared_ptr<Watch> w = AddWatcher(session_id);
  // Read the durable position only after registering, so no notification is missed.
  int64_t durable = 0;
  if (auto row = store_->GetSession(session_id); row.ok() && *row) durable = (*row)->last_seq;
  {
    std::unique_lock lock(watch_mu_);
    w->seq = std::max(w->seq, durable);
    w->cv.wait_until(lock, deadline, [&] { return w->seq > after_seq || draining_.load(); });
    RemoveWatcherLocked(session_id, *w);
  }
}

// ---------------------------------------------------------------------------------------
// Turns

Result<SubmitResult> Engine::SubmitTurn(const std::string& session_id, const Json& input,
                                        const std::string& idempotency_key,
                                        const std::string& principal_id) {
  ASSIGN_OR_RETURN(Json items, ParseTurnInput(input, options_.max_input_items));
  if (idempotency_key.size() > 255) {
    return InvalidArgument("Idempotency-Key header is longer than 255 characters");
  }
  if (draining_) return Unavailable("agentd is shutting down; retry on another instance");
  ASSIGN_OR_RETURN(auto a, Acquire(session_id));
  Result<SubmitResult> out = Internal("unreachable");
  std::string existing;
  {
    std::unique_lock lock(a->mu);
    SessionState& s = a->state;
    auto it = idempotency_key.empty() ? s.idempotency.end() : s.idempotency.find(idempotency_key);
    if (it != s.idempotency.end()) {
      existing = it->second;
      auto open = s.open_turns.find(existing);
      if (open != s.open_turns.end()) {
        if (open->second.input != items) {
          out = Unprocessable("Idempotency-Key was used before with a different input");
        } else {
          out = SubmitResult{journal::TurnObject(a->id, open->second), false};
        }
        existing.clear();
      }
    } else if (a->agent.turn_policy == "reject" && s.Active()) {
      out = FailedPrecondition(
          fmt::format("session '{}' already has a turn in progress (turn_policy: reject)",
                      session_id));
    } else {
      std::string tid = NewId("trn_");
      Json data = {{"input", items}};
      if (!idempotency_key.empty()) data["idempotency_key"] = idempotency_key;
      // Whose turn it is: its tool calls act with this principal's permissions too.
      if (!principal_id.empty()) data["principal_id"] = principal_id;
      Status st = Stage(*a, ev::kTurnQueued, tid, std::move(data));
      if (st.ok()) st = FlushLocked(*a);
      if (st.ok()) {
        out = SubmitResult{journal::TurnObject(a->id, a->state.open_turns.at(tid)), true,
                           a->state.last_seq};
        StartWorkerLocked(a);
      } else {
        out = st;
      }
    }
  }
  Release(a);
  if (!existing.empty()) {
    // The earlier turn has ended; its object lives in the turns projection.
    ASSIGN_OR_RETURN(Json turn, TurnFromStore(session_id, existing));
    if (turn.value("input", Json()) != items) {
      return Unprocessable("Idempotency-Key was used before with a different input");
    }
    return SubmitResult{turn, false};
  }
  return out;
}

Result<Json> Engine::AnswerTurnLocked(const std::shared_ptr<Actor>& a,
                                      const std::string& turn_id, Status staged) {
  if (staged.ok()) staged = FlushLocked(*a);
  if (!staged.ok()) return staged;
  const TurnState& t = a->state.open_turns.at(turn_id);
  if (t.status == "running") StartWorkerLocked(a);
  return journal::TurnObject(a->id, t);
}

Result<Json> Engine::SubmitApproval(const std::string& session_id, const std::string& turn_id,
                                    const Json& body, const std::string& principal_id) {
  FieldReader r(body, "");
  RETURN_IF_ERROR(r.CheckObject());
  std::string call_id, decision, reason;
  RETURN_IF_ERROR(r.String("call_id", &call_id, true, 256));
  RETURN_IF_ERROR(r.String("decision", &decision, true, 16));
  RETURN_IF_ERROR(r.String("reason", &reason, false, 4096));
  RETURN_IF_ERROR(r.NoUnknownKeys());
  if (decision != "approve" && decision != "deny") {
    return InvalidArgument("'decision' must be \"approve\" or \"deny\"");
  }
  ASSIGN_OR_RETURN(auto a, Acquire(session_id));
  Result<Json> out = Internal("unreachable");
  {
    std::unique_lock lock(a->mu);
    SessionState& s = a->state;
    auto it = s.open_turns.find(turn_id);
    const journal::ToolCallState* call = nullptr;
    if (it != s.open_turns.end()) {
      for (const auto& c : it->second.calls) {
        if (c.call_id == call_id) call = &c;
      }
    }
    Status st;
    if (it == s.open_turns.end()) {
      st = FailedPrecondition(fmt::format("turn '{}' is not waiting for an approval", turn_id));
    } else if (call == nullptr || call->approval != "requested") {
      st = InvalidArgument(fmt::format("'call_id' '{}' is not a call of turn '{}' waiting for "
                                       "approval",
                                       call_id, turn_id));
    }
    if (st.ok()) {
      Json data = {{"call_id", call_id}, {"decision", decision}, {"principal_id", principal_id}};
      if (!reason.empty()) data["reason"] = reason;
      if (options_.audit != nullptr) {
        audit::AuditEntry e;
        e.tenant_id = a->tenant_id;
        e.time_ms = clock_->NowMillis();
        e.principal = principal_id;
        e.action = "tools:Approve";
        e.resource = fmt::format("agentd:{}:tool/{}/{}", a->tenant_id, a->agent.id, call->name);
        e.decision = "allow";
        e.result = decision == "approve" ? "approved" : "denied";
        e.data = DumpJson(Json{{"session_id", a->id}, {"turn_id", turn_id}, {"call_id", call_id}});
        st = options_.audit->Stage(a->staged, std::move(e));
      }
      if (st.ok()) st = Stage(*a, ev::kToolCallApprovalDecided, turn_id, std::move(data));
    }
    out = AnswerTurnLocked(a, turn_id, st);
  }
  Release(a);
  return out;
}

Result<Json> Engine::SubmitToolOutputs(const std::string& session_id, const std::string& turn_id,
                                       const Json& body) {
  FieldReader r(body, "");
  RETURN_IF_ERROR(r.CheckObject());
  const Json* outputs = nullptr;
  RETURN_IF_ERROR(r.Value("outputs", &outputs, true));
  RETURN_IF_ERROR(r.NoUnknownKeys());
  if (!outputs->is_array() || outputs->empty()) {
    return InvalidArgument("'outputs' must be a non-empty array");
  }
  std::vector<std::pair<std::string, std::string>> parsed;
  for (size_t i = 0; i < outputs->size(); ++i) {
    FieldReader o((*outputs)[i], fmt::format("outputs[{}]", i));
    RETURN_IF_ERROR(o.CheckObject());
    std::string call_id;
    RETURN_IF_ERROR(o.String("call_id", &call_id, true, 256));
    const Json* output = nullptr;
    RETURN_IF_ERROR(o.Value("output", &output, true));
    RETURN_IF_ERROR(o.NoUnknownKeys());
    parsed.emplace_back(call_id, OutputText(*output));
  }
  ASSIGN_OR_RETURN(auto a, Acquire(session_id));
  Result<Json> out = Internal("unreachable");
  {
    std::unique_lock lock(a->mu);
    SessionState& s = a->state;
    auto it = s.open_turns.find(turn_id);
    if (it == s.open_turns.end()) {
      lock.unlock();
      Release(a);
      ASSIGN_OR_RETURN(Json t, TurnFromStore(session_id, turn_id));
      return FailedPrecondition(fmt::format("turn '{}' is {}; it takes no tool outputs", turn_id,
                                            t.value("status", "")));
    }
    TurnState& t = it->second;
    Status st;
    if (t.status != "requires_action") {
      st = FailedPrecondition(
          fmt::format("turn '{}' is {}; it takes no tool outputs", turn_id, t.status));
    }
    std::set<std::string> seen;
    for (const auto& [call_id, output] : parsed) {
      if (!st.ok()) break;
      bool pending = false;
      for (const auto& p : t.pending_action) pending |= p.value("call_id", "") == call_id;
      bool done = false;
      for (const auto& c : t.calls) done |= (c.call_id == call_id && c.status == "done");
      if (!pending || done || !seen.insert(call_id).second) {
        st = InvalidArgument(fmt::format("'call_id' '{}' is not a pending call of turn '{}'",
                                         call_id, turn_id));
      }
    }
    for (const auto& [call_id, output] : parsed) {
      if (!st.ok()) break;
      st = Stage(*a, ev::kToolCallCompleted, turn_id,
                 {{"call_id", call_id}, {"output", output}, {"is_error", false},
                  {"source", "client"}});
    }
    out = AnswerTurnLocked(a, turn_id, st);
  }
  Release(a);
  return out;
}

Result<Json> Engine::TurnFromStore(const std::string& session_id, const std::string& turn_id) {
  ASSIGN_OR_RETURN(auto row, store_->GetTurn(session_id, turn_id));
  if (!row) {
    return NotFound(fmt::format("turn '{}' not found in session '{}'", turn_id, session_id));
  }
  return ParseJson(row->body, "stored turn");
}

std::optional<Json> Engine::DurableOpenTurn(const std::string& session_id,
                                                   const std::string& turn_id) {
  std::shared_ptr<Actor> a;
  {
    std::lock_guard lock(actors_mu_);
    auto it = actors_.find(session_id);
    if (it == actors_.end()) return std::nullopt;
    a = it->second;
  }
  std::lock_guard lock(a->mu);
  // The mutex is released only after staged events are committed, so with it held the state
  // is what is durable; a broken actor (a failed commit) is ahead of the store.
  if (!a->loaded || a->broken || !a->staged.events.empty()) return std::nullopt;
  auto it = a->state.open_turns.find(turn_id);
  if (it == a->state.open_turns.end()) return std::nullopt;
  return journal::TurnObject(session_id, it->second);
}

Result<Json> Engine::GetTurn(const std::string& session_id, const std::string& turn_id) {
  ASSIGN_OR_RETURN(auto session, store_->GetSession(session_id));
  if (!session) return NotFound(fmt::format("session '{}' not found", session_id));
  if (auto live = DurableOpenTurn(session_id, turn_id)) return std::move(*live);
  return TurnFromStore(session_id, turn_id);
}

Result<Json> Engine::ListTurns(const std::string& session_id, const store::Page& page) {
  ASSIGN_OR_RETURN(auto session, store_->GetSession(session_id));
  if (!session) return NotFound(fmt::format("session '{}' not found", session_id));
  ASSIGN_OR_RETURN(auto rows, store_->ListTurns(session_id, page));
  Json data = Json::array();
  for (const auto& r : rows.first) {
    std::optional<Json> live;
    if (r.status == "running" || r.status == "requires_action") {
      live = DurableOpenTurn(session_id, r.id);
    }
    if (live) {
      data.push_back(std::move(*live));
      continue;
    }
    ASSIGN_OR_RETURN(Json j, ParseJson(r.body, "stored turn"));
    data.push_back(std::move(j));
  }
  return Json{{"object", "list"},
              {"data", data},
              {"has_more", !rows.second.empty()},
              {"next_cursor", rows.second.empty() ? Json() : Json(rows.second)}};
}

Result<Json> Engine::ReadEvents(const std::string& session_id, int64_t after_seq, int limit) {
  ASSIGN_OR_RETURN(auto session, store_->GetSession(session_id));
  if (!session) return NotFound(fmt::format("session '{}' not found", session_id));
  ASSIGN_OR_RETURN(auto events, store_->ReadEvents(session_id, after_seq, limit + 1));
  bool more = static_cast<int>(events.size()) > limit;
  if (more) events.pop_back();
  Json data = Json::array();
  for (const auto& e : events) data.push_back(journal::EventToJson(e));
  return Json{{"object", "list"}, {"data", data}, {"has_more", more}};
}

// ---------------------------------------------------------------------------------------
// The turn loop

void Engine::StartWorkerLocked(const std::shared_ptr<Actor>& a) {
  if (a->worker_active || draining_) return;
  a->worker_active = true;
  {
    std::lock_guard lock(actors_mu_);
    ++a->pins;  // the worker's pin, released when Drive ends
  }
  active_workers_.fetch_add(1);
  workers_.Submit([this, a] { Drive(a); });
}

Result<size_t> Engine::Recover() {
  ASSIGN_OR_RETURN(auto ids, store_->ListActiveSessions());
  for (const auto& id : ids) workers_.Submit([this, id] { Resume(id); });
  return ids.size();
}

void Engine::Resume(const std::string& session_id) {
  auto a = Acquire(session_id);
  if (!a.ok()) {
    spdlog::error("cannot resume session {}: {}", session_id, a.status().ToString());
    return;
  }
  {
    std::unique_lock lock((*a)->mu);
    StartWorkerLocked(*a);
  }
  Release(*a);
}

void Engine::Drive(std::shared_ptr<Actor> a) {
  {
    std::unique_lock lock(a->mu);
    while (StepLocked(a, lock)) {
    }
    if (!a->broken) FlushLocked(*a).IgnoreError();
    a->worker_active = false;
  }
  Release(a);
  if (active_workers_.fetch_sub(1) == 1) {
    std::lock_guard lock(drain_mu_);
    drain_cv_.notify_all();
  }
}

bool Engine::ShouldAbort(const Actor& a) const {
  int64_t deadline = a.turn_deadline_ms.load();
  return abandon_.load() || a.deleted || (!a.cancel_turn.empty()) ||
         (deadline > 0 && clock_->NowMillis() >= deadline);
}

bool Engine::SleepLocked(Actor& a, std::unique_lock<std::mutex>& lock,
                         std::chrono::milliseconds d) {
  // A backoff does not outlast the turn's time budget: the next step finds it spent.
  if (int64_t deadline = a.turn_deadline_ms.load(); deadline > 0) {
    d = std::min(d, std::chrono::milliseconds(std::max<int64_t>(0, deadline - clock_->NowMillis())));
  }
  a.cv.wait_for(lock, d, [&] { return draining_.load() || !a.cancel_turn.empty() || a.deleted; });
  return !(draining_.load() || !a.cancel_turn.empty() || a.deleted);
}

bool Engine::StepLocked(const std::shared_ptr<Actor>& a, std::unique_lock<std::mutex>& lock) {
  if (a->broken || a->deleted) return false;
  SessionState& s = a->state;
  if (!a->cancel_turn.empty()) {
    std::string tid = std::move(a->cancel_turn);
    a->cancel_turn.clear();
    if (s.open_turns.count(tid)) {
      if (!Stage(*a, ev::kTurnCancelled, tid, {{"reason", "cancelled by request"}}).ok()) {
        return false;
      }
      return FlushLocked(*a).ok();
    }
    return true;
  }
  if (draining_) return false;
  auto is_client = [&](const std::string& name) {
    const ToolDef* t = a->agent.FindTool(name);
    return t != nullptr && t->type == "client";
  };
  journal::NextAction next = journal::DecideNext(s, is_client);
  a->turn_deadline_ms = TurnDeadlineLocked(*a);
  if (Json stop = BudgetStopLocked(*a, next); !stop.is_null()) {
    // The turn ends failed; the session goes on with its next turn.
    if (!Stage(*a, ev::kTurnFailed, next.turn_id, {{"error", std::move(stop)}}).ok()) {
      return false;
    }
    return FlushLocked(*a).ok();
  }
  switch (next.kind) {
    case NextKind::kIdle:
    case NextKind::kWait:
      return false;
    case NextKind::kStartTurn:
      return Stage(*a, ev::kTurnStarted, next.turn_id, Json::object()).ok();
    case NextKind::kCallModel:
      CallModelLocked(a, lock);
      return true;
    case NextKind::kRunTool:
      RunToolLocked(a, lock, next.call->call_id, false);
      return true;
    case NextKind::kRecoverTool:
      RunToolLocked(a, lock, next.call->call_id, true);
      return true;
    case NextKind::kAwaitClient: {
      Json pending = Json::array();
      for (const auto& c : s.Current()->calls) {
        if (c.status == "pending") {
          pending.push_back({{"call_id", c.call_id}, {"name", c.name},
                             {"arguments", c.arguments}, {"reason", "client_tool"}});
        }
      }
      if (!Stage(*a, ev::kTurnRequiresAction, next.turn_id, {{"pending", pending}}).ok()) {
        return false;
      }
      FlushLocked(*a).IgnoreError();
      return false;
    }
    case NextKind::kCompleteTurn: {
      const TurnState* t = s.Current();
      Json data = {{"output_text", t->output_text},
                   {"usage",
                    {{"input_tokens", t->usage.input_tokens},
                     {"output_tokens", t->usage.output_tokens},
                     {"total_tokens", t->usage.total_tokens}}}};
      if (!Stage(*a, ev::kTurnCompleted, next.turn_id, std::move(data)).ok()) return false;
      return FlushLocked(*a).ok();
    }
  }
  return false;
}

void Engine::CallModelLocked(const std::shared_ptr<Actor>& a, std::unique_lock<std::mutex>& lock) {
  // The tools of the agent's MCP servers, listed (connecting first when need be) unlocked.
  std::vector<model::ToolSpec> mcp_tools;
  if (a->agent.UsesMcp()) {
    std::string manifest = a->state.workspace_manifest;
    std::string turn = a->state.current_turn;
    lock.unlock();
    mcp_tools = ListMcpTools(a, manifest, turn);
    lock.lock();
    if (a->deleted || abandon_.load() || !a->cancel_turn.empty() || draining_) return;
  }
  SessionState& s = a->state;
  TurnState* t = s.Current();
  const std::string turn_id = t->id;
  const AgentSpec& agent = a->agent;
  int attempt = t->model_attempt + 1;

  auto provider_it = providers_.find(agent.model.provider);
  std::string api_key;
  Status pre;
  if (provider_it == providers_.end()) {
    pre = FailedPrecondition(
        fmt::format("model provider '{}' is not available", agent.model.provider));
  } else if (!agent.model.api_key_env.empty()) {
    const char* v = std::getenv(agent.model.api_key_env.c_str());
    if (v == nullptr || *v == '\0') {
      pre = FailedPrecondition(fmt::format(
          "environment variable '{}' (model.api_key_env) is not set for agentd",
          agent.model.api_key_env));
    } else {
      api_key = v;
    }
  }
  if (!pre.ok()) {
    if (Stage(*a, ev::kTurnFailed, turn_id,
              {{"error", ErrorJson("model_unavailable", pre.message())}})
            .ok()) {
      FlushLocked(*a).IgnoreError();
    }
    return;
  }

  if (!Stage(*a, ev::kModelCallStarted, turn_id,
             {{"attempt", attempt}, {"model", agent.model.name}})
           .ok()) {
    return;
  }
  // Tool results (and the turn's start) become durable before the model sees them.
  if (!FlushLocked(*a).ok()) return;

  model::ModelRequest req;
  req.model = agent.model.name;
  req.base_url = agent.model.base_url;
  req.api_key = std::move(api_key);
  req.instructions = agent.instructions;
  req.timeout = std::chrono::milliseconds(agent.model.timeout_ms);
  for (const auto& tool : agent.tools) {
    if (tool.type == "mcp") continue;  // a server, not a tool
    req.tools.push_back({tool.name, tool.description, tool.parameters});
  }
  for (auto& tool : mcp_tools) req.tools.push_back(std::move(tool));
  Actor* raw = a.get();
  req.should_abort = [this, raw] { return ShouldAbort(*raw); };

  // Encoded from the live conversation while the lock is held, so it is never copied; when
  // the context is the whole conversation, only the items added since the last call are.
  Json kept;
  const Json& context = memory::AssembleContext(s.items, &kept);
  Result<std::string> body = provider_it->second->EncodeBody(
      req, context, &context == &s.items ? &a->encode_cache : nullptr);
  lock.unlock();
  model::ModelAttempt result;
  if (body.ok()) {
    result = provider_it->second->CallEncodedBlocking(req, std::move(body).value());
  } else {
    result.error = body.status();  // a conversation that cannot be sent: not retryable
  }
  lock.lock();

  if (a->deleted || abandon_.load()) return;  // nothing is journaled; recovery re-runs it
  if (!a->cancel_turn.empty()) return;        // the loop records the cancellation
  if (!result.response && ShouldAbort(*a)) return;  // out of time: the next step says so
  if (result.response) {
    const auto& r = *result.response;
    Json calls = Json::array();
    for (const auto& c : r.tool_calls) {
      calls.push_back({{"call_id", c.call_id}, {"name", c.name}, {"arguments", c.arguments}});
    }
    Json data = {{"attempt", attempt},
                 {"text", r.text},
                 {"tool_calls", calls},
                 {"finish_reason", r.finish_reason},
                 {"usage",
                  {{"input_tokens", r.usage.input_tokens},
                   {"output_tokens", r.usage.output_tokens},
                   {"total_tokens", r.usage.total_tokens}}}};
    // The cost is journaled with the call, so the turn's total is a fold of the journal and
    // a later change of prices does not rewrite it.
    if (const ModelPrice* p = PriceOf(agent.model)) {
      data["cost_usd"] = (static_cast<double>(r.usage.input_tokens) * p->input_per_million_usd +
                          static_cast<double>(r.usage.output_tokens) * p->output_per_million_usd) /
                         1e6;
    }
    Stage(*a, ev::kModelCallCompleted, turn_id, std::move(data)).IgnoreError();
    return;
  }
  bool will_retry = result.retryable && attempt < agent.retry.max_attempts;
  auto wait = BackoffFor(agent.retry, attempt + 1, result.retry_after);
  Json data = {{"attempt", attempt},
               {"error", ErrorJson(StatusCodeSlug(result.error.code()), result.error.message())},
               {"http_status", result.http_status},
               {"retryable", result.retryable},
               {"will_retry", will_retry}};
  if (will_retry) data["retry_in_ms"] = wait.count();
  if (!Stage(*a, ev::kModelCallFailed, turn_id, std::move(data)).ok()) return;
  if (!will_retry) {
    std::string msg = result.retryable
                          ? fmt::format("model call failed after {} attempts: {}", attempt,
                                        result.error.message())
                          : fmt::format("model call failed: {}", result.error.message());
    if (Stage(*a, ev::kTurnFailed, turn_id, {{"error", ErrorJson("model_error", msg)}}).ok()) {
      FlushLocked(*a).IgnoreError();
    }
    return;
  }
  FlushLocked(*a).IgnoreError();
  SleepLocked(*a, lock, wait);
}

void Engine::RunToolLocked(const std::shared_ptr<Actor>& a, std::unique_lock<std::mutex>& lock,
                           const std::string& call_id, bool recovering) {
  SessionState& s = a->state;
  TurnState* t = s.Current();
  const std::string turn_id = t->id;
  const journal::ToolCallState* call = nullptr;
  for (const auto& c : t->calls) {
    if (c.call_id == call_id) call = &c;
  }
  const std::string name = call->name;
  const std::string arguments = call->arguments;
  const int attempt = call->attempts + 1;

  // A result the model gets without the tool running: a refusal or a bad call.
  auto give_error = [&](std::string_view code, const std::string& message) {
    if (!Stage(*a, ev::kToolCallFailed, turn_id,
               {{"call_id", call_id}, {"attempt", attempt},
                {"error", ErrorJson(code, message)}, {"will_retry", false}})
             .ok()) {
      return;
    }
    Stage(*a, ev::kToolCallCompleted, turn_id,
          {{"call_id", call_id}, {"output", "error: " + message}, {"is_error", true}})
        .IgnoreError();
  };

  const ToolDef* tool = a->agent.FindTool(name);
  std::string mcp_tool;  // for a tool of an MCP server: its name on the server
  if (tool != nullptr && tool->type == "mcp") tool = nullptr;  // a server is not a tool
  if (tool == nullptr) {
    std::string server;
    if (tools::mcp::SplitNamespacedToolName(name, &server, &mcp_tool)) {
      const ToolDef* def = a->agent.FindTool(server);
      if (def != nullptr && def->type == "mcp") tool = def;
    }
  }
  if (tool == nullptr) {
    give_error("unknown_tool", fmt::format("there is no tool named '{}'", name));
    return;
  }
  if (recovering && !tool->idempotent) {
    // At-most-once: the call may or may not have happened, and running it again could
    // apply its effect twice. A person decides (tool_outputs with the real result, or cancel).
    Json pending = Json::array({{{"call_id", call_id}, {"name", name}, {"arguments", arguments},
                                 {"reason", "unknown_outcome"},
                                 {"idempotency_key", call->idempotency_key}}});
    if (Stage(*a, ev::kSessionNeedsAttention, turn_id,
              {{"pending", pending},
               {"reason", fmt::format("tool '{}' is not idempotent and agentd stopped while it "
                                      "ran; its outcome is unknown",
                                      name)}})
            .ok()) {
      FlushLocked(*a).IgnoreError();
    }
    return;
  }
  Json args;
  try {
    args = Json::parse(arguments);
  } catch (const std::exception&) {
    give_error("invalid_arguments", "the arguments are not valid JSON");
    return;
  }
  const Json* schema = &tool->parameters;
  if (tool->type == "mcp") {
    auto known = a->mcp_schemas.find(name);
    schema = known != a->mcp_schemas.end() ? &known->second : nullptr;  // the server checks
  }
  if (Status st = schema ? tools::ValidateAgainstSchema(*schema, args) : Status::OK(); !st.ok()) {
    give_error("invalid_arguments",
               fmt::format("the arguments do not match the tool's schema: {}", st.message()));
    return;
  }

  bool needs_approval = false;
  if (auto refusal = RefuseToolLocked(*a, *t, call_id, name, args, call->approval == "approved",
                                      &needs_approval)) {
    give_error("permission_denied", *refusal);
    return;
  }
  if (needs_approval && call->approval != "approved") {
    if (call->approval == "denied") {
      give_error("approval_denied", "the call was " + call->approval_note);
      return;
    }
    // The turn waits in requires_action until someone allowed to approves or denies.
    if (call->approval != "requested" &&
        Stage(*a, ev::kToolCallApprovalRequested, turn_id,
              {{"call_id", call_id}, {"name", name}, {"arguments", arguments}})
            .ok()) {
      FlushLocked(*a).IgnoreError();
    }
    return;
  }

  // The secrets the tool's definition names, for this call alone.
  std::vector<ToolSecret> secrets;
  if (auto refused = OpenToolSecretsLocked(*a, *t, call_id, *tool, &secrets)) {
    give_error(refused->code, refused->message);
    return;
  }

  std::string key = call->idempotency_key;
  if (key.empty()) key = fmt::format("{}.{}", a->id, s.last_seq + 1);
  if (!recovering || call->status != "started") {
    if (!Stage(*a, ev::kToolCallStarted, turn_id,
               {{"call_id", call_id}, {"name", name}, {"arguments", arguments},
                {"attempt", attempt}, {"idempotency_key", key}})
             .ok()) {
      return;
    }
  }
  // The model's answer and this intent are durable before the tool runs.
  if (!FlushLocked(*a).ok()) return;

  Actor* raw = a.get();
  tools::ToolOutcome out;
  if (tool->type == "builtin") {
    std::string manifest = s.workspace_manifest;
    lock.unlock();
    std::map<std::string, std::string> env;
    for (const auto& secret : secrets) {
      if (secret.env) env[secret.target] = secret.value;
    }
    out = RunBuiltin(a, name, args, manifest, env);
    for (auto& [k, v] : env) sodium_memzero(v.data(), v.size());
    lock.lock();
  } else if (tool->type == "mcp") {
    std::string manifest = s.workspace_manifest;
    const ToolDef server = *tool;
    std::vector<std::pair<std::string, std::string>> headers;
    if (!server.url.empty()) headers = CallHeaders(*a, t->principal_id, server.url, secrets);
    lock.unlock();
    out = RunMcp(a, server, mcp_tool, args, manifest, turn_id, call_id, std::move(headers));
    lock.lock();
  } else {
    tools::HttpToolSpec spec{tool->name, tool->url, tool->timeout_ms, tool->idempotent,
                             CallHeaders(*a, t->principal_id, tool->url, secrets)};
    lock.unlock();
    out = tools::CallHttpToolBlocking(spec, arguments, key,
                                      [this, raw] { return ShouldAbort(*raw); });
    for (auto& h : spec.headers) sodium_memzero(h.second.data(), h.second.size());
    lock.lock();
  }
  RedactSecrets(&out.output, secrets);

  if (a->deleted || abandon_.load()) return;  // unjournaled: recovery decides
  if (!a->cancel_turn.empty()) return;        // turn.cancelled closes the call
  using Kind = tools::ToolOutcome::Kind;
  // Interrupted by the turn's time budget: the next step fails the turn, closing the call.
  if (out.kind != Kind::kOk && ShouldAbort(*a)) return;
  if (out.kind == Kind::kOk) {
    Stage(*a, ev::kToolCallCompleted, turn_id,
          {{"call_id", call_id}, {"output", out.output}, {"is_error", false},
           {"http_status", out.http_status}})
        .IgnoreError();
    return;
  }
  if (out.kind == Kind::kToolError) {
    give_error("tool_error", out.output);
    return;
  }
  // Retryable. A tool that is not idempotent is retried only when the server said it did not
  // process the request (429, 503) or no connection was made; anything else might have
  // applied the effect.
  bool safe = tool->idempotent || out.http_status == 429 || out.http_status == 503 ||
              out.not_sent;
  bool will_retry = safe && attempt < a->agent.retry.max_attempts;
  auto wait = BackoffFor(a->agent.retry, attempt + 1, out.retry_after);
  Json data = {{"call_id", call_id},
               {"attempt", attempt},
               {"error", ErrorJson("tool_unavailable", out.output)},
               {"http_status", out.http_status},
               {"will_retry", will_retry}};
  if (will_retry) data["retry_in_ms"] = wait.count();
  if (!Stage(*a, ev::kToolCallFailed, turn_id, std::move(data)).ok()) return;
  if (!will_retry) {
    std::string msg = safe ? fmt::format("tool failed after {} attempts: {}", attempt, out.output)
                           : fmt::format("{} (not retried: the tool is not idempotent and the "
                                         "call may have taken effect)",
                                         out.output);
    Stage(*a, ev::kToolCallCompleted, turn_id,
          {{"call_id", call_id}, {"output", "error: " + msg}, {"is_error", true}})
        .IgnoreError();
    return;
  }
  FlushLocked(*a).IgnoreError();
  SleepLocked(*a, lock, wait);
}

// ---------------------------------------------------------------------------------------
// Budgets and loop detection

const ModelPrice* Engine::PriceOf(const ModelDef& model) const {
  for (const std::string& key : {model.provider + "/" + model.name, model.name}) {
    auto it = options_.prices.find(key);
    if (it != options_.prices.end()) return &it->second;
  }
  return nullptr;
}

Status Engine::CheckCostBudget(const Budget& b, const ModelDef& model,
                               const std::string& field) const {
  if (b.max_cost_usd <= 0 || PriceOf(model) != nullptr) return Status::OK();
  // A cost limit on a model without a price would never be reached: refused, not ignored.
  return Unprocessable(fmt::format(
      "'{}' needs a price for model '{}' (provider '{}'), and agentd's config has none: add "
      "'{}' (or '{}/{}') under 'prices'",
      field, model.name, model.provider, model.name, model.provider, model.name));
}

Budget Engine::EffectiveBudget(const Actor& a) const {
  Budget b = a.agent.budget.WithDefaults(options_.budget_defaults);
  if (!a.state.budget.empty()) {
    // Journaled by CreateSession from a checked budget; anything unreadable limits nothing.
    if (auto own = ParseBudget(a.state.budget, "budget"); own.ok()) b = b.Tightened(*own);
  }
  if (b.max_repeated_tool_calls <= 0) b.max_repeated_tool_calls = kDefaultMaxRepeatedToolCalls;
  return b;
}

int64_t Engine::TurnDeadlineLocked(const Actor& a) const {
  auto it = a.state.open_turns.find(a.state.current_turn);
  if (it == a.state.open_turns.end() || it->second.status != "running") return 0;
  Budget b = EffectiveBudget(a);
  if (b.max_turn_seconds <= 0) return 0;
  return it->second.started_ms + static_cast<int64_t>(b.max_turn_seconds * 1000.0);
}

Json Engine::BudgetStopLocked(const Actor& a, const journal::NextAction& next) const {
  if (next.kind != NextKind::kCallModel && next.kind != NextKind::kRunTool &&
      next.kind != NextKind::kRecoverTool) {
    return Json();
  }
  auto it = a.state.open_turns.find(next.turn_id);
  if (it == a.state.open_turns.end()) return Json();
  const TurnState& t = it->second;
  const Budget b = EffectiveBudget(a);
  auto exceeded = [](const char* limit, auto max, auto used, const std::string& what) {
    return Json{{"code", "budget_exceeded"},
                {"limit", limit},
                {"max", max},
                {"used", used},
                {"message", fmt::format("budget.{} reached: the turn {} (limit {}); it stops "
                                        "before its next step",
                                        limit, what, max)}};
  };
  int64_t elapsed_ms = clock_->NowMillis() - t.started_ms;
  if (b.max_turn_seconds > 0 && elapsed_ms >= b.max_turn_seconds * 1000.0) {
    double used = static_cast<double>(elapsed_ms) / 1000.0;
    return exceeded("max_turn_seconds", b.max_turn_seconds, used,
                    fmt::format("has run for {:.3f} s", used));
  }
  if (b.max_tokens > 0 && t.usage.total_tokens >= b.max_tokens) {
    return exceeded("max_tokens", b.max_tokens, t.usage.total_tokens,
                    fmt::format("used {} tokens", t.usage.total_tokens));
  }
  if (b.max_model_calls > 0 && t.model_calls >= b.max_model_calls) {
    return exceeded("max_model_calls", b.max_model_calls, t.model_calls,
                    fmt::format("made {} model calls", t.model_calls));
  }
  if (b.max_cost_usd > 0 && t.cost_usd >= b.max_cost_usd) {
    return exceeded("max_cost_usd", b.max_cost_usd, t.cost_usd,
                    fmt::format("cost {:.6f} USD", t.cost_usd));
  }
  // A call that has not started yet is a new tool call (a retried one started already).
  if (next.kind == NextKind::kRunTool && next.call->idempotency_key.empty()) {
    if (b.max_tool_calls > 0 && t.tool_calls >= b.max_tool_calls) {
      return exceeded("max_tool_calls", b.max_tool_calls, t.tool_calls,
                      fmt::format("started {} tool calls", t.tool_calls));
    }
    if (t.repeats >= b.max_repeated_tool_calls &&
        journal::ToolCallSignature(next.call->name, next.call->arguments) == t.last_call) {
      return Json{{"code", "loop_detected"},
                  {"limit", "max_repeated_tool_calls"},
                  {"max", b.max_repeated_tool_calls},
                  {"tool", next.call->name},
                  {"message", fmt::format("the model called tool '{}' {} times in a row with the "
                                          "same arguments and asked for it once more; the turn "
                                          "stops (budget.max_repeated_tool_calls = {})",
                                          next.call->name, t.repeats,
                                          b.max_repeated_tool_calls)}};
    }
  }
  return Json();
}

// ---------------------------------------------------------------------------------------
// Sandboxes and workspaces

std::string Engine::SandboxRoot(const std::string& session_id) const {
  return options_.sandbox_root + "/" + session_id;
}

Status Engine::CheckSandbox(const AgentSpec& a) const {
  if (!a.UsesSandbox()) return Status::OK();
  auto d = sandbox_drivers_.find(a.sandbox.driver);
  if (d == sandbox_drivers_.end()) {
    std::string names;
    for (const auto& [name, drv] : sandbox_drivers_) names += (names.empty() ? "" : ", ") + name;
    return InvalidArgument(fmt::format("'sandbox.driver' \"{}\" is not a driver of this agentd{}",
                                       a.sandbox.driver,
                                       names.empty() ? "" : " (it has: " + names + ")"));
  }
  const sandbox::Capabilities& caps = d->second->capabilities();
  if (!caps.available) {
    return FailedPrecondition(fmt::format("sandbox driver '{}' is not available on this host: {}",
                                          a.sandbox.driver, caps.unavailable_reason));
  }
  const sandbox::Limits& l = a.sandbox.limits;
  const sandbox::Limits& max = options_.sandbox_max;
  auto over = [](auto value, auto limit) { return limit > 0 && value > limit; };
  auto refuse = [](const char* field, auto limit) {
    return InvalidArgument(fmt::format("'sandbox.{}' is above this agentd's maximum of {}", field, limit));
  };
  if (over(l.memory_mb, max.memory_mb)) return refuse("memory_mb", max.memory_mb);
  if (over(l.cpus, max.cpus)) return refuse("cpus", max.cpus);
  if (over(l.pids, max.pids)) return refuse("pids", max.pids);
  if (over(l.disk_mb, max.disk_mb)) return refuse("disk_mb", max.disk_mb);
  if (over(l.timeout_ms, max.timeout_ms)) return refuse("timeout_ms", max.timeout_ms);
  return Status::OK();
}

namespace {

// An outcome for a call that never reached its tool.
tools::ToolOutcome NotSent(const std::string& why) {
  tools::ToolOutcome o;
  o.kind = tools::ToolOutcome::Kind::kRetryable;
  o.output = why;
  o.not_sent = true;
  return o;
}

}  // namespace

tools::ToolOutcome Engine::RunBuiltin(const std::shared_ptr<Actor>& a, const std::string& name,
                                      const Json& args, const std::string& manifest,
                                      const std::map<std::string, std::string>& env) {
  if (Status st = EnsureSandbox(a, manifest); !st.ok()) return NotSent(st.message());
  bool was_dirty;
  {
    std::lock_guard lock(a->mu);
    was_dirty = a->sandbox->dirty;
    a->sandbox->dirty = true;  // before the call: a crash during it keeps the workspace
  }
  Actor* raw = a.get();
  tools::ToolOutcome outcome = tools::CallBuiltinTool(
      name, args, *a->sandbox->box, [this, raw] { return ShouldAbort(*raw); }, env);
  if (outcome.not_sent && !was_dirty) {
    // The call never reached the workspace (the sandbox did not start): nothing changed,
    // so the root is discarded as usual when the sandbox goes, its mount included.
    std::lock_guard lock(a->mu);
    a->sandbox->dirty = false;
  }
  return outcome;
}

Status Engine::EnsureSandbox(const std::shared_ptr<Actor>& a, const std::string& manifest) {
  auto unavailable = [](const std::string& why) { return Unavailable(why); };
  if (!a->sandbox) {
    auto d = sandbox_drivers_.find(a->agent.sandbox.driver);
    if (d == sandbox_drivers_.end()) {
      return unavailable(fmt::format("sandbox driver '{}' is not available", a->agent.sandbox.driver));
    }
    auto ss = std::make_unique<SessionSandbox>();
    ss->root = SandboxRoot(a->id);
    roots_->Take(ss->root);
    ss->roots = roots_;
    std::error_code ec;
    // Files left by an earlier run of agentd are newer than (or equal to) the last snapshot.
    bool on_host = std::filesystem::exists(ss->root + "/workspace", ec);
    std::filesystem::create_directories(ss->root, ec);
    if (ec) return unavailable("cannot create the sandbox folder: " + ec.message());
    sandbox::SandboxSpec spec;
    spec.id = a->id + "-" + NewId("");
    spec.root = ss->root;
    spec.limits = a->agent.sandbox.limits;
    const sandbox::Limits& dl = options_.sandbox_defaults;
    if (spec.limits.memory_mb <= 0) spec.limits.memory_mb = dl.memory_mb;
    if (spec.limits.cpus <= 0) spec.limits.cpus = dl.cpus;
    if (spec.limits.pids <= 0) spec.limits.pids = dl.pids;
    if (spec.limits.disk_mb <= 0) spec.limits.disk_mb = dl.disk_mb;
    if (spec.limits.timeout_ms <= 0) spec.limits.timeout_ms = dl.timeout_ms;
    spec.read_only_paths = options_.sandbox_read_only_paths;
    if (!a->agent.sandbox.egress.empty()) {
      std::weak_ptr<Actor> weak = a;
      sandbox::egress::EgressPolicy policy = a->agent.sandbox.egress;
      spec.on_egress_connection = [this, weak, policy, id = a->id](int fd) {
        egress_proxy_->Serve(
            fd, policy,
            [this, weak](const sandbox::egress::EgressEvent& e) { RecordEgress(weak, e); }, id);
      };
    }
    // A sandbox hibernated with live MCP servers resumes from its image; when it cannot,
    // the servers start afresh on the workspace as the image left it. Either way the
    // journal says which.
    std::optional<Json> resumed_event;
    const std::string image = SessionSandbox::ImageDir(ss->root);
    if (on_host && std::filesystem::exists(image, ec)) {
      auto resumed = ResumeSandbox(*d->second, spec, image, ss.get());
      if (resumed.ok()) {
        ss->box = std::move(resumed).value();
        Json names = Json::array();
        for (const auto& [name, live] : ss->resumed_servers) names.push_back(name);
        resumed_event = Json{{"from", "checkpoint"}, {"processes", std::move(names)}};
      } else {
        spdlog::warn("session {}: sandbox not resumed from its checkpoint: {}", a->id,
                     resumed.status().ToString());
        resumed_event = Json{{"from", "workspace"},
                             {"reason", "the checkpoint could not be resumed: " +
                                            resumed.status().message()}};
        ss->resumed_servers.clear();
      }
      sandbox::host::RemoveTree(image).IgnoreError();  // an image is resumed at most once
    }
    if (!ss->box) {
      auto box = d->second->Create(spec);
      if (!box.ok()) return unavailable("the sandbox did not start: " + box.status().message());
      ss->box = std::move(box).value();
    }
    ss->driver = d->second;
    if (!on_host && !manifest.empty()) {
      auto restored = sandbox::workspace::RestoreBlocking(manifest, *store_, a->tenant_id,
                                                          ss->box->workspace());
      if (!restored.ok()) {
        ss->dirty = true;  // keep the root for inspection rather than discarding it
        return unavailable("the workspace could not be restored: " + restored.status().message());
      }
      ss->manifest = std::move(restored).value();
    }
    std::lock_guard lock(a->mu);
    a->sandbox = std::move(ss);
    if (resumed_event && !a->state.current_turn.empty()) {
      Stage(*a, ev::kSandboxResumed, a->state.current_turn, std::move(*resumed_event))
          .IgnoreError();
    }
  }
  return Status::OK();
}

Result<std::unique_ptr<sandbox::Sandbox>> Engine::ResumeSandbox(
    sandbox::SandboxDriver& driver, const sandbox::SandboxSpec& spec, const std::string& image,
    SessionSandbox* ss) {
  if (!driver.capabilities().Enforces("checkpoint")) {
    return FailedPrecondition("the sandbox driver cannot checkpoint on this host");
  }
  std::ifstream in(image + "/agentd-live.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSIGN_OR_RETURN(Json live, ParseJson(text, "the checkpoint's agentd-live.json"));
  if (!live.is_object() || live.value("format", 0) != 1 || !live.contains("servers") ||
      !live["servers"].is_object()) {
    return InvalidArgument("the checkpoint's agentd-live.json is not one this agentd wrote");
  }
  ASSIGN_OR_RETURN(auto box, driver.Resume(spec, image));
  std::lock_guard lock(ss->mu);
  for (const auto& [name, server] : live["servers"].items()) {
    if (!server.is_object() || !server.contains("process") ||
        !server["process"].is_number_integer()) {
      continue;
    }
    ss->resumed_servers[name] = {server["process"].get<int64_t>(),
                                 server.value("session", Json())};
  }
  return box;
}

// ---------------------------------------------------------------------------------------
// MCP servers

namespace {

// A header or environment value, with "env:NAME" read from agentd's environment.
Result<std::string> ResolveValue(const std::string& server, const std::string& key,
                                 const std::string& value) {
  if (value.rfind("env:", 0) != 0) return value;
  const char* v = std::getenv(value.substr(4).c_str());
  if (v == nullptr) {
    return FailedPrecondition(fmt::format("MCP server '{}': '{}' names environment variable '{}', "
                                          "which agentd does not have",
                                          server, key, value.substr(4)));
  }
  return std::string(v);
}

// What the model reads of a tool result: the text when that is all there is, else the
// content blocks and structured content as JSON.
std::string RenderMcpResult(const tools::mcp::CallResult& r) {
  std::string text;
  bool only_text = r.structured_content.is_null();
  for (const auto& block : r.content) {
    if (block.is_object() && block.value("type", "") == "text" && block.contains("text") &&
        block["text"].is_string()) {
      text += (text.empty() ? "" : "\n") + block["text"].get<std::string>();
    } else {
      only_text = false;
    }
  }
  if (only_text) return text;
  Json j = {{"content", r.content}};
  if (!r.structured_content.is_null()) j["structuredContent"] = r.structured_content;
  return DumpJson(j);
}

// Host and port of an http(s) URL.
bool UrlHostPort(const std::string& url, std::string* host, uint16_t* port) {
  size_t scheme = url.find("://");
  if (scheme == std::string::npos) return false;
  bool https = url.compare(0, scheme, "https") == 0;
  std::string rest = url.substr(scheme + 3);
  rest = rest.substr(0, rest.find_first_of("/?#"));
  rest = rest.substr(rest.find('@') == std::string::npos ? 0 : rest.find('@') + 1);
  std::string p;
  if (!rest.empty() && rest[0] == '[') {
    size_t close = rest.find(']');
    if (close == std::string::npos) return false;
    *host = rest.substr(1, close - 1);
    if (close + 1 < rest.size() && rest[close + 1] == ':') p = rest.substr(close + 2);
  } else {
    size_t colon = rest.rfind(':');
    *host = rest.substr(0, colon);
    if (colon != std::string::npos) p = rest.substr(colon + 1);
  }
  int value = p.empty() ? (https ? 443 : 80) : std::atoi(p.c_str());
  if (host->empty() || value <= 0 || value > 65535) return false;
  *port = static_cast<uint16_t>(value);
  return true;
}

}  // namespace

Result<tools::mcp::McpClient*> Engine::McpClientFor(const std::shared_ptr<Actor>& a,
                                                    const ToolDef& def,
                                                    const std::string& manifest,
                                                    const std::string& turn_id) {
  {
    std::lock_guard lock(a->mu);
    auto it = a->mcp.find(def.name);
    if (it != a->mcp.end()) return it->second.get();
  }
  tools::mcp::ClientOptions options;
  options.server_name = def.name;
  std::unique_ptr<tools::mcp::McpClient> client;
  if (!def.command.empty()) {
    // A stdio server runs in the session's sandbox, restarted there when it dies.
    RETURN_IF_ERROR(EnsureSandbox(a, manifest));
    sandbox::SpawnRequest spawn;
    spawn.argv = def.command;
    for (const auto& [k, v] : def.env) {
      ASSIGN_OR_RETURN(spawn.env[k], ResolveValue(def.name, k, v));
    }
    SessionSandbox* ss = a->sandbox.get();
    sandbox::Sandbox* box = ss->box.get();
    // Every process started for the server is remembered, so hibernation can name it.
    tools::mcp::ProcessFactory factory = [ss, box, spawn,
                                          name = def.name]() -> Result<std::unique_ptr<sandbox::Process>> {
      ASSIGN_OR_RETURN(auto p, box->Spawn(spawn));
      std::lock_guard lock(ss->mu);
      ss->mcp_process[name] = ss->driver->ProcessId(*p);
      return p;
    };
    std::optional<std::pair<int64_t, Json>> resumed;
    {
      std::lock_guard lock(ss->mu);
      if (auto it = ss->resumed_servers.find(def.name); it != ss->resumed_servers.end()) {
        resumed = std::move(it->second);
        ss->resumed_servers.erase(it);
      }
    }
    if (resumed) {
      // The server kept running in the checkpoint: take it over, state and session intact.
      auto live = ss->driver->Reattach(*box, resumed->first);
      auto taken = live.ok() ? tools::mcp::McpClient::ResumeStdioBlocking(
                                   options, factory, std::move(live).value(), resumed->second)
                             : Result<std::unique_ptr<tools::mcp::McpClient>>(live.status());
      if (taken.ok()) {
        std::lock_guard lock(ss->mu);
        ss->mcp_process[def.name] = resumed->first;
        client = std::move(taken).value();
      } else {
        spdlog::warn("session {}: MCP server '{}' could not be taken over after the sandbox "
                     "resumed ({}); starting it afresh",
                     a->id, def.name, taken.status().ToString());
      }
    }
    if (!client) {
      ASSIGN_OR_RETURN(client, tools::mcp::McpClient::ConnectStdioBlocking(options, factory));
    }
  } else {
    // An HTTP server is reached only where the agent's egress list allows.
    std::string host;
    uint16_t port = 0;
    if (!UrlHostPort(def.url, &host, &port)) {
      return InvalidArgument(fmt::format("MCP server '{}': bad URL", def.name));
    }
    const auto& policy = a->agent.sandbox.egress;
    if (policy.Match(host, port) == nullptr) {
      return PermissionDenied(fmt::format("MCP server '{}' at {}:{} is not allowed: not in the "
                                          "agent's sandbox.egress list",
                                          def.name, host, port));
    }
    // Decided as the egress proxy decides, on the addresses the name has now; the client
    // then connects to the address checked, never to a later answer of the resolver.
    auto addrs = egress_proxy_->CheckDestination(policy, host, port);
    if (!addrs.ok()) {
      return Status(addrs.status().code(),
                    fmt::format("MCP server '{}': {}", def.name, addrs.status().message()));
    }
    tools::mcp::HttpTarget target;
    target.url = def.url;
    target.connect_address = addrs->front().ToString();
    for (const auto& [k, v] : def.headers) {
      ASSIGN_OR_RETURN(std::string value, ResolveValue(def.name, k, v));
      target.headers.emplace_back(k, std::move(value));
    }
    // Who the connection acts for: the principal of the turn that opens it. Every request
    // gets a token minted for it (tokens live minutes, connections longer); the secrets
    // are opened once, for that principal, under the policy, and audited.
    std::string principal_id;
    std::vector<ToolSecret> secrets;
    {
      std::lock_guard lock(a->mu);
      auto t = a->state.open_turns.find(turn_id);
      if (t == a->state.open_turns.end()) {
        return FailedPrecondition(
            fmt::format("MCP server '{}': no turn to connect for", def.name));
      }
      principal_id = t->second.principal_id;
      if (auto refused = OpenToolSecretsLocked(*a, t->second, "", def, &secrets)) {
        FlushLocked(*a).IgnoreError();
        return PermissionDenied(fmt::format("MCP server '{}': {}", def.name, refused->message));
      }
      if (!secrets.empty()) RETURN_IF_ERROR(FlushLocked(*a));  // audited before used
    }
    for (const auto& secret : secrets) SetHeader(target.headers, secret.target, secret.value);
    if (options_.signing_key != nullptr) {
      target.fresh_headers = [this, claims = ToolClaims(*a, principal_id, def.url)]()
          -> std::vector<std::pair<std::string, std::string>> {
        return {{"Authorization", MintBearer(claims)}};
      };
    }
    auto connected = tools::mcp::McpClient::ConnectHttpBlocking(options, target);
    for (auto& h : target.headers) sodium_memzero(h.second.data(), h.second.size());
    ASSIGN_OR_RETURN(client, std::move(connected));
  }
  std::lock_guard lock(a->mu);
  auto& slot = a->mcp[def.name];
  if (!slot) slot = std::move(client);
  return slot.get();
}

std::vector<model::ToolSpec> Engine::ListMcpTools(const std::shared_ptr<Actor>& a,
                                                  const std::string& manifest,
                                                  const std::string& turn_id) {
  std::vector<model::ToolSpec> specs;
  std::map<std::string, Json> schemas;
  for (const auto& def : a->agent.tools) {
    if (def.type != "mcp") continue;
    auto client = McpClientFor(a, def, manifest, turn_id);
    Result<std::vector<tools::mcp::McpTool>> listed =
        client.ok() ? (*client)->ListToolsBlocking() : Result<std::vector<tools::mcp::McpTool>>(client.status());
    if (!listed.ok()) {
      // The model goes without this server's tools this time; the next call tries again.
      spdlog::warn("session {}: MCP server '{}': {}", a->id, def.name, listed.status().ToString());
      continue;
    }
    for (const auto& t : *listed) {
      auto name = tools::mcp::NamespacedToolName(def.name, t.name);
      if (!name.ok()) {
        spdlog::warn("session {}: {}", a->id, name.status().message());
        continue;
      }
      std::string description = t.description.empty() ? t.title : t.description;
      specs.push_back({*name, description, t.input_schema});
      schemas[*name] = t.input_schema;
    }
  }
  std::lock_guard lock(a->mu);
  a->mcp_schemas = std::move(schemas);
  return specs;
}

tools::ToolOutcome Engine::RunMcp(const std::shared_ptr<Actor>& a, const ToolDef& server,
                                  const std::string& tool, const Json& args,
                                  const std::string& manifest, const std::string& turn_id,
                                  const std::string& call_id,
                                  std::vector<std::pair<std::string, std::string>> headers) {
  auto client = McpClientFor(a, server, manifest, turn_id);
  if (!client.ok()) return NotSent(client.status().message());
  if (!server.command.empty()) {
    std::lock_guard lock(a->mu);
    if (a->sandbox) a->sandbox->dirty = true;  // the server may have changed files
  }
  tools::mcp::CallOptions options;
  options.timeout = std::chrono::milliseconds(server.timeout_ms);
  options.headers = std::move(headers);
  Actor* raw = a.get();
  options.should_abort = [this, raw] { return ShouldAbort(*raw); };
  // The server's progress reports reach the journal (and so every event stream) as they
  // come: the first, the last and at most four a second in between.
  auto last_progress = std::make_shared<std::optional<std::chrono::steady_clock::time_point>>();
  options.on_progress = [this, raw, turn_id, call_id,
                         last_progress](const tools::mcp::ProgressUpdate& p) {
    auto now = std::chrono::steady_clock::now();
    bool final = p.total && p.progress >= *p.total;
    if (*last_progress && !final && now - **last_progress < std::chrono::milliseconds(250)) return;
    *last_progress = now;
    Json data = {{"call_id", call_id}, {"progress", p.progress}};
    if (p.total) data["total"] = *p.total;
    if (!p.message.empty()) data["message"] = p.message.substr(0, 1024);
    std::lock_guard lock(raw->mu);
    if (raw->broken || raw->state.current_turn != turn_id) return;
    if (Stage(*raw, ev::kToolCallProgress, turn_id, std::move(data)).ok()) {
      FlushLocked(*raw).IgnoreError();
    }
  };
  auto result = (*client)->CallToolBlocking(tool, args, options);
  for (auto& h : options.headers) sodium_memzero(h.second.data(), h.second.size());
  tools::ToolOutcome out;
  if (!result.ok()) {
    const Status& st = result.status();
    switch (st.code()) {
      case StatusCode::kCancelled:
        out.kind = tools::ToolOutcome::Kind::kRetryable;
        out.output = "cancelled";
        break;
      case StatusCode::kUnavailable:       // the server died; it restarts on the next call
      case StatusCode::kDeadlineExceeded:  // no answer in time
      case StatusCode::kAborted:
        out.kind = tools::ToolOutcome::Kind::kRetryable;
        out.output = fmt::format("MCP server '{}': {}", server.name, st.message());
        break;
      default:
        out.kind = tools::ToolOutcome::Kind::kToolError;
        out.output = fmt::format("MCP server '{}': {}", server.name, st.message());
    }
    return out;
  }
  out.output = RenderMcpResult(*result);
  out.kind = result->is_error ? tools::ToolOutcome::Kind::kToolError : tools::ToolOutcome::Kind::kOk;
  return out;
}

void Engine::SnapshotWorkspaceLocked(Actor& a, const std::string& turn_id) {
  SessionSandbox& ss = *a.sandbox;
  auto r = sandbox::workspace::Snapshot(ss.box->workspace(), ss.manifest ? &*ss.manifest : nullptr,
                                        *store_, a.tenant_id, a.staged);
  if (!r.ok()) {
    // The files stay on the host (the sandbox stays dirty) and the next turn end tries again.
    spdlog::error("session {}: workspace snapshot failed: {}", a.id, r.status().ToString());
    return;
  }
  ss.dirty = false;
  if (r->manifest_hash == a.state.workspace_manifest) {
    // Nothing changed since the snapshot the journal already names: no event, no blobs.
    ss.manifest = std::move(r->manifest);
    return;
  }
  Stage(a, ev::kWorkspaceSnapshot, turn_id,
        {{"manifest", r->manifest_hash},
         {"files", r->stats.files},
         {"bytes", r->stats.bytes_total},
         {"new_blobs", r->stats.blobs_new}})
      .IgnoreError();
  ss.manifest = std::move(r->manifest);
}

void Engine::RecordEgress(const std::weak_ptr<Actor>& actor,
                          const sandbox::egress::EgressEvent& e) {
  if (e.phase != sandbox::egress::EgressEvent::Phase::kDecided) return;
  std::shared_ptr<Actor> a = actor.lock();
  if (!a) return;
  Json data = {{"method", e.method}, {"host", e.host}, {"port", e.port},
               {"address", e.address}, {"allowed", e.allowed}, {"status", e.status}};
  if (!e.reason.empty()) data["reason"] = e.reason;
  std::lock_guard lock(a->mu);
  // Journal events belong to a turn; a connection outside one (a long-lived MCP server
  // between turns) is logged only.
  if (a->state.current_turn.empty() || a->broken) {
    spdlog::info("session {}: egress {} {}:{} {}{}", a->id, e.method, e.host, e.port,
                 e.allowed ? "allowed" : "refused", e.reason.empty() ? "" : ": " + e.reason);
    return;
  }
  Stage(*a, ev::kEgressConnection, a->state.current_turn, std::move(data)).IgnoreError();
}

Result<std::string> Engine::WorkspaceManifest(const std::string& session_id,
                                              std::string* tenant_id) {
  ASSIGN_OR_RETURN(auto a, Acquire(session_id));
  std::string manifest;
  {
    std::lock_guard lock(a->mu);
    manifest = a->state.workspace_manifest;
  }
  *tenant_id = a->tenant_id;
  Release(a);
  return manifest;
}

Result<Json> Engine::ListWorkspace(const std::string& session_id) {
  std::string tenant_id;
  ASSIGN_OR_RETURN(std::string manifest, WorkspaceManifest(session_id, &tenant_id));
  Json data = Json::array();
  bool truncated = false;
  std::string host = SandboxRoot(session_id) + "/workspace";
  std::error_code ec;
  if (std::filesystem::exists(host, ec)) {
    ASSIGN_OR_RETURN(auto files, tools::WorkspaceFiles::Open(host));
    ASSIGN_OR_RETURN(auto entries, files.List("", true, 10000, &truncated));
    for (const auto& e : entries) {
      Json j = {{"path", e.path}, {"type", e.type}};
      if (e.type == "file") j["size"] = e.size;
      data.push_back(std::move(j));
    }
  } else if (!manifest.empty()) {
    ASSIGN_OR_RETURN(auto m, sandbox::workspace::LoadManifest(manifest, *store_, tenant_id));
    for (const auto& e : m.entries) {
      using sandbox::workspace::EntryType;
      Json j = {{"path", e.path},
                {"type", e.type == EntryType::kDir    ? "dir"
                         : e.type == EntryType::kFile ? "file"
                                                      : "symlink"}};
      if (e.type == EntryType::kFile) j["size"] = e.size;
      if (data.size() >= 10000) {
        truncated = true;
        break;
      }
      data.push_back(std::move(j));
    }
  }
  return Json{{"object", "list"}, {"data", std::move(data)}, {"truncated", truncated}};
}

Result<std::string> Engine::ReadWorkspaceFile(const std::string& session_id,
                                              const std::string& path, size_t max_bytes) {
  std::string tenant_id;
  ASSIGN_OR_RETURN(std::string manifest, WorkspaceManifest(session_id, &tenant_id));
  RETURN_IF_ERROR(tools::WorkspaceFiles::CheckPath(path));
  std::string host = SandboxRoot(session_id) + "/workspace";
  std::error_code ec;
  if (std::filesystem::exists(host, ec)) {
    ASSIGN_OR_RETURN(auto files, tools::WorkspaceFiles::Open(host));
    return files.ReadBytes(path, max_bytes);
  }
  if (manifest.empty()) return NotFound(fmt::format("'{}' does not exist", path));
  return sandbox::workspace::ReadSnapshotFile(manifest, path, *store_, tenant_id, max_bytes);
}

void Engine::DrainBlocking() {
  draining_ = true;
  std::vector<std::shared_ptr<Actor>> resident;
  {
    std::lock_guard lock(actors_mu_);
    for (auto& [id, a] : actors_) resident.push_back(a);
  }
  for (auto& a : resident) {
    std::lock_guard lock(a->mu);  // so a worker between its check and its wait sees the flag
    a->cv.notify_all();
  }
  {
    std::lock_guard lock(watch_mu_);
    for (auto& [id, w] : watches_) w->cv.notify_all();
  }
  std::unique_lock lock(drain_mu_);
  if (!drain_cv_.wait_for(lock, options_.drain_timeout,
                          [this] { return active_workers_.load() == 0; })) {
    spdlog::warn("drain: {} step(s) still running after {} ms; abandoning them (they resume "
                 "on the next start)",
                 active_workers_.load(), options_.drain_timeout.count());
    abandon_ = true;
    drain_cv_.wait_for(lock, std::chrono::seconds(10),
                       [this] { return active_workers_.load() == 0; });
  }
}

}  // namespace agentd::engine
