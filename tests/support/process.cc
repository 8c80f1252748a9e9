#include "tests/support/process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <strings.h>

#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <filesystem>
#include <random>

#include <fmt/format.h>

extern char** environ;

namespace agentd::testing {

Result<std::unique_ptr<Process>> Process::Start(const std::vector<std::string>& argv,
                                                const std::map<std::string, std::string>& env,
                                                const std::string& log_path) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return Internal("pipe failed");
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) envs.emplace_back(*e);
  for (const auto& [k, v] : env) envs.push_back(k + "=" + v);
  std::vector<char*> cargv, cenv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  for (const auto& e : envs) cenv.push_back(const_cast<char*>(e.c_str()));
  cenv.push_back(nullptr);
  pid_t pid = fork();
  if (pid < 0) return Internal("fork failed");
  if (pid == 0) {
    dup2(fds[1], 1);
    dup2(fds[1], 2);
    setpgid(0, 0);
    execve(cargv[0], cargv.data(), cenv.data());
    _exit(127);
  }
  close(fds[1]);
  std::unique_ptr<Process> p(new Process());
  p->pid_ = pid;
  if (!log_path.empty()) {
    p->log_fd_ = open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  }
  int rfd = fds[0];
  p->reader_ = std::thread([raw = p.get(), rfd] { raw->ReadLoop(rfd); });
  return p;
}

Process::~Process() {
  if (Running()) {
    Signal(SIGKILL);
    Wait();
  }
  if (reader_.joinable()) reader_.join();
  if (log_fd_ >= 0) close(log_fd_);
}

void Process::ReadLoop(int fd) {
  char buf[4096];
  while (true) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n <= 0) break;
    if (log_fd_ >= 0) (void)!write(log_fd_, buf, n);
    std::lock_guard lock(mu_);
    output_.append(buf, n);
    cv_.notify_all();
  }
  close(fd);
  std::lock_guard lock(mu_);
  eof_ = true;
  cv_.notify_all();
}

Result<std::string> Process::WaitForLine(const std::string& re,
                                         std::chrono::milliseconds timeout) {
  std::regex rx(re);
  std::unique_lock lock(mu_);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  size_t scanned = 0;
  while (true) {
    size_t nl;
    while ((nl = output_.find('\n', scanned)) != std::string::npos) {
      std::string line = output_.substr(scanned, nl - scanned);
      scanned = nl + 1;
      std::smatch m;
      if (std::regex_search(line, m, rx)) return m.size() > 1 ? m[1].str() : m[0].str();
    }
    if (eof_) return Unavailable("process exited before printing /" + re + "/:\n" + output_);
    if (cv_.wait_until(lock, deadline) == std::cv_status::timeout) {
      return DeadlineExceeded("timed out waiting for /" + re + "/:\n" + output_);
    }
  }
}

void Process::Signal(int sig) {
  if (pid_ > 0 && exit_code_ < 0) kill(pid_, sig);
}

int Process::Wait() {
  if (exit_code_ >= 0) return exit_code_;
  int st = 0;
  waitpid(pid_, &st, 0);
  exit_code_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  // Let the reader take in the last of the output, so Output() after Wait() has all of it.
  // Bounded: a process the child left behind may hold the pipe open.
  std::unique_lock lock(mu_);
  cv_.wait_for(lock, std::chrono::seconds(2), [this] { return eof_; });
  return exit_code_;
}

bool Process::Running() {
  if (exit_code_ >= 0 || pid_ <= 0) return false;
  int st = 0;
  pid_t r = waitpid(pid_, &st, WNOHANG);
  if (r == pid_) {
    exit_code_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return false;
  }
  return true;
}

std::string Process::Output() {
  std::lock_guard lock(mu_);
  return output_;
}

std::string BinPath(const std::string& name) {
  char self[4096];
  ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
  self[n > 0 ? n : 0] = '\0';
  return (std::filesystem::path(self).parent_path() / name).string();
}

std::string TempDir(const std::string& tag) {
  std::random_device rd;
  auto dir = std::filesystem::temp_directory_path() /
             fmt::format("agentd_{}_{}_{:x}", tag, getpid(), rd());
  std::filesystem::create_directories(dir);
  return dir.string();
}

namespace {

// Base URL of each agentd started here -> its admin key.
std::map<std::string, std::string>& AdminKeys() {
  static auto* keys = new std::map<std::string, std::string>();
  return *keys;
}
std::mutex& AdminKeysMu() {
  static auto* mu = new std::mutex();
  return *mu;
}

}  // namespace

Reply Call(const std::string& method, const std::string& url, const Json& body,
           const std::vector<std::pair<std::string, std::string>>& headers) {
  if (body.is_null()) return CallRaw(method, url, "", headers);
  auto h = headers;
  h.emplace_back("Content-Type", "application/json");
  return CallRaw(method, url, body.dump(), h);
}

Reply CallRaw(const std::string& method, const std::string& url, std::string body,
              const std::vector<std::pair<std::string, std::string>>& headers) {
  HttpRequest req;
  req.method = method;
  req.url = url;
  req.timeout = std::chrono::seconds(60);
  req.body = std::move(body);
  bool has_auth = false;
  for (const auto& [k, v] : headers) {
    if (strcasecmp(k.c_str(), "authorization") == 0) {
      has_auth = true;
      if (!v.empty()) req.headers.emplace_back(k, v);
    } else {
      req.headers.emplace_back(k, v);
    }
  }
  if (!has_auth) {
    if (std::string key = AdminKeyFor(url); !key.empty()) {
      req.headers.emplace_back("Authorization", "Bearer " + key);
    }
  }
  auto r = HttpDoBlocking(req);
  Reply out;
  if (!r.ok()) {
    out.status = -1;
    out.raw = r.status().ToString();
    return out;
  }
  out.status = r->status;
  out.raw = r->body;
  out.headers = r->headers;
  try {
    if (!r->body.empty()) out.body = Json::parse(r->body);
  } catch (const std::exception&) {
  }
  return out;
}

Result<FakeProcess> StartFake(const std::string& binary, const std::string& dir,
                              std::vector<std::string> extra_args) {
  std::vector<std::string> argv = {BinPath(binary), "--listen", "127.0.0.1:0"};
  for (auto& a : extra_args) argv.push_back(a);
  ASSIGN_OR_RETURN(auto proc, Process::Start(argv, {}, dir + "/" + binary + ".log"));
  ASSIGN_OR_RETURN(std::string port, proc->WaitForLine("LISTENING ([0-9]+)",
                                                       std::chrono::seconds(20)));
  return FakeProcess{std::move(proc), "http://127.0.0.1:" + port};
}

Result<Agentd> StartAgentd(const std::string& data_dir, const std::string& log_path,
                           std::vector<std::string> extra_args,
                           std::map<std::string, std::string> env,
                           const std::string& binary) {
  std::vector<std::string> argv = {BinPath(binary), "--listen", "127.0.0.1:0", "--data-dir",
                                   data_dir};
  for (auto& a : extra_args) argv.push_back(a);
  ASSIGN_OR_RETURN(auto proc, Process::Start(argv, env, log_path));
  ASSIGN_OR_RETURN(std::string port,
                   proc->WaitForLine("listening on http://127\\.0\\.0\\.1:([0-9]+)",
                                     std::chrono::seconds(30)));
  std::string url = "http://127.0.0.1:" + port;
  std::string key = ReadAdminKey(data_dir);
  {
    std::lock_guard lock(AdminKeysMu());
    AdminKeys()[url] = key;
  }
  return Agentd{std::move(proc), url, key};
}

std::string ReadAdminKey(const std::string& data_dir) {
  std::ifstream in(data_dir + "/admin.key");
  std::string key;
  std::getline(in, key);
  return key;
}

std::string AdminKeyFor(const std::string& url) {
  std::lock_guard lock(AdminKeysMu());
  for (const auto& [base, key] : AdminKeys()) {
    if (url.rfind(base, 0) == 0 && (url.size() == base.size() || url[base.size()] == '/')) {
      return key;
    }
  }
  return "";
}

}  // namespace agentd::testing
