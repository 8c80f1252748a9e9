// The audit log on a real SQLite store: chaining, checkpoints, queries, and verification of
// chains tampered with through SQL, as someone with the database file could.
#include <gtest/gtest.h>
#include <sodium.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>

#include "audit/audit.h"
#include "audit/verify.h"
#include "common/base64.h"
#include "store/sqlite/sqlite_store.h"

namespace agentd::audit {
namespace {

struct KeyPair {
  std::string pk, sk;
};

KeyPair NewKeyPair() {
  KeyPair k{std::string(crypto_sign_PUBLICKEYBYTES, '\0'),
            std::string(crypto_sign_SECRETKEYBYTES, '\0')};
  crypto_sign_keypair(reinterpret_cast<unsigned char*>(k.pk.data()),
                      reinterpret_cast<unsigned char*>(k.sk.data()));
  return k;
}

class AuditTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (sodium_init() < 0) GTEST_SKIP() << "libsodium unusable";
    dir_ = std::filesystem::temp_directory_path() /
           ("agentd_audit_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    key_ = NewKeyPair();
    Open();
  }
  void TearDown() override {
    log_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::string DbPath() const { return (dir_ / "agentd.db").string(); }

  void Open(AuditOptions options = ManualCheckpoints()) {
    log_.reset();
    store_.reset();
    store::sqlite::SqliteOptions so;
    so.path = DbPath();
    so.audit_chain = ChainFunction();
    auto s = store::sqlite::OpenSqliteStore(so);
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s).value();
    auto signer = Ed25519Signer("key-1", key_.sk);
    ASSERT_TRUE(signer.ok());
    log_ = std::make_unique<AuditLog>(*store_, *signer, options);
  }
  static AuditOptions ManualCheckpoints() {
    AuditOptions o;
    o.checkpoint_every = 1 << 30;
    o.checkpoint_thread = false;
    return o;
  }
  void Close() {
    log_.reset();
    store_.reset();
  }

  static AuditEntry Entry(const std::string& tenant, int n) {
    AuditEntry e;
    e.tenant_id = tenant;
    e.time_ms = 1'700'000'000'000 + n;
    e.principal = "prn_" + std::to_string(n % 3);
    e.action = n % 2 ? "sessions.create" : "tool.call";
    e.resource = "sessions/ses_" + std::to_string(n);
    e.decision = n % 5 == 0 ? "deny" : "allow";
    e.result = n % 5 == 0 ? "403" : "201";
    e.data = R"({"n":)" + std::to_string(n) + R"(,"agent_id":"agt_1"})";
    return e;
  }

  // Entries 1..20 with checkpoints at 10 and 20, then 21..25 uncovered, as after a crash:
  // written with no AuditLog to sign them on closing. Leaves log_ without a signer.
  void BuildChain(const std::string& tenant = "t1") {
    for (int i = 1; i <= 20; ++i) {
      ASSERT_TRUE(log_->AppendBlocking(Entry(tenant, i)).ok());
      if (i == 10 || i == 20) {
        auto cp = log_->CheckpointBlocking(tenant);
        ASSERT_TRUE(cp.ok()) << cp.status().ToString();
        ASSERT_TRUE(cp->has_value());
        EXPECT_EQ((*cp)->seq, i);
      }
    }
    log_ = std::make_unique<AuditLog>(*store_, Signer{});
    for (int i = 21; i <= 25; ++i) {
      store::WriteBatch b;
      ASSERT_TRUE(log_->Stage(b, Entry(tenant, i)).ok());
      ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
    }
  }

  // Runs SQL on the database file with the store closed, as an attacker would.
  void Tamper(const std::string& sql) {
    Close();
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(DbPath().c_str(), &db), SQLITE_OK);
    char* err = nullptr;
    int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
    std::string msg = err ? err : "";
    sqlite3_free(err);
    sqlite3_close(db);
    ASSERT_EQ(rc, SQLITE_OK) << msg;
  }

  VerifyReport Verify(const std::string& tenant = "t1", bool with_key = true) {
    if (!store_) {
      store::sqlite::SqliteOptions so;
      so.path = DbPath();
      so.read_only = true;
      auto s = store::sqlite::OpenSqliteStore(so);
      EXPECT_TRUE(s.ok()) << s.status().ToString();
      store_ = std::move(s).value();
    }
    VerifyOptions o;
    if (with_key) o.keys = {PublicKey{"key-1", key_.pk}};
    o.page = 7;  // several pages, one boundary inside every tamper below
    auto source = StoreSource(*store_);
    auto r = VerifyBlocking(*source, tenant, o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? *r : VerifyReport{};
  }

  static std::string Describe(const VerifyReport& r) {
    std::string out;
    for (const auto& p : r.problems) out += FormatProblem(p) + "\n";
    return out;
  }
  static bool Has(const VerifyReport& r, ProblemKind kind, int64_t seq, int64_t to_seq) {
    return std::any_of(r.problems.begin(), r.problems.end(), [&](const Problem& p) {
      return p.kind == kind && p.seq == seq && p.to_seq == to_seq;
    });
  }

  std::string HashAt(int64_t seq) {
    store::AuditFilter f;
    f.tenant_id = "t1";
    f.after_seq = seq - 1;
    auto rows = store_->ReadAudit(f, 1);
    return rows.ok() && !rows->empty() ? rows->front().hash : "";
  }

  std::filesystem::path dir_;
  KeyPair key_;
  std::unique_ptr<store::Store> store_;
  std::unique_ptr<AuditLog> log_;
};

TEST_F(AuditTest, AnUntamperedChainVerifies) {
  BuildChain();
  VerifyReport r = Verify();
  EXPECT_TRUE(r.ok()) << Describe(r);
  EXPECT_EQ(r.entries, 25);
  EXPECT_EQ(r.last_seq, 25);
  EXPECT_EQ(r.checkpoints, 2);
  EXPECT_EQ(r.signatures_checked, 2);
  EXPECT_EQ(r.last_checkpoint_seq, 20);
  EXPECT_EQ(r.uncovered, 5);
}

TEST_F(AuditTest, EntriesAreLinkedInCommitOrderWithDenseSeqs) {
  BuildChain();
  store::AuditFilter f;
  f.tenant_id = "t1";
  auto rows = store_->ReadAudit(f, 100);
  ASSERT_TRUE(rows.ok());
  ASSERT_EQ(rows->size(), 25u);
  std::string prev = kGenesisHash;
  for (size_t i = 0; i < rows->size(); ++i) {
    const auto& r = (*rows)[i];
    EXPECT_EQ(r.seq, static_cast<int64_t>(i + 1));
    EXPECT_EQ(r.prev_hash, prev);
    EXPECT_EQ(r.hash, EntryHash(prev, FromRow(r)));
    prev = r.hash;
  }
}

TEST_F(AuditTest, AChangedFieldIsFoundAtItsSeq) {
  BuildChain();
  Tamper("UPDATE audit_log SET result='200' WHERE tenant_id='t1' AND seq=5");
  VerifyReport r = Verify();
  EXPECT_EQ(r.problem_count, 1) << Describe(r);
  EXPECT_TRUE(Has(r, ProblemKind::kChanged, 5, 5)) << Describe(r);
}

TEST_F(AuditTest, ARemovedEntryIsFoundAtItsSeq) {
  BuildChain();
  Tamper("DELETE FROM audit_log WHERE tenant_id='t1' AND seq=7");
  VerifyReport r = Verify();
  EXPECT_EQ(r.problem_count, 1) << Describe(r);
  EXPECT_TRUE(Has(r, ProblemKind::kRemoved, 7, 7)) << Describe(r);
}

// A forger who knows the format: the rows after seq 4 move up one, and a forged entry with a
// correct hash linked to seq 4 takes seq 5.
TEST_F(AuditTest, AnInsertedEntryIsFoundAtItsSeq) {
  BuildChain();
  AuditEntry forged = Entry("t1", 99);
  forged.seq = 5;
  forged.prev_hash = HashAt(4);
  forged.hash = EntryHash(forged.prev_hash, forged);
  Tamper(
      "UPDATE audit_log SET seq=-(seq+1) WHERE tenant_id='t1' AND seq>4;"
      "UPDATE audit_log SET seq=-seq WHERE tenant_id='t1' AND seq<0;"
      "INSERT INTO audit_log VALUES('t1',5," +
      std::to_string(forged.time_ms) + ",'" + forged.principal + "','" + forged.action + "','" +
      forged.resource + "','" + forged.decision + "','" + forged.result + "','" + forged.data +
      "','" + forged.prev_hash + "','" + forged.hash + "')");
  VerifyReport r = Verify();
  EXPECT_TRUE(Has(r, ProblemKind::kInserted, 5, 5)) << Describe(r);
  // The entries after it kept their hashes, which match their old seqs.
  EXPECT_TRUE(Has(r, ProblemKind::kRenumbered, 6, 26)) << Describe(r);
  EXPECT_FALSE(Has(r, ProblemKind::kChanged, 5, 5)) << Describe(r);
  // The checkpoints at 10 and 20 no longer match the entries now at those seqs.
  EXPECT_TRUE(Has(r, ProblemKind::kCheckpointMismatch, 10, 10)) << Describe(r);
}

TEST_F(AuditTest, SwappedEntriesAreFoundAsReordered) {
  BuildChain();
  Tamper(
      "UPDATE audit_log SET seq=-1 WHERE tenant_id='t1' AND seq=5;"
      "UPDATE audit_log SET seq=5 WHERE tenant_id='t1' AND seq=6;"
      "UPDATE audit_log SET seq=6 WHERE tenant_id='t1' AND seq=-1");
  VerifyReport r = Verify();
  EXPECT_TRUE(Has(r, ProblemKind::kReordered, 5, 6)) << Describe(r);
  EXPECT_FALSE(Has(r, ProblemKind::kInserted, 5, 5)) << Describe(r);
  for (const auto& p : r.problems) {
    EXPECT_TRUE(p.seq >= 5 && p.to_seq <= 6) << Describe(r);
    EXPECT_NE(p.kind, ProblemKind::kBrokenLink) << Describe(r);
  }
}

// An entry replaced and given a hash of its own content: the next entry no longer links.
TEST_F(AuditTest, AReplacedAndRehashedEntryBreaksTheNextLink) {
  BuildChain();
  store::AuditFilter f;
  f.tenant_id = "t1";
  f.after_seq = 2;
  AuditEntry e = FromRow(store_->ReadAudit(f, 1)->front());
  e.result = "500";
  std::string h = EntryHash(e.prev_hash, e);
  Tamper("UPDATE audit_log SET result='500', hash='" + h + "' WHERE tenant_id='t1' AND seq=3");
  VerifyReport r = Verify();
  EXPECT_EQ(r.problem_count, 1) << Describe(r);
  EXPECT_TRUE(Has(r, ProblemKind::kBrokenLink, 4, 4)) << Describe(r);
}

// The whole chain rewritten from seq 5 on with fresh hashes: only the checkpoints tell.
TEST_F(AuditTest, ARewrittenChainIsCaughtByItsCheckpoint) {
  BuildChain();
  store::AuditFilter f;
  f.tenant_id = "t1";
  auto rows = store_->ReadAudit(f, 100);
  ASSERT_TRUE(rows.ok());
  std::string sql;
  std::string prev = (*rows)[3].hash;
  for (size_t i = 4; i < rows->size(); ++i) {
    AuditEntry e = FromRow((*rows)[i]);
    if (e.seq == 5) e.result = "200";
    e.prev_hash = prev;
    e.hash = EntryHash(prev, e);
    sql += "UPDATE audit_log SET result='" + e.result + "', prev_hash='" + e.prev_hash +
           "', hash='" + e.hash + "' WHERE tenant_id='t1' AND seq=" + std::to_string(e.seq) +
           ";";
    prev = e.hash;
  }
  Tamper(sql);
  VerifyReport r = Verify();
  EXPECT_EQ(r.problem_count, 2) << Describe(r);
  EXPECT_TRUE(Has(r, ProblemKind::kCheckpointMismatch, 10, 10)) << Describe(r);
  EXPECT_TRUE(Has(r, ProblemKind::kCheckpointMismatch, 20, 20)) << Describe(r);
}

TEST_F(AuditTest, ATailCutBeforeTheLastCheckpointIsFound) {
  BuildChain();
  Tamper("DELETE FROM audit_log WHERE tenant_id='t1' AND seq>15");
  VerifyReport r = Verify();
  EXPECT_EQ(r.problem_count, 1) << Describe(r);
  EXPECT_TRUE(Has(r, ProblemKind::kTruncated, 16, 20)) << Describe(r);
  EXPECT_EQ(r.last_seq, 15);
}

// What is not detectable, said plainly: a cut after the last checkpoint leaves a chain that
// verifies; the report shows how many entries were exposed to it.
TEST_F(AuditTest, ATailCutAfterTheLastCheckpointIsNotDetectable) {
  BuildChain();
  EXPECT_EQ(Verify().uncovered, 5);
  Tamper("DELETE FROM audit_log WHERE tenant_id='t1' AND seq>20");
  VerifyReport r = Verify();
  EXPECT_TRUE(r.ok()) << Describe(r);
  EXPECT_EQ(r.uncovered, 0);
}

TEST_F(AuditTest, AForgedCheckpointIsFound) {
  BuildChain();
  // A checkpoint of the true head at 25, signed with another key under our key id.
  KeyPair other = NewKeyPair();
  auto signer = Ed25519Signer("key-1", other.sk);
  ASSERT_TRUE(signer.ok());
  Checkpoint c{"t1", 25, HashAt(25), 1'700'000'001'000, "key-1", ""};
  c.signature = Base64Encode(*signer->sign(CheckpointMessage(c)), Base64Variant::kUrlNoPadding);
  Tamper("INSERT INTO audit_checkpoints VALUES('t1',25,'" + c.head_hash + "'," +
         std::to_string(c.time_ms) + ",'key-1','" + c.signature + "')");
  VerifyReport r = Verify();
  EXPECT_EQ(r.problem_count, 1) << Describe(r);
  EXPECT_TRUE(Has(r, ProblemKind::kBadSignature, 25, 25)) << Describe(r);
}

TEST_F(AuditTest, AChangedCheckpointFailsItsSignature) {
  BuildChain();
  Tamper("UPDATE audit_checkpoints SET seq=11 WHERE tenant_id='t1' AND seq=10");
  VerifyReport r = Verify();
  EXPECT_TRUE(Has(r, ProblemKind::kBadSignature, 11, 11)) << Describe(r);
  EXPECT_TRUE(Has(r, ProblemKind::kCheckpointMismatch, 11, 11)) << Describe(r);
}

TEST_F(AuditTest, WithoutAKeySignaturesAreNotChecked) {
  BuildChain();
  VerifyReport r = Verify("t1", false);
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(r.signatures_checked, 0);
}

TEST_F(AuditTest, TenantsHaveSeparateChains) {
  ASSERT_TRUE(log_->AppendBlocking(Entry("t1", 1)).ok());
  ASSERT_TRUE(log_->AppendBlocking(Entry("", 2)).ok());
  ASSERT_TRUE(log_->AppendBlocking(Entry("t1", 3)).ok());
  auto tenants = store_->ListAuditTenants();
  ASSERT_TRUE(tenants.ok());
  EXPECT_EQ(*tenants, (std::vector<std::string>{"", "t1"}));
  auto head = store_->ReadAuditHead("");
  ASSERT_TRUE(head.ok() && head->has_value());
  EXPECT_EQ((*head)->seq, 1);
  EXPECT_EQ((*head)->prev_hash, kGenesisHash);
  EXPECT_EQ((*store_->ReadAuditHead("t1"))->seq, 2);
  // An entry moved to another tenant's chain no longer matches its hash.
  Tamper("UPDATE audit_log SET tenant_id='' , seq=2 WHERE tenant_id='t1' AND seq=2");
  VerifyReport r = Verify("");
  EXPECT_TRUE(Has(r, ProblemKind::kChanged, 2, 2)) << Describe(r);
}

TEST_F(AuditTest, StagedEntriesCommitWithTheirBatch) {
  store::WriteBatch b;
  b.events.push_back({"ses_1", 1, "test", "", 1, "{}"});
  ASSERT_TRUE(log_->Stage(b, Entry("t1", 1)).ok());
  ASSERT_TRUE(store_->CommitBlocking(std::move(b)).ok());
  // A failing batch (duplicate event seq) takes its audit entry with it.
  store::WriteBatch dup;
  dup.events.push_back({"ses_1", 1, "test", "", 1, "{}"});
  ASSERT_TRUE(log_->Stage(dup, Entry("t1", 2)).ok());
  EXPECT_FALSE(store_->CommitBlocking(std::move(dup)).ok());
  ASSERT_TRUE(log_->AppendBlocking(Entry("t1", 3)).ok());
  auto head = store_->ReadAuditHead("t1");
  ASSERT_TRUE(head.ok() && head->has_value());
  EXPECT_EQ((*head)->seq, 2);
  EXPECT_TRUE(Verify().ok());
  AuditEntry bad = Entry("t1", 4);
  bad.data = "[1]";
  EXPECT_EQ(log_->AppendBlocking(bad).code(), StatusCode::kInvalidArgument);
}

TEST_F(AuditTest, QueryFiltersAndPages) {
  BuildChain();
  AuditQuery q;
  q.filter.tenant_id = "t1";
  q.limit = 10;
  auto page = log_->Query(q);
  ASSERT_TRUE(page.ok()) << page.status().ToString();
  ASSERT_EQ((*page)["data"].size(), 10u);
  EXPECT_TRUE((*page)["has_more"].get<bool>());
  EXPECT_EQ((*page)["next_cursor"], "10");
  const Json& first = (*page)["data"][0];
  for (const char* k : {"tenant_id", "seq", "time_ms", "time", "principal", "action", "resource",
                        "decision", "result", "data", "prev_hash", "hash"}) {
    EXPECT_TRUE(first.contains(k)) << k;
  }
  EXPECT_EQ(first["data"]["n"], 1);
  EXPECT_EQ(first["time"], "2023-11-14T22:13:20.001Z");
  q.cursor = "20";
  page = log_->Query(q);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ((*page)["data"].size(), 5u);
  EXPECT_FALSE((*page)["has_more"].get<bool>());
  EXPECT_TRUE((*page)["next_cursor"].is_null());

  AuditQuery denied;
  denied.filter.tenant_id = "t1";
  denied.filter.decision = "deny";
  denied.filter.resource_prefix = "sessions/ses_1";
  page = log_->Query(denied);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ((*page)["data"].size(), 2u);  // 10 and 15
  EXPECT_EQ((*page)["data"][0]["seq"], 10);
  AuditQuery window;
  window.filter.tenant_id = "t1";
  window.filter.since_ms = 1'700'000'000'003;
  window.filter.until_ms = 1'700'000'000'006;
  window.filter.action = "tool.call";
  page = log_->Query(window);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ((*page)["data"].size(), 1u);
  EXPECT_EQ((*page)["data"][0]["seq"], 4);

  AuditQuery bad = q;
  bad.cursor = "x";
  EXPECT_EQ(log_->Query(bad).status().code(), StatusCode::kInvalidArgument);
  bad.cursor = "";
  bad.limit = 5000;
  EXPECT_EQ(log_->Query(bad).status().code(), StatusCode::kInvalidArgument);

  auto cps = log_->Checkpoints("t1");
  ASSERT_TRUE(cps.ok());
  ASSERT_EQ((*cps)["data"].size(), 2u);
  EXPECT_EQ((*cps)["data"][1]["seq"], 20);
}

// What `agentctl audit verify` does against a live server: the chain through the JSON that
// `GET /v1/audit` and `GET /v1/audit/checkpoints` serve.
class JsonSource final : public AuditSource {
 public:
  explicit JsonSource(AuditLog& log) : log_(log) {}
  Result<std::vector<AuditEntry>> ReadEntriesBlocking(const std::string& tenant_id,
                                                      int64_t after_seq, int limit) override {
    AuditQuery q;
    q.filter.tenant_id = tenant_id;
    q.filter.after_seq = after_seq;
    q.limit = limit;
    ASSIGN_OR_RETURN(Json page, log_.Query(q));
    std::vector<AuditEntry> out;
    for (const Json& j : page["data"]) {
      ASSIGN_OR_RETURN(AuditEntry e, EntryFromJson(Json::parse(j.dump())));
      out.push_back(std::move(e));
    }
    return out;
  }
  Result<std::vector<Checkpoint>> ReadCheckpointsBlocking(const std::string& tenant_id) override {
    ASSIGN_OR_RETURN(Json page, log_.Checkpoints(tenant_id));
    std::vector<Checkpoint> out;
    for (const Json& j : page["data"]) {
      ASSIGN_OR_RETURN(Checkpoint c, CheckpointFromJson(j));
      out.push_back(std::move(c));
    }
    return out;
  }

 private:
  AuditLog& log_;
};

TEST_F(AuditTest, TheApiJsonVerifiesToo) {
  BuildChain();
  // Stored data that is not canonical JSON is served as a string so it can still be hashed.
  Tamper("UPDATE audit_log SET data='{\"n\": 7, \"agent_id\":\"agt_1\"}' WHERE seq=7");
  Open();
  log_ = std::make_unique<AuditLog>(*store_, Signer{});
  JsonSource source(*log_);
  VerifyOptions o;
  o.keys = *ParsePublicKeys(Base64Encode(key_.pk, Base64Variant::kUrlNoPadding));
  auto r = VerifyBlocking(source, "t1", o);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->entries, 25);
  EXPECT_EQ(r->signatures_checked, 2);
  EXPECT_EQ(r->problem_count, 1) << Describe(*r);
  EXPECT_TRUE(Has(*r, ProblemKind::kChanged, 7, 7)) << Describe(*r);
}

TEST_F(AuditTest, PublicKeysParseFromBase64urlJwkAndJwks) {
  std::string x = Base64Encode(key_.pk, Base64Variant::kUrlNoPadding);
  auto raw = ParsePublicKeys(x + "\n");
  ASSERT_TRUE(raw.ok());
  EXPECT_EQ(raw->front().key, key_.pk);
  auto jwks = ParsePublicKeys(R"({"keys":[{"kty":"RSA","n":"x","e":"AQAB"},)"
                              R"({"kty":"OKP","crv":"Ed25519","kid":"k9","x":")" + x + R"("}]})");
  ASSERT_TRUE(jwks.ok()) << jwks.status().ToString();
  ASSERT_EQ(jwks->size(), 1u);
  EXPECT_EQ(jwks->front().key_id, "k9");
  // A private JWK (agentd's key file) yields its public half.
  auto jwk = ParsePublicKeys(R"({"kty":"OKP","crv":"Ed25519","d":"secret","x":")" + x + "\"}");
  ASSERT_TRUE(jwk.ok());
  EXPECT_EQ(jwk->front().key, key_.pk);
  EXPECT_FALSE(ParsePublicKeys("not a key").ok());
  EXPECT_FALSE(ParsePublicKeys(R"({"keys":[]})").ok());
}

TEST_F(AuditTest, TheCheckpointerSignsEveryNEntriesAndOnClose) {
  AuditOptions o;
  o.checkpoint_every = 5;
  o.checkpoint_interval = std::chrono::hours(24);
  Open(o);
  for (int i = 1; i <= 12; ++i) ASSERT_TRUE(log_->AppendBlocking(Entry("t1", i)).ok());
  // The 5th and 10th entries wake the checkpointer; wait for it.
  for (int tries = 0; tries < 500; ++tries) {
    auto cps = store_->ReadAuditCheckpoints("t1");
    if (cps.ok() && !cps->empty() && cps->back().seq >= 10) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  auto cps = store_->ReadAuditCheckpoints("t1");
  ASSERT_TRUE(cps.ok());
  ASSERT_FALSE(cps->empty());
  EXPECT_GE(cps->back().seq, 10);
  log_->Close();
  cps = store_->ReadAuditCheckpoints("t1");
  EXPECT_EQ(cps->back().seq, 12);
  VerifyReport r = Verify();
  EXPECT_TRUE(r.ok()) << Describe(r);
  EXPECT_EQ(r.uncovered, 0);
}

// ---- agentctl audit verify, offline ------------------------------------------------------

struct CliRun {
  int exit_code = -1;
  std::string out;
};

CliRun RunAgentctl(const std::string& args) {
  std::string cmd = std::string(AGENTCTL_PATH) + " " + args + " 2>&1";
  CliRun r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST_F(AuditTest, AgentctlVerifiesACopyOfADataDirectory) {
  BuildChain();
  Close();
  std::filesystem::path copy = dir_ / "copy";
  std::filesystem::create_directories(copy);
  for (const char* f : {"agentd.db", "agentd.db-wal", "agentd.db-shm"}) {
    if (std::filesystem::exists(dir_ / f)) std::filesystem::copy_file(dir_ / f, copy / f);
  }
  std::string key = Base64Encode(key_.pk, Base64Variant::kUrlNoPadding);
  std::string jwks = (dir_ / "jwks.json").string();
  {
    FILE* f = std::fopen(jwks.c_str(), "w");
    ASSERT_NE(f, nullptr);
    std::fputs((R"({"keys":[{"kty":"OKP","crv":"Ed25519","kid":"key-1","x":")" + key + "\"}]}")
                   .c_str(),
               f);
    std::fclose(f);
  }
  CliRun ok = RunAgentctl("audit verify --data-dir " + copy.string() + " --public-key " + jwks);
  EXPECT_EQ(ok.exit_code, 0) << ok.out;
  EXPECT_NE(ok.out.find("tenant 't1': OK: 25 entries"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("2 signatures checked"), std::string::npos) << ok.out;
  EXPECT_NE(ok.out.find("5 entries after seq 20 are not yet covered"), std::string::npos)
      << ok.out;

  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((copy / "agentd.db").string().c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE audit_log SET principal='prn_x' WHERE seq=12", nullptr,
                         nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  CliRun bad = RunAgentctl("audit verify --data-dir " + copy.string() + " --public-key " + key +
                        " --tenant t1");
  EXPECT_EQ(bad.exit_code, 10) << bad.out;
  EXPECT_NE(bad.out.find("1 PROBLEM"), std::string::npos) << bad.out;
  EXPECT_NE(bad.out.find("seq 12: changed"), std::string::npos) << bad.out;

  CliRun json = RunAgentctl("--json audit verify --data-dir " + copy.string());
  EXPECT_EQ(json.exit_code, 10) << json.out;
  auto parsed = ParseJson(json.out, "output");
  ASSERT_TRUE(parsed.ok()) << json.out;
  EXPECT_FALSE((*parsed)["ok"].get<bool>());
  EXPECT_TRUE((*parsed)["chains"][0]["signatures_checked"].is_null());

  CliRun missing = RunAgentctl("audit verify --data-dir " + (dir_ / "nowhere").string());
  EXPECT_EQ(missing.exit_code, 3) << missing.out;
}

}  // namespace
}  // namespace agentd::audit
