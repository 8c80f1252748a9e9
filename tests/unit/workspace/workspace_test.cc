// Workspace snapshots and restores against a real SQLite store and real files in a temp dir.
#include "sandbox/workspace/workspace.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <sstream>

#include "store/sqlite/sqlite_store.h"

namespace agentd::sandbox::workspace {
namespace {

namespace fs = std::filesystem;

// The tenant whose blobs the tests snapshot into and restore from.
const std::string kTenant = "ten_a";

class WorkspaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("agentd_ws_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "ws");
    auto s = store::sqlite::OpenSqliteStore({(dir_ / "db").string()});
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s).value();
    // Tests compare file times right after writing them; see SnapshotOptions.
    fast_.racy_window_ms = 0;
    fast_restore_.racy_window_ms = 0;
  }
  void TearDown() override {
    store_.reset();
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    for (auto it = fs::recursive_directory_iterator(dir_, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (it->is_directory(ec) && !it->is_symlink(ec)) {
        fs::permissions(it->path(), fs::perms::owner_all, fs::perm_options::add, ec);
      }
    }
    fs::remove_all(dir_);
  }

  fs::path Ws() const { return dir_ / "ws"; }

  static void Write(const fs::path& p, std::string_view content, int mode = 0644) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary | std::ios::trunc).write(content.data(), content.size());
    ASSERT_EQ(::chmod(p.c_str(), mode), 0);
  }
  static std::string Read(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Commits a snapshot of `dir` and returns it.
  SnapshotResult SnapshotCommitted(const fs::path& dir, const Manifest* previous,
                                   const SnapshotOptions& options) {
    store::WriteBatch batch;
    auto r = Snapshot(dir.string(), previous, *store_, kTenant, batch, options);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    if (!r.ok()) return {};
    if (!batch.empty()) {
      EXPECT_TRUE(store_->CommitBlocking(std::move(batch)).ok());
    }
    return std::move(r).value();
  }

  // Stores `text` as a blob under its content hash (or `hash` when given) and returns it.
  std::string PutBlob(const std::string& text, std::string hash = "", std::string codec = "",
                      std::string data = "", int64_t size = -1) {
    if (hash.empty()) hash = ContentHash(text);
    store::WriteBatch b;
    b.blobs.push_back({kTenant, hash, codec.empty() && data.empty() ? text : data,
                       size >= 0 ? size : static_cast<int64_t>(text.size()), codec});
    EXPECT_TRUE(store_->CommitBlocking(std::move(b)).ok());
    return hash;
  }

  static std::set<std::string> Names(const fs::path& dir) {
    std::set<std::string> out;
    for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
    return out;
  }

  // Every entry under `root` as "type mode [size mtime content|target]", by path.
  static std::map<std::string, std::string> Describe(const fs::path& root) {
    std::map<std::string, std::string> out;
    struct stat rs {};
    ::lstat(root.c_str(), &rs);
    out["."] = fmt::format("root {:o}", rs.st_mode & 0777);
    for (auto it = fs::recursive_directory_iterator(root); it != fs::recursive_directory_iterator();
         ++it) {
      std::string rel = fs::relative(it->path(), root).string();
      struct stat st {};
      ::lstat(it->path().c_str(), &st);
      if (S_ISLNK(st.st_mode)) {
        out[rel] = "symlink " + fs::read_symlink(it->path()).string();
      } else if (S_ISDIR(st.st_mode)) {
        out[rel] = fmt::format("dir {:o}", st.st_mode & 0777);
      } else if (S_ISREG(st.st_mode)) {
        out[rel] = fmt::format("file {:o} {} {}.{} {}", st.st_mode & 0777, st.st_size,
                               st.st_mtim.tv_sec, st.st_mtim.tv_nsec, Read(it->path()));
      } else {
        out[rel] = "special";
      }
    }
    return out;
  }

  // Restores a manifest text stored as a blob into `target`, which exists with one file;
  // expects `code` with `words` in the message and the target and its parent untouched.
  void ExpectRestoreFails(const std::string& manifest_hash, StatusCode code,
                          const std::string& words, const RestoreOptions& options = {}) {
    fs::path target = dir_ / "target";
    Write(target / "keep.txt", "old workspace");
    auto before = Describe(dir_ / "target");
    auto siblings = Names(dir_);
    auto r = RestoreBlocking(manifest_hash, *store_, kTenant, target.string(), options);
    ASSERT_FALSE(r.ok()) << "restore of " << manifest_hash << " succeeded";
    EXPECT_EQ(r.status().code(), code) << r.status().ToString();
    EXPECT_NE(r.status().message().find(words), std::string::npos) << r.status().ToString();
    EXPECT_EQ(Describe(target), before);
    EXPECT_EQ(Names(dir_), siblings);
  }

  fs::path dir_;
  std::unique_ptr<store::Store> store_;
  SnapshotOptions fast_;
  RestoreOptions fast_restore_;
};

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// Text-like bytes that compress about as well as source code.
std::string Words(size_t n, uint32_t seed) {
  static const char* kWords[] = {"int ",  "return ", "if (",   "x",     "y = ", "{\n",
                                 "}\n",   "std::",   "const ", "auto ", "; ",   "for (",
                                 "value", "0",       "1",      "name_", " + ",  "\n  "};
  std::mt19937 rng(seed);
  std::string s;
  while (s.size() < n) s += kWords[rng() % std::size(kWords)];
  s.resize(n);
  return s;
}

TEST_F(WorkspaceTest, RoundTripKeepsFilesDirectoriesSymlinksModesAndTimes) {
  Write(Ws() / "a.txt", "hello\n");
  Write(Ws() / "empty", "");
  std::string all_bytes;
  for (int i = 0; i < 256; ++i) all_bytes += static_cast<char>(i);
  Write(Ws() / "bin" / "all_bytes", all_bytes);
  Write(Ws() / "bin" / "random", RandomBytes(100000, 1));
  Write(Ws() / "src" / "main.cc", Words(50000, 2));
  Write(Ws() / "deep" / "a" / "b" / "c" / "d.txt", "deep");
  Write(Ws() / "ünïcødé 名前 \"quoted\"\n.txt", "unicode");
  Write(Ws() / std::string("not-utf8-\xff\xfe"), "bytes");
  Write(Ws() / "run.sh", "#!/bin/sh\n", 0755);
  Write(Ws() / "secret", "private", 0600);
  Write(Ws() / "ro" / "inside.txt", "read-only dir", 0444);
  fs::create_directories(Ws() / "empty_dir");
  ASSERT_EQ(::chmod((Ws() / "ro").c_str(), 0555), 0);
  ASSERT_EQ(::chmod(Ws().c_str(), 0751), 0);
  fs::create_symlink("a.txt", Ws() / "link");
  fs::create_symlink("../nowhere", Ws() / "deep" / "dangling");
  fs::create_symlink(std::string("\xff"), Ws() / "link-to-bytes");
  ASSERT_EQ(::mkfifo((Ws() / "fifo").c_str(), 0644), 0);

  auto snap = SnapshotCommitted(Ws(), nullptr, fast_);
  EXPECT_EQ(snap.manifest_hash.size(), 64u);
  EXPECT_EQ(snap.stats.skipped_special, 1);
  EXPECT_EQ(snap.stats.symlinks, 3);
  EXPECT_EQ(snap.stats.files, 11);
  EXPECT_EQ(snap.stats.files_read, 11);
  // all_bytes and random do not shrink; the rest do, and the empty file is one blob.
  EXPECT_EQ(snap.stats.blobs_new, 12);

  auto restored = RestoreBlocking(snap.manifest_hash, *store_, kTenant, (dir_ / "out").string());
  ASSERT_TRUE(restored.ok()) << restored.status().ToString();
  fs::remove(Ws() / "fifo");
  EXPECT_EQ(Describe(dir_ / "out"), Describe(Ws()));
  EXPECT_EQ(EncodeManifest(*restored), EncodeManifest(snap.manifest));
  EXPECT_EQ(Names(dir_), (std::set<std::string>{"db", "db-shm", "db-wal", "out", "ws"}));

  // The manifest is canonical and parses back to itself.
  auto text = EncodeManifest(snap.manifest);
  auto decoded = DecodeManifest(text, {});
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_EQ(EncodeManifest(*decoded), text);
  EXPECT_EQ(ContentHash(text), snap.manifest_hash);
  EXPECT_TRUE(text.starts_with("{\"entries\":[{\"hash\":\"" + ContentHash("hello\n") +
                               "\",\"mode\":420,\"mtime_ns\":"))
      << text.substr(0, 200);
  EXPECT_NE(text.find("\"path_hex\":\"6e6f742d757466382dfffe\""), std::string::npos);
}

TEST_F(WorkspaceTest, UnchangedTreeGivesTheSameHashWithoutReadingOrWriting) {
  for (int i = 0; i < 20; ++i) Write(Ws() / ("f" + std::to_string(i)), Words(1000, i));
  auto first = SnapshotCommitted(Ws(), nullptr, fast_);
  EXPECT_EQ(first.stats.blobs_new, 21);

  store::WriteBatch batch;
  auto again = Snapshot(Ws().string(), &first.manifest, *store_, kTenant, batch, fast_);
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->manifest_hash, first.manifest_hash);
  EXPECT_TRUE(batch.empty());
  EXPECT_EQ(again->stats.files_reused, 20);
  EXPECT_EQ(again->stats.files_read, 0);
  EXPECT_EQ(again->stats.bytes_read, 0);

  // Without a previous manifest every file is read, and still nothing is written.
  auto cold = Snapshot(Ws().string(), nullptr, *store_, kTenant, batch, fast_);
  ASSERT_TRUE(cold.ok());
  EXPECT_EQ(cold->manifest_hash, first.manifest_hash);
  EXPECT_EQ(cold->stats.files_read, 20);
  EXPECT_TRUE(batch.empty());
}

TEST_F(WorkspaceTest, OneChangedFileWritesOneContentBlobAndTheManifest) {
  for (int i = 0; i < 50; ++i) Write(Ws() / "d" / ("f" + std::to_string(i)), Words(2000, i));
  auto first = SnapshotCommitted(Ws(), nullptr, fast_);
  Write(Ws() / "d" / "f7", Words(2100, 99));
  store::WriteBatch batch;
  auto second = Snapshot(Ws().string(), &first.manifest, *store_, kTenant, batch, fast_);
  ASSERT_TRUE(second.ok());
  EXPECT_NE(second->manifest_hash, first.manifest_hash);
  EXPECT_EQ(second->stats.files_read, 1);
  EXPECT_EQ(second->stats.files_reused, 49);
  ASSERT_EQ(batch.blobs.size(), 2u);
  EXPECT_EQ(batch.blobs[0].hash, ContentHash(Words(2100, 99)));
  EXPECT_EQ(batch.blobs[1].hash, second->manifest_hash);
  ASSERT_TRUE(store_->CommitBlocking(std::move(batch)).ok());
  // A new file whose content the store has (a copy) needs no blob.
  fs::copy_file(Ws() / "d" / "f1", Ws() / "copy");
  store::WriteBatch copy_batch;
  auto third = Snapshot(Ws().string(), &second->manifest, *store_, kTenant, copy_batch, fast_);
  ASSERT_TRUE(third.ok());
  ASSERT_EQ(copy_batch.blobs.size(), 1u);
  EXPECT_EQ(copy_batch.blobs[0].hash, third->manifest_hash);
}

// Timestamps are coarse: a file rewritten with the same size soon after it was read can
// keep its mtime (simulated here) and even its ctime. Such a file is read again next time.
TEST_F(WorkspaceTest, AFileChangedRightAfterItWasReadIsReadAgain) {
  Write(Ws() / "f", "aaaa");
  auto first = SnapshotCommitted(Ws(), nullptr, {});
  struct stat st {};
  ASSERT_EQ(::stat((Ws() / "f").c_str(), &st), 0);
  Write(Ws() / "f", "bbbb");
  timespec times[2] = {st.st_atim, st.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, (Ws() / "f").c_str(), times, 0), 0);
  auto second = SnapshotCommitted(Ws(), &first.manifest, {});
  EXPECT_EQ(second.stats.files_read, 1);
  EXPECT_NE(second.manifest_hash, first.manifest_hash);
  EXPECT_EQ(second.manifest.entries[0].hash, ContentHash("bbbb"));
}

// A previous manifest whose blobs never reached the store (its batch failed) does not
// lead to a snapshot that refers to missing blobs.
TEST_F(WorkspaceTest, ReusedFilesWhoseBlobsAreMissingAreWrittenAnyway) {
  Write(Ws() / "a", Words(5000, 1));
  Write(Ws() / "b", Words(5000, 2));
  store::WriteBatch lost;
  auto first = Snapshot(Ws().string(), nullptr, *store_, kTenant, lost, fast_);
  ASSERT_TRUE(first.ok());
  auto second = SnapshotCommitted(Ws(), &first->manifest, fast_);
  EXPECT_EQ(second.manifest_hash, first->manifest_hash);
  EXPECT_EQ(second.stats.files_reused, 2);
  EXPECT_EQ(second.stats.blobs_new, 3);
  auto r = RestoreBlocking(second.manifest_hash, *store_, kTenant, (dir_ / "out").string());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(Read(dir_ / "out" / "b"), Words(5000, 2));
}

// Blobs belong to a tenant: another tenant can neither restore nor read a snapshot of the
// first one's, and its own snapshot of the same bytes writes its own copy of every blob, as
// if the first tenant held none.
TEST_F(WorkspaceTest, TenantsShareNoBlobsEvenForTheSameBytes) {
  for (int i = 0; i < 5; ++i) Write(Ws() / ("f" + std::to_string(i)), Words(3000, i));
  auto a = SnapshotCommitted(Ws(), nullptr, fast_);
  ASSERT_EQ(a.stats.blobs_new, 6);

  const fs::path out = dir_ / "out";
  EXPECT_EQ(RestoreBlocking(a.manifest_hash, *store_, "ten_b", out.string()).status().code(),
            StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(out));
  EXPECT_EQ(LoadManifest(a.manifest_hash, *store_, "ten_b").status().code(),
            StatusCode::kNotFound);
  EXPECT_EQ(ReadSnapshotFile(a.manifest_hash, "f1", *store_, "ten_b", 1 << 20).status().code(),
            StatusCode::kNotFound);

  store::WriteBatch batch;
  auto b = Snapshot(Ws().string(), nullptr, *store_, "ten_b", batch, fast_);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(b->manifest_hash, a.manifest_hash);
  EXPECT_EQ(b->stats.blobs_new, 6);
  ASSERT_EQ(batch.blobs.size(), 6u);
  for (const auto& blob : batch.blobs) EXPECT_EQ(blob.tenant_id, "ten_b");
  ASSERT_TRUE(store_->CommitBlocking(std::move(batch)).ok());
  auto restored = RestoreBlocking(a.manifest_hash, *store_, "ten_b", out.string());
  ASSERT_TRUE(restored.ok()) << restored.status().ToString();
  EXPECT_EQ(Read(out / "f3"), Words(3000, 3));
  auto f1 = ReadSnapshotFile(a.manifest_hash, "f1", *store_, "ten_b", 1 << 20);
  ASSERT_TRUE(f1.ok()) << f1.status().ToString();
  EXPECT_EQ(*f1, Words(3000, 1));

  // Unread files taken from a previous manifest count only when the tenant holds their blobs.
  store::WriteBatch c_batch;
  auto c = Snapshot(Ws().string(), &a.manifest, *store_, "ten_c", c_batch, fast_);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->stats.files_reused, 5);
  EXPECT_EQ(c->stats.blobs_new, 6);

  store::WriteBatch no_tenant;
  EXPECT_EQ(Snapshot(Ws().string(), nullptr, *store_, "", no_tenant, fast_).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_TRUE(no_tenant.empty());
}

// The snapshot's blobs commit with the caller's batch or not at all.
TEST_F(WorkspaceTest, ASnapshotCommitsAtomicallyWithTheCallersBatch) {
  Write(Ws() / "a", "content");
  store::WriteBatch first;
  first.events.push_back({"ses_1", 1, "test", "", 1, "{}"});
  ASSERT_TRUE(store_->CommitBlocking(std::move(first)).ok());
  store::WriteBatch batch;
  batch.events.push_back({"ses_1", 1, "test", "", 1, "{}"});  // a duplicate: fails
  auto snap = Snapshot(Ws().string(), nullptr, *store_, kTenant, batch, fast_);
  ASSERT_TRUE(snap.ok());
  EXPECT_EQ(batch.blobs.size(), 2u);
  EXPECT_FALSE(store_->CommitBlocking(std::move(batch)).ok());
  EXPECT_EQ(RestoreBlocking(snap->manifest_hash, *store_, kTenant, (dir_ / "out").string())
                .status()
                .code(),
            StatusCode::kNotFound);
  EXPECT_FALSE(fs::exists(dir_ / "out"));
}

TEST_F(WorkspaceTest, RestoredFilesNeedNotBeReadByTheNextSnapshot) {
  for (int i = 0; i < 10; ++i) Write(Ws() / ("f" + std::to_string(i)), Words(3000, i));
  auto snap = SnapshotCommitted(Ws(), nullptr, fast_);
  auto restored =
      RestoreBlocking(snap.manifest_hash, *store_, kTenant, (dir_ / "out").string(), fast_restore_);
  ASSERT_TRUE(restored.ok());
  store::WriteBatch batch;
  auto next = Snapshot((dir_ / "out").string(), &*restored, *store_, kTenant, batch, fast_);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(next->manifest_hash, snap.manifest_hash);
  EXPECT_EQ(next->stats.files_reused, 10);
  EXPECT_TRUE(batch.empty());
  // With the default racy window, just-written files are read once more instead.
  auto cautious = RestoreBlocking(snap.manifest_hash, *store_, kTenant, (dir_ / "out").string());
  ASSERT_TRUE(cautious.ok());
  auto reread = Snapshot((dir_ / "out").string(), &*cautious, *store_, kTenant, batch, fast_);
  ASSERT_TRUE(reread.ok());
  EXPECT_EQ(reread->stats.files_read, 10);
  EXPECT_EQ(reread->manifest_hash, snap.manifest_hash);
}

TEST_F(WorkspaceTest, SymlinksLeadingOutsideAreKeptAsLinksAndNeverFollowed) {
  Write(dir_ / "outside" / "secret", "host secret");
  fs::create_symlink(dir_ / "outside", Ws() / "abs");
  fs::create_symlink("../outside/secret", Ws() / "rel");
  fs::create_symlink("/etc", Ws() / "etc");
  fs::create_directories(Ws() / "d");
  auto snap = SnapshotCommitted(Ws(), nullptr, fast_);
  EXPECT_EQ(snap.stats.files, 0);
  EXPECT_EQ(snap.stats.symlinks, 3);
  EXPECT_EQ(EncodeManifest(snap.manifest).find("host secret"), std::string::npos);
  for (const auto& e : snap.manifest.entries) EXPECT_EQ(e.path.find("secret"), std::string::npos);
  // Restoring writes the links and nothing through them, even onto a target whose old
  // tree had the same names.
  auto before = Describe(dir_ / "outside");
  fs::create_directories(dir_ / "out");
  fs::create_symlink(dir_ / "outside", dir_ / "out" / "d");
  auto r = RestoreBlocking(snap.manifest_hash, *store_, kTenant, (dir_ / "out").string());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(fs::read_symlink(dir_ / "out" / "abs"), dir_ / "outside");
  EXPECT_EQ(fs::read_symlink(dir_ / "out" / "rel"), "../outside/secret");
  EXPECT_TRUE(fs::is_directory(fs::symlink_status(dir_ / "out" / "d")));
  EXPECT_EQ(Describe(dir_ / "outside"), before);
  // A snapshot whose root is itself a symlink is refused rather than followed.
  fs::create_symlink(dir_ / "outside", dir_ / "root_link");
  store::WriteBatch batch;
  EXPECT_FALSE(Snapshot((dir_ / "root_link").string(), nullptr, *store_, kTenant, batch).ok());
}

TEST_F(WorkspaceTest, RestoreReplacesANonEmptyTargetWhole) {
  Write(Ws() / "new.txt", "new");
  auto snap = SnapshotCommitted(Ws(), nullptr, fast_);
  fs::path target = dir_ / "target";
  Write(target / "old.txt", "old");
  Write(target / "ro" / "old2.txt", "old", 0444);
  ASSERT_EQ(::chmod((target / "ro").c_str(), 0500), 0);
  // A leftover of a restore that crashed half-way is cleaned up.
  Write(dir_ / ".target.restore-abcdef" / "half", "half");
  auto r = RestoreBlocking(snap.manifest_hash, *store_, kTenant, target.string() + "/");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  auto d = Describe(target);
  EXPECT_EQ(d.size(), 2u);
  EXPECT_TRUE(d.contains("new.txt"));
  EXPECT_EQ(Names(dir_), (std::set<std::string>{"db", "db-shm", "db-wal", "target", "ws"}));
  // A target that is not a directory is refused.
  Write(dir_ / "file", "x");
  EXPECT_EQ(RestoreBlocking(snap.manifest_hash, *store_, kTenant, (dir_ / "file").string())
                .status()
                .code(),
            StatusCode::kFailedPrecondition);
}

// The sandbox runs as its own user: everything restored is that user's, links included.
TEST_F(WorkspaceTest, RestoreGivesEverythingToTheSandboxUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to chown";
  Write(Ws() / "d" / "f", "x");
  fs::create_symlink("f", Ws() / "d" / "l");
  auto snap = SnapshotCommitted(Ws(), nullptr, fast_);
  RestoreOptions o;
  o.owner_uid = 4321;
  o.owner_gid = 4322;
  ASSERT_TRUE(
      RestoreBlocking(snap.manifest_hash, *store_, kTenant, (dir_ / "out").string(), o).ok());
  for (const char* p : {"", "d", "d/f", "d/l"}) {
    struct stat st {};
    ASSERT_EQ(::lstat((dir_ / "out" / p).c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, 4321u) << p;
    EXPECT_EQ(st.st_gid, 4322u) << p;
  }
}

TEST_F(WorkspaceTest, SnapshotLimitsFailClearlyAndAddNothing) {
  for (int i = 0; i < 10; ++i) Write(Ws() / "d" / ("f" + std::to_string(i)), Words(1000, i));
  auto expect = [&](const Limits& limits, const std::string& words) {
    SnapshotOptions o = fast_;
    o.limits = limits;
    store::WriteBatch batch;
    auto r = Snapshot(Ws().string(), nullptr, *store_, kTenant, batch, o);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kResourceExhausted) << r.status().ToString();
    EXPECT_NE(r.status().message().find(words), std::string::npos) << r.status().ToString();
    EXPECT_TRUE(batch.empty());
  };
  expect({.max_entries = 10}, "more than 10 entries");
  expect({.max_total_bytes = 9999}, "more than the limit of 9999 bytes");
  expect({.max_file_bytes = 999}, "larger than the limit of 999 bytes");
  Write(Ws() / "d" / "a" / "b" / "c", "deep");
  expect({.max_depth = 3}, "nested deeper than 3");
  store::WriteBatch batch;
  EXPECT_EQ(Snapshot((dir_ / "missing").string(), nullptr, *store_, kTenant, batch).status().code(),
            StatusCode::kNotFound);
}

std::string FileEntry(const std::string& path, const std::string& hash, int64_t size) {
  return fmt::format(
      R"({{"hash":"{}","mode":420,"mtime_ns":0,"path":"{}","size":{},"type":"file"}})", hash, path,
      size);
}
std::string ManifestText(const std::vector<std::string>& entries) {
  std::string s = "{\"entries\":[";
  for (size_t i = 0; i < entries.size(); ++i) s += (i ? "," : "") + entries[i];
  return s + "],\"format\":\"agentd.workspace/1\",\"root_mode\":493}";
}

TEST_F(WorkspaceTest, HostileManifestsAreRefusedAndTouchNothing) {
  std::string h = PutBlob("x");
  auto file = [&](const std::string& path) { return FileEntry(path, h, 1); };
  std::string dir_a = R"({"mode":493,"path":"a","type":"dir"})";
  std::string link_a = R"({"path":"a","target":"/tmp","type":"symlink"})";
  struct Case {
    std::vector<std::string> entries;
    std::string words;
  };
  std::vector<Case> cases = {
      {{file("../escape")}, "'..' component"},
      {{dir_a, file("a/../../escape")}, "'..' component"},
      {{file("/etc/passwd")}, "absolute path"},
      {{dir_a, file("a//b")}, "empty component"},
      {{file("./b")}, "'.' component"},
      {{file("a/")}, "empty component"},
      {{file("")}, "empty path"},
      {{file("a\\u0000b")}, "NUL"},
      {{file("b"), file("b")}, "duplicate"},
      {{file("c"), file("b")}, "out of order"},
      {{link_a, file("a/passwd")}, "under a symlink"},
      {{file("a"), file("a/b")}, "under a file"},
      {{file("a/b")}, "not listed before it"},
      {{dir_a, dir_a}, "duplicate"},
      {{R"({"mode":493,"path":"a","type":"dir","extra":1})"}, "unknown field 'entries[0].extra'"},
      {{R"({"mode":4095,"path":"a","type":"dir"})"}, "mode"},
      {{R"({"path":"a","type":"fifo"})"}, "unknown type"},
      {{R"({"path":"a","target":"","type":"symlink"})"}, "empty"},
      {{R"({"path":"a","path_hex":"61","type":"dir","mode":493})"}, "exactly one"},
      {{FileEntry("a", "ABC", 1)}, "not a BLAKE2b-256"},
      {{FileEntry("a", std::string(64, 'A'), 1)}, "not a BLAKE2b-256"},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(ManifestText(c.entries));
    ExpectRestoreFails(PutBlob(ManifestText(c.entries)), StatusCode::kInvalidArgument, c.words);
  }
  ExpectRestoreFails(PutBlob("{\"entries\":[],\"format\":\"agentd.workspace/9\",\"root_mode\":1}"),
                     StatusCode::kInvalidArgument, "not supported");
  ExpectRestoreFails(PutBlob("not json"), StatusCode::kInvalidArgument, "not valid JSON");
  ExpectRestoreFails("../../etc", StatusCode::kInvalidArgument, "not a workspace snapshot hash");
  ExpectRestoreFails(std::string(64, '0'), StatusCode::kNotFound, "not in the store");
  // A file whose blob is missing fails the whole restore, after others were written.
  ExpectRestoreFails(PutBlob(ManifestText({file("a"), FileEntry("b", std::string(64, 'e'), 1)})),
                     StatusCode::kNotFound, "'b'");
}

TEST_F(WorkspaceTest, CorruptBlobsAreRefusedNamingThePath) {
  std::string content = Words(10000, 5);
  std::string h = ContentHash(content);
  // Stored under the hash of other bytes.
  std::string forged = PutBlob(content, ContentHash("other"), "", "tampered content", 16);
  ExpectRestoreFails(PutBlob(ManifestText({FileEntry("forged.txt", forged, 16)})),
                     StatusCode::kInternal, "'forged.txt'");
  // A truncated zstd frame.
  std::string z(ZSTD_compressBound(content.size()), '\0');
  z.resize(ZSTD_compress(z.data(), z.size(), content.data(), content.size(), 3));
  std::string truncated_hash = ContentHash(content + "t");
  PutBlob(content + "t", truncated_hash, "zstd", z.substr(0, z.size() - 10),
          static_cast<int64_t>(content.size()));
  ExpectRestoreFails(PutBlob(ManifestText({FileEntry("trunc", truncated_hash, content.size())})),
                     StatusCode::kInternal, "'trunc'");
  // The manifest says one size, the blob another.
  PutBlob(content);
  ExpectRestoreFails(PutBlob(ManifestText({FileEntry("sized", h, 5)})), StatusCode::kInternal,
                     "'sized'");
  // An unknown codec.
  std::string odd = ContentHash("odd");
  PutBlob("odd", odd, "lz4", "odd");
  ExpectRestoreFails(PutBlob(ManifestText({FileEntry("odd", odd, 3)})), StatusCode::kInternal,
                     "unknown codec");
  // A manifest blob that does not match its own hash.
  std::string bad_manifest = PutBlob(ManifestText({}), std::string(64, 'c'));
  ExpectRestoreFails(bad_manifest, StatusCode::kInternal, "the manifest");
}

TEST_F(WorkspaceTest, RestoreLimitsRefuseHugeManifestsBeforeWriting) {
  std::string h = PutBlob("x");
  ExpectRestoreFails(PutBlob(ManifestText({FileEntry("huge", h, int64_t{1} << 40)})),
                     StatusCode::kResourceExhausted, "larger than the limit");
  RestoreOptions small;
  small.limits.max_total_bytes = 1000;
  small.limits.max_entries = 2;
  ExpectRestoreFails(PutBlob(ManifestText({FileEntry("a", h, 600), FileEntry("b", h, 600)})),
                     StatusCode::kResourceExhausted, "more than the limit of 1000 bytes", small);
  ExpectRestoreFails(
      PutBlob(ManifestText({FileEntry("a", h, 1), FileEntry("b", h, 1), FileEntry("c", h, 1)})),
      StatusCode::kResourceExhausted, "the limit is 2", small);
}

// Not a benchmark: a rough figure of the costs, printed for the record.
TEST_F(WorkspaceTest, TenMegabytesInAThousandFiles) {
  for (int i = 0; i < 1000; ++i) {
    Write(Ws() / ("dir" + std::to_string(i % 20)) / ("file" + std::to_string(i)),
          Words(10 * 1024, i));
  }
  auto ms = [](auto since) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - since)
        .count();
  };
  auto t0 = std::chrono::steady_clock::now();
  auto first = SnapshotCommitted(Ws(), nullptr, fast_);
  double snapshot_ms = ms(t0);
  EXPECT_EQ(first.stats.files, 1000);
  t0 = std::chrono::steady_clock::now();
  auto restored = RestoreBlocking(first.manifest_hash, *store_, kTenant, (dir_ / "out").string());
  double restore_ms = ms(t0);
  ASSERT_TRUE(restored.ok());
  RestoreOptions no_sync;
  no_sync.sync = false;
  t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(
      RestoreBlocking(first.manifest_hash, *store_, kTenant, (dir_ / "out").string(), no_sync)
          .ok());
  double restore_no_sync_ms = ms(t0);
  Write(Ws() / "dir3" / "file3", Words(10 * 1024 + 1, 7));
  t0 = std::chrono::steady_clock::now();
  auto second = SnapshotCommitted(Ws(), &first.manifest, fast_);
  double incremental_ms = ms(t0);
  t0 = std::chrono::steady_clock::now();
  auto third = SnapshotCommitted(Ws(), &second.manifest, fast_);
  double unchanged_ms = ms(t0);
  EXPECT_EQ(third.manifest_hash, second.manifest_hash);
  std::printf(
      "10 MB in 1000 files: snapshot %.1f ms (%lld bytes stored), restore %.1f ms (%.1f ms "
      "without syncfs, onto the old tree), snapshot after one change %.1f ms (%lld read), "
      "unchanged %.1f ms\n",
      snapshot_ms, static_cast<long long>(first.stats.blob_bytes_new), restore_ms,
      restore_no_sync_ms, incremental_ms, static_cast<long long>(second.stats.files_read),
      unchanged_ms);
}

}  // namespace
}  // namespace agentd::sandbox::workspace
