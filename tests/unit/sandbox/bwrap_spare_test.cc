// The bwrap driver's spare launchers (src/sandbox/bwrap/spare_pool.h): a sandbox started
// from a spare is the same sandbox as one started directly (limits, uid, namespaces, fds,
// signals), the pool refills and replaces spares that die, and nothing of it outlives the
// driver. Also, as root, the driver's reach: what sits under folders closed to others
// reaches the sandbox, started directly or from a spare, and a sandbox that fails to start
// leaves nothing behind. Needs what the conformance suite needs (bwrap; root for uids and
// cgroups).
#include <dirent.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "sandbox/bwrap/bwrap_driver.h"
#include "sandbox/host_util.h"
#include "sandbox_test_util.h"

namespace agentd::sandbox {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;
using std::chrono::seconds;

std::string ReadText(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The lines of a /proc/PID/status whose key is one of `keys`.
std::string StatusLines(pid_t pid, const std::set<std::string>& keys) {
  std::istringstream in(ReadText("/proc/" + std::to_string(pid) + "/status"));
  std::string line, out;
  while (std::getline(in, line)) {
    if (keys.count(line.substr(0, line.find(':'))) != 0) out += line + "\n";
  }
  return out;
}

// controller -> host folder of the cgroup v1 group `pid` is in (controllers on v1 only).
std::map<std::string, std::string> GroupDirs(pid_t pid) {
  std::map<std::string, std::string> mounts;  // controller -> mount point
  std::istringstream mi(ReadText("/proc/self/mountinfo"));
  std::string line;
  while (std::getline(mi, line)) {
    std::istringstream f(line);
    std::vector<std::string> w;
    for (std::string s; f >> s;) w.push_back(s);
    auto dash = std::find(w.begin(), w.end(), "-");
    if (dash == w.end() || dash + 3 >= w.end() || *(dash + 1) != "cgroup" || w[3] != "/") continue;
    std::istringstream opts(*(dash + 3));
    for (std::string o; std::getline(opts, o, ',');) {
      if (o == "memory" || o == "pids" || o == "cpu") mounts.emplace(o, w[4]);
    }
  }
  std::map<std::string, std::string> dirs;
  std::istringstream cg(ReadText("/proc/" + std::to_string(pid) + "/cgroup"));
  while (std::getline(cg, line)) {
    auto a = line.find(':'), b = line.find(':', a + 1);
    std::istringstream cs(line.substr(a + 1, b - a - 1));
    for (std::string c; std::getline(cs, c, ',');) {
      if (mounts.count(c) != 0) dirs[c] = mounts[c] + line.substr(b + 1);
    }
  }
  return dirs;
}

// The bwrap process (our child) whose groups are named after sandbox `id`; -1 if none.
pid_t BwrapOf(const std::string& id) {
  DIR* proc = opendir("/proc");
  pid_t found = -1;
  while (dirent* e = proc == nullptr ? nullptr : readdir(proc)) {
    pid_t pid = atoi(e->d_name);
    if (pid <= 0) continue;
    std::string stat = ReadText("/proc/" + std::to_string(pid) + "/stat");
    auto paren = stat.rfind(')');
    if (stat.find("(bwrap)") == std::string::npos || paren == std::string::npos) continue;
    int ppid = 0;
    char state = 0;
    if (sscanf(stat.c_str() + paren + 1, " %c %d", &state, &ppid) != 2 || ppid != getpid()) continue;
    if (ReadText("/proc/" + std::to_string(pid) + "/cgroup").find("-" + id + "\n") != std::string::npos) {
      found = pid;
    }
  }
  if (proc != nullptr) closedir(proc);
  return found;
}

// Gone for good: exited and reaped (a zombie still answers kill 0).
bool Reaped(pid_t pid) { return kill(pid, 0) != 0 && errno == ESRCH; }

// Our groups (named "<our pid>-...") in the folder holding the sandboxes' pids groups.
std::vector<std::string> OurGroups() {
  std::vector<std::string> out;
  auto dirs = GroupDirs(getpid());
  if (dirs.count("pids") == 0) return out;
  std::string folder = dirs["pids"] + "/agentd-sandboxes";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(folder, ec)) {
    std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind(std::to_string(getpid()) + "-", 0) == 0) {
      out.push_back(name);
    }
  }
  return out;
}

template <typename F>
bool WaitUntil(F done, std::chrono::milliseconds limit = seconds(20)) {
  for (auto end = std::chrono::steady_clock::now() + limit; std::chrono::steady_clock::now() < end;) {
    if (done()) return true;
    std::this_thread::sleep_for(milliseconds(10));
  }
  return done();
}

class BwrapSpares : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/agentd-spare-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    chmod(tmpl, 0711);  // sandbox users pass through to their workspaces
  }
  void TearDown() override {
    boxes_.clear();
    for (const auto& [root, d] : roots_) EXPECT_TRUE(d->Discard(root).ok());
    roots_.clear();
    drivers_.clear();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  // warm: as root, spares are sandboxes started ahead; otherwise launchers only.
  BwrapDriver* Open(int spares, bool warm = true, uid_t uid_slots = 65536) {
    BwrapOptions o;
    o.uid_slots = uid_slots;
    o.init_path = AGENTD_SANDBOX_INIT;
    o.state_dir = dir_ + "/state" + std::to_string(drivers_.size());
    o.spares = spares;
    o.warm_spares = warm;
    drivers_.push_back(BwrapDriver::Open(o));
    BwrapDriver* d = drivers_.back().get();
    EXPECT_TRUE(d->capabilities().available) << d->capabilities().unavailable_reason;
    return d;
  }

  bool Enforced(BwrapDriver* d, const std::string& prefix) {
    for (const auto& e : d->capabilities().enforced) {
      if (e.rfind(prefix, 0) == 0) return true;
    }
    return false;
  }

  // A sandbox; its id is ids_.back().
  Sandbox* NewSandbox(BwrapDriver* d, Limits limits = {}) {
    std::string root = dir_ + "/box" + std::to_string(roots_.size());
    fs::create_directories(root);
    roots_.emplace_back(root, d);
    SandboxSpec spec;
    spec.id = "spare-test-" + std::to_string(getpid()) + "-" + std::to_string(roots_.size());
    spec.root = root;
    spec.limits = limits;
    ids_.push_back(spec.id);
    return CreateWithProbe(*d, spec, &boxes_);
  }

  ExecResult Run(Sandbox* b, const std::string& command) { return RunIn(b, command); }

  pid_t OnlySpare(BwrapDriver* d) {
    EXPECT_TRUE(d->WaitForSparesBlocking(seconds(20)));
    auto pids = d->SparePidsForTest();
    EXPECT_EQ(pids.size(), 1u);
    return pids.empty() ? -1 : pids[0];
  }

  std::string dir_;
  std::vector<std::unique_ptr<BwrapDriver>> drivers_;
  std::vector<std::pair<std::string, BwrapDriver*>> roots_;
  std::vector<std::string> ids_;
  std::vector<std::unique_ptr<Sandbox>> boxes_;
};

// What a sandbox is made of, seen from the host (its bwrap) and from inside.
struct Makeup {
  std::string host;    // bwrap's credentials, capabilities, seccomp, signals
  std::string limits;  // its groups' limit files
  std::string inside;  // a command's view of itself
};

TEST_F(BwrapSpares, ASandboxFromASpareIsTheSameAsOneStartedDirectly) {
  BwrapDriver* pooled = Open(1);
  BwrapDriver* launched = Open(1, /*warm=*/false);
  BwrapDriver* direct = Open(0);
  Limits l;
  l.memory_mb = 96;
  l.pids = 48;
  l.cpus = 0.5;
  const std::string look =
      "id; grep -E '^(Uid|Gid|Groups|Cap[A-Za-z]+|NoNewPrivs|Seccomp|SigIgn|SigBlk):' "
      "/proc/self/status; ls /proc/self/fd; hostname; cat /proc/self/uid_map /proc/self/gid_map; "
      "readlink /proc/1/exe; tr '\\0' '\\n' < /proc/1/cmdline | head -1; mount | wc -l; "
      "awk '$2 == \"/workspace\" { split($4, o, \",\"); print $1, $3, o[1], o[2], o[3] }' "
      "/proc/self/mounts; pwd; ls -a";
  auto makeup = [&](BwrapDriver* d, pid_t expect_bwrap) {
    Makeup m;
    Sandbox* b = NewSandbox(d, l);
    if (b == nullptr) return m;
    ExecResult r = Run(b, look);
    EXPECT_EQ(r.exit_code, 0) << r.stderr_data;
    m.inside = r.stdout_data;
    pid_t bwrap = BwrapOf(ids_.back());
    EXPECT_GT(bwrap, 0);
    if (expect_bwrap > 0) {
      EXPECT_EQ(bwrap, expect_bwrap) << "the spare became the sandbox's bwrap";
    }
    m.host = StatusLines(bwrap, {"Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd",
                                 "CapAmb", "NoNewPrivs", "Seccomp", "SigIgn", "SigBlk"});
    for (const auto& [c, dir] : GroupDirs(bwrap)) {
      EXPECT_NE(dir.find("-" + ids_.back()), std::string::npos) << c << " group " << dir;
      for (const char* f : {"memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "pids.max",
                            "cpu.cfs_quota_us", "cpu.cfs_period_us"}) {
        if (fs::exists(dir + "/" + f)) m.limits += std::string(f) + "=" + ReadText(dir + "/" + f);
      }
    }
    return m;
  };
  pid_t spare = OnlySpare(pooled);
  Makeup from_spare = makeup(pooled, spare);
  Makeup from_launcher = makeup(launched, OnlySpare(launched));
  Makeup started_directly = makeup(direct, -1);
  EXPECT_FALSE(from_spare.inside.empty());
  EXPECT_EQ(from_spare.inside, started_directly.inside);
  EXPECT_EQ(from_spare.host, started_directly.host);
  EXPECT_EQ(from_spare.limits, started_directly.limits);
  EXPECT_EQ(from_launcher.inside, started_directly.inside);
  EXPECT_EQ(from_launcher.host, started_directly.host);
  EXPECT_EQ(from_launcher.limits, started_directly.limits);
  if (Enforced(pooled, "memory:cgroup_v1")) {
    EXPECT_NE(from_spare.limits.find("memory.limit_in_bytes=" + std::to_string(96 << 20)),
              std::string::npos)
        << from_spare.limits;
  }
  if (geteuid() == 0) {
    // A per-sandbox host uid, not root, and the sandbox user inside.
    EXPECT_EQ(from_spare.host.find("Uid:\t0"), std::string::npos) << from_spare.host;
    EXPECT_EQ(from_spare.inside.rfind("uid=1000(agent)", 0), 0u) << from_spare.inside;
  }
}

TEST_F(BwrapSpares, AWarmSpareIsASandboxThatGetsItsWorkspaceWhenTaken) {
  if (geteuid() != 0) GTEST_SKIP() << "warm spares need root (the workspace is mounted into them)";
  BwrapDriver* d = Open(1);
  pid_t spare = OnlySpare(d);
  // Waiting, the spare is bwrap already, as a uid of its own.
  EXPECT_NE(ReadText("/proc/" + std::to_string(spare) + "/stat").find("(bwrap)"), std::string::npos);
  std::string uid_line = StatusLines(spare, {"Uid"});
  EXPECT_EQ(uid_line.find("Uid:\t0\t"), std::string::npos) << uid_line;
  Sandbox* b = NewSandbox(d);
  ASSERT_NE(b, nullptr);
  // Put there by the host before the first command, as a restore does.
  { std::ofstream(b->workspace() + "/restored.txt") << "from the host\n"; }
  ExecResult r = Run(b, "pwd; cat restored.txt; echo made > made.txt; stat -c %U made.txt restored.txt");
  EXPECT_EQ(r.stdout_data, "/workspace\nfrom the host\nagent\nagent\n") << r.stderr_data;
  EXPECT_EQ(ReadText(b->workspace() + "/made.txt"), "made\n");
  struct stat st;
  ASSERT_EQ(stat((b->workspace() + "/made.txt").c_str(), &st), 0);
  EXPECT_NE(uid_line.find("\t" + std::to_string(st.st_uid) + "\t"), std::string::npos)
      << "made by the spare's uid: " << uid_line << " file uid " << st.st_uid;
  EXPECT_EQ(BwrapOf(ids_.back()), spare);
  // Landlock holds from the attach on: /dev takes writes to its devices, no new files.
  if (Enforced(d, "landlock:")) {
    ExecResult planted = Run(b, "touch /dev/planted");
    EXPECT_NE(planted.exit_code, 0);
    EXPECT_NE(planted.stderr_data.find("Permission denied"), std::string::npos) << planted.stderr_data;
  }
}

TEST_F(BwrapSpares, ASandboxThatAsksForOtherFoldersLeavesTheWarmSpare) {
  if (geteuid() != 0) GTEST_SKIP() << "warm spares need root";
  BwrapDriver* d = Open(1);
  pid_t spare = OnlySpare(d);
  std::string root = dir_ + "/other";
  fs::create_directories(root);
  roots_.emplace_back(root, d);
  SandboxSpec spec;
  spec.id = "spare-test-" + std::to_string(getpid()) + "-other";
  spec.root = root;
  spec.read_only_paths = {"/var/lib"};
  ids_.push_back(spec.id);
  Sandbox* b = CreateWithProbe(*d, spec, &boxes_);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(Run(b, "test -d /var/lib && echo bound").stdout_data, "bound\n");
  pid_t bwrap = BwrapOf(spec.id);
  EXPECT_GT(bwrap, 0);
  EXPECT_NE(bwrap, spare);
  EXPECT_EQ(d->SparePidsForTest(), std::vector<pid_t>{spare});
}

TEST_F(BwrapSpares, ASandboxTakesItsWarmSparesUidAndGivesItBack) {
  if (geteuid() != 0) GTEST_SKIP() << "sandbox uids need root";
  // One uid: the spare's, then its sandbox's, then (once that is gone) the next spare's. A
  // uid kept by either would leave the next round none.
  BwrapDriver* d = Open(1, /*warm=*/true, /*uid_slots=*/1);
  std::set<std::string> uids;
  for (int i = 0; i < 4; ++i) {
    pid_t spare = OnlySpare(d);
    std::string spares_uid = StatusLines(spare, {"Uid"});  // a warm spare runs as it already
    Sandbox* b = NewSandbox(d);
    ASSERT_NE(b, nullptr) << "round " << i;
    ExecResult r = Run(b, "echo ok");
    EXPECT_EQ(r.stdout_data, "ok\n") << "round " << i;
    EXPECT_EQ(BwrapOf(ids_.back()), spare) << "round " << i;
    EXPECT_EQ(StatusLines(spare, {"Uid"}), spares_uid) << "round " << i;
    uids.insert(spares_uid);
    boxes_.back().reset();
  }
  EXPECT_EQ(uids.size(), 1u);
}

TEST_F(BwrapSpares, ASandboxFromASpareKillsAMemoryBombAndContainsAForkBomb) {
  BwrapDriver* d = Open(1);
  if (!Enforced(d, "memory:") || !Enforced(d, "pids:")) GTEST_SKIP() << "needs memory and pids cgroups";
  pid_t spare = OnlySpare(d);
  Limits l;
  l.memory_mb = 64;
  l.pids = 64;
  Sandbox* b = NewSandbox(d, l);
  ASSERT_NE(b, nullptr);
  ExecResult r = Run(b, "./probe memory 1024");
  EXPECT_EQ(BwrapOf(ids_.back()), spare);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(r.oom_killed);
  EXPECT_EQ(r.stdout_data.find("allowed"), std::string::npos);
  ExecResult bomb = Run(b, "bomb() { bomb | bomb & }; bomb; sleep 2");
  EXPECT_TRUE(bomb.timed_out || bomb.exit_code != 0 || bomb.stderr_data.find("fork") != std::string::npos);
  EXPECT_EQ(Run(b, "echo alive").stdout_data, "alive\n");
}

TEST_F(BwrapSpares, CommandsDoNotInheritTheSignalsAgentdIgnores) {
  // agentd ignores SIGPIPE; a pipeline in a sandbox must still end on it.
  struct sigaction ignore {}, old {};
  ignore.sa_handler = SIG_IGN;
  sigaction(SIGPIPE, &ignore, &old);
  BwrapDriver* pooled = Open(1);
  BwrapDriver* direct = Open(0);
  OnlySpare(pooled);
  for (BwrapDriver* d : {pooled, direct}) {
    Sandbox* b = NewSandbox(d);
    ASSERT_NE(b, nullptr);
    EXPECT_EQ(Run(b, "grep -E '^Sig(Ign|Blk):' /proc/self/status").stdout_data,
              "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n");
  }
  sigaction(SIGPIPE, &old, nullptr);
}

TEST_F(BwrapSpares, RefillsThePoolAfterASpareIsTaken) {
  BwrapDriver* d = Open(1);
  pid_t first = OnlySpare(d);
  Sandbox* b = NewSandbox(d);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(Run(b, "echo ok").stdout_data, "ok\n");
  EXPECT_EQ(BwrapOf(ids_.back()), first);
  pid_t second = OnlySpare(d);
  EXPECT_GT(second, 0);
  EXPECT_NE(second, first);
}

TEST_F(BwrapSpares, StartsDirectlyWithNoSparesOrAnEmptyPool) {
  BwrapDriver* none = Open(0);
  EXPECT_TRUE(none->WaitForSparesBlocking(milliseconds(0)));
  EXPECT_EQ(none->ReadySpares(), 0u);
  Sandbox* b = NewSandbox(none);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(Run(b, "echo ok").stdout_data, "ok\n");

  // One spare, two sandboxes created back to back: the second finds the pool empty (the
  // refill waits until the first one's start is over).
  BwrapDriver* one = Open(1);
  pid_t spare = OnlySpare(one);
  Sandbox* first = NewSandbox(one);
  std::string first_id = ids_.back();
  Sandbox* second = NewSandbox(one);
  ASSERT_NE(first, nullptr);
  ASSERT_NE(second, nullptr);
  EXPECT_EQ(Run(second, "echo second").stdout_data, "second\n");
  EXPECT_EQ(Run(first, "echo first").stdout_data, "first\n");
  EXPECT_EQ(BwrapOf(first_id), spare);
  pid_t direct = BwrapOf(ids_.back());
  EXPECT_GT(direct, 0);
  EXPECT_NE(direct, spare);
}

TEST_F(BwrapSpares, ReplacesASpareKilledWithSigkillAndNeverUsesIt) {
  BwrapDriver* d = Open(1);
  pid_t dead = OnlySpare(d);
  ASSERT_GT(dead, 0);
  auto groups = GroupDirs(dead);
  ASSERT_EQ(kill(dead, SIGKILL), 0);
  // Killed: a zombie until the pool reaps it (or Create below finds it gone).
  ASSERT_TRUE(WaitUntil([&] {
    std::string stat = ReadText("/proc/" + std::to_string(dead) + "/stat");
    return stat.empty() || stat.find(") Z ") != std::string::npos;
  }));
  Sandbox* b = NewSandbox(d);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(Run(b, "echo ok").stdout_data, "ok\n");
  EXPECT_NE(BwrapOf(ids_.back()), dead);
  pid_t replacement = OnlySpare(d);
  EXPECT_GT(replacement, 0);
  EXPECT_NE(replacement, dead);
  EXPECT_TRUE(WaitUntil([&] { return Reaped(dead); }));
  for (const auto& [c, dir] : groups) EXPECT_FALSE(fs::exists(dir)) << c << " " << dir;
}

TEST_F(BwrapSpares, LeavesNoSpareProcessOrGroupBehind) {
  EXPECT_TRUE(OurGroups().empty());
  std::vector<pid_t> spares;
  {
    BwrapDriver* d = Open(2);
    ASSERT_TRUE(d->WaitForSparesBlocking(seconds(20)));
    spares = d->SparePidsForTest();
    ASSERT_EQ(spares.size(), 2u);
    Sandbox* used = NewSandbox(d);  // takes a spare and starts from it
    ASSERT_NE(used, nullptr);
    EXPECT_EQ(Run(used, "echo ok").stdout_data, "ok\n");
    NewSandbox(d);  // takes the other and never starts: the spare waits inside it
    ASSERT_TRUE(d->WaitForSparesBlocking(seconds(20)));
    for (pid_t p : d->SparePidsForTest()) spares.push_back(p);
    EXPECT_FALSE(OurGroups().empty());
    TearDown();  // sandboxes, then the driver
  }
  for (pid_t p : spares) EXPECT_TRUE(Reaped(p)) << "spare " << p;
  EXPECT_TRUE(OurGroups().empty()) << OurGroups().front();
  SetUp();  // for the fixture's own TearDown
}

// As root, bwrap runs as the sandbox's uid and binds by path. What sits under a folder closed
// to others (a checkout or data directory in root's 0700 home) reaches the sandbox anyway:
// agentd's own files from copies in host::kReachableDir, the workspace and the read-only
// folders mounted in after the start, whether the sandbox starts directly or from a warm
// spare. Copies of agentd's files that no agentd holds any more are removed.
TEST_F(BwrapSpares, WhatFoldersClosedToOthersHoldReachesTheSandbox) {
  if (geteuid() != 0) GTEST_SKIP() << "sandboxes run as other uids only when agentd is root";
  const std::string closed = dir_ + "/closed";
  fs::create_directories(closed + "/bin");
  fs::create_directories(closed + "/ro/sub");
  ASSERT_EQ(chmod(closed.c_str(), 0700), 0);
  fs::copy_file(AGENTD_SANDBOX_INIT, closed + "/bin/agentd-sandbox-init");
  std::ofstream(closed + "/ro/sub/note.txt") << "read-only note\n";
  fs::create_directories(host::kReachableDir);
  const std::string pid = std::to_string(getpid());
  const std::string held = std::string(host::kReachableDir) + "/sandbox-init-held-" + pid;
  const std::string stale = std::string(host::kReachableDir) + "/sandbox-init-stale-" + pid;
  std::ofstream(held) << "another build's init";
  std::ofstream(stale) << "a build no agentd runs";
  int hold = open(held.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_EQ(flock(hold, LOCK_SH), 0);

  for (bool warm : {false, true}) {
    SCOPED_TRACE(warm ? "from a warm spare" : "started directly");
    BwrapOptions o;
    o.init_path = closed + "/bin/agentd-sandbox-init";
    o.state_dir = closed + "/state" + std::to_string(drivers_.size());
    o.spares = warm ? 1 : 0;
    o.warm_spares = warm;
    o.read_only_paths = {closed + "/ro"};
    drivers_.push_back(BwrapDriver::Open(o));
    BwrapDriver* d = drivers_.back().get();
    ASSERT_TRUE(d->capabilities().available) << d->capabilities().unavailable_reason;
    if (warm) {
      ASSERT_TRUE(d->WaitForSparesBlocking(seconds(20)));
    }
    std::vector<pid_t> spares = d->SparePidsForTest();

    std::string root = closed + "/box" + std::to_string(roots_.size());
    fs::create_directories(root);
    roots_.emplace_back(root, d);
    SandboxSpec spec;
    spec.id = "reach-test-" + pid + "-" + std::to_string(roots_.size());
    spec.root = root;
    spec.read_only_paths = o.read_only_paths;
    Sandbox* b = CreateWithProbe(*d, spec, &boxes_);
    ASSERT_NE(b, nullptr);
    ExecResult r = Run(b, "cat " + closed + "/ro/sub/note.txt && echo kept > /workspace/w && "
                          "id -u && if touch " + closed + "/ro/x 2>/dev/null; then echo WRITABLE; fi");
    EXPECT_EQ(r.exit_code, 0) << r.stderr_data;
    EXPECT_EQ(r.stdout_data, "read-only note\n1000\n") << r.stderr_data;
    EXPECT_EQ(ReadText(b->workspace() + "/w"), "kept\n");  // the host's workspace
    if (warm) {
      ASSERT_EQ(spares.size(), 1u);
      EXPECT_EQ(BwrapOf(spec.id), spares[0]) << "the sandbox did not start from the spare";
    }
  }
  EXPECT_FALSE(fs::exists(stale));
  EXPECT_TRUE(fs::exists(held));
  close(hold);
  fs::remove(held);
}

// A sandbox whose start fails (bwrap cannot find a read-only folder, removed after the
// driver opened) reports bwrap's reason, and leaves no process, no group and no uid behind.
TEST_F(BwrapSpares, ASandboxThatFailsToStartLeavesNothingBehind) {
  if (geteuid() != 0) GTEST_SKIP() << "sandbox uids and groups need root";
  const std::string ro = dir_ + "/ro";
  fs::create_directories(ro);
  for (int spares : {0, 1}) {
    SCOPED_TRACE(spares == 0 ? "started directly" : "from a launcher spare");
    BwrapOptions o;
    o.uid_base = 1700000000;  // apart from the other tests' sandboxes
    o.uid_slots = 1;          // a uid not given back would refuse the next sandbox
    o.init_path = AGENTD_SANDBOX_INIT;
    o.state_dir = dir_ + "/state" + std::to_string(drivers_.size());
    o.spares = spares;
    o.warm_spares = false;  // a warm one would have bound the folder before it went
    o.read_only_paths = {ro};
    fs::create_directories(ro);
    drivers_.push_back(BwrapDriver::Open(o));
    BwrapDriver* d = drivers_.back().get();
    ASSERT_TRUE(d->capabilities().available) << d->capabilities().unavailable_reason;
    ASSERT_TRUE(d->WaitForSparesBlocking(seconds(20)));
    fs::remove(ro);
    for (int attempt = 0; attempt < 2; ++attempt) {
      std::string root = dir_ + "/box" + std::to_string(roots_.size());
      fs::create_directories(root);
      roots_.emplace_back(root, d);
      SandboxSpec spec;
      spec.id = "fail-test-" + std::to_string(getpid()) + "-" + std::to_string(roots_.size());
      spec.root = root;
      spec.read_only_paths = o.read_only_paths;
      auto box = d->Create(spec);
      ASSERT_TRUE(box.ok()) << box.status().ToString();
      ExecRequest req;
      req.command = "echo never";
      auto r = (*box)->Exec(req);
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
      EXPECT_NE(r.status().message().find(ro), std::string::npos) << r.status().ToString();
      EXPECT_EQ(BwrapOf(spec.id), -1);
      box->reset();
      for (const auto& g : OurGroups()) {
        EXPECT_EQ(g.find(spec.id), std::string::npos) << "left: " << g;
      }
    }
  }
}

}  // namespace
}  // namespace agentd::sandbox
