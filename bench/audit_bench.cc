// audit_bench: the audit log's costs (src/audit/). Prints one JSON line per figure:
//
//   audit_append   group-commit throughput of event batches (16 writer threads, one event
//                  per batch) without and with one audit entry staged in each batch
//   audit_verify   VerifyBlocking over a chain of --entries entries in a SQLite file:
//                  entries per second and seconds per million entries
//
// The database lives under --dir (use the disk under test: a tmpfs makes fsync free).
#include <sodium.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "audit/audit.h"
#include "audit/verify.h"
#include "common/json.h"
#include "store/sqlite/sqlite_store.h"

namespace agentd {
namespace {

using Steady = std::chrono::steady_clock;

void Emit(const Json& j) {
  std::string line = DumpJson(j) + "\n";
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fflush(stdout);
}

double Seconds(Steady::duration d) { return std::chrono::duration<double>(d).count(); }

std::unique_ptr<store::Store> OpenStore(const std::string& path, bool sync_full) {
  store::sqlite::SqliteOptions o;
  o.path = path;
  o.synchronous_full = sync_full;
  o.audit_chain = audit::ChainFunction();
  auto s = store::sqlite::OpenSqliteStore(o);
  if (!s.ok()) {
    fmt::print(stderr, "cannot open {}: {}\n", path, s.status().ToString());
    std::exit(1);
  }
  return std::move(s).value();
}

audit::AuditEntry SampleEntry(int i) {
  audit::AuditEntry e;
  e.tenant_id = "ten_bench";
  e.principal = "prn_01J9ZQ3V8K2M4N6P8R0T2V4X6Z";
  e.action = i % 4 == 0 ? "tool.call" : "turns.create";
  e.resource = fmt::format("sessions/ses_{:026}", i % 1000);
  e.decision = "allow";
  e.result = "201";
  e.data = fmt::format(
      R"({{"agent_id":"agt_01J9ZQ3V8K2M4N6P8R0T2V4X6Z","args_sha256":"{:064x}",)"
      R"("session_id":"ses_{:026}"}})",
      i, i % 1000);
  return e;
}

// Batches per second committed by `threads` writers, each batch one event (and one audit
// entry when `with_audit`).
double AppendThroughput(const std::string& path, int threads, int per_thread, bool with_audit,
                        bool sync_full, int64_t* commits) {
  std::filesystem::remove(path);
  std::filesystem::remove(path + "-wal");
  std::filesystem::remove(path + "-shm");
  auto store = OpenStore(path, sync_full);
  audit::AuditLog log(*store, audit::Signer{});
  std::vector<std::thread> running;
  std::atomic<int> failures{0};
  auto start = Steady::now();
  for (int t = 0; t < threads; ++t) {
    running.emplace_back([&, t] {
      std::string sid = fmt::format("ses_{:026}", t);
      for (int i = 1; i <= per_thread; ++i) {
        store::WriteBatch b;
        b.events.push_back({sid, i, "model.output", "trn_1", 1, R"({"text":"hello"})"});
        if (with_audit && !log.Stage(b, SampleEntry(i)).ok()) failures++;
        if (!store->CommitBlocking(std::move(b)).ok()) failures++;
      }
    });
  }
  for (auto& t : running) t.join();
  double s = Seconds(Steady::now() - start);
  if (failures > 0) fmt::print(stderr, "{} commits failed\n", failures.load());
  *commits = store->Stats().commits;
  return threads * per_thread / s;
}

}  // namespace
}  // namespace agentd

int main(int argc, char** argv) {
  using namespace agentd;
  CLI::App app{"audit_bench: audit log append and verify costs"};
  std::string dir = std::filesystem::temp_directory_path().string();
  int threads = 16, per_thread = 500, runs = 3;
  int64_t entries = 1'000'000;
  bool sync_full = true;
  app.add_option("--dir", dir, "where to put the databases");
  app.add_option("--threads", threads, "concurrent writers for the append figure");
  app.add_option("--per-thread", per_thread, "batches per writer");
  app.add_option("--runs", runs, "repetitions of the append figure");
  app.add_option("--entries", entries, "chain length for the verify figure");
  app.add_option("--sync-full", sync_full, "synchronous=FULL (0: NORMAL)");
  CLI11_PARSE(app, argc, argv);
  if (sodium_init() < 0) return 1;

  std::filesystem::path work = std::filesystem::path(dir) / fmt::format("audit_bench_{}", getpid());
  std::filesystem::create_directories(work);
  std::string path = (work / "agentd.db").string();

  for (int run = 0; run < runs; ++run) {
    int64_t c0 = 0, c1 = 0;
    double without = AppendThroughput(path, threads, per_thread, false, sync_full, &c0);
    double with = AppendThroughput(path, threads, per_thread, true, sync_full, &c1);
    Emit({{"bench", "audit_append"}, {"run", run + 1}, {"threads", threads},
          {"batches", threads * per_thread}, {"sync_full", sync_full},
          {"batches_per_s_without_audit", static_cast<int64_t>(without)},
          {"batches_per_s_with_audit", static_cast<int64_t>(with)},
          {"commits_without", c0}, {"commits_with", c1},
          {"cost_pct", (without - with) / without * 100}});
  }

  // A chain of `entries` entries, written in batches of 10,000 (one transaction each).
  std::filesystem::remove(path);
  std::filesystem::remove(path + "-wal");
  std::filesystem::remove(path + "-shm");
  {
    auto store = OpenStore(path, false);
    audit::AuditLog log(*store, audit::Signer{});
    auto start = Steady::now();
    for (int64_t at = 0; at < entries;) {
      store::WriteBatch b;
      for (int k = 0; k < 10'000 && at < entries; ++k, ++at) {
        if (!log.Stage(b, SampleEntry(static_cast<int>(at))).ok()) return 1;
      }
      if (!store->CommitBlocking(std::move(b)).ok()) return 1;
    }
    fmt::print(stderr, "built a chain of {} entries in {:.1f} s\n", entries,
               Seconds(Steady::now() - start));
  }
  store::sqlite::SqliteOptions ro;
  ro.path = path;
  ro.read_only = true;
  auto store = store::sqlite::OpenSqliteStore(ro);
  if (!store.ok()) return 1;
  auto source = audit::StoreSource(**store);
  for (int run = 0; run < runs; ++run) {
    auto start = Steady::now();
    auto report = audit::VerifyBlocking(*source, "ten_bench", {});
    double s = Seconds(Steady::now() - start);
    if (!report.ok() || !report->ok() || report->entries != entries) {
      fmt::print(stderr, "verification failed\n");
      return 1;
    }
    Emit({{"bench", "audit_verify"}, {"run", run + 1}, {"entries", entries},
          {"seconds", s}, {"entries_per_s", static_cast<int64_t>(entries / s)},
          {"seconds_per_million", s / (static_cast<double>(entries) / 1e6)}});
  }
  std::filesystem::remove_all(work);
  return 0;
}
