// Sandbox benchmarks (`make bench`): cold start to the first command (with a warm spare
// ready, as the driver's background refill leaves it; with a spare launcher only; and with
// no spare) and warm exec round trip, beside bare `bwrap ... true` measured in the same run;
// workspace snapshot and restore of 10 MB in 1,000 files and of a one-file change; memory
// per idle sandbox and per spare. One JSON line per measurement. Needs root for the per-sandbox uid, tmpfs and
// cgroups, as agentd does.
#include <poll.h>
#include <spawn.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "common/json.h"
#include "sandbox/bwrap/bwrap_driver.h"
#include "sandbox/gvisor/gvisor_driver.h"
#include "sandbox/workspace/workspace.h"
#include "store/sqlite/sqlite_store.h"

using namespace agentd;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

extern char** environ;

namespace {

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

void Emit(const Json& j) {
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

Json Stats(const std::vector<double>& ms) {
  return {{"p50_ms", Percentile(ms, 0.5)}, {"p99_ms", Percentile(ms, 0.99)}, {"n", ms.size()}};
}

// `bwrap` with the namespaces the driver unshares, running `true`: the floor of a cold start.
double BareBwrapMs(const std::string& bwrap) {
  std::vector<std::string> args = {bwrap, "--unshare-user", "--unshare-pid", "--unshare-net",
                                   "--unshare-ipc", "--unshare-uts", "--unshare-cgroup",
                                   "--disable-userns", "--ro-bind", "/usr", "/usr",
                                   "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                                   "--symlink", "usr/lib64", "/lib64", "--proc", "/proc",
                                   "--dev", "/dev", "--", "/bin/true"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  auto start = Clock::now();
  pid_t pid;
  if (posix_spawn(&pid, argv[0], nullptr, nullptr, argv.data(), environ) != 0) return -1;
  int status = 0;
  waitpid(pid, &status, 0);
  return Ms(Clock::now() - start);
}

// Resident and proportional memory (KiB) of every process in a sandbox's pids cgroup.
std::pair<int64_t, int64_t> SandboxMemoryKib(const std::string& cgroup_procs) {
  std::ifstream procs(cgroup_procs);
  int64_t rss = 0, pss = 0;
  pid_t pid;
  while (procs >> pid) {
    std::ifstream f(fmt::format("/proc/{}/smaps_rollup", pid));
    std::string line;
    std::getline(f, line);  // the address range of the rollup
    while (std::getline(f, line)) {
      std::istringstream in(line);
      std::string key;
      int64_t value = 0;
      in >> key >> value;
      if (key == "Rss:") rss += value;
      if (key == "Pss:") pss += value;
    }
  }
  return {rss, pss};
}

void WriteTree(const std::string& root, int files, size_t total_bytes, std::mt19937& rng) {
  std::uniform_int_distribution<int> letter('a', 'z');
  size_t each = total_bytes / static_cast<size_t>(files);
  for (int i = 0; i < files; ++i) {
    std::string dir = fmt::format("{}/d{:02}", root, i % 50);
    fs::create_directories(dir);
    std::string text(each, ' ');
    // Text-like content: words from a small alphabet, so it compresses as source code does.
    for (size_t k = 0; k < each; ++k) text[k] = (k % 8 == 7) ? ' ' : static_cast<char>(letter(rng));
    std::ofstream(fmt::format("{}/f{:04}.txt", dir, i)) << text;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"agentd sandbox benchmarks"};
  int cold = 50, warm = 200, idle = 20, runs = 5, gvisor = 20;
  std::string dir = "/tmp";
  app.add_option("--cold", cold, "cold starts measured");
  app.add_option("--warm", warm, "warm exec round trips measured");
  app.add_option("--idle", idle, "idle sandboxes for the memory figure");
  app.add_option("--runs", runs, "repetitions of the workspace measurements");
  app.add_option("--gvisor", gvisor, "gvisor cold starts and checkpoints measured (0: none)");
  app.add_option("--dir", dir, "where to work (a folder others may pass through)");
  CLI11_PARSE(app, argc, argv);

  std::string work = fmt::format("{}/agentd-sandbox-bench-{}", dir, getpid());
  fs::create_directories(work);
  chmod(work.c_str(), 0711);
  sandbox::BwrapOptions o;
  o.state_dir = work + "/state";
  auto driver = sandbox::BwrapDriver::Open(o);
  // The same driver with spares that are launchers only (what agentd has when not root).
  sandbox::BwrapOptions launchers = o;
  launchers.state_dir = work + "/state-launchers";
  launchers.warm_spares = false;
  auto launched = sandbox::BwrapDriver::Open(launchers);
  // And without spares: the start a sandbox gets when none is ready.
  sandbox::BwrapOptions no_spares = o;
  no_spares.state_dir = work + "/state-no-spares";
  no_spares.spares = 0;
  auto direct = sandbox::BwrapDriver::Open(no_spares);
  for (const auto* d : {driver.get(), launched.get(), direct.get()}) {
    if (!d->capabilities().available) {
      std::fprintf(stderr, "bwrap driver unavailable: %s\n",
                   d->capabilities().unavailable_reason.c_str());
      return 1;
    }
  }
  std::string bwrap = "/usr/bin/bwrap";

  // Cold start: create a sandbox, run `true`, destroy it; alternated with bare bwrap and
  // with a start without a spare.
  std::vector<double> bare, cold_ms, launcher_ms, no_spare_ms;
  int n = 0;
  auto make = [&](sandbox::BwrapDriver& d, sandbox::Limits limits = {}) {
    std::string root = fmt::format("{}/box{}", work, n++);
    fs::create_directories(root);
    sandbox::SandboxSpec spec;
    spec.id = fmt::format("bench-{}-{}", getpid(), n);
    spec.root = root;
    spec.limits = limits;
    return std::make_pair(root, d.Create(spec));
  };
  sandbox::ExecRequest t;
  t.command = "true";
  // Every start, bare bwrap's too, begins from the same rest: the pool full (a refill under
  // way would slow any start) and 100 ms without work (the kernel's cgroup writes, the
  // refill's too, leave moving a process into a cgroup cheap for a few milliseconds, which
  // would flatter the start without a spare).
  auto rest = [&] {
    if (!driver->WaitForSparesBlocking(std::chrono::seconds(10)) ||
        !launched->WaitForSparesBlocking(std::chrono::seconds(10))) {
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    return true;
  };
  auto cold_start = [&](sandbox::BwrapDriver& d) -> double {
    if (!rest()) return -1;
    auto start = Clock::now();
    auto [root, box] = make(d);
    if (!box.ok() || !(*box)->Exec(t).ok()) return -1;
    double ms = Ms(Clock::now() - start);
    box->reset();
    d.Discard(root).IgnoreError();
    return ms;
  };
  for (int i = 0; i < cold; ++i) {
    if (!rest()) return 2;
    bare.push_back(BareBwrapMs(bwrap));
    cold_ms.push_back(cold_start(*driver));
    launcher_ms.push_back(cold_start(*launched));
    no_spare_ms.push_back(cold_start(*direct));
    if (cold_ms.back() < 0 || launcher_ms.back() < 0 || no_spare_ms.back() < 0) return 2;
  }
  Json bare_stats = Stats(bare), cold_stats = Stats(cold_ms), launcher_stats = Stats(launcher_ms),
       no_spare_stats = Stats(no_spare_ms);
  const double bare_p50 = bare_stats["p50_ms"].get<double>();
  Emit({{"bench", "sandbox_cold_start"}, {"driver", "bwrap"},
        {"to_first_command", cold_stats}, {"to_first_command_launcher", launcher_stats},
        {"to_first_command_no_spare", no_spare_stats},
        {"bare_bwrap_true", bare_stats},
        {"ratio_p50", cold_stats["p50_ms"].get<double>() / bare_p50},
        {"ratio_p50_launcher", launcher_stats["p50_ms"].get<double>() / bare_p50},
        {"ratio_p50_no_spare", no_spare_stats["p50_ms"].get<double>() / bare_p50},
        {"note", "to_first_command: a warm spare (a sandbox started ahead) was ready, as the "
                 "driver's background refill leaves it; _launcher: a spare launcher only (agentd "
                 "not root); _no_spare: none (spares = 0, the path taken when the pool is empty)"}});
  direct.reset();
  launched.reset();

  // Warm exec round trip.
  {
    auto [root, box] = make(*driver);
    if (!box.ok() || !(*box)->Exec(t).ok()) return 3;
    std::vector<double> ms;
    for (int i = 0; i < warm; ++i) {
      auto start = Clock::now();
      if (!(*box)->Exec(t).ok()) return 4;
      ms.push_back(Ms(Clock::now() - start));
    }
    Emit({{"bench", "sandbox_warm_exec"}, {"driver", "bwrap"}, {"exec_true", Stats(ms)}});
    box->reset();
    driver->Discard(root).IgnoreError();
  }

  // Memory per idle sandbox (started, one command run, now waiting).
  {
    std::vector<std::pair<std::string, std::unique_ptr<sandbox::Sandbox>>> boxes;
    for (int i = 0; i < idle; ++i) {
      auto [root, box] = make(*driver);
      if (!box.ok() || !(*box)->Exec(t).ok()) return 5;
      boxes.emplace_back(root, std::move(box).value());
    }
    int64_t rss = 0, pss = 0, spare_rss = 0, spare_pss = 0;
    int groups = 0, spares = 0;
    if (!driver->WaitForSparesBlocking(std::chrono::seconds(10))) return 5;
    for (const auto& entry : fs::directory_iterator("/sys/fs/cgroup/pids/agentd-sandboxes")) {
      if (!entry.is_directory()) continue;
      std::string name = entry.path().filename().string();
      auto [r, p] = SandboxMemoryKib(entry.path().string() + "/cgroup.procs");
      if (name.find(fmt::format("bench-{}-", getpid())) != std::string::npos) {
        ++groups;
        rss += r;
        pss += p;
      } else if (name.rfind(fmt::format("{}-spare-", getpid()), 0) == 0) {
        ++spares;
        spare_rss += r;
        spare_pss += p;
      }
    }
    Emit({{"bench", "sandbox_idle_memory"}, {"driver", "bwrap"}, {"sandboxes", idle},
          {"groups_seen", groups}, {"rss_kib_each", rss / idle}, {"pss_kib_each", pss / idle},
          {"spares", spares}, {"spare_rss_kib_each", spares > 0 ? spare_rss / spares : 0},
          {"spare_pss_kib_each", spares > 0 ? spare_pss / spares : 0}});
    for (auto& [root, box] : boxes) {
      box.reset();
      driver->Discard(root).IgnoreError();
    }
  }

  // Workspace snapshot and restore: 10 MB in 1,000 files, then one changed file.
  {
    store::sqlite::SqliteOptions so;
    so.path = work + "/store.db";
    auto store = store::sqlite::OpenSqliteStore(so);
    if (!store.ok()) return 6;
    // Workspaces live on a tmpfs when agentd runs as root (the sandbox root), so measure there.
    std::string fsdir = work + "/fs";
    fs::create_directories(fsdir);
    bool tmpfs = geteuid() == 0 && mount("tmpfs", fsdir.c_str(), "tmpfs", 0, "size=512m") == 0;
    std::mt19937 rng(42);
    std::vector<double> first, one_change, unchanged, restore;
    const std::string tenant = "ten_bench";
    for (int r = 0; r < runs; ++r) {
      std::string ws = fmt::format("{}/ws{}", fsdir, r);
      WriteTree(ws, 1000, 10 << 20, rng);  // new content every run: nothing is deduplicated
      // Files changed within the last 3 s are re-read by every snapshot (their timestamps
      // cannot yet prove them unchanged); measure the steady state of a workspace at rest.
      std::this_thread::sleep_for(std::chrono::milliseconds(3100));
      auto start = Clock::now();
      auto snap = sandbox::workspace::SnapshotBlocking(ws, nullptr, **store, tenant);
      if (!snap.ok()) return 7;
      first.push_back(Ms(Clock::now() - start));
      std::ofstream(ws + "/d07/f0007.txt", std::ios::app) << "one more line\n";
      start = Clock::now();
      auto snap2 = sandbox::workspace::SnapshotBlocking(ws, &snap->manifest, **store, tenant);
      if (!snap2.ok()) return 8;
      one_change.push_back(Ms(Clock::now() - start));
      start = Clock::now();
      auto snap3 = sandbox::workspace::SnapshotBlocking(ws, &snap2->manifest, **store, tenant);
      if (!snap3.ok()) return 9;
      unchanged.push_back(Ms(Clock::now() - start));
      std::string target = fmt::format("{}/restored{}", fsdir, r);
      start = Clock::now();
      auto restored =
          sandbox::workspace::RestoreBlocking(snap2->manifest_hash, **store, tenant, target);
      if (!restored.ok()) return 10;
      restore.push_back(Ms(Clock::now() - start));
      fs::remove_all(ws);
      fs::remove_all(target);
    }
    Emit({{"bench", "workspace_snapshot"}, {"files", 1000}, {"bytes", 10 << 20},
          {"first_snapshot", Stats(first)}, {"one_file_changed", Stats(one_change)},
          {"unchanged", Stats(unchanged)}, {"restore", Stats(restore)},
          {"workspace_fs", tmpfs ? "tmpfs" : "the --dir file system"}});
    (*store)->Close();
    if (tmpfs) umount2(fsdir.c_str(), MNT_DETACH);
  }
  // gVisor: cold start and warm exec; where runsc can checkpoint, a sandbox with a live
  // process (a line-echoing shell, as an MCP server would be) hibernated and resumed: the
  // time to save it, and from resume to its first command and to the live process answering.
  if (gvisor > 0) {
    sandbox::GvisorOptions go;
    go.state_dir = work + "/gvisor";
    auto g = sandbox::GvisorDriver::Open(go);
    const auto& caps = g->capabilities();
    if (!caps.available) {
      Emit({{"bench", "gvisor"}, {"skipped", caps.unavailable_reason}});
    } else {
      auto spec_for = [&](int i) {
        sandbox::SandboxSpec spec;
        spec.id = fmt::format("bench-{}-g{}", getpid(), i);
        spec.root = fmt::format("{}/gbox{}", work, i);
        fs::create_directories(spec.root);
        return spec;
      };
      std::vector<double> cold_g, warm_g;
      for (int i = 0; i < gvisor; ++i) {
        auto spec = spec_for(i);
        auto start = Clock::now();
        auto box = g->Create(spec);
        if (!box.ok() || !(*box)->Exec(t).ok()) return 11;
        cold_g.push_back(Ms(Clock::now() - start));
        if (i == 0) {
          for (int k = 0; k < 50; ++k) {
            auto ws = Clock::now();
            if (!(*box)->Exec(t).ok()) return 12;
            warm_g.push_back(Ms(Clock::now() - ws));
          }
        }
        box->reset();
        g->Discard(spec.root).IgnoreError();
      }
      std::string platform;
      for (const auto& e : caps.enforced) {
        if (e.rfind("platform:", 0) == 0) platform = e.substr(9);
      }
      Emit({{"bench", "gvisor"}, {"platform", platform},
            {"cold_start_to_first_command", Stats(cold_g)}, {"warm_exec_true", Stats(warm_g)}});
      bool checkpoint = caps.Enforces("checkpoint");
      if (!checkpoint) {
        Emit({{"bench", "gvisor_checkpoint"}, {"skipped", caps.not_enforced.count("checkpoint")
                                                             ? caps.not_enforced.at("checkpoint")
                                                             : "no checkpoint"}});
      } else {
        // One line in, one line back, within `ms`.
        auto echo = [](sandbox::Process& p, const std::string& line, int ms) {
          std::string out = line + "\n";
          if (write(p.stdin_fd(), out.data(), out.size()) != static_cast<ssize_t>(out.size())) {
            return false;
          }
          std::string got;
          auto deadline = Clock::now() + std::chrono::milliseconds(ms);
          while (got.find('\n') == std::string::npos && Clock::now() < deadline) {
            pollfd pfd{p.stdout_fd(), POLLIN, 0};
            if (poll(&pfd, 1, 50) <= 0) continue;
            char buf[256];
            ssize_t n = read(p.stdout_fd(), buf, sizeof buf);
            if (n <= 0) return false;
            got.append(buf, static_cast<size_t>(n));
          }
          return got == out;
        };
        std::vector<double> save_ms, resume_ms, live_ms;
        int rounds = std::max(1, gvisor / 2);
        for (int i = 0; i < rounds; ++i) {
          auto spec = spec_for(1000 + i);
          auto box = g->Create(spec);
          if (!box.ok()) return 13;
          sandbox::SpawnRequest req;
          req.argv = {"/bin/sh", "-c", "while read l; do echo \"$l\"; done"};
          auto proc = (*box)->Spawn(req);
          if (!proc.ok() || !echo(**proc, "before", 10000)) return 14;
          int64_t id = g->ProcessId(**proc);
          std::string image = spec.root + ".image";
          auto start = Clock::now();
          if (!g->Hibernate(**box, image).ok()) return 15;
          save_ms.push_back(Ms(Clock::now() - start));
          proc->reset();
          box->reset();
          start = Clock::now();
          auto again = g->Resume(spec, image);
          if (!again.ok() || !(*again)->Exec(t).ok()) return 16;
          resume_ms.push_back(Ms(Clock::now() - start));
          auto live = g->Reattach(**again, id);
          if (!live.ok() || !echo(**live, "after", 10000)) return 17;
          live_ms.push_back(Ms(Clock::now() - start));
          live->reset();
          again->reset();
          fs::remove_all(image);
          g->Discard(spec.root).IgnoreError();
        }
        Emit({{"bench", "gvisor_checkpoint"}, {"hibernate", Stats(save_ms)},
              {"resume_to_first_command", Stats(resume_ms)},
              {"resume_to_live_process_answer", Stats(live_ms)},
              {"note", "a sandbox with one live line-echoing shell, saved and restored"}});
      }
    }
  }
  fs::remove_all(work);
  return 0;
}
