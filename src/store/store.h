// The Store: agentd's durable state behind one interface (ARCHITECTURE.md, "Storage").
//
// The journal (`events`) is the truth; `sessions`, `turns` and `snapshots` are projections
// of it, written in the same atomic batch as the events they derive from, so they are never
// ahead of or behind the journal on disk. Agents are versioned definitions. Blobs are
// immutable, content-addressed bytes (workspace files and manifests), each held by one tenant
// and shared by that tenant's sessions that refer to it.
//
// Writes are group-committed: concurrent CommitBlocking() calls from every thread are
// gathered into one transaction (one fsync), and a caller learns its batch is written only
// after that fsync. Each batch is atomic on its own: a batch that fails (say, a duplicate seq) is rolled
// back alone and the others in the transaction still commit. Thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace agentd::store {

struct EventRecord {
  std::string session_id;
  int64_t seq = 0;  // dense per session: 1, 2, 3, ...
  std::string type;
  std::string turn_id;  // empty for session-level events
  int64_t time_ms = 0;
  std::string data;  // JSON object text
};

struct SessionRow {
  std::string id;
  std::string agent_id;
  int64_t agent_version = 0;
  std::string status;    // idle | running | requires_action | needs_attention
  std::string metadata;  // JSON object text
  int64_t created_ms = 0;
  int64_t updated_ms = 0;
  int64_t last_seq = 0;
  bool active = false;  // has a queued or unfinished turn the engine must drive
  std::string tenant_id;
};

struct TurnRow {
  std::string session_id;
  std::string id;
  int64_t ordinal = 0;  // 1 for the session's first turn
  std::string status;
  std::string idempotency_key;  // empty when none
  std::string body;             // the turn object as served by the API (JSON text)
};

struct SnapshotRow {
  std::string session_id;
  int64_t seq = 0;  // state folded through this event
  std::string state;  // JSON text (docs/state-format.md)
};

struct AgentRow {
  std::string id;
  int64_t version = 0;
  std::string name;
  std::string spec;  // the full agent object (JSON text)
  int64_t created_ms = 0;
  std::string tenant_id;
};

// Identity (src/identity/): who may call agentd. A principal's `body` is its JSON object
// (groups, policies, attributes) as served by the API.
struct TenantRow {
  std::string id;
  std::string name;  // unique
  int64_t created_ms = 0;
};

struct PrincipalRow {
  std::string id;
  std::string tenant_id;
  std::string name;  // unique within the tenant
  std::string kind;  // user | service
  std::string body;  // JSON object text
  int64_t created_ms = 0;
};

// An API key as stored: never the key itself, only its keyed hash.
struct ApiKeyRow {
  std::string id;
  std::string tenant_id;
  std::string principal_id;
  std::string hash;
  int64_t created_ms = 0;
  int64_t expires_ms = 0;  // 0: never
  int64_t revoked_ms = 0;  // 0: not revoked
};

// A group or a role of a tenant: a name that policies are attached to. A principal gets the
// policies of the groups it belongs to (its own and, signed in with a JWT, the token's) and
// of the roles it holds. `body` is the JSON object served by the API (policies, description).
struct PolicySetRow {
  std::string id;
  std::string tenant_id;
  std::string kind;  // group | role
  std::string name;  // unique within the tenant and kind
  std::string body;  // JSON object text
  int64_t created_ms = 0;
  int64_t updated_ms = 0;
};

// A vault entry: the value sealed by identity/vault.h, never the value itself.
struct SecretRow {
  std::string tenant_id;
  std::string name;
  std::string sealed;
  int64_t created_ms = 0;
  int64_t updated_ms = 0;
};

// Immutable bytes named by their content, held by one tenant. The store does not compute or
// check `hash`: the writer names the blob (workspaces use the BLAKE2b-256 hex of the
// uncompressed bytes) and the reader verifies what it gets back. Two writes of one hash in
// one tenant are the same blob; the same bytes in two tenants are two blobs, and no read of
// one tenant sees (or hints at) another tenant's, so that deduplication tells a tenant
// nothing about what others store.
struct BlobRow {
  std::string tenant_id;  // not empty
  std::string hash;       // the content address; 1 to 128 bytes
  std::string data;       // the bytes as stored (compressed unless codec is empty)
  int64_t size = 0;       // length of the uncompressed bytes
  std::string codec;      // "" (data is the content itself) or "zstd"
};

// One entry of a tenant's audit log (src/audit/audit.h, docs/state-format.md "Audit log").
// The writer fills in `seq`, `prev_hash` and `hash` when the batch commits, in commit order,
// through the chaining function the backend was opened with; what a caller puts there is
// overwritten.
struct AuditRow {
  std::string tenant_id;  // "" is the system chain
  int64_t seq = 0;        // dense per tenant: 1, 2, 3, ...
  int64_t time_ms = 0;
  std::string principal;
  std::string action;
  std::string resource;
  std::string decision;  // "allow", "deny" or ""
  std::string result;
  std::string data;  // JSON object text
  std::string prev_hash;
  std::string hash;
};

// A signed statement that a tenant's audit chain had `head_hash` at `seq`.
struct AuditCheckpointRow {
  std::string tenant_id;
  int64_t seq = 0;
  std::string head_hash;
  int64_t time_ms = 0;
  std::string key_id;
  std::string signature;  // base64url
};

// Selects audit entries of one tenant; empty strings and zeros select everything.
struct AuditFilter {
  std::string tenant_id;
  int64_t after_seq = 0;
  std::string action;
  std::string principal;
  std::string decision;
  std::string resource_prefix;
  int64_t since_ms = 0;  // time_ms >= since_ms
  int64_t until_ms = 0;  // time_ms < until_ms; 0 means no bound
};

// Makes `row` the next link of its tenant's chain: given the chain's head hash (64 '0's for
// an empty chain) and `row` with its seq set, sets row.prev_hash and row.hash.
using AuditChainFn = std::function<void(AuditRow& row, const std::string& prev_hash)>;

// One atomic unit of writes.
struct WriteBatch {
  std::vector<EventRecord> events;
  std::vector<SessionRow> sessions;  // upserts
  std::vector<TurnRow> turns;        // upserts
  std::vector<SnapshotRow> snapshots;  // replace the session's snapshot
  std::vector<AgentRow> agents;        // inserts; an existing (id, version) is AlreadyExists
  std::vector<std::string> delete_sessions;  // removes a session and everything derived
  // Insert-or-ignore: a blob whose (tenant, hash) is stored already (or earlier in this
  // batch) is not written again; an empty tenant id is InvalidArgument. Deleting a session
  // leaves blobs alone, since the tenant's other sessions may share them; blobs no journal
  // refers to any more are left for a garbage collector (not yet written) that marks from
  // every session's journal and sweeps the rest.
  std::vector<BlobRow> blobs;
  std::vector<TenantRow> tenants;        // inserts; a taken id or name is AlreadyExists
  // Upserts by id (kind, name and tenant are kept); a taken (tenant, name) is AlreadyExists.
  std::vector<PrincipalRow> principals;
  // Upserts by id (only body and updated_ms change); a taken (tenant, kind, name) is
  // AlreadyExists.
  std::vector<PolicySetRow> policy_sets;
  std::vector<std::string> delete_policy_sets;  // ids
  std::vector<ApiKeyRow> api_keys;       // upserts (a revocation rewrites the row)
  std::vector<SecretRow> secrets;        // upserts by (tenant, name)
  // Sessions, agents and blobs stored before tenants existed (tenant_id '') join this tenant.
  std::string adopt_untenanted;
  // Appended to their tenants' chains in this order; see AuditRow.
  std::vector<AuditRow> audit;
  // Inserts; an existing (tenant_id, seq) is AlreadyExists.
  std::vector<AuditCheckpointRow> audit_checkpoints;

  bool empty() const {
    return events.empty() && sessions.empty() && turns.empty() && snapshots.empty() &&
           agents.empty() && delete_sessions.empty() && blobs.empty() && tenants.empty() &&
           principals.empty() && policy_sets.empty() && delete_policy_sets.empty() &&
           api_keys.empty() && secrets.empty() &&
           adopt_untenanted.empty() && audit.empty() && audit_checkpoints.empty();
  }
};

struct Page {
  std::string cursor;  // opaque; empty for the first page
  int limit = 50;
};

struct SessionFilter {
  std::string tenant_id;  // empty: any
  std::string agent_id;  // empty: any
  std::string status;    // empty: any
};

struct StoreStats {
  int64_t commits = 0;  // transactions (fsyncs)
  int64_t batches = 0;  // batches inside them
  int64_t events = 0;
};

class Store {
 public:
  virtual ~Store() = default;

  // Writes `batch` and returns after the fsync that covers it (or with the error that rolled
  // it back). Blocking; the caller may end up committing other callers' batches with its own.
  virtual Status CommitBlocking(WriteBatch batch) = 0;

  virtual Result<std::vector<EventRecord>> ReadEvents(const std::string& session_id,
                                                      int64_t after_seq, int limit) = 0;
  virtual Result<std::optional<SnapshotRow>> GetSnapshot(const std::string& session_id) = 0;
  virtual Result<std::optional<SessionRow>> GetSession(const std::string& id) = 0;
  // Returns up to page.limit rows and the cursor of the next page (empty when none).
  virtual Result<std::pair<std::vector<SessionRow>, std::string>> ListSessions(
      const SessionFilter& filter, const Page& page) = 0;
  // Ids of sessions with work to drive after a restart.
  virtual Result<std::vector<std::string>> ListActiveSessions() = 0;
  virtual Result<std::optional<TurnRow>> GetTurn(const std::string& session_id,
                                                 const std::string& turn_id) = 0;
  virtual Result<std::pair<std::vector<TurnRow>, std::string>> ListTurns(
      const std::string& session_id, const Page& page) = 0;
  // version 0 means the latest.
  virtual Result<std::optional<AgentRow>> GetAgent(const std::string& id, int64_t version) = 0;
  // Latest version of each agent of `tenant_id` (every tenant's when empty).
  virtual Result<std::pair<std::vector<AgentRow>, std::string>> ListAgents(
      const std::string& tenant_id, const Page& page) = 0;
  // The blob of `tenant_id` as written, or nullopt when the tenant has none with this hash
  // (whether or not another tenant has one).
  virtual Result<std::optional<BlobRow>> GetBlob(const std::string& tenant_id,
                                                 const std::string& hash) = 0;
  // Those of `hashes` that no blob of `tenant_id` has, in their order, each once; another
  // tenant's blobs do not count. Reads committed blobs only: a blob in a batch still queued
  // counts as missing.
  virtual Result<std::vector<std::string>> MissingBlobs(const std::string& tenant_id,
                                                        const std::vector<std::string>& hashes) = 0;

  virtual Result<std::optional<TenantRow>> GetTenant(const std::string& id) = 0;
  virtual Result<std::pair<std::vector<TenantRow>, std::string>> ListTenants(const Page& page) = 0;
  virtual Result<std::optional<PrincipalRow>> GetPrincipal(const std::string& id) = 0;
  // The principal of `tenant_id` named `name` (names are unique within a tenant).
  virtual Result<std::optional<PrincipalRow>> GetPrincipalByName(const std::string& tenant_id,
                                                                 const std::string& name) = 0;
  virtual Result<std::pair<std::vector<PrincipalRow>, std::string>> ListPrincipals(
      const std::string& tenant_id, const Page& page) = 0;
  virtual Result<std::optional<PolicySetRow>> GetPolicySet(const std::string& id) = 0;
  virtual Result<std::optional<PolicySetRow>> GetPolicySetByName(const std::string& tenant_id,
                                                                 const std::string& kind,
                                                                 const std::string& name) = 0;
  virtual Result<std::pair<std::vector<PolicySetRow>, std::string>> ListPolicySets(
      const std::string& tenant_id, const std::string& kind, const Page& page) = 0;
  virtual Result<std::optional<ApiKeyRow>> GetApiKey(const std::string& id) = 0;
  virtual Result<std::vector<ApiKeyRow>> ListApiKeys(const std::string& principal_id) = 0;
  virtual Result<std::optional<SecretRow>> GetSecret(const std::string& tenant_id,
                                                     const std::string& name) = 0;
  // The tenant's secrets without their values (`sealed` left empty), by name.
  virtual Result<std::vector<SecretRow>> ListSecrets(const std::string& tenant_id) = 0;

  // Audit entries matching `filter` in seq order, at most `limit`.
  virtual Result<std::vector<AuditRow>> ReadAudit(const AuditFilter& filter, int limit) = 0;
  // The last committed entry of the tenant's chain; nullopt when it is empty.
  virtual Result<std::optional<AuditRow>> ReadAuditHead(const std::string& tenant_id) = 0;
  // The tenant's checkpoints in seq order.
  virtual Result<std::vector<AuditCheckpointRow>> ReadAuditCheckpoints(
      const std::string& tenant_id) = 0;
  // Tenants that have audit entries or checkpoints, sorted.
  virtual Result<std::vector<std::string>> ListAuditTenants() = 0;

  virtual StoreStats Stats() const = 0;
  // Waits for queued commits to finish. Later CommitBlocking calls fail with Unavailable.
  virtual void Close() = 0;
};

}  // namespace agentd::store
