// Conformance tests of the Store interface, run against the SQLite backend.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <thread>

#include "store/sqlite/sqlite_store.h"

namespace agentd::store {
namespace {

class SqliteStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("agentd_store_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    Reopen();
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Reopen() {
    store_.reset();
    auto s = sqlite::OpenSqliteStore({(dir_ / "db").string()});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s).value();
  }
  static EventRecord Ev(const std::string& sid, int64_t seq) {
    return {sid, seq, "test.event", "", 1000 + seq, "{\"n\":" + std::to_string(seq) + "}"};
  }
  static SessionRow Row(const std::string& sid, int64_t last_seq, bool active) {
    return {sid, "agt_a", 1, active ? "running" : "idle", "{}", 1, 2, last_seq, active, "ten_a"};
  }

  // `threads` threads each commit events 1..per_thread of their own session "ses_<t>", one
  // batch at a time, calling also(t) after each. Returns how many of those commits failed.
  int CommitConcurrently(int threads, int per_thread,
                         const std::function<void(int)>& also = nullptr) {
    std::atomic<int> failures{0};
    std::vector<std::thread> running;
    for (int t = 0; t < threads; ++t) {
      running.emplace_back([&, t] {
        std::string sid = "ses_" + std::to_string(t);
        for (int i = 1; i <= per_thread; ++i) {
          WriteBatch b;
          b.events.push_back(Ev(sid, i));
          if (!store_->CommitBlocking(std::move(b)).ok()) failures++;
          if (also) also(t);
        }
      });
    }
    for (auto& t : running) t.join();
    return failures.load();
  }

  // The first column of the first row of `sql`, read beside the open store; -1 on error.
  int64_t QueryInt(const std::string& sql) {
    sqlite3* db = nullptr;
    int64_t out = -1;
    sqlite3_stmt* st = nullptr;
    if (sqlite3_open_v2((dir_ / "db").string().c_str(), &db, SQLITE_OPEN_READONLY, nullptr) ==
            SQLITE_OK &&
        sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
      out = sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return out;
  }

  std::filesystem::path dir_;
  std::unique_ptr<Store> store_;
};

// The WAL is grown once to a checkpoint cycle and kept across reopen; growing a WAL that
// still holds committed frames (a process that died before checkpointing) keeps them all.
TEST_F(SqliteStoreTest, WalIsPreallocatedWithoutLosingFramesOfADeadProcess) {
  std::string wal = (dir_ / "db-wal").string();
  ASSERT_TRUE(std::filesystem::exists(wal));
  EXPECT_GE(std::filesystem::file_size(wal), 5u << 20);
  WriteBatch b;
  for (int i = 1; i <= 3; ++i) b.events.push_back(Ev("ses_1", i));
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  Reopen();
  EXPECT_GE(std::filesystem::file_size(wal), 5u << 20);
  ASSERT_EQ(store_->ReadEvents("ses_1", 0, 100)->size(), 3u);
  store_.reset();

  // Another database whose writer dies with its commits only in a small WAL.
  std::string other = (dir_ / "other").string();
  pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    sqlite3* db = nullptr;
    sqlite3_open(other.c_str(), &db);
    sqlite3_exec(db,
                 "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA wal_autocheckpoint=0;"
                 "CREATE TABLE t(x); INSERT INTO t VALUES(1); INSERT INTO t VALUES(2);",
                 nullptr, nullptr, nullptr);
    ::_exit(0);  // no close, no checkpoint
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_LT(std::filesystem::file_size(other + "-wal"), 1u << 20);
  auto s = sqlite::OpenSqliteStore({other});
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  EXPECT_GE(std::filesystem::file_size(other + "-wal"), 5u << 20);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(other.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT count(*), sum(x) FROM t", -1, &st, nullptr), SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), 2);
  EXPECT_EQ(sqlite3_column_int(st, 1), 3);
  sqlite3_finalize(st);
  sqlite3_close(db);
}

TEST_F(SqliteStoreTest, EventsAreDurableAcrossReopen) {
  WriteBatch b;
  for (int i = 1; i <= 5; ++i) b.events.push_back(Ev("ses_1", i));
  b.sessions.push_back(Row("ses_1", 5, true));
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  Reopen();
  auto events = store_->ReadEvents("ses_1", 2, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 3u);
  EXPECT_EQ((*events)[0].seq, 3);
  EXPECT_EQ((*events)[2].data, "{\"n\":5}");
  auto active = store_->ListActiveSessions();
  ASSERT_TRUE(active.ok());
  EXPECT_EQ(*active, std::vector<std::string>{"ses_1"});
}

TEST_F(SqliteStoreTest, DuplicateSeqRollsBackOnlyThatBatch) {
  WriteBatch a;
  a.events.push_back(Ev("ses_1", 1));
  ASSERT_TRUE(store_->CommitBlocking(std::move(a)).ok());
  // A batch with a duplicate seq fails as a whole: its other rows are not written.
  WriteBatch dup;
  dup.events.push_back(Ev("ses_1", 2));
  dup.events.push_back(Ev("ses_1", 1));
  dup.sessions.push_back(Row("ses_1", 2, false));
  Status st = store_->CommitBlocking(std::move(dup));
  EXPECT_EQ(st.code(), StatusCode::kAlreadyExists);
  auto events = store_->ReadEvents("ses_1", 0, 100);
  ASSERT_TRUE(events.ok());
  EXPECT_EQ(events->size(), 1u);
  auto row = store_->GetSession("ses_1");
  ASSERT_TRUE(row.ok());
  EXPECT_FALSE(row->has_value());
  // The failed batch left no transaction open: the next one commits.
  WriteBatch next;
  next.events.push_back(Ev("ses_1", 2));
  ASSERT_TRUE(store_->CommitBlocking(std::move(next)).ok());
  EXPECT_EQ(store_->ReadEvents("ses_1", 0, 100)->size(), 2u);
  EXPECT_EQ(store_->Stats().commits, 2);
}

TEST_F(SqliteStoreTest, ConcurrentCommitsAreGroupedAndAllDurable) {
  constexpr int kThreads = 16, kPerThread = 50;
  EXPECT_EQ(CommitConcurrently(kThreads, kPerThread), 0);
  StoreStats stats = store_->Stats();
  EXPECT_EQ(stats.batches, kThreads * kPerThread);
  EXPECT_EQ(stats.events, kThreads * kPerThread);
  // Group commit: concurrent batches share transactions.
  EXPECT_LT(stats.commits, stats.batches);
  for (int t = 0; t < kThreads; ++t) {
    auto events = store_->ReadEvents("ses_" + std::to_string(t), 0, 1000);
    ASSERT_TRUE(events.ok());
    ASSERT_EQ(events->size(), static_cast<size_t>(kPerThread));
    for (int i = 0; i < kPerThread; ++i) EXPECT_EQ((*events)[i].seq, i + 1);
  }
}

TEST_F(SqliteStoreTest, TurnsUpsertAndPaginate) {
  WriteBatch b;
  b.sessions.push_back(Row("ses_1", 0, false));
  for (int i = 1; i <= 5; ++i) {
    b.turns.push_back({"ses_1", "trn_" + std::to_string(i), i, "queued",
                       i == 3 ? "key-3" : "", "{}"});
  }
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  WriteBatch u;
  u.turns.push_back({"ses_1", "trn_2", 2, "completed", "", "{\"x\":1}"});
  ASSERT_TRUE(store_->CommitBlocking(std::move(u)).ok());
  auto t2 = store_->GetTurn("ses_1", "trn_2");
  ASSERT_TRUE(t2.ok() && t2->has_value());
  EXPECT_EQ((*t2)->status, "completed");
  EXPECT_EQ((*t2)->body, "{\"x\":1}");
  auto p1 = store_->ListTurns("ses_1", {"", 2});
  ASSERT_TRUE(p1.ok());
  ASSERT_EQ(p1->first.size(), 2u);
  EXPECT_FALSE(p1->second.empty());
  auto p2 = store_->ListTurns("ses_1", {p1->second, 10});
  ASSERT_TRUE(p2.ok());
  ASSERT_EQ(p2->first.size(), 3u);
  EXPECT_EQ(p2->first[0].id, "trn_3");
  EXPECT_TRUE(p2->second.empty());
  // The same idempotency key on two turns of one session is refused.
  WriteBatch dup;
  dup.turns.push_back({"ses_1", "trn_9", 9, "queued", "key-3", "{}"});
  EXPECT_EQ(store_->CommitBlocking(std::move(dup)).code(), StatusCode::kAlreadyExists);
}

TEST_F(SqliteStoreTest, AgentsVersionAndListLatest) {
  WriteBatch b;
  b.agents.push_back({"agt_1", 1, "one", "{\"v\":1}", 1, "ten_a"});
  b.agents.push_back({"agt_2", 1, "two", "{\"v\":1}", 2, "ten_b"});
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  WriteBatch v2;
  v2.agents.push_back({"agt_1", 2, "one", "{\"v\":2}", 3, "ten_a"});
  ASSERT_TRUE(store_->CommitBlocking(std::move(v2)).ok());
  WriteBatch again;
  again.agents.push_back({"agt_1", 2, "one", "{\"v\":2}", 3, "ten_a"});
  EXPECT_EQ(store_->CommitBlocking(std::move(again)).code(), StatusCode::kAlreadyExists);
  auto latest = store_->GetAgent("agt_1", 0);
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->version, 2);
  auto v1 = store_->GetAgent("agt_1", 1);
  ASSERT_TRUE(v1.ok() && v1->has_value());
  EXPECT_EQ((*v1)->spec, "{\"v\":1}");
  auto list = store_->ListAgents("", {"", 10});
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->first.size(), 2u);
  EXPECT_EQ(list->first[0].id, "agt_1");
  EXPECT_EQ(list->first[0].version, 2);
  EXPECT_EQ(list->first[0].tenant_id, "ten_a");
  auto only_b = store_->ListAgents("ten_b", {"", 10});
  ASSERT_TRUE(only_b.ok());
  ASSERT_EQ(only_b->first.size(), 1u);
  EXPECT_EQ(only_b->first[0].id, "agt_2");
}

TEST_F(SqliteStoreTest, GroupsAndRolesAreUniqueByNameReplacedByIdAndDeleted) {
  WriteBatch b;
  b.policy_sets.push_back({"grp_1", "ten_a", "group", "devs", R"({"policies":[]})", 1, 1});
  b.policy_sets.push_back({"rol_1", "ten_a", "role", "devs", "{}", 1, 1});  // another kind
  b.policy_sets.push_back({"grp_2", "ten_b", "group", "devs", "{}", 1, 1});  // another tenant
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  WriteBatch dup;
  dup.policy_sets.push_back({"grp_3", "ten_a", "group", "devs", "{}", 2, 2});
  EXPECT_EQ(store_->CommitBlocking(std::move(dup)).code(), StatusCode::kAlreadyExists);
  EXPECT_FALSE(store_->GetPolicySet("grp_3")->has_value());
  // A rewrite by id changes the body and the update time, never the name or tenant.
  WriteBatch replace;
  replace.policy_sets.push_back({"grp_1", "ten_x", "role", "other", R"({"policies":[1]})", 9, 5});
  ASSERT_TRUE(store_->CommitBlocking(std::move(replace)).ok());
  auto g = store_->GetPolicySetByName("ten_a", "group", "devs");
  ASSERT_TRUE(g.ok() && g->has_value());
  EXPECT_EQ((*g)->id, "grp_1");
  EXPECT_EQ((*g)->body, R"({"policies":[1]})");
  EXPECT_EQ((*g)->created_ms, 1);
  EXPECT_EQ((*g)->updated_ms, 5);
  EXPECT_EQ((*store_->GetPolicySetByName("ten_a", "role", "devs"))->id, "rol_1");
  EXPECT_FALSE(store_->GetPolicySetByName("ten_a", "group", "other")->has_value());
  auto page = store_->ListPolicySets("ten_a", "group", {"", 10});
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->first.size(), 1u);
  EXPECT_EQ(page->first[0].id, "grp_1");
  WriteBatch del;
  del.delete_policy_sets.push_back("grp_1");
  ASSERT_TRUE(store_->CommitBlocking(std::move(del)).ok());
  EXPECT_FALSE(store_->GetPolicySet("grp_1")->has_value());
  EXPECT_TRUE(store_->GetPolicySet("grp_2")->has_value());
  // A principal's row is rewritten by id; its name stays unique.
  WriteBatch p;
  p.principals.push_back({"prn_1", "ten_a", "alice", "user", "{}", 2});
  ASSERT_TRUE(store_->CommitBlocking(std::move(p)).ok());
  WriteBatch p2;
  p2.principals.push_back({"prn_1", "ten_a", "alice", "user", R"({"roles":["x"]})", 2});
  ASSERT_TRUE(store_->CommitBlocking(std::move(p2)).ok());
  EXPECT_EQ((*store_->GetPrincipal("prn_1"))->body, R"({"roles":["x"]})");
}

TEST_F(SqliteStoreTest, TenantsPrincipalsKeysAndSecrets) {
  WriteBatch b;
  b.tenants.push_back({"ten_a", "acme", 1});
  b.principals.push_back({"prn_1", "ten_a", "alice", "user", "{}", 2});
  b.api_keys.push_back({"key_1", "ten_a", "prn_1", "h1", 3, 0, 0});
  b.secrets.push_back({"ten_a", "TOKEN", std::string("\0sealed", 7), 4, 4});
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  // Names are unique: a second tenant "acme" or a second "alice" in ten_a changes nothing.
  WriteBatch dup;
  dup.tenants.push_back({"ten_b", "acme", 5});
  EXPECT_EQ(store_->CommitBlocking(std::move(dup)).code(), StatusCode::kAlreadyExists);
  WriteBatch dup2;
  dup2.principals.push_back({"prn_2", "ten_a", "alice", "user", "{}", 5});
  EXPECT_EQ(store_->CommitBlocking(std::move(dup2)).code(), StatusCode::kAlreadyExists);
  EXPECT_FALSE(store_->GetTenant("ten_b")->has_value());
  EXPECT_FALSE(store_->GetPrincipal("prn_2")->has_value());
  // A revocation rewrites the key row; a secret write replaces the sealed value.
  WriteBatch revoke;
  revoke.api_keys.push_back({"key_1", "ten_a", "prn_1", "h1", 3, 0, 9});
  revoke.secrets.push_back({"ten_a", "TOKEN", "resealed", 4, 10});
  ASSERT_TRUE(store_->CommitBlocking(std::move(revoke)).ok());
  auto key = store_->GetApiKey("key_1");
  ASSERT_TRUE(key.ok() && key->has_value());
  EXPECT_EQ((*key)->revoked_ms, 9);
  EXPECT_EQ((*key)->hash, "h1");
  auto secret = store_->GetSecret("ten_a", "TOKEN");
  ASSERT_TRUE(secret.ok() && secret->has_value());
  EXPECT_EQ((*secret)->sealed, "resealed");
  EXPECT_EQ((*secret)->created_ms, 4);
  EXPECT_FALSE(store_->GetSecret("ten_b", "TOKEN")->has_value());
  auto names = store_->ListSecrets("ten_a");
  ASSERT_TRUE(names.ok());
  ASSERT_EQ(names->size(), 1u);
  EXPECT_EQ((*names)[0].sealed, "");  // listing never reads values
  auto principals = store_->ListPrincipals("ten_a", {"", 10});
  ASSERT_TRUE(principals.ok());
  ASSERT_EQ(principals->first.size(), 1u);
  EXPECT_EQ(principals->first[0].name, "alice");
  EXPECT_TRUE(store_->ListPrincipals("ten_b", {"", 10})->first.empty());
  EXPECT_EQ(store_->ListApiKeys("prn_1")->size(), 1u);
}

TEST_F(SqliteStoreTest, APrincipalIsFoundByNameWithinItsTenantOnly) {
  WriteBatch b;
  b.tenants.push_back({"ten_a", "acme", 1});
  b.tenants.push_back({"ten_b", "beta", 1});
  b.principals.push_back({"prn_1", "ten_a", "alice", "user", "{\"groups\":[]}", 2});
  b.principals.push_back({"prn_2", "ten_b", "alice", "service", "{}", 3});
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  auto a = store_->GetPrincipalByName("ten_a", "alice");
  ASSERT_TRUE(a.ok() && a->has_value());
  EXPECT_EQ((*a)->id, "prn_1");
  EXPECT_EQ((*a)->body, "{\"groups\":[]}");
  auto other = store_->GetPrincipalByName("ten_b", "alice");
  ASSERT_TRUE(other.ok() && other->has_value());
  EXPECT_EQ((*other)->id, "prn_2");
  EXPECT_FALSE(store_->GetPrincipalByName("ten_a", "Alice")->has_value());
  EXPECT_FALSE(store_->GetPrincipalByName("ten_c", "alice")->has_value());
}

TEST_F(SqliteStoreTest, RowsFromBeforeTenantsJoinTheAdoptingTenant) {
  WriteBatch b;
  b.agents.push_back({"agt_1", 1, "one", "{}", 1, ""});
  b.sessions.push_back({"ses_1", "agt_1", 1, "idle", "{}", 1, 1, 0, false, ""});
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  WriteBatch adopt;
  adopt.adopt_untenanted = "ten_x";
  ASSERT_TRUE(store_->CommitBlocking(std::move(adopt)).ok());
  EXPECT_EQ((*store_->GetAgent("agt_1", 0))->tenant_id, "ten_x");
  EXPECT_EQ((*store_->GetSession("ses_1"))->tenant_id, "ten_x");
  store::SessionFilter f;
  f.tenant_id = "ten_x";
  EXPECT_EQ(store_->ListSessions(f, {"", 10})->first.size(), 1u);
  f.tenant_id = "ten_y";
  EXPECT_TRUE(store_->ListSessions(f, {"", 10})->first.empty());
}

TEST_F(SqliteStoreTest, DeleteSessionRemovesEverything) {
  WriteBatch b;
  b.events.push_back(Ev("ses_1", 1));
  b.sessions.push_back(Row("ses_1", 1, true));
  b.turns.push_back({"ses_1", "trn_1", 1, "queued", "", "{}"});
  b.snapshots.push_back({"ses_1", 1, "{}"});
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  WriteBatch d;
  d.delete_sessions.push_back("ses_1");
  ASSERT_TRUE(store_->CommitBlocking(std::move(d)).ok());
  EXPECT_FALSE(store_->GetSession("ses_1")->has_value());
  EXPECT_TRUE(store_->ReadEvents("ses_1", 0, 10)->empty());
  EXPECT_FALSE(store_->GetSnapshot("ses_1")->has_value());
  EXPECT_FALSE(store_->GetTurn("ses_1", "trn_1")->has_value());
  EXPECT_TRUE(store_->ListActiveSessions()->empty());
}

// Batches that fail (a duplicate seq) among concurrent ones: each fails alone, whatever
// group it was led in, and every other batch is durable.
TEST_F(SqliteStoreTest, AFailedBatchInAGroupFailsAloneUnderConcurrency) {
  WriteBatch first;
  first.events.push_back(Ev("ses_dup", 1));
  ASSERT_TRUE(store_->CommitBlocking(std::move(first)).ok());
  constexpr int kThreads = 8, kPerThread = 40;
  std::atomic<int> dup_accepted{0};
  int good_failed = CommitConcurrently(kThreads, kPerThread, [&](int t) {
    if (t % 2 != 0) return;
    WriteBatch dup;
    dup.events.push_back(Ev("ses_dup", 1));
    if (store_->CommitBlocking(std::move(dup)).code() != StatusCode::kAlreadyExists) {
      dup_accepted++;
    }
  });
  EXPECT_EQ(good_failed, 0);
  EXPECT_EQ(dup_accepted.load(), 0);
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(store_->ReadEvents("ses_" + std::to_string(t), 0, 1000)->size(),
              static_cast<size_t>(kPerThread));
  }
  EXPECT_EQ(store_->ReadEvents("ses_dup", 0, 1000)->size(), 1u);
}

TEST_F(SqliteStoreTest, CommitAfterCloseFails) {
  store_->Close();
  WriteBatch b;
  b.events.push_back(Ev("ses_1", 1));
  EXPECT_EQ(store_->CommitBlocking(std::move(b)).code(), StatusCode::kUnavailable);
}

TEST_F(SqliteStoreTest, RefusesNewerSchema) {
  store_.reset();
  {
    auto s = sqlite::OpenSqliteStore({(dir_ / "db").string()});
    ASSERT_TRUE(s.ok());
  }
  // Simulate a database written by a future agentd.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_ / "db").string().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE meta SET value='99' WHERE key='schema_version'", nullptr,
                         nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  auto s = sqlite::OpenSqliteStore({(dir_ / "db").string()});
  EXPECT_EQ(s.status().code(), StatusCode::kFailedPrecondition);
}

BlobRow Blob(const std::string& hash, const std::string& data,
             const std::string& tenant = "ten_a") {
  return {tenant, hash, data, static_cast<int64_t>(data.size()), ""};
}

// A binary blob with NUL bytes comes back byte for byte; MissingBlobs names only what is
// not stored, each once and in the caller's order, over more hashes than one query takes.
TEST_F(SqliteStoreTest, BlobsAreStoredAndFoundByHash) {
  std::string binary("\0\x01\xff zstd", 8);
  WriteBatch b;
  b.blobs.push_back({"ten_a", "h_bin", binary, 100, "zstd"});
  b.blobs.push_back(Blob("h_text", "hello"));
  ASSERT_FALSE(b.empty());
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  auto got = store_->GetBlob("ten_a", "h_bin");
  ASSERT_TRUE(got.ok() && got->has_value()) << got.status().ToString();
  EXPECT_EQ((*got)->tenant_id, "ten_a");
  EXPECT_EQ((*got)->hash, "h_bin");
  EXPECT_EQ((*got)->data, binary);
  EXPECT_EQ((*got)->size, 100);
  EXPECT_EQ((*got)->codec, "zstd");
  auto none = store_->GetBlob("ten_a", "h_none");
  ASSERT_TRUE(none.ok());
  EXPECT_FALSE(none->has_value());

  std::vector<std::string> ask;
  for (int i = 0; i < 600; ++i) ask.push_back("m_" + std::to_string(i));
  ask.insert(ask.begin() + 300, "h_text");
  ask.push_back("h_bin");
  ask.push_back("m_7");
  auto missing = store_->MissingBlobs("ten_a", ask);
  ASSERT_TRUE(missing.ok()) << missing.status().ToString();
  ASSERT_EQ(missing->size(), 600u);
  for (int i = 0; i < 600; ++i) EXPECT_EQ((*missing)[i], "m_" + std::to_string(i));
  EXPECT_TRUE(store_->MissingBlobs("ten_a", {})->empty());
}

// Blobs belong to their tenant: the same bytes written by two tenants are two blobs, each
// tenant reads only its own, and another tenant's blob neither answers GetBlob nor counts as
// present to MissingBlobs (so that a tenant writes its own copy and learns nothing).
TEST_F(SqliteStoreTest, TenantsSeeOnlyTheirOwnBlobs) {
  WriteBatch a;
  a.blobs.push_back(Blob("h_same", "same bytes", "ten_a"));
  a.blobs.push_back(Blob("h_only_a", "a's", "ten_a"));
  a.blobs.push_back(Blob("h_differs", "as a wrote it", "ten_a"));
  ASSERT_TRUE(store_->CommitBlocking(std::move(a)).ok());
  for (const char* h : {"h_same", "h_only_a", "h_differs"}) {
    auto got = store_->GetBlob("ten_b", h);
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_FALSE(got->has_value()) << h;
  }
  std::vector<std::string> ask{"h_only_a", "h_same", "h_none"};
  for (int i = 0; i < 300; ++i) ask.push_back("m_" + std::to_string(i));
  ask.push_back("h_differs");  // past the first query of MissingBlobs
  auto missing = store_->MissingBlobs("ten_b", ask);
  ASSERT_TRUE(missing.ok()) << missing.status().ToString();
  EXPECT_EQ(*missing, ask);
  EXPECT_EQ(store_->MissingBlobs("ten_a", ask)->size(), 301u);

  WriteBatch b;
  b.blobs.push_back(Blob("h_same", "same bytes", "ten_b"));
  b.blobs.push_back(Blob("h_differs", "as b wrote it", "ten_b"));
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  EXPECT_EQ(QueryInt("SELECT COUNT(*) FROM blobs WHERE hash='h_same'"), 2);
  EXPECT_EQ(QueryInt("SELECT COUNT(*) FROM blobs"), 5);
  auto same_a = store_->GetBlob("ten_a", "h_same");
  auto same_b = store_->GetBlob("ten_b", "h_same");
  ASSERT_TRUE(same_a.ok() && same_a->has_value() && same_b.ok() && same_b->has_value());
  EXPECT_EQ((*same_a)->tenant_id, "ten_a");
  EXPECT_EQ((*same_b)->tenant_id, "ten_b");
  EXPECT_EQ((*same_b)->data, "same bytes");
  EXPECT_EQ((*store_->GetBlob("ten_a", "h_differs"))->data, "as a wrote it");
  EXPECT_EQ((*store_->GetBlob("ten_b", "h_differs"))->data, "as b wrote it");
  EXPECT_FALSE(store_->GetBlob("ten_b", "h_only_a")->has_value());
  EXPECT_EQ(*store_->MissingBlobs("ten_b", {"h_only_a", "h_same", "h_differs"}),
            std::vector<std::string>{"h_only_a"});
  EXPECT_TRUE(store_->MissingBlobs("ten_a", {"h_only_a", "h_same", "h_differs"})->empty());
}

// A blob is written once: a second write of its hash, in the same batch, a later batch or
// concurrent batches, succeeds and changes nothing.
TEST_F(SqliteStoreTest, ABlobWrittenTwiceIsStoredOnce) {
  WriteBatch b;
  b.blobs.push_back(Blob("h_1", "first"));
  b.blobs.push_back(Blob("h_1", "second"));
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  WriteBatch again;
  again.blobs.push_back(Blob("h_1", "third"));
  again.events.push_back(Ev("ses_a", 1));
  ASSERT_TRUE(store_->CommitBlocking(std::move(again)).ok());
  EXPECT_EQ((*store_->GetBlob("ten_a", "h_1"))->data, "first");
  EXPECT_EQ(store_->ReadEvents("ses_a", 0, 10)->size(), 1u);

  // Every thread's batches carry the same shared blob next to their events.
  constexpr int kThreads = 8, kPerThread = 20;
  EXPECT_EQ(CommitConcurrently(kThreads, kPerThread), 0);
  std::atomic<int> failures{0};
  std::vector<std::thread> running;
  for (int t = 0; t < kThreads; ++t) {
    running.emplace_back([&, t] {
      for (int i = 1; i <= kPerThread; ++i) {
        WriteBatch w;
        w.events.push_back(Ev("ses_shared_" + std::to_string(t), i));
        w.blobs.push_back(Blob("h_shared", "shared"));
        w.blobs.push_back(Blob("h_" + std::to_string(t) + "_" + std::to_string(i), "own"));
        if (!store_->CommitBlocking(std::move(w)).ok()) failures++;
      }
    });
  }
  for (auto& t : running) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ((*store_->GetBlob("ten_a", "h_shared"))->data, "shared");
  std::vector<std::string> all{"h_shared"};
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 1; i <= kPerThread; ++i) {
      all.push_back("h_" + std::to_string(t) + "_" + std::to_string(i));
    }
  }
  EXPECT_TRUE(store_->MissingBlobs("ten_a", all)->empty());
}

// A batch is atomic with its blobs: when it fails, alone or in a group, none of its blobs
// is stored.
TEST_F(SqliteStoreTest, AFailedBatchWritesNoneOfItsBlobs) {
  WriteBatch first;
  first.events.push_back(Ev("ses_x", 1));
  ASSERT_TRUE(store_->CommitBlocking(std::move(first)).ok());
  WriteBatch dup;
  dup.blobs.push_back(Blob("h_lost", "lost"));
  dup.events.push_back(Ev("ses_x", 1));
  EXPECT_EQ(store_->CommitBlocking(std::move(dup)).code(), StatusCode::kAlreadyExists);
  EXPECT_FALSE(store_->GetBlob("ten_a", "h_lost")->has_value());

  std::atomic<int> wrongly_committed{0};
  int good_failed = CommitConcurrently(4, 30, [&](int t) {
    WriteBatch bad;
    bad.blobs.push_back(Blob("h_bad_" + std::to_string(t), "bad"));
    bad.events.push_back(Ev("ses_x", 1));
    if (store_->CommitBlocking(std::move(bad)).ok()) wrongly_committed++;
  });
  EXPECT_EQ(good_failed, 0);
  EXPECT_EQ(wrongly_committed.load(), 0);
  EXPECT_EQ(store_->MissingBlobs("ten_a", {"h_bad_0", "h_bad_1", "h_bad_2", "h_bad_3"})->size(),
            4u);

  // A hash the store cannot take fails the batch with its reason.
  WriteBatch empty_hash;
  empty_hash.blobs.push_back(Blob("", "x"));
  EXPECT_EQ(store_->CommitBlocking(std::move(empty_hash)).code(), StatusCode::kInvalidArgument);
  WriteBatch long_hash;
  long_hash.blobs.push_back(Blob(std::string(129, 'a'), "x"));
  EXPECT_EQ(store_->CommitBlocking(std::move(long_hash)).code(), StatusCode::kInvalidArgument);
  // So does a blob of no tenant.
  WriteBatch no_tenant;
  no_tenant.blobs.push_back(Blob("h_nobody", "x", ""));
  EXPECT_EQ(store_->CommitBlocking(std::move(no_tenant)).code(), StatusCode::kInvalidArgument);
  EXPECT_FALSE(store_->GetBlob("", "h_nobody")->has_value());
}

// Blobs are durable, and deleting a session leaves them for the sessions that share them.
TEST_F(SqliteStoreTest, BlobsSurviveReopenAndSessionDeletion) {
  WriteBatch b;
  b.events.push_back(Ev("ses_1", 1));
  b.sessions.push_back(Row("ses_1", 1, false));
  b.blobs.push_back(Blob("h_1", std::string(1 << 20, 'x')));
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  Reopen();
  WriteBatch d;
  d.delete_sessions.push_back("ses_1");
  ASSERT_TRUE(store_->CommitBlocking(std::move(d)).ok());
  auto got = store_->GetBlob("ten_a", "h_1");
  ASSERT_TRUE(got.ok() && got->has_value());
  EXPECT_EQ((*got)->data.size(), 1u << 20);
  EXPECT_TRUE(store_->MissingBlobs("ten_a", {"h_1"})->empty());
}

// A database of schema version 1 (before blobs, audit and tenants) upgrades in place and
// keeps its rows.
TEST_F(SqliteStoreTest, AVersion1DatabaseUpgradesInPlace) {
  WriteBatch b;
  b.events.push_back(Ev("ses_1", 1));
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  store_.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_ / "db").string().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "DROP TABLE blobs; DROP TABLE audit_log; DROP TABLE audit_checkpoints; "
                         "DROP TABLE tenants; DROP TABLE principals; DROP TABLE api_keys; "
                         "DROP TABLE secrets; DROP INDEX sessions_tenant; "
                         "ALTER TABLE sessions DROP COLUMN tenant_id; "
                         "ALTER TABLE agents DROP COLUMN tenant_id; "
                         "UPDATE meta SET value='1' WHERE key='schema_version'",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  Reopen();
  ASSERT_TRUE(store_);
  EXPECT_EQ(store_->ReadEvents("ses_1", 0, 10)->size(), 1u);
  WriteBatch blobs;
  blobs.blobs.push_back(Blob("h_1", "one"));
  ASSERT_TRUE(store_->CommitBlocking(std::move(blobs)).ok());
  EXPECT_EQ((*store_->GetBlob("ten_a", "h_1"))->data, "one");
  store_.reset();
  ASSERT_EQ(sqlite3_open((dir_ / "db").string().c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key='schema_version'", -1, &st,
                               nullptr),
            SQLITE_OK);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "6");
  sqlite3_finalize(st);
  sqlite3_close(db);
}

// A database of schema version 5, whose blobs belonged to no tenant, upgrades so that every
// tenant reads each blob its sessions' snapshots use; a tenant whose sessions never took a
// snapshot gets none. Blobs of sessions from before tenants join the tenant that adopts them,
// next to any copy that tenant holds already.
TEST_F(SqliteStoreTest, AVersion5DatabaseKeepsEachSessionsBlobsReadableByItsTenant) {
  struct Old {
    std::string session, tenant, manifest;
    std::vector<std::string> files;
  };
  const std::vector<Old> olds = {{"ses_a", "ten_a", "m_a", {"f_1"}},
                                 {"ses_b", "ten_b", "m_b", {"f_1", "f_2"}},
                                 {"ses_b2", "ten_b", "m_b2", {"f_3"}},
                                 {"ses_old", "", "m_old", {"f_old"}}};
  WriteBatch b;
  for (const auto& o : olds) {
    b.sessions.push_back({o.session, "agt_1", 1, "idle", "{}", 1, 1, 2, false, o.tenant});
    b.events.push_back(Ev(o.session, 1));
    b.events.push_back({o.session, 2, "workspace.snapshot", "trn_1", 5,
                        "{\"manifest\":\"" + o.manifest + "\",\"files\":1}"});
  }
  b.sessions.push_back({"ses_c", "agt_1", 1, "idle", "{}", 1, 1, 1, false, "ten_c"});
  b.events.push_back(Ev("ses_c", 1));
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  store_.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir_ / "db").string().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "DROP TABLE blobs; CREATE TABLE blobs(hash TEXT NOT NULL PRIMARY KEY, "
                         "size INTEGER NOT NULL, codec TEXT NOT NULL, data BLOB NOT NULL); "
                         "INSERT INTO blobs(hash, size, codec, data) VALUES "
                         "('m_a', 5, '', 'c_m_a'), ('m_b', 5, '', 'c_m_b'), "
                         "('m_b2', 6, '', 'c_m_b2'), ('m_old', 7, '', 'c_m_old'), "
                         "('f_1', 5, '', 'c_f_1'), ('f_2', 5, '', 'c_f_2'), "
                         "('f_3', 5, '', 'c_f_3'), ('f_old', 7, '', 'c_f_old'); "
                         "UPDATE meta SET value='5' WHERE key='schema_version'",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  Reopen();
  ASSERT_TRUE(store_);
  EXPECT_EQ(QueryInt("SELECT value FROM meta WHERE key='schema_version'"), 6);

  const std::vector<std::string> all = {"m_a", "m_b", "m_b2", "m_old",
                                        "f_1", "f_2", "f_3",  "f_old"};
  for (const auto& o : olds) {
    std::vector<std::string> used = o.files;
    used.push_back(o.manifest);
    for (const auto& h : used) {
      auto got = store_->GetBlob(o.tenant, h);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      ASSERT_TRUE(got->has_value()) << o.session << " " << h;
      EXPECT_EQ((*got)->data, "c_" + h);
      EXPECT_EQ((*got)->size, static_cast<int64_t>(h.size() + 2));
    }
    EXPECT_TRUE(store_->MissingBlobs(o.tenant, used)->empty()) << o.session;
  }
  EXPECT_EQ(*store_->MissingBlobs("ten_c", all), all);
  EXPECT_FALSE(store_->GetBlob("ten_c", "f_1")->has_value());

  // The tenant that adopts the old session already holds one of its blobs: that copy stays,
  // the others move, and none is left without a tenant.
  WriteBatch own;
  own.blobs.push_back(Blob("f_old", "ten_x's own", "ten_x"));
  ASSERT_TRUE(store_->CommitBlocking(std::move(own)).ok());
  WriteBatch adopt;
  adopt.adopt_untenanted = "ten_x";
  ASSERT_TRUE(store_->CommitBlocking(std::move(adopt)).ok());
  EXPECT_EQ((*store_->GetSession("ses_old"))->tenant_id, "ten_x");
  EXPECT_EQ((*store_->GetBlob("ten_x", "m_old"))->data, "c_m_old");
  EXPECT_EQ((*store_->GetBlob("ten_x", "f_old"))->data, "ten_x's own");
  EXPECT_TRUE(store_->MissingBlobs("ten_x", all)->empty());
  EXPECT_EQ(QueryInt("SELECT COUNT(*) FROM blobs WHERE tenant_id=''"), 0);
  EXPECT_EQ(*store_->MissingBlobs("", {"m_old", "f_old"}),
            (std::vector<std::string>{"m_old", "f_old"}));
  // The other tenants' blobs are theirs still.
  EXPECT_TRUE(store_->MissingBlobs("ten_a", {"m_a", "f_1"})->empty());
  EXPECT_TRUE(store_->MissingBlobs("ten_b", {"m_b", "f_1", "f_2", "m_b2", "f_3"})->empty());
}

// ---- audit log ----------------------------------------------------------------------------

// A stand-in for audit::ChainFunction (the store does not know the audit encoding): the hash
// names the row and its predecessor, which is enough to check the links.
void TestChain(AuditRow& row, const std::string& prev_hash) {
  row.prev_hash = prev_hash;
  row.hash = prev_hash.substr(0, 8) + "/" + row.tenant_id + "/" + std::to_string(row.seq) +
             "/" + row.action;
}

class SqliteAuditTest : public SqliteStoreTest {
 protected:
  void SetUp() override {
    SqliteStoreTest::SetUp();
    ReopenWithChain();
  }
  void ReopenWithChain() {
    store_.reset();
    sqlite::SqliteOptions o;
    o.path = (dir_ / "db").string();
    o.audit_chain = TestChain;
    auto s = sqlite::OpenSqliteStore(o);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s).value();
  }
  static AuditRow Audit(const std::string& tenant, const std::string& action) {
    AuditRow r;
    r.tenant_id = tenant;
    r.action = action;
    r.data = "{}";
    r.seq = 999;  // overwritten by the writer
    return r;
  }
  // Every row of the tenant's chain has seq i + 1 and links to the row before.
  void ExpectChain(const std::string& tenant, size_t n) {
    AuditFilter f;
    f.tenant_id = tenant;
    auto rows = store_->ReadAudit(f, 1 << 20);
    ASSERT_TRUE(rows.ok());
    ASSERT_EQ(rows->size(), n);
    std::string prev(64, '0');
    for (size_t i = 0; i < n; ++i) {
      const AuditRow& r = (*rows)[i];
      EXPECT_EQ(r.seq, static_cast<int64_t>(i + 1));
      EXPECT_EQ(r.prev_hash, prev);
      AuditRow again = r;
      TestChain(again, prev);
      EXPECT_EQ(r.hash, again.hash);
      prev = r.hash;
    }
  }
};

TEST_F(SqliteAuditTest, ConcurrentAppendsMakeDenseValidChains) {
  constexpr int kThreads = 8, kPerThread = 40;
  std::vector<std::thread> running;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    running.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        WriteBatch b;
        b.events.push_back(Ev("ses_" + std::to_string(t), i + 1));
        b.audit.push_back(Audit(t % 2 ? "t1" : "t2", "a" + std::to_string(t)));
        if (!store_->CommitBlocking(std::move(b)).ok()) failures++;
      }
    });
  }
  for (auto& t : running) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_LT(store_->Stats().commits, kThreads * kPerThread);  // they did share commits
  ExpectChain("t1", kThreads / 2 * kPerThread);
  ExpectChain("t2", kThreads / 2 * kPerThread);
  auto tenants = store_->ListAuditTenants();
  ASSERT_TRUE(tenants.ok());
  EXPECT_EQ(*tenants, (std::vector<std::string>{"t1", "t2"}));
}

// A batch that fails (here a duplicate event seq) takes its audit entries with it, alone or
// in a group, and the next entry follows the last one committed.
TEST_F(SqliteAuditTest, ARolledBackBatchLeavesNoGapInTheChain) {
  WriteBatch first;
  first.events.push_back(Ev("ses_1", 1));
  first.audit.push_back(Audit("t1", "ok1"));
  ASSERT_TRUE(store_->CommitBlocking(std::move(first)).ok());
  WriteBatch dup;
  dup.events.push_back(Ev("ses_1", 1));
  dup.audit.push_back(Audit("t1", "lost"));
  dup.audit.push_back(Audit("t1", "lost"));
  EXPECT_FALSE(store_->CommitBlocking(std::move(dup)).ok());
  // The same, inside group commits of concurrent batches.
  std::vector<std::thread> running;
  for (int t = 0; t < 8; ++t) {
    running.emplace_back([&, t] {
      for (int i = 0; i < 20; ++i) {
        WriteBatch b;
        b.events.push_back(Ev(t % 2 ? "ses_1" : "ses_" + std::to_string(t + 10), t % 2 ? 1 : i + 1));
        b.audit.push_back(Audit("t1", t % 2 ? "lost" : "ok"));
        store_->CommitBlocking(std::move(b)).IgnoreError();
      }
    });
  }
  for (auto& t : running) t.join();
  ExpectChain("t1", 1 + 4 * 20);
  AuditFilter lost;
  lost.tenant_id = "t1";
  lost.action = "lost";
  EXPECT_TRUE(store_->ReadAudit(lost, 10)->empty());
  // The head survives a reopen.
  ReopenWithChain();
  WriteBatch last;
  last.audit.push_back(Audit("t1", "after"));
  ASSERT_TRUE(store_->CommitBlocking(std::move(last)).ok());
  ExpectChain("t1", 2 + 4 * 20);
}

TEST_F(SqliteAuditTest, CheckpointsFiltersAndReadOnlyOpen) {
  WriteBatch b;
  for (int i = 0; i < 5; ++i) {
    AuditRow r = Audit("t1", i % 2 ? "x" : "y");
    r.principal = "p" + std::to_string(i);
    r.resource = i < 3 ? "sessions/a" : "agents/b";
    r.decision = i == 4 ? "deny" : "allow";
    r.time_ms = 100 + i;
    b.audit.push_back(r);
  }
  b.audit_checkpoints.push_back({"t1", 3, "h", 7, "k", "sig"});
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  WriteBatch again;
  again.audit_checkpoints.push_back({"t1", 3, "h", 7, "k", "sig"});
  EXPECT_EQ(store_->CommitBlocking(std::move(again)).code(), StatusCode::kAlreadyExists);
  AuditFilter f;
  f.tenant_id = "t1";
  f.action = "y";
  EXPECT_EQ(store_->ReadAudit(f, 10)->size(), 3u);
  f.resource_prefix = "sessions/";
  EXPECT_EQ(store_->ReadAudit(f, 10)->size(), 2u);
  AuditFilter d;
  d.tenant_id = "t1";
  d.decision = "deny";
  d.since_ms = 104;
  d.until_ms = 105;
  ASSERT_EQ(store_->ReadAudit(d, 10)->size(), 1u);
  EXPECT_EQ(store_->ReadAudit(d, 10)->front().principal, "p4");
  EXPECT_EQ((*store_->ReadAuditHead("t1"))->seq, 5);
  EXPECT_FALSE(store_->ReadAuditHead("t9")->has_value());
  store_.reset();

  sqlite::SqliteOptions ro;
  ro.path = (dir_ / "db").string();
  ro.read_only = true;
  auto s = sqlite::OpenSqliteStore(ro);
  ASSERT_TRUE(s.ok()) << s.status().ToString();
  auto cps = (*s)->ReadAuditCheckpoints("t1");
  ASSERT_TRUE(cps.ok());
  ASSERT_EQ(cps->size(), 1u);
  EXPECT_EQ(cps->front().signature, "sig");
  WriteBatch w;
  w.audit.push_back(Audit("t1", "z"));
  EXPECT_FALSE((*s)->CommitBlocking(std::move(w)).ok());
}

TEST_F(SqliteStoreTest, AuditEntriesNeedAChainFunction) {
  WriteBatch b;
  AuditRow r;
  r.tenant_id = "t1";
  b.audit.push_back(r);
  EXPECT_EQ(store_->CommitBlocking(std::move(b)).code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace agentd::store
