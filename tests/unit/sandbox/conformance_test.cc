// The sandbox conformance suite: one set of tests, run against every driver this build has.
//
// A driver that cannot do something on this host says so in its Capabilities; a test that
// needs it is skipped with that reason (kSkips below lists the reasoned exceptions), never
// silently passed. Attacks are run for real, from a static probe binary inside the sandbox.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <thread>

#include "sandbox/bwrap/bwrap_driver.h"
#include "sandbox/gvisor/gvisor_driver.h"
#include "sandbox/sandbox.h"
#include "sandbox_test_util.h"

namespace agentd::sandbox {
namespace {

namespace fs = std::filesystem;
using std::chrono::milliseconds;

// driver -> test name -> why it is skipped on every host.
const std::map<std::string, std::map<std::string, std::string>> kSkips = {};

// "bwrap" starts every sandbox itself; "bwrap_spare" starts every one from a spare (as root
// a sandbox started ahead, which gets its workspace when taken; see spare_pool.h).
std::unique_ptr<SandboxDriver> OpenDriver(const std::string& name, const std::string& state) {
  if (name == "bwrap" || name == "bwrap_spare") {
    BwrapOptions o;
    o.init_path = AGENTD_SANDBOX_INIT;
    o.state_dir = state;
    o.spares = name == "bwrap" ? 0 : 1;
    return BwrapDriver::Open(o);
  }
  if (name == "gvisor") {
    GvisorOptions o;
    o.init_path = AGENTD_SANDBOX_INIT;
    o.state_dir = state;
    return GvisorDriver::Open(o);
  }
  return nullptr;
}

class SandboxConformance : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    auto skips = kSkips.find(GetParam());
    if (skips != kSkips.end()) {
      auto s = skips->second.find(info->name());
      if (s != skips->second.end()) GTEST_SKIP() << s->second;
    }
    char tmpl[] = "/tmp/agentd-sandbox-test-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    // Sandbox users pass through (not list) the folders above their workspace.
    chmod(tmpl, 0711);
    driver_ = OpenDriver(GetParam(), dir_ + "/state");
    ASSERT_NE(driver_, nullptr);
    const Capabilities& caps = driver_->capabilities();
    ASSERT_TRUE(caps.available) << caps.unavailable_reason;
  }
  void TearDown() override {
    boxes_.clear();
    for (const auto& root : roots_) EXPECT_TRUE(driver_->Discard(root).ok());
    driver_.reset();
    std::error_code ec;
    if (!dir_.empty()) fs::remove_all(dir_, ec);
  }

  bool Enforced(const std::string& prefix) const {
    for (const auto& e : driver_->capabilities().enforced) {
      if (e.rfind(prefix, 0) == 0) return true;
    }
    return false;
  }

  // With spares, waits for one, so that the next Create takes it.
  void AwaitSpare() {
    if (GetParam() != "bwrap_spare") return;
    EXPECT_TRUE(static_cast<BwrapDriver*>(driver_.get())->WaitForSparesBlocking(std::chrono::seconds(20)));
  }

  Sandbox* NewSandbox(Limits limits = {}) {
    AwaitSpare();
    std::string root = dir_ + "/box" + std::to_string(roots_.size());
    fs::create_directories(root);
    roots_.push_back(root);
    SandboxSpec spec;
    spec.id = "test-" + std::to_string(getpid()) + "-" + std::to_string(roots_.size());
    spec.root = root;
    spec.limits = limits;
    return CreateWithProbe(*driver_, spec, &boxes_);
  }

  ExecResult Run(Sandbox* b, const std::string& command, milliseconds timeout = milliseconds(20000)) {
    return RunIn(b, command, timeout);
  }

  // Runs the probe and returns its one-line verdict.
  std::string Probe(Sandbox* b, const std::string& args) {
    ExecResult r = Run(b, "./probe " + args);
    std::string out = r.stdout_data;
    while (!out.empty() && out.back() == '\n') out.pop_back();
    return out.empty() ? "no output; stderr: " + r.stderr_data : out;
  }

  std::string dir_;
  std::unique_ptr<SandboxDriver> driver_;
  std::vector<std::string> roots_;
  std::vector<std::unique_ptr<Sandbox>> boxes_;
};

TEST_P(SandboxConformance, RunsCommandsInItsWorkspace) {
  Sandbox* b = NewSandbox();
  ASSERT_NE(b, nullptr);
  ExecResult r = Run(b, "pwd; echo hello > greeting; cat greeting; echo oops >&2; exit 3");
  EXPECT_EQ(r.stdout_data, "/workspace\nhello\n");
  EXPECT_EQ(r.stderr_data, "oops\n");
  EXPECT_EQ(r.exit_code, 3);
  EXPECT_FALSE(r.timed_out);
  std::ifstream f(b->workspace() + "/greeting");
  std::string host_view((std::istreambuf_iterator<char>(f)), {});
  EXPECT_EQ(host_view, "hello\n");
  // State lives in the workspace between commands.
  EXPECT_EQ(Run(b, "cat greeting").stdout_data, "hello\n");
}

TEST_P(SandboxConformance, PassesStdinAndTruncatesLongOutput) {
  Sandbox* b = NewSandbox();
  ASSERT_NE(b, nullptr);
  ExecRequest req;
  req.command = "tr a-z A-Z";
  req.stdin_data = std::string(300000, 'a');  // more than a pipe holds
  req.max_output_bytes = 1000;
  auto r = b->Exec(req);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->stdout_data, std::string(1000, 'A'));
  EXPECT_TRUE(r->truncated);
  EXPECT_EQ(r->exit_code, 0);
}

TEST_P(SandboxConformance, RunsAsAnUnprivilegedUserWithNoCapabilities) {
  Sandbox* b = NewSandbox();
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(Run(b, "id -u").stdout_data, "1000\n");
  EXPECT_EQ(Run(b, "grep CapEff /proc/self/status").stdout_data, "CapEff:\t0000000000000000\n");
}

TEST_P(SandboxConformance, CannotSeeHostFilesProcessesOrSys) {
  // A secret on the host, outside the workspace.
  std::string secret = dir_ + "/host-secret";
  std::ofstream(secret) << "s3cret";
  chmod(secret.c_str(), 0644);
  Sandbox* b = NewSandbox();
  ASSERT_NE(b, nullptr);
  ExecResult r = Run(b, "cat " + secret);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.stdout_data.find("s3cret"), std::string::npos);
  EXPECT_NE(Run(b, "cat /etc/shadow").exit_code, 0);
  EXPECT_NE(Run(b, "ls /root").exit_code, 0);
  EXPECT_NE(Run(b, "ls /sys/kernel").exit_code, 0);
  // Only the sandbox's own processes: its init, the supervisor, the runner, sh and ls.
  ExecResult ps = Run(b, "ls /proc | grep -c '^[0-9]'");
  EXPECT_LE(std::stoi(ps.stdout_data), 6) << ps.stdout_data;
  // agentd's own pid is not there.
  EXPECT_NE(Run(b, "cat /proc/" + std::to_string(getpid()) + "/cmdline").exit_code, 0);
  // System folders are read-only.
  EXPECT_NE(Run(b, "touch /usr/bin/planted").exit_code, 0);
  EXPECT_NE(Run(b, "touch /etc/planted").exit_code, 0);
  EXPECT_FALSE(fs::exists("/usr/bin/planted"));
  // Landlock: nothing new outside the workspace and /tmp, even where modes would allow it
  // (the sandbox's own /dev is its user's).
  if (Enforced("landlock:")) {
    EXPECT_NE(Run(b, "touch /dev/planted").exit_code, 0);
  }
  EXPECT_EQ(Run(b, "touch /tmp/scratch && echo ok").stdout_data, "ok\n");
}

TEST_P(SandboxConformance, CannotReachAnotherSandbox) {
  Sandbox* a = NewSandbox();
  Sandbox* b = NewSandbox();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  Run(a, "echo mine > private.txt");
  ExecResult r = Run(b, "cat " + a->workspace() + "/private.txt; ls /workspace");
  EXPECT_EQ(r.stdout_data.find("mine"), std::string::npos);
  EXPECT_EQ(r.stdout_data.find("private.txt"), std::string::npos);
  // a's processes are invisible to b.
  ExecRequest slow;
  slow.command = "exec sleep 30";
  slow.timeout = milliseconds(3000);
  std::thread t([&] { (void)a->Exec(slow); });
  std::this_thread::sleep_for(milliseconds(300));
  EXPECT_EQ(Run(b, "ps -e -o comm= 2>/dev/null | grep -c sleep || true").stdout_data, "0\n");
  t.join();
}

TEST_P(SandboxConformance, DeniesDangerousSyscalls) {
  Sandbox* b = NewSandbox();
  ASSERT_NE(b, nullptr);
  for (const char* action : {"ptrace", "traceme", "mount", "packet", "raw", "userns",
                             "clone_userns", "bpf", "io_uring", "keyctl", "module"}) {
    std::string verdict = Probe(b, action);
    EXPECT_EQ(verdict.rfind("denied", 0), 0u) << action << ": " << verdict;
  }
  // The sandbox still works after all of that.
  EXPECT_EQ(Run(b, "echo fine").stdout_data, "fine\n");
}

TEST_P(SandboxConformance, HasNoNetwork) {
  // A listener on the host's loopback, which the sandbox must not reach.
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  ASSERT_EQ(listen(fd, 4), 0);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  int port = ntohs(addr.sin_port);
  Sandbox* b = NewSandbox();
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(Probe(b, "connect 127.0.0.1 " + std::to_string(port)), "denied: ECONNREFUSED");
  EXPECT_EQ(Probe(b, "connect 169.254.169.254 80").rfind("denied", 0), 0u);
  EXPECT_EQ(Probe(b, "connect 10.0.0.1 80").rfind("denied", 0), 0u);
  close(fd);
}

TEST_P(SandboxConformance, HandsProxyConnectionsOutAndNothingElse) {
  // The stand-in for the egress proxy: reads the request and refuses it.
  std::mutex mu;
  std::vector<std::string> requests;
  std::vector<std::thread> servers;
  std::string root = dir_ + "/egress";
  fs::create_directories(root);
  roots_.push_back(root);
  SandboxSpec spec;
  spec.id = "egress-" + std::to_string(getpid());
  spec.root = root;
  spec.on_egress_connection = [&](int fd) {
    std::lock_guard<std::mutex> lock(mu);
    servers.emplace_back([&, fd] {
      char buf[4096];
      ssize_t n = read(fd, buf, sizeof(buf));
      {
        std::lock_guard<std::mutex> l(mu);
        requests.emplace_back(buf, n > 0 ? static_cast<size_t>(n) : 0);
      }
      const char reply[] = "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
      (void)!write(fd, reply, sizeof(reply) - 1);
      close(fd);
    });
  };
  AwaitSpare();
  auto box = driver_->Create(spec);
  ASSERT_TRUE(box.ok()) << box.status().ToString();
  ExecRequest req;
  req.command = "curl -s -o /dev/null -w '%{http_code}' http://example.com/x; echo; echo $HTTPS_PROXY";
  auto r = (*box)->Exec(req);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stdout_data, "403\nhttp://127.0.0.1:3128\n") << r->stderr_data;
  // Going around the proxy finds no network.
  fs::copy_file(AGENTD_SANDBOX_PROBE, (*box)->workspace() + "/probe");
  req.command = "./probe connect 93.184.216.34 80";
  r = (*box)->Exec(req);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stdout_data.rfind("denied", 0), 0u) << r->stdout_data;
  box->reset();
  std::lock_guard<std::mutex> lock(mu);
  for (auto& t : servers) t.join();
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].rfind("GET http://example.com/x HTTP/1.1\r\n", 0), 0u) << requests[0];
}

TEST_P(SandboxConformance, StopsACommandAtItsTimeoutWithEverythingItStarted) {
  Sandbox* b = NewSandbox();
  ASSERT_NE(b, nullptr);
  auto start = std::chrono::steady_clock::now();
  ExecResult r = Run(b, "sleep 100 & (setsid sleep 200 &) ; sleep 300", milliseconds(300));
  auto took = std::chrono::steady_clock::now() - start;
  EXPECT_TRUE(r.timed_out);
  EXPECT_EQ(r.exit_code, 128 + 9);
  EXPECT_LT(took, std::chrono::seconds(10));
  // Nothing it started lives on, even what left its process group.
  EXPECT_EQ(Run(b, "ps -e -o comm= | grep -c sleep || true").stdout_data, "0\n");
}

TEST_P(SandboxConformance, ACommandThatLeavesABackgroundProcessStillReturns) {
  Sandbox* b = NewSandbox();
  ASSERT_NE(b, nullptr);
  auto start = std::chrono::steady_clock::now();
  ExecResult r = Run(b, "sleep 100 & echo started");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_EQ(r.stdout_data, "started\n");
  EXPECT_FALSE(r.timed_out);
}

TEST_P(SandboxConformance, ContainsAForkBomb) {
  if (!Enforced("pids:")) GTEST_SKIP() << driver_->capabilities().not_enforced.at("pids");
  Limits l;
  l.pids = 64;
  Sandbox* b = NewSandbox(l);
  ASSERT_NE(b, nullptr);
  // The limit itself: fork fails with EAGAIN before the sandbox holds 64 processes.
  ExecResult counted = Run(b, "./probe forks 500");
  ASSERT_EQ(counted.stdout_data.rfind("forked ", 0), 0u) << counted.stdout_data << counted.stderr_data;
  size_t forked = std::stoul(counted.stdout_data.substr(7));
  EXPECT_LT(forked, 64u) << counted.stdout_data;
  EXPECT_GT(forked, 8u) << counted.stdout_data;  // the limit, not some other failure
  EXPECT_NE(counted.stdout_data.find("denied: EAGAIN"), std::string::npos) << counted.stdout_data;
  // A real bomb is contained: the sandbox answers again afterwards, and so does the host
  // (this test is running), and the processes it left are gone.
  ExecResult r = Run(b, "bomb() { bomb | bomb & }; bomb; sleep 2", milliseconds(3000));
  EXPECT_TRUE(r.timed_out || r.exit_code != 0 || r.stderr_data.find("fork") != std::string::npos);
  ExecResult after = Run(b, "echo alive; ./probe forks 8");
  EXPECT_EQ(after.stdout_data, "alive\nforked 8\n") << after.stderr_data;
}

TEST_P(SandboxConformance, KillsAMemoryBombAtTheLimit) {
  if (!Enforced("memory:")) GTEST_SKIP() << driver_->capabilities().not_enforced.at("memory");
  Limits l;
  l.memory_mb = 64;
  Sandbox* b = NewSandbox(l);
  ASSERT_NE(b, nullptr);
  ExecResult r = Run(b, "./probe memory 1024");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(r.oom_killed);
  EXPECT_EQ(r.stdout_data.find("allowed"), std::string::npos);
  EXPECT_EQ(Run(b, "./probe memory 8").stdout_data, "allowed\n");
}

TEST_P(SandboxConformance, RefusesWritesPastTheDiskQuota) {
  if (!Enforced("disk:")) GTEST_SKIP() << driver_->capabilities().not_enforced.at("disk");
  Limits l;
  l.disk_mb = 8;
  Sandbox* b = NewSandbox(l);
  ASSERT_NE(b, nullptr);
  ExecResult r = Run(b, "dd if=/dev/zero of=big bs=1M count=64");
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.stderr_data.find("No space left"), std::string::npos) << r.stderr_data;
  EXPECT_EQ(Run(b, "rm big && echo ok > small && cat small").stdout_data, "ok\n");
}

TEST_P(SandboxConformance, KeepsTheWorkspaceOfARootTakenOver) {
  std::string root = dir_ + "/kept";
  fs::create_directories(root);
  SandboxSpec spec;
  spec.id = "kept-" + std::to_string(getpid());
  spec.root = root;
  {
    AwaitSpare();
    auto box = driver_->Create(spec);
    ASSERT_TRUE(box.ok()) << box.status().ToString();
    ExecRequest req;
    req.command = "echo kept > notes";
    ASSERT_TRUE((*box)->Exec(req).ok());
  }
  // A new sandbox on the same root (agentd restarted) finds the files.
  spec.id += "-again";
  AwaitSpare();
  auto box = driver_->Create(spec);
  ASSERT_TRUE(box.ok()) << box.status().ToString();
  ExecRequest req;
  req.command = "cat notes";
  auto r = (*box)->Exec(req);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->stdout_data, "kept\n");
  box->reset();
  EXPECT_TRUE(driver_->Discard(root).ok());
  EXPECT_FALSE(fs::exists(root));
}

TEST_P(SandboxConformance, SpawnsLongLivedProcessesWithPipes) {
  Sandbox* b = NewSandbox();
  ASSERT_NE(b, nullptr);
  SpawnRequest req;
  req.argv = {"/bin/sh", "-c", "echo ready >&2; while read line; do echo \"got $line\"; done"};
  auto p = b->Spawn(req);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  ASSERT_EQ(write((*p)->stdin_fd(), "one\n", 4), 4);
  char buf[64];
  ssize_t n = read((*p)->stdout_fd(), buf, sizeof(buf));
  ASSERT_GT(n, 0);
  EXPECT_EQ(std::string(buf, static_cast<size_t>(n)), "got one\n");
  int code = 0;
  EXPECT_TRUE((*p)->Running(&code));
  (*p)->Kill();
  for (int i = 0; i < 200 && (*p)->Running(&code); ++i) std::this_thread::sleep_for(milliseconds(10));
  EXPECT_FALSE((*p)->Running(&code));
  EXPECT_EQ(code, 128 + 9);
  EXPECT_NE((*p)->StderrTail().find("ready"), std::string::npos);
}

TEST_P(SandboxConformance, ReportsWhatItEnforces) {
  const Capabilities& caps = driver_->capabilities();
  EXPECT_EQ(caps.driver, GetParam().substr(0, GetParam().find('_')));
  EXPECT_TRUE(Enforced("seccomp"));
  EXPECT_TRUE(Enforced("namespaces:"));
  // Every limit is either enforced or has a reason.
  for (const char* what : {"memory", "cpu", "pids", "disk", "landlock"}) {
    bool reported = Enforced(std::string(what) + ":") || caps.not_enforced.count(what) != 0;
    EXPECT_TRUE(reported) << what;
  }
}

INSTANTIATE_TEST_SUITE_P(Drivers, SandboxConformance, ::testing::Values("bwrap", "bwrap_spare", "gvisor"),
                         [](const auto& info) { return info.param; });

// A driver whose probe sandbox cannot start (its runtime here is /bin/false) says why, and
// leaves nothing of the probe mounted.
TEST(SandboxProbe, AProbeThatFailsLeavesNoMountBehind) {
  if (geteuid() != 0) GTEST_SKIP() << "the probe mounts a workspace only as root";
  char tmpl[] = "/tmp/agentd-probe-test-XXXXXX";
  ASSERT_NE(mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl;
  BwrapOptions b;
  b.bwrap_path = "/bin/false";
  b.init_path = AGENTD_SANDBOX_INIT;
  b.state_dir = dir + "/bwrap";
  b.spares = 0;
  GvisorOptions g;
  g.runsc_path = "/bin/false";
  g.init_path = AGENTD_SANDBOX_INIT;
  g.state_dir = dir + "/gvisor";
  std::unique_ptr<SandboxDriver> drivers[] = {BwrapDriver::Open(b), GvisorDriver::Open(g)};
  for (const auto& d : drivers) {
    EXPECT_FALSE(d->capabilities().available);
    EXPECT_NE(d->capabilities().unavailable_reason.find("probe"), std::string::npos)
        << d->capabilities().unavailable_reason;
  }
  std::ifstream mounts("/proc/self/mountinfo");
  for (std::string line; std::getline(mounts, line);) {
    EXPECT_EQ(line.find(dir + "/"), std::string::npos) << "left mounted: " << line;
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  EXPECT_FALSE(ec) << ec.message();
}

}  // namespace
}  // namespace agentd::sandbox
