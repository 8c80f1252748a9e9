// The audit log: what was asked of agentd, by whom, and what came of it, kept apart from the
// debug logs (ARCHITECTURE.md, "Identity, policy, audit").
//
// Each tenant has its own chain of entries (the empty tenant id is the system chain, for
// requests that name no tenant, such as a failed authentication). Entries are numbered 1, 2,
// 3, ... and each one's hash covers the hash of the one before, so a changed, removed,
// inserted or reordered entry breaks the chain. Checkpoints sign a chain's head with agentd's
// Ed25519 key, so that a chain rewritten from some point on with fresh hashes no longer
// matches, and a chain cut short ends before its last checkpoint. The byte encodings that are
// hashed and signed are in docs/state-format.md, "Audit log"; verify.h checks a chain.
//
// Entries ride in the store's write batches: the store's single writer numbers and links
// them at commit time, in commit order (store.h AuditRow), through ChainFunction(), which
// the backend must be opened with (SqliteOptions::audit_chain).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "common/clock.h"
#include "common/json.h"
#include "common/status.h"
#include "store/store.h"

namespace agentd::audit {

// The prev_hash of a chain's first entry.
inline const std::string kGenesisHash(64, '0');

struct AuditEntry {
  std::string tenant_id;  // "" is the system chain
  int64_t seq = 0;        // dense per tenant chain, from 1; set at commit
  int64_t time_ms = 0;    // set by AuditLog when 0
  std::string principal;  // the acting principal's id, or ""
  std::string action;     // e.g. "sessions.create", "tool.call", "policy.deny"
  std::string resource;   // e.g. "sessions/ses_..."
  std::string decision;   // "allow", "deny" or ""
  std::string result;     // e.g. "201", "ok", "error: ..."
  // A JSON object's text with the rest (agent_id, session_id, turn_id, call_id,
  // args_sha256, sid, reason, ...). AuditLog stores it in canonical form (CanonicalData).
  std::string data = "{}";
  std::string prev_hash;  // set at commit
  std::string hash;       // set at commit
};

// A signed statement that a tenant's chain had `head_hash` at `seq`.
struct Checkpoint {
  std::string tenant_id;
  int64_t seq = 0;
  std::string head_hash;
  int64_t time_ms = 0;
  std::string key_id;
  std::string signature;  // base64url (no padding) of the Ed25519 signature of CheckpointMessage
};

// ---- the formats (docs/state-format.md, "Audit log") ------------------------------------

// The bytes an entry's hash covers after prev_hash: every field but prev_hash and hash.
std::string EncodeEntry(const AuditEntry& entry);
// Lowercase hex BLAKE2b-256 of prev_hash || EncodeEntry(entry).
std::string EntryHash(std::string_view prev_hash, const AuditEntry& entry);
// The bytes a checkpoint's signature covers.
std::string CheckpointMessage(const Checkpoint& checkpoint);
// `text` as canonical JSON (sorted keys, no whitespace); "" becomes "{}". Fails with
// InvalidArgument unless it is a JSON object.
Result<std::string> CanonicalData(std::string_view text);

// The chaining function the store's writer calls for each entry (store.h AuditChainFn).
store::AuditChainFn ChainFunction();

store::AuditRow ToRow(const AuditEntry& entry);
AuditEntry FromRow(const store::AuditRow& row);
store::AuditCheckpointRow ToRow(const Checkpoint& checkpoint);
Checkpoint FromRow(const store::AuditCheckpointRow& row);

// The API's JSON of an entry: every field, `time_ms` as the hashed integer and `time` as
// RFC 3339 beside it, and `data` as the object it holds (or as the stored text, a string,
// when that text is not canonical JSON, so that a verifier can still hash what is stored).
Json EntryToJson(const AuditEntry& entry);
Result<AuditEntry> EntryFromJson(const Json& json);
Json CheckpointToJson(const Checkpoint& checkpoint);
Result<Checkpoint> CheckpointFromJson(const Json& json);

// ---- signing ------------------------------------------------------------------------------

// Who signs checkpoints: a key id and a function returning the 64-byte Ed25519 signature of
// a message. The daemon owns the key; an empty `sign` means checkpoints are not written.
struct Signer {
  std::string key_id;
  std::function<Result<std::string>(std::string_view message)> sign;
};

// A Signer over a libsodium Ed25519 secret key (crypto_sign_SECRETKEYBYTES = 64 bytes: the
// seed followed by the public key). Fails with InvalidArgument on a key of another length.
Result<Signer> Ed25519Signer(std::string key_id, std::string secret_key);

// ---- the log ------------------------------------------------------------------------------

struct AuditOptions {
  int64_t checkpoint_every = 1000;  // sign a tenant's head after this many new entries...
  std::chrono::milliseconds checkpoint_interval{10000};  // ...or this long after its last
  bool checkpoint_thread = true;  // false: only CheckpointBlocking() signs (tools, tests)
  int max_page = 1000;      // largest `limit` Query accepts
  int default_page = 100;   // Query's `limit` when 0
};

struct AuditQuery {
  store::AuditFilter filter;  // filter.tenant_id selects the chain
  std::string cursor;         // next_cursor of the previous page; "" for the first
  int limit = 0;              // 0: AuditOptions::default_page
};

// Appends entries and signs checkpoints of the chains' heads from a thread of its own.
// Thread-safe. The store must outlive it; Close() (or the destructor) stops the thread after
// a last checkpoint of every chain that has entries past its last one.
class AuditLog {
 public:
  AuditLog(store::Store& store, Signer signer, AuditOptions options = {},
           Clock* clock = SystemClock::Default());
  ~AuditLog();
  AuditLog(const AuditLog&) = delete;
  AuditLog& operator=(const AuditLog&) = delete;

  // Writes `entry` in a batch of its own; returns after it is durable. Fails with
  // InvalidArgument when entry.data is not a JSON object, or with the store's error.
  Status AppendBlocking(AuditEntry entry);
  // Adds `entry` to `batch`, which the caller commits: the entry is durable exactly when
  // what it describes is. Same validation as AppendBlocking.
  Status Stage(store::WriteBatch& batch, AuditEntry entry);

  // Signs the tenant's current head unless a checkpoint covers it already; returns the new
  // checkpoint, or nullopt when none was needed (or the log has no signer).
  Result<std::optional<Checkpoint>> CheckpointBlocking(const std::string& tenant_id);

  // A page of `GET /v1/audit`: {"data": [entry...], "has_more", "next_cursor"}. Fails with
  // InvalidArgument on a bad cursor or limit.
  Result<Json> Query(const AuditQuery& query);
  // `GET /v1/audit/checkpoints`: {"data": [checkpoint...]} of one tenant, in seq order.
  Result<Json> Checkpoints(const std::string& tenant_id);

  // Stops the checkpointer after a last round. Idempotent.
  void Close();

 private:
  Status Prepare(AuditEntry& entry);
  void NoteStaged(const std::string& tenant_id);
  void RunCheckpointer();

  store::Store& store_;
  const Signer signer_;
  const AuditOptions options_;
  Clock* const clock_;

  std::mutex mu_;
  std::condition_variable cv_;
  // Entries staged per tenant since its last checkpoint round; guarded by mu_.
  std::map<std::string, int64_t> pending_;
  std::set<std::string> due_;  // tenants past checkpoint_every; guarded by mu_
  bool closing_ = false;       // guarded by mu_
  std::mutex checkpoint_mu_;   // one checkpoint at a time
  std::map<std::string, int64_t> last_checkpoint_;  // guarded by checkpoint_mu_
  std::thread thread_;
};

}  // namespace agentd::audit
