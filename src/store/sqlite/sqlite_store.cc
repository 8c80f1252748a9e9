#include "store/sqlite/sqlite_store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <iterator>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace agentd::store::sqlite {
namespace {

constexpr int kSchemaVersion = 6;

// The schema of version 1; kMigrations bring it up to kSchemaVersion.
constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agents(
  id TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,
  created_ms INTEGER NOT NULL, PRIMARY KEY(id, version));
CREATE TABLE IF NOT EXISTS sessions(
  id TEXT PRIMARY KEY, agent_id TEXT NOT NULL, agent_version INTEGER NOT NULL,
  status TEXT NOT NULL, metadata TEXT NOT NULL, created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL, last_seq INTEGER NOT NULL, active INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS sessions_active ON sessions(active) WHERE active = 1;
CREATE INDEX IF NOT EXISTS sessions_agent ON sessions(agent_id);
CREATE TABLE IF NOT EXISTS events(
  session_id TEXT NOT NULL, seq INTEGER NOT NULL, type TEXT NOT NULL, turn_id TEXT NOT NULL,
  time_ms INTEGER NOT NULL, data TEXT NOT NULL, PRIMARY KEY(session_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS turns(
  session_id TEXT NOT NULL, id TEXT NOT NULL, ordinal INTEGER NOT NULL, status TEXT NOT NULL,
  idempotency_key TEXT, body TEXT NOT NULL, PRIMARY KEY(session_id, id)) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS turns_ordinal ON turns(session_id, ordinal);
CREATE UNIQUE INDEX IF NOT EXISTS turns_idem ON turns(session_id, idempotency_key)
  WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS snapshots(
  session_id TEXT PRIMARY KEY, seq INTEGER NOT NULL, state TEXT NOT NULL) WITHOUT ROWID;
)sql";

// kMigrations[i] takes a database from schema version i + 1 to i + 2, in the transaction
// that records the new version. Existing databases upgrade in place when opened.
constexpr const char* kMigrations[] = {
    // 2: content-addressed blobs. A rowid table: its rows are large, and a lookup by hash
    // reads only the index.
    R"sql(
CREATE TABLE IF NOT EXISTS blobs(
  hash TEXT NOT NULL PRIMARY KEY, size INTEGER NOT NULL, codec TEXT NOT NULL,
  data BLOB NOT NULL);
)sql",
    // 3: the audit log, one hash chain per tenant, and the signed checkpoints of its heads.
    R"sql(
CREATE TABLE IF NOT EXISTS audit_log(
  tenant_id TEXT NOT NULL, seq INTEGER NOT NULL, time_ms INTEGER NOT NULL,
  principal TEXT NOT NULL, action TEXT NOT NULL, resource TEXT NOT NULL,
  decision TEXT NOT NULL, result TEXT NOT NULL, data TEXT NOT NULL,
  prev_hash TEXT NOT NULL, hash TEXT NOT NULL, PRIMARY KEY(tenant_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit_checkpoints(
  tenant_id TEXT NOT NULL, seq INTEGER NOT NULL, head_hash TEXT NOT NULL,
  time_ms INTEGER NOT NULL, key_id TEXT NOT NULL, signature TEXT NOT NULL,
  PRIMARY KEY(tenant_id, seq)) WITHOUT ROWID;
)sql",
    // 4: tenants and who may act in them. Rows from before carry tenant '' until the daemon
    // gives them its default tenant (WriteBatch::adopt_untenanted).
    R"sql(
CREATE TABLE IF NOT EXISTS tenants(
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS principals(
  id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
  body TEXT NOT NULL, created_ms INTEGER NOT NULL, UNIQUE(tenant_id, name));
CREATE TABLE IF NOT EXISTS api_keys(
  id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, principal_id TEXT NOT NULL, hash TEXT NOT NULL,
  created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL, revoked_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS api_keys_principal ON api_keys(principal_id);
CREATE TABLE IF NOT EXISTS secrets(
  tenant_id TEXT NOT NULL, name TEXT NOT NULL, sealed BLOB NOT NULL,
  created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
  PRIMARY KEY(tenant_id, name)) WITHOUT ROWID;
ALTER TABLE agents ADD COLUMN tenant_id TEXT NOT NULL DEFAULT '';
ALTER TABLE sessions ADD COLUMN tenant_id TEXT NOT NULL DEFAULT '';
CREATE INDEX IF NOT EXISTS sessions_tenant ON sessions(tenant_id);
)sql",
    // 5: groups and roles, the names policies are attached to.
    R"sql(
CREATE TABLE IF NOT EXISTS policy_sets(
  id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
  body TEXT NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL,
  UNIQUE(tenant_id, kind, name));
)sql",
    // 6: every blob belongs to a tenant, keyed by (tenant_id, hash), so that neither a read
    // nor deduplication crosses tenants. Which blobs a session uses is written in its
    // snapshots' manifests, themselves blobs in the workspace format (zstd-compressed JSON)
    // that SQL cannot read; but only workspace.snapshot events name manifests, so a tenant
    // none of whose sessions has such an event uses no blob. Every blob is therefore copied
    // to each tenant that has a session with one: a superset of what each tenant uses, and
    // nothing it could not read before, when blobs were shared; content written from now on
    // stays with its tenant. The copies cost space once, until a garbage collector reclaims
    // what no journal of the tenant names. Sessions from before tenants have tenant '', which
    // gets its copies like any other; they join the adopting tenant with those sessions
    // (WriteBatch::adopt_untenanted).
    R"sql(
CREATE TABLE blobs_by_tenant(
  tenant_id TEXT NOT NULL, hash TEXT NOT NULL, size INTEGER NOT NULL, codec TEXT NOT NULL,
  data BLOB NOT NULL, PRIMARY KEY(tenant_id, hash));
INSERT INTO blobs_by_tenant(tenant_id, hash, size, codec, data)
  SELECT t.tenant_id, b.hash, b.size, b.codec, b.data
  FROM (SELECT DISTINCT s.tenant_id FROM sessions s WHERE EXISTS(
          SELECT 1 FROM events e WHERE e.session_id=s.id AND e.type='workspace.snapshot')) t,
       blobs b;
DROP TABLE blobs;
ALTER TABLE blobs_by_tenant RENAME TO blobs;
)sql",
};
static_assert(std::size(kMigrations) == kSchemaVersion - 1);

// Hashes asked for in one query of MissingBlobs; parameters left unbound are NULL and match
// nothing.
constexpr int kMissingBlobsChunk = 256;
constexpr size_t kMaxBlobHashBytes = 128;

// The session row is written when the session's status changes, not on every append: its
// journal position and last activity are read from the journal itself (the last event of a
// session is one step down its primary key), which keeps a step's commit to the event pages.
#define SESSION_COLUMNS                                                                    \
  "id, agent_id, agent_version, status, metadata, created_ms, "                           \
  "MAX(updated_ms, COALESCE((SELECT time_ms FROM events e WHERE e.session_id=sessions.id " \
  "ORDER BY seq DESC LIMIT 1), 0)), "                                                      \
  "COALESCE((SELECT MAX(seq) FROM events e WHERE e.session_id=sessions.id), last_seq), active, " \
  "tenant_id"

#define AUDIT_COLUMNS                                                                   \
  "tenant_id, seq, time_ms, principal, action, resource, decision, result, data, prev_hash, " \
  "hash"

// A prepared statement with RAII finalisation.
class Stmt {
 public:
  Stmt() = default;
  Stmt(sqlite3* db, const char* sql) {
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &s_, nullptr) != SQLITE_OK) {
      err_ = sqlite3_errmsg(db);
      s_ = nullptr;
    }
  }
  ~Stmt() { sqlite3_finalize(s_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  bool ok() const { return s_ != nullptr; }
  const std::string& error() const { return err_; }
  sqlite3_stmt* get() { return s_; }

  void Reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  void Bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
  }
  void BindNullable(int i, const std::string& v) {
    if (v.empty()) {
      sqlite3_bind_null(s_, i);
    } else {
      Bind(i, v);
    }
  }
  void Bind(int i, int64_t v) { sqlite3_bind_int64(s_, i, v); }
  void BindBlob(int i, const std::string& v) {
    sqlite3_bind_blob64(s_, i, v.data(), v.size(), SQLITE_STATIC);
  }
  int Step() { return sqlite3_step(s_); }
  std::string Text(int i) {
    auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s_, i));
    return p ? std::string(p, sqlite3_column_bytes(s_, i)) : std::string();
  }
  int64_t Int(int i) { return sqlite3_column_int64(s_, i); }
  std::string Blob(int i) {
    auto* p = static_cast<const char*>(sqlite3_column_blob(s_, i));
    return p ? std::string(p, sqlite3_column_bytes(s_, i)) : std::string();
  }

 private:
  sqlite3_stmt* s_ = nullptr;
  std::string err_;
};

Status SqlError(sqlite3* db, std::string_view what) {
  int code = sqlite3_extended_errcode(db);
  std::string msg = fmt::format("{}: {}", what, sqlite3_errmsg(db));
  if (code == SQLITE_CONSTRAINT_PRIMARYKEY || code == SQLITE_CONSTRAINT_UNIQUE) {
    return AlreadyExists(msg);
  }
  // A full disk or a busy database is the server's condition, not the caller's: 503.
  if ((code & 0xff) == SQLITE_FULL || (code & 0xff) == SQLITE_BUSY) {
    return Unavailable("storage unavailable: " + msg);
  }
  return Internal(msg);
}

Status Exec(sqlite3* db, const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string m = err ? err : "unknown";
    sqlite3_free(err);
    return Internal(fmt::format("sqlite: {} (in: {:.60})", m, sql));
  }
  return Status::OK();
}

Result<sqlite3*> OpenConnection(const std::string& path, bool readonly, bool full) {
  sqlite3* db = nullptr;
  int flags = SQLITE_OPEN_NOMUTEX | (readonly ? SQLITE_OPEN_READONLY
                                              : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  if (sqlite3_open_v2(path.c_str(), &db, flags, nullptr) != SQLITE_OK) {
    std::string m = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return Unavailable(fmt::format("cannot open database {}: {}", path, m));
  }
  sqlite3_busy_timeout(db, 10000);
  sqlite3_extended_result_codes(db, 1);
  if (!readonly) {
    RETURN_IF_ERROR(Exec(db, "PRAGMA journal_mode=WAL"));
    RETURN_IF_ERROR(Exec(db, full ? "PRAGMA synchronous=FULL" : "PRAGMA synchronous=NORMAL"));
  }
  RETURN_IF_ERROR(Exec(db, "PRAGMA foreign_keys=OFF; PRAGMA cache_size=-16000"));
  return db;
}

// A checkpoint cycle of the WAL (1000 pages of 4 KiB with their frame headers, the default
// auto-checkpoint) and some room for the batch that crosses it.
constexpr off_t kWalPreallocBytes = 5 << 20;

// Grows the WAL file to `bytes` with zeros, after whatever it holds. SQLite ignores what
// follows the last frame whose checksum holds, and zeros never pass that check.
Status PreallocateWal(const std::string& path, off_t bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Status::OK();  // no WAL yet: it grows as usual
  struct stat st {};
  Status result = Status::OK();
  if (::fstat(fd, &st) == 0 && st.st_size < bytes) {
    std::vector<char> zeros(1 << 20, 0);
    for (off_t at = st.st_size; at < bytes && result.ok();) {
      size_t n = static_cast<size_t>(std::min<off_t>(bytes - at, zeros.size()));
      ssize_t w = ::pwrite(fd, zeros.data(), n, at);
      if (w <= 0) {
        result = Unavailable(fmt::format("cannot grow {}: {}", path, std::strerror(errno)));
      } else {
        at += w;
      }
    }
    if (result.ok() && ::fdatasync(fd) != 0) {
      result = Unavailable(fmt::format("cannot sync {}: {}", path, std::strerror(errno)));
    }
  }
  ::close(fd);
  return result;
}

// Statements of one connection, prepared once.
class StmtCache {
 public:
  explicit StmtCache(sqlite3* db) : db_(db) {}
  Stmt* Get(const char* sql) {
    auto it = cache_.find(sql);
    if (it == cache_.end()) {
      it = cache_.emplace(sql, std::make_unique<Stmt>(db_, sql)).first;
    }
    it->second->Reset();
    return it->second.get();
  }

 private:
  sqlite3* db_;
  std::unordered_map<const char*, std::unique_ptr<Stmt>> cache_;
};

struct ReadConn {
  sqlite3* db = nullptr;
  std::unique_ptr<StmtCache> stmts;
  ~ReadConn() {
    stmts.reset();
    sqlite3_close(db);
  }
};

class SqliteStore final : public Store {
 public:
  explicit SqliteStore(SqliteOptions o) : options_(std::move(o)) {}
  ~SqliteStore() override {
    Close();
    write_stmts_.reset();
    sqlite3_close(wdb_);
  }

  Status Open() {
    if (options_.read_only) {
      closed_ = true;
      return ReadOne<std::string>("SELECT value FROM meta WHERE key='schema_version'", {},
                                  [](Stmt* s) { return s->Text(0); })
          .status();
    }
    ASSIGN_OR_RETURN(wdb_, OpenConnection(options_.path, false, options_.synchronous_full));
    RETURN_IF_ERROR(Exec(wdb_, kSchema));
    RETURN_IF_ERROR(Migrate());
    // The WAL file is kept at its size across checkpoints and restarts, and is grown once
    // to hold a full checkpoint cycle: a commit then overwrites blocks that exist, and its
    // fdatasync need not also write the file's new size (about twice as fast here).
    int persist = 1;
    sqlite3_file_control(wdb_, "main", SQLITE_FCNTL_PERSIST_WAL, &persist);
    RETURN_IF_ERROR(PreallocateWal(options_.path + "-wal", kWalPreallocBytes));
    write_stmts_ = std::make_unique<StmtCache>(wdb_);
    return Status::OK();
  }

  // Group commit with no thread of its own, as LevelDB's writers do: callers queue up; the
  // one at the front leads, committing its batch and those queued behind it (up to the cap)
  // in one transaction, one fsync, while later callers queue behind the group; then it
  // wakes the group and hands the lead to the new front. A lone caller commits on its own
  // thread with no hand-off to another.
  Status CommitBlocking(WriteBatch batch) override {
    Writer w(std::move(batch));
    std::unique_lock lock(mu_);
    if (closed_) return Unavailable("store is closed");
    writers_.push_back(&w);
    while (!w.done && &w != writers_.front()) w.cv.wait(lock);
    if (w.done) return w.status;
    size_t n = std::min<size_t>(writers_.size(), options_.max_batches_per_commit);
    std::vector<Writer*> group(writers_.begin(), writers_.begin() + static_cast<ptrdiff_t>(n));
    lock.unlock();
    // Followers stay blocked until `done`, so their batches can be read without the mutex;
    // only the front of the queue ever uses the write connection.
    CommitGroup(group);
    lock.lock();
    for (size_t i = 0; i < n; ++i) {
      Writer* x = writers_.front();
      writers_.pop_front();
      x->done = true;
      if (x != &w) x->cv.notify_one();
    }
    if (!writers_.empty()) {
      writers_.front()->cv.notify_one();
    } else {
      idle_cv_.notify_all();
    }
    return w.status;
  }

  Result<std::vector<EventRecord>> ReadEvents(const std::string& session_id, int64_t after_seq,
                                              int limit) override {
    auto conn = Borrow();
    if (!conn.ok()) return conn.status();
    auto* s = (*conn)->stmts->Get(
        "SELECT seq, type, turn_id, time_ms, data FROM events WHERE session_id=?1 AND seq>?2 "
        "ORDER BY seq LIMIT ?3");
    s->Bind(1, session_id);
    s->Bind(2, after_seq);
    s->Bind(3, static_cast<int64_t>(limit));
    std::vector<EventRecord> out;
    int rc;
    while ((rc = s->Step()) == SQLITE_ROW) {
      out.push_back({session_id, s->Int(0), s->Text(1), s->Text(2), s->Int(3), s->Text(4)});
    }
    Status st = rc == SQLITE_DONE ? Status::OK() : SqlError((*conn)->db, "read events");
    s->Reset();
    Return(std::move(*conn));
    if (!st.ok()) return st;
    return out;
  }

  Result<std::optional<SnapshotRow>> GetSnapshot(const std::string& session_id) override {
    return ReadOne<SnapshotRow>(
        "SELECT seq, state FROM snapshots WHERE session_id=?1", {session_id},
        [&](Stmt* s) { return SnapshotRow{session_id, s->Int(0), s->Text(1)}; });
  }

  Result<std::optional<SessionRow>> GetSession(const std::string& id) override {
    return ReadOne<SessionRow>(
        "SELECT " SESSION_COLUMNS " FROM sessions WHERE id=?1",
        {id}, [](Stmt* s) { return SessionFrom(s); });
  }

  Result<std::pair<std::vector<SessionRow>, std::string>> ListSessions(
      const SessionFilter& f, const Page& page) override {
    int64_t after = CursorValue(page.cursor);
    return ReadPage<SessionRow>(
        "SELECT " SESSION_COLUMNS ", rowid FROM sessions WHERE rowid>?1 AND (?2='' OR agent_id=?2) AND "
        "(?3='' OR status=?3) AND (?5='' OR tenant_id=?5) ORDER BY rowid LIMIT ?4",
        [&](Stmt* s) {
          s->Bind(1, after);
          s->Bind(2, f.agent_id);
          s->Bind(3, f.status);
          s->Bind(4, static_cast<int64_t>(page.limit + 1));
          s->Bind(5, f.tenant_id);
        },
        [](Stmt* s) { return SessionFrom(s); }, 10, page.limit);
  }

  Result<std::vector<std::string>> ListActiveSessions() override {
    auto conn = Borrow();
    if (!conn.ok()) return conn.status();
    auto* s = (*conn)->stmts->Get("SELECT id FROM sessions WHERE active=1");
    std::vector<std::string> out;
    int rc;
    while ((rc = s->Step()) == SQLITE_ROW) out.push_back(s->Text(0));
    Status st = rc == SQLITE_DONE ? Status::OK() : SqlError((*conn)->db, "list active");
    s->Reset();
    Return(std::move(*conn));
    if (!st.ok()) return st;
    return out;
  }

  Result<std::optional<TurnRow>> GetTurn(const std::string& session_id,
                                         const std::string& turn_id) override {
    return ReadOne<TurnRow>(
        "SELECT session_id, id, ordinal, status, idempotency_key, body FROM turns "
        "WHERE session_id=?1 AND id=?2",
        {session_id, turn_id}, [](Stmt* s) { return TurnFrom(s); });
  }

  Result<std::pair<std::vector<TurnRow>, std::string>> ListTurns(const std::string& session_id,
                                                                 const Page& page) override {
    int64_t after = CursorValue(page.cursor);
    return ReadPage<TurnRow>(
        "SELECT session_id, id, ordinal, status, idempotency_key, body, ordinal FROM turns "
        "WHERE session_id=?1 AND ordinal>?2 ORDER BY ordinal LIMIT ?3",
        [&](Stmt* s) {
          s->Bind(1, session_id);
          s->Bind(2, after);
          s->Bind(3, static_cast<int64_t>(page.limit + 1));
        },
        [](Stmt* s) { return TurnFrom(s); }, 6, page.limit);
  }

  Result<std::optional<AgentRow>> GetAgent(const std::string& id, int64_t version) override {
    if (version > 0) {
      return ReadOne<AgentRow>(
          "SELECT id, version, name, spec, created_ms, tenant_id FROM agents "
          "WHERE id=?1 AND version=?2",
          {id, std::to_string(version)}, [](Stmt* s) { return AgentFrom(s); });
    }
    return ReadOne<AgentRow>(
        "SELECT id, version, name, spec, created_ms, tenant_id FROM agents WHERE id=?1 "
        "ORDER BY version DESC LIMIT 1",
        {id}, [](Stmt* s) { return AgentFrom(s); });
  }

  Result<std::pair<std::vector<AgentRow>, std::string>> ListAgents(
      const std::string& tenant_id, const Page& page) override {
    int64_t after = CursorValue(page.cursor);
    return ReadPage<AgentRow>(
        "SELECT a.id, a.version, a.name, a.spec, a.created_ms, a.tenant_id, f.rowid FROM agents a "
        "JOIN agents f ON f.id=a.id AND f.version=1 "
        "WHERE f.rowid>?1 AND a.version=(SELECT MAX(version) FROM agents WHERE id=a.id) "
        "AND (?3='' OR f.tenant_id=?3) ORDER BY f.rowid LIMIT ?2",
        [&](Stmt* s) {
          s->Bind(1, after);
          s->Bind(2, static_cast<int64_t>(page.limit + 1));
          s->Bind(3, tenant_id);
        },
        [](Stmt* s) { return AgentFrom(s); }, 6, page.limit);
  }

  Result<std::optional<TenantRow>> GetTenant(const std::string& id) override {
    return ReadOne<TenantRow>("SELECT id, name, created_ms FROM tenants WHERE id=?1", {id},
                              [](Stmt* s) { return TenantFrom(s); });
  }

  Result<std::pair<std::vector<TenantRow>, std::string>> ListTenants(const Page& page) override {
    int64_t after = CursorValue(page.cursor);
    return ReadPage<TenantRow>(
        "SELECT id, name, created_ms, rowid FROM tenants WHERE rowid>?1 ORDER BY rowid LIMIT ?2",
        [&](Stmt* s) {
          s->Bind(1, after);
          s->Bind(2, static_cast<int64_t>(page.limit + 1));
        },
        [](Stmt* s) { return TenantFrom(s); }, 3, page.limit);
  }

  Result<std::optional<PrincipalRow>> GetPrincipal(const std::string& id) override {
    return ReadOne<PrincipalRow>(
        "SELECT id, tenant_id, name, kind, body, created_ms FROM principals WHERE id=?1", {id},
        [](Stmt* s) { return PrincipalFrom(s); });
  }

  Result<std::optional<PrincipalRow>> GetPrincipalByName(const std::string& tenant_id,
                                                         const std::string& name) override {
    return ReadOne<PrincipalRow>(
        "SELECT id, tenant_id, name, kind, body, created_ms FROM principals "
        "WHERE tenant_id=?1 AND name=?2",
        {tenant_id, name}, [](Stmt* s) { return PrincipalFrom(s); });
  }

  Result<std::pair<std::vector<PrincipalRow>, std::string>> ListPrincipals(
      const std::string& tenant_id, const Page& page) override {
    int64_t after = CursorValue(page.cursor);
    return ReadPage<PrincipalRow>(
        "SELECT id, tenant_id, name, kind, body, created_ms, rowid FROM principals "
        "WHERE rowid>?1 AND tenant_id=?3 ORDER BY rowid LIMIT ?2",
        [&](Stmt* s) {
          s->Bind(1, after);
          s->Bind(2, static_cast<int64_t>(page.limit + 1));
          s->Bind(3, tenant_id);
        },
        [](Stmt* s) { return PrincipalFrom(s); }, 6, page.limit);
  }

  Result<std::optional<PolicySetRow>> GetPolicySet(const std::string& id) override {
    return ReadOne<PolicySetRow>(
        "SELECT id, tenant_id, kind, name, body, created_ms, updated_ms FROM policy_sets "
        "WHERE id=?1",
        {id}, [](Stmt* s) { return PolicySetFrom(s); });
  }

  Result<std::optional<PolicySetRow>> GetPolicySetByName(const std::string& tenant_id,
                                                         const std::string& kind,
                                                         const std::string& name) override {
    return ReadOne<PolicySetRow>(
        "SELECT id, tenant_id, kind, name, body, created_ms, updated_ms FROM policy_sets "
        "WHERE tenant_id=?1 AND kind=?2 AND name=?3",
        {tenant_id, kind, name}, [](Stmt* s) { return PolicySetFrom(s); });
  }

  Result<std::pair<std::vector<PolicySetRow>, std::string>> ListPolicySets(
      const std::string& tenant_id, const std::string& kind, const Page& page) override {
    int64_t after = CursorValue(page.cursor);
    return ReadPage<PolicySetRow>(
        "SELECT id, tenant_id, kind, name, body, created_ms, updated_ms, rowid FROM policy_sets "
        "WHERE rowid>?1 AND tenant_id=?3 AND kind=?4 ORDER BY rowid LIMIT ?2",
        [&](Stmt* s) {
          s->Bind(1, after);
          s->Bind(2, static_cast<int64_t>(page.limit + 1));
          s->Bind(3, tenant_id);
          s->Bind(4, kind);
        },
        [](Stmt* s) { return PolicySetFrom(s); }, 7, page.limit);
  }

  Result<std::optional<ApiKeyRow>> GetApiKey(const std::string& id) override {
    return ReadOne<ApiKeyRow>(
        "SELECT id, tenant_id, principal_id, hash, created_ms, expires_ms, revoked_ms "
        "FROM api_keys WHERE id=?1",
        {id}, [](Stmt* s) { return ApiKeyFrom(s); });
  }

  Result<std::vector<ApiKeyRow>> ListApiKeys(const std::string& principal_id) override {
    ASSIGN_OR_RETURN(auto page,
                     ReadPage<ApiKeyRow>(
                         "SELECT id, tenant_id, principal_id, hash, created_ms, expires_ms, "
                         "revoked_ms, rowid FROM api_keys WHERE principal_id=?1 ORDER BY rowid",
                         [&](Stmt* s) { s->Bind(1, principal_id); },
                         [](Stmt* s) { return ApiKeyFrom(s); }, 7, 1 << 30));
    return std::move(page.first);
  }

  Result<std::optional<SecretRow>> GetSecret(const std::string& tenant_id,
                                             const std::string& name) override {
    return ReadOne<SecretRow>(
        "SELECT tenant_id, name, sealed, created_ms, updated_ms FROM secrets "
        "WHERE tenant_id=?1 AND name=?2",
        {tenant_id, name},
        [](Stmt* s) { return SecretRow{s->Text(0), s->Text(1), s->Blob(2), s->Int(3), s->Int(4)}; });
  }

  Result<std::vector<SecretRow>> ListSecrets(const std::string& tenant_id) override {
    ASSIGN_OR_RETURN(auto page,
                     ReadPage<SecretRow>(
                         "SELECT tenant_id, name, created_ms, updated_ms, 0 FROM secrets "
                         "WHERE tenant_id=?1 ORDER BY name",
                         [&](Stmt* s) { s->Bind(1, tenant_id); },
                         [](Stmt* s) {
                           return SecretRow{s->Text(0), s->Text(1), "", s->Int(2), s->Int(3)};
                         },
                         4, 1 << 30));
    return std::move(page.first);
  }

  Result<std::vector<AuditRow>> ReadAudit(const AuditFilter& f, int limit) override {
    ASSIGN_OR_RETURN(
        auto page,
        ReadPage<AuditRow>(
            "SELECT " AUDIT_COLUMNS " FROM audit_log WHERE tenant_id=?1 AND seq>?2 "
            "AND (?3='' OR action=?3) AND (?4='' OR principal=?4) AND (?5='' OR decision=?5) "
            "AND (?6='' OR substr(resource, 1, length(?6))=?6) AND time_ms>=?7 "
            "AND (?8=0 OR time_ms<?8) ORDER BY seq LIMIT ?9",
            [&](Stmt* s) {
              s->Bind(1, f.tenant_id);
              s->Bind(2, f.after_seq);
              s->Bind(3, f.action);
              s->Bind(4, f.principal);
              s->Bind(5, f.decision);
              s->Bind(6, f.resource_prefix);
              s->Bind(7, f.since_ms);
              s->Bind(8, f.until_ms);
              s->Bind(9, static_cast<int64_t>(limit));
            },
            [](Stmt* s) { return AuditFrom(s); }, 1, limit));
    return std::move(page.first);
  }

  Result<std::optional<AuditRow>> ReadAuditHead(const std::string& tenant_id) override {
    return ReadOne<AuditRow>(
        "SELECT " AUDIT_COLUMNS " FROM audit_log WHERE tenant_id=?1 ORDER BY seq DESC LIMIT 1",
        {tenant_id}, [](Stmt* s) { return AuditFrom(s); });
  }

  Result<std::vector<AuditCheckpointRow>> ReadAuditCheckpoints(
      const std::string& tenant_id) override {
    ASSIGN_OR_RETURN(auto page,
                     ReadPage<AuditCheckpointRow>(
                         "SELECT tenant_id, seq, head_hash, time_ms, key_id, signature "
                         "FROM audit_checkpoints WHERE tenant_id=?1 ORDER BY seq",
                         [&](Stmt* s) { s->Bind(1, tenant_id); },
                         [](Stmt* s) {
                           return AuditCheckpointRow{s->Text(0), s->Int(1), s->Text(2),
                                                     s->Int(3),  s->Text(4), s->Text(5)};
                         },
                         1, 1 << 30));
    return std::move(page.first);
  }

  Result<std::vector<std::string>> ListAuditTenants() override {
    // A skip scan of the primary key: one index seek per tenant, not a read of every entry.
    ASSIGN_OR_RETURN(auto page,
                     ReadPage<std::string>(
                         "WITH RECURSIVE t(id) AS (SELECT MIN(tenant_id) FROM audit_log "
                         "UNION ALL SELECT (SELECT MIN(tenant_id) FROM audit_log "
                         "WHERE tenant_id>t.id) FROM t WHERE t.id IS NOT NULL) "
                         "SELECT id, 0 FROM t WHERE id IS NOT NULL "
                         "UNION SELECT DISTINCT tenant_id, 0 FROM audit_checkpoints ORDER BY 1",
                         [](Stmt*) {}, [](Stmt* s) { return s->Text(0); }, 1, 1 << 30));
    return std::move(page.first);
  }

  Result<std::optional<BlobRow>> GetBlob(const std::string& tenant_id,
                                         const std::string& hash) override {
    return ReadOne<BlobRow>(
        "SELECT size, codec, data FROM blobs WHERE tenant_id=?1 AND hash=?2", {tenant_id, hash},
        [&](Stmt* s) { return BlobRow{tenant_id, hash, s->Blob(2), s->Int(0), s->Text(1)}; });
  }

  Result<std::vector<std::string>> MissingBlobs(const std::string& tenant_id,
                                                const std::vector<std::string>& hashes) override {
    static const std::string sql = [] {
      std::string q = "SELECT hash FROM blobs WHERE tenant_id=?1 AND hash IN (?2";
      for (int i = 3; i <= kMissingBlobsChunk + 1; ++i) q += fmt::format(",?{}", i);
      return q + ")";
    }();
    std::unordered_set<std::string> found;
    if (!hashes.empty()) {
      auto conn = Borrow();
      if (!conn.ok()) return conn.status();
      Status st = Status::OK();
      for (size_t at = 0; at < hashes.size() && st.ok(); at += kMissingBlobsChunk) {
        auto* s = (*conn)->stmts->Get(sql.c_str());
        size_t n = std::min<size_t>(kMissingBlobsChunk, hashes.size() - at);
        s->Bind(1, tenant_id);
        for (size_t i = 0; i < n; ++i) s->Bind(static_cast<int>(i + 2), hashes[at + i]);
        int rc;
        while ((rc = s->Step()) == SQLITE_ROW) found.insert(s->Text(0));
        if (rc != SQLITE_DONE) st = SqlError((*conn)->db, "find blobs");
        s->Reset();
      }
      Return(std::move(*conn));
      if (!st.ok()) return st;
    }
    std::vector<std::string> missing;
    std::unordered_set<std::string_view> listed;
    for (const auto& h : hashes) {
      if (!found.contains(h) && listed.insert(h).second) missing.push_back(h);
    }
    return missing;
  }

  StoreStats Stats() const override {
    return {commits_.load(), batches_.load(), events_.load()};
  }

  void Close() override {
    std::unique_lock lock(mu_);
    closed_ = true;
    // Batches queued before now are still committed; wait for the last leader.
    idle_cv_.wait(lock, [this] { return writers_.empty(); });
  }

 private:
  struct Writer {
    explicit Writer(WriteBatch b) : batch(std::move(b)) {}
    WriteBatch batch;
    Status status;      // set by the leader before `done`
    bool done = false;  // guarded by mu_
    std::condition_variable cv;
  };

  static SessionRow SessionFrom(Stmt* s) {
    return SessionRow{s->Text(0), s->Text(1), s->Int(2), s->Text(3), s->Text(4),
                      s->Int(5),  s->Int(6),  s->Int(7), s->Int(8) != 0, s->Text(9)};
  }
  static AuditRow AuditFrom(Stmt* s) {
    return AuditRow{s->Text(0), s->Int(1), s->Int(2), s->Text(3),
                    s->Text(4), s->Text(5), s->Text(6), s->Text(7), s->Text(8), s->Text(9),
                    s->Text(10)};
  }
  static TurnRow TurnFrom(Stmt* s) {
    return TurnRow{s->Text(0), s->Text(1), s->Int(2), s->Text(3), s->Text(4), s->Text(5)};
  }
  static AgentRow AgentFrom(Stmt* s) {
    return AgentRow{s->Text(0), s->Int(1), s->Text(2), s->Text(3), s->Int(4), s->Text(5)};
  }
  static TenantRow TenantFrom(Stmt* s) { return TenantRow{s->Text(0), s->Text(1), s->Int(2)}; }
  static PrincipalRow PrincipalFrom(Stmt* s) {
    return PrincipalRow{s->Text(0), s->Text(1), s->Text(2), s->Text(3), s->Text(4), s->Int(5)};
  }
  static PolicySetRow PolicySetFrom(Stmt* s) {
    return PolicySetRow{s->Text(0), s->Text(1), s->Text(2), s->Text(3),
                        s->Text(4), s->Int(5),  s->Int(6)};
  }
  static ApiKeyRow ApiKeyFrom(Stmt* s) {
    return ApiKeyRow{s->Text(0), s->Text(1), s->Text(2), s->Text(3),
                     s->Int(4),  s->Int(5),  s->Int(6)};
  }
  static int64_t CursorValue(const std::string& c) {
    if (c.empty() || c.size() > 18) return 0;
    int64_t v = 0;
    for (char ch : c) {
      if (ch < '0' || ch > '9') return 0;
      v = v * 10 + (ch - '0');
    }
    return v;
  }

  // Brings the database to kSchemaVersion, one version per transaction, so that a crash
  // leaves it at some version it records. A new database starts from version 1 (kSchema).
  Status Migrate() {
    int v = 1;
    bool existing = false;
    {
      Stmt get(wdb_, "SELECT value FROM meta WHERE key='schema_version'");
      if (!get.ok()) return Internal(get.error());
      if (get.Step() == SQLITE_ROW) {
        v = std::atoi(get.Text(0).c_str());
        existing = true;
      } else {
        RETURN_IF_ERROR(
            Exec(wdb_, "INSERT INTO meta(key, value) VALUES('schema_version', '1')"));
      }
    }
    if (v > kSchemaVersion) {
      return FailedPrecondition(fmt::format(
          "database schema version {} is newer than this agentd supports ({})", v,
          kSchemaVersion));
    }
    if (v < 1) return FailedPrecondition(fmt::format("database schema version {} is unknown", v));
    for (; v < kSchemaVersion; ++v) {
      RETURN_IF_ERROR(Exec(wdb_, "BEGIN IMMEDIATE"));
      Status st = Exec(wdb_, kMigrations[v - 1]);
      if (st.ok()) {
        st = Exec(wdb_, fmt::format("UPDATE meta SET value='{}' WHERE key='schema_version'", v + 1)
                            .c_str());
      }
      if (st.ok()) st = Exec(wdb_, "COMMIT");
      if (!st.ok()) {
        if (!sqlite3_get_autocommit(wdb_)) Exec(wdb_, "ROLLBACK").IgnoreError();
        return Internal(fmt::format("migrating the database to schema version {}: {}", v + 1,
                                    st.message()));
      }
      if (existing) spdlog::info("database migrated to schema version {}", v + 1);
    }
    return Status::OK();
  }

  Result<std::unique_ptr<ReadConn>> Borrow() {
    {
      std::lock_guard lock(pool_mu_);
      if (!readers_.empty()) {
        auto c = std::move(readers_.back());
        readers_.pop_back();
        return c;
      }
    }
    auto c = std::make_unique<ReadConn>();
    ASSIGN_OR_RETURN(c->db, OpenConnection(options_.path, true, options_.synchronous_full));
    c->stmts = std::make_unique<StmtCache>(c->db);
    return c;
  }
  void Return(std::unique_ptr<ReadConn> c) {
    std::lock_guard lock(pool_mu_);
    if (readers_.size() < 32) readers_.push_back(std::move(c));
  }

  template <typename T, typename F>
  Result<std::optional<T>> ReadOne(const char* sql, std::vector<std::string> args, F from) {
    auto conn = Borrow();
    if (!conn.ok()) return conn.status();
    auto* s = (*conn)->stmts->Get(sql);
    for (size_t i = 0; i < args.size(); ++i) s->Bind(static_cast<int>(i + 1), args[i]);
    std::optional<T> out;
    int rc = s->Step();
    if (rc == SQLITE_ROW) out = from(s);
    Status st = (rc == SQLITE_ROW || rc == SQLITE_DONE) ? Status::OK()
                                                        : SqlError((*conn)->db, "read");
    s->Reset();
    Return(std::move(*conn));
    if (!st.ok()) return st;
    return out;
  }

  template <typename T, typename B, typename F>
  Result<std::pair<std::vector<T>, std::string>> ReadPage(const char* sql, B bind, F from,
                                                          int cursor_col, int limit) {
    auto conn = Borrow();
    if (!conn.ok()) return conn.status();
    auto* s = (*conn)->stmts->Get(sql);
    bind(s);
    std::vector<T> out;
    std::string next;
    int64_t last_cursor = 0;
    int rc;
    while ((rc = s->Step()) == SQLITE_ROW) {
      if (static_cast<int>(out.size()) == limit) {
        next = std::to_string(last_cursor);
        break;
      }
      out.push_back(from(s));
      last_cursor = s->Int(cursor_col);
    }
    Status st = (rc == SQLITE_ROW || rc == SQLITE_DONE) ? Status::OK()
                                                        : SqlError((*conn)->db, "list");
    s->Reset();
    Return(std::move(*conn));
    if (!st.ok()) return st;
    return std::make_pair(std::move(out), next);
  }

  Status ApplyBatch(const WriteBatch& b) {
    auto step = [&](Stmt* s, std::string_view what) -> Status {
      if (!s->ok()) return Internal(s->error());
      int rc = s->Step();
      Status st = rc == SQLITE_DONE ? Status::OK() : SqlError(wdb_, what);
      s->Reset();
      return st;
    };
    for (const auto& id : b.delete_sessions) {
      for (const char* sql : {"DELETE FROM events WHERE session_id=?1",
                              "DELETE FROM turns WHERE session_id=?1",
                              "DELETE FROM snapshots WHERE session_id=?1",
                              "DELETE FROM sessions WHERE id=?1"}) {
        auto* s = write_stmts_->Get(sql);
        s->Bind(1, id);
        RETURN_IF_ERROR(step(s, "delete session"));
      }
    }
    for (const auto& a : b.agents) {
      auto* s = write_stmts_->Get(
          "INSERT INTO agents(id, version, name, spec, created_ms, tenant_id) "
          "VALUES(?1,?2,?3,?4,?5,?6)");
      s->Bind(1, a.id);
      s->Bind(2, a.version);
      s->Bind(3, a.name);
      s->Bind(4, a.spec);
      s->Bind(5, a.created_ms);
      s->Bind(6, a.tenant_id);
      RETURN_IF_ERROR(step(s, "insert agent"));
    }
    for (const auto& e : b.events) {
      auto* s = write_stmts_->Get(
          "INSERT INTO events(session_id, seq, type, turn_id, time_ms, data) "
          "VALUES(?1,?2,?3,?4,?5,?6)");
      s->Bind(1, e.session_id);
      s->Bind(2, e.seq);
      s->Bind(3, e.type);
      s->Bind(4, e.turn_id);
      s->Bind(5, e.time_ms);
      s->Bind(6, e.data);
      RETURN_IF_ERROR(step(s, "append event"));
    }
    for (const auto& r : b.sessions) {
      auto* s = write_stmts_->Get(
          "INSERT INTO sessions(id, agent_id, agent_version, status, metadata, created_ms, "
          "updated_ms, last_seq, active, tenant_id) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10) "
          "ON CONFLICT(id) DO UPDATE SET status=excluded.status, updated_ms=excluded.updated_ms, "
          "last_seq=excluded.last_seq, active=excluded.active");
      s->Bind(1, r.id);
      s->Bind(2, r.agent_id);
      s->Bind(3, r.agent_version);
      s->Bind(4, r.status);
      s->Bind(5, r.metadata);
      s->Bind(6, r.created_ms);
      s->Bind(7, r.updated_ms);
      s->Bind(8, r.last_seq);
      s->Bind(9, static_cast<int64_t>(r.active ? 1 : 0));
      s->Bind(10, r.tenant_id);
      RETURN_IF_ERROR(step(s, "upsert session"));
    }
    for (const auto& t : b.tenants) {
      auto* s = write_stmts_->Get("INSERT INTO tenants(id, name, created_ms) VALUES(?1,?2,?3)");
      s->Bind(1, t.id);
      s->Bind(2, t.name);
      s->Bind(3, t.created_ms);
      RETURN_IF_ERROR(step(s, "insert tenant"));
    }
    for (const auto& p : b.principals) {
      auto* s = write_stmts_->Get(
          "INSERT INTO principals(id, tenant_id, name, kind, body, created_ms) "
          "VALUES(?1,?2,?3,?4,?5,?6) ON CONFLICT(id) DO UPDATE SET body=excluded.body");
      s->Bind(1, p.id);
      s->Bind(2, p.tenant_id);
      s->Bind(3, p.name);
      s->Bind(4, p.kind);
      s->Bind(5, p.body);
      s->Bind(6, p.created_ms);
      RETURN_IF_ERROR(step(s, "write principal"));
    }
    for (const auto& g : b.policy_sets) {
      auto* s = write_stmts_->Get(
          "INSERT INTO policy_sets(id, tenant_id, kind, name, body, created_ms, updated_ms) "
          "VALUES(?1,?2,?3,?4,?5,?6,?7) ON CONFLICT(id) DO UPDATE SET body=excluded.body, "
          "updated_ms=excluded.updated_ms");
      s->Bind(1, g.id);
      s->Bind(2, g.tenant_id);
      s->Bind(3, g.kind);
      s->Bind(4, g.name);
      s->Bind(5, g.body);
      s->Bind(6, g.created_ms);
      s->Bind(7, g.updated_ms);
      RETURN_IF_ERROR(step(s, "write policy set"));
    }
    for (const auto& id : b.delete_policy_sets) {
      auto* s = write_stmts_->Get("DELETE FROM policy_sets WHERE id=?1");
      s->Bind(1, id);
      RETURN_IF_ERROR(step(s, "delete policy set"));
    }
    for (const auto& k : b.api_keys) {
      auto* s = write_stmts_->Get(
          "INSERT INTO api_keys(id, tenant_id, principal_id, hash, created_ms, expires_ms, "
          "revoked_ms) VALUES(?1,?2,?3,?4,?5,?6,?7) ON CONFLICT(id) DO UPDATE SET "
          "expires_ms=excluded.expires_ms, revoked_ms=excluded.revoked_ms");
      s->Bind(1, k.id);
      s->Bind(2, k.tenant_id);
      s->Bind(3, k.principal_id);
      s->Bind(4, k.hash);
      s->Bind(5, k.created_ms);
      s->Bind(6, k.expires_ms);
      s->Bind(7, k.revoked_ms);
      RETURN_IF_ERROR(step(s, "write api key"));
    }
    for (const auto& x : b.secrets) {
      auto* s = write_stmts_->Get(
          "INSERT INTO secrets(tenant_id, name, sealed, created_ms, updated_ms) "
          "VALUES(?1,?2,?3,?4,?5) ON CONFLICT(tenant_id, name) DO UPDATE SET "
          "sealed=excluded.sealed, updated_ms=excluded.updated_ms");
      s->Bind(1, x.tenant_id);
      s->Bind(2, x.name);
      s->BindBlob(3, x.sealed);
      s->Bind(4, x.created_ms);
      s->Bind(5, x.updated_ms);
      RETURN_IF_ERROR(step(s, "write secret"));
    }
    if (!b.adopt_untenanted.empty()) {
      // A blob the tenant holds already stays as it is, and the untenanted copy goes.
      for (const char* sql : {"UPDATE agents SET tenant_id=?1 WHERE tenant_id=''",
                              "UPDATE sessions SET tenant_id=?1 WHERE tenant_id=''",
                              "UPDATE OR IGNORE blobs SET tenant_id=?1 WHERE tenant_id=''",
                              "DELETE FROM blobs WHERE tenant_id='' AND EXISTS(SELECT 1 FROM "
                              "blobs o WHERE o.tenant_id=?1 AND o.hash=blobs.hash)"}) {
        auto* s = write_stmts_->Get(sql);
        s->Bind(1, b.adopt_untenanted);
        RETURN_IF_ERROR(step(s, "adopt untenanted rows"));
      }
    }
    for (const auto& t : b.turns) {
      auto* s = write_stmts_->Get(
          "INSERT INTO turns(session_id, id, ordinal, status, idempotency_key, body) "
          "VALUES(?1,?2,?3,?4,?5,?6) ON CONFLICT(session_id, id) DO UPDATE SET "
          "status=excluded.status, body=excluded.body");
      s->Bind(1, t.session_id);
      s->Bind(2, t.id);
      s->Bind(3, t.ordinal);
      s->Bind(4, t.status);
      s->BindNullable(5, t.idempotency_key);
      s->Bind(6, t.body);
      RETURN_IF_ERROR(step(s, "upsert turn"));
    }
    for (const auto& blob : b.blobs) {
      if (blob.tenant_id.empty()) {
        return InvalidArgument(fmt::format("blob {} has no tenant", blob.hash));
      }
      if (blob.hash.empty() || blob.hash.size() > kMaxBlobHashBytes) {
        return InvalidArgument(fmt::format("blob hash must be 1 to {} bytes, not {}",
                                           kMaxBlobHashBytes, blob.hash.size()));
      }
      auto* s = write_stmts_->Get(
          "INSERT INTO blobs(tenant_id, hash, size, codec, data) VALUES(?1,?2,?3,?4,?5) "
          "ON CONFLICT(tenant_id, hash) DO NOTHING");
      s->Bind(1, blob.tenant_id);
      s->Bind(2, blob.hash);
      s->Bind(3, blob.size);
      s->Bind(4, blob.codec);
      s->BindBlob(5, blob.data);
      RETURN_IF_ERROR(step(s, "write blob"));
    }
    for (const auto& snap : b.snapshots) {
      auto* s = write_stmts_->Get(
          "INSERT INTO snapshots(session_id, seq, state) VALUES(?1,?2,?3) "
          "ON CONFLICT(session_id) DO UPDATE SET seq=excluded.seq, state=excluded.state");
      s->Bind(1, snap.session_id);
      s->Bind(2, snap.seq);
      s->Bind(3, snap.state);
      RETURN_IF_ERROR(step(s, "write snapshot"));
    }
    return ApplyAudit(b);
  }

  // Links each audit row to its tenant's head, in order, and moves the head; the heads it
  // moved are saved in audit_undo_ so that a rollback can put them back.
  Status ApplyAudit(const WriteBatch& b) {
    if (!b.audit.empty() && !options_.audit_chain) {
      return FailedPrecondition("audit entries need SqliteOptions::audit_chain");
    }
    auto step = [&](Stmt* s, std::string_view what) -> Status {
      if (!s->ok()) return Internal(s->error());
      int rc = s->Step();
      Status st = rc == SQLITE_DONE ? Status::OK() : SqlError(wdb_, what);
      s->Reset();
      return st;
    };
    for (const auto& in : b.audit) {
      auto it = audit_heads_.find(in.tenant_id);
      if (it == audit_heads_.end()) {
        AuditHead head{0, std::string(64, '0')};
        auto* s = write_stmts_->Get(
            "SELECT seq, hash FROM audit_log WHERE tenant_id=?1 ORDER BY seq DESC LIMIT 1");
        s->Bind(1, in.tenant_id);
        int rc = s->Step();
        if (rc == SQLITE_ROW) head = AuditHead{s->Int(0), s->Text(1)};
        s->Reset();
        if (rc != SQLITE_ROW && rc != SQLITE_DONE) return SqlError(wdb_, "read audit head");
        it = audit_heads_.emplace(in.tenant_id, std::move(head)).first;
      }
      AuditRow row = in;
      row.seq = it->second.seq + 1;
      options_.audit_chain(row, it->second.hash);
      auto* s = write_stmts_->Get(
          "INSERT INTO audit_log(tenant_id, seq, time_ms, principal, action, resource, "
          "decision, result, data, prev_hash, hash) VALUES(?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11)");
      s->Bind(1, row.tenant_id);
      s->Bind(2, row.seq);
      s->Bind(3, row.time_ms);
      s->Bind(4, row.principal);
      s->Bind(5, row.action);
      s->Bind(6, row.resource);
      s->Bind(7, row.decision);
      s->Bind(8, row.result);
      s->Bind(9, row.data);
      s->Bind(10, row.prev_hash);
      s->Bind(11, row.hash);
      RETURN_IF_ERROR(step(s, "append audit entry"));
      audit_undo_.emplace_back(row.tenant_id, it->second);
      it->second = AuditHead{row.seq, row.hash};
    }
    for (const auto& c : b.audit_checkpoints) {
      auto* s = write_stmts_->Get(
          "INSERT INTO audit_checkpoints(tenant_id, seq, head_hash, time_ms, key_id, signature) "
          "VALUES(?1,?2,?3,?4,?5,?6)");
      s->Bind(1, c.tenant_id);
      s->Bind(2, c.seq);
      s->Bind(3, c.head_hash);
      s->Bind(4, c.time_ms);
      s->Bind(5, c.key_id);
      s->Bind(6, c.signature);
      RETURN_IF_ERROR(step(s, "write audit checkpoint"));
    }
    return Status::OK();
  }

  // Puts back the audit heads the last batch moved, newest first.
  void UndoAuditHeads() {
    for (auto it = audit_undo_.rbegin(); it != audit_undo_.rend(); ++it) {
      audit_heads_[it->first] = std::move(it->second);
    }
    audit_undo_.clear();
  }

  // A statement of the writer's without rows, prepared once (BEGIN, COMMIT, savepoints).
  Status WriterExec(const char* sql) {
    Stmt* s = write_stmts_->Get(sql);
    if (!s->ok()) return Internal(fmt::format("sqlite: {} (in: {})", s->error(), sql));
    int rc = s->Step();
    s->Reset();
    if (rc != SQLITE_DONE) return SqlError(wdb_, sql);
    return Status::OK();
  }

  // One transaction for the group; each batch's outcome in its Writer::status.
  void CommitGroup(const std::vector<Writer*>& group) {
    // A lone batch is kept atomic by its transaction; several get a savepoint each, so
    // that they stay atomic and independent of each other.
    const bool lone = group.size() == 1;
    for (Writer* w : group) w->status = Status::OK();
    Status txn = WriterExec("BEGIN IMMEDIATE");
    int64_t events = 0;
    for (size_t i = 0; txn.ok() && i < group.size(); ++i) {
      Writer& w = *group[i];
      if (w.batch.empty()) continue;
      if (!lone) {
        if (Status sp = WriterExec("SAVEPOINT b"); !sp.ok()) {
          w.status = sp;
          continue;
        }
      }
      audit_undo_.clear();
      w.status = ApplyBatch(w.batch);
      if (!w.status.ok()) UndoAuditHeads();
      if (w.status.ok()) {
        events += static_cast<int64_t>(w.batch.events.size());
        if (!lone) WriterExec("RELEASE b").IgnoreError();
      } else if (!lone) {
        Exec(wdb_, "ROLLBACK TO b; RELEASE b").IgnoreError();
      }
    }
    const bool commit = txn.ok() && (!lone || group[0]->status.ok());
    if (commit) txn = WriterExec("COMMIT");  // the fsync (synchronous=FULL) happens here
    // Still open: a failed lone batch, or a COMMIT that failed.
    if (!sqlite3_get_autocommit(wdb_)) Exec(wdb_, "ROLLBACK").IgnoreError();
    if (!txn.ok()) {
      spdlog::error("journal commit failed: {}", txn.ToString());
      audit_heads_.clear();  // reloaded from what the database holds
      for (Writer* w : group) w->status = Unavailable("commit failed: " + txn.message());
    } else if (commit) {
      commits_.fetch_add(1, std::memory_order_relaxed);
      batches_.fetch_add(static_cast<int64_t>(group.size()), std::memory_order_relaxed);
      events_.fetch_add(events, std::memory_order_relaxed);
    }
  }

  SqliteOptions options_;
  sqlite3* wdb_ = nullptr;  // used only by the leader of the group commit after Open()
  std::unique_ptr<StmtCache> write_stmts_;

  std::mutex mu_;
  std::condition_variable idle_cv_;  // the queue became empty
  std::deque<Writer*> writers_;      // guarded by mu_; the front leads
  bool closed_ = false;              // guarded by mu_

  std::mutex pool_mu_;
  std::vector<std::unique_ptr<ReadConn>> readers_;  // guarded by pool_mu_

  std::atomic<int64_t> commits_{0}, batches_{0}, events_{0};

  // The head of each tenant's audit chain as of the last write; used by the leader only.
  // Loaded from the database on a tenant's first entry, so an entry always follows the
  // last one this writer committed, even if rows were removed underneath it.
  struct AuditHead {
    int64_t seq = 0;
    std::string hash;
  };
  std::unordered_map<std::string, AuditHead> audit_heads_;
  std::vector<std::pair<std::string, AuditHead>> audit_undo_;  // of the batch being applied
};

}  // namespace

Result<std::unique_ptr<Store>> OpenSqliteStore(const SqliteOptions& options) {
  auto s = std::make_unique<SqliteStore>(options);
  RETURN_IF_ERROR(s->Open());
  return std::unique_ptr<Store>(std::move(s));
}

}  // namespace agentd::store::sqlite
