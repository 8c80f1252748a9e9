#include "sandbox/cgroup.h"

#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

namespace agentd::sandbox {
namespace {

constexpr const char* kControllers[] = {"memory", "cpu", "pids"};
constexpr const char* kFolder = "agentd-sandboxes";

std::string ReadFile(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

bool WriteFile(const std::string& path, const std::string& value) {
  FILE* f = fopen(path.c_str(), "we");
  if (f == nullptr) return false;
  bool ok = fputs(value.c_str(), f) >= 0;
  ok = (fclose(f) == 0) && ok;
  return ok;
}

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string part;
  while (std::getline(ss, part, sep)) out.push_back(part);
  return out;
}

struct Mounts {
  std::string v2;                                  // cgroup2 mount point
  std::map<std::string, std::string> v1;           // controller -> mount point
};

Mounts FindMounts() {
  Mounts m;
  std::ifstream f("/proc/self/mountinfo");
  std::string line;
  while (std::getline(f, line)) {
    // ... mount_point ... - fstype source super_options
    auto fields = Split(line, ' ');
    size_t dash = std::find(fields.begin(), fields.end(), "-") - fields.begin();
    if (fields.size() < 5 || dash + 3 >= fields.size()) continue;
    const std::string& fstype = fields[dash + 1];
    const std::string& mount_point = fields[4];
    if (fstype == "cgroup2") {
      if (m.v2.empty()) m.v2 = mount_point;
    } else if (fstype == "cgroup") {
      for (const auto& opt : Split(fields[dash + 3], ',')) {
        for (const char* c : kControllers) {
          if (opt == c && m.v1.count(c) == 0) m.v1[c] = mount_point;
        }
      }
    }
  }
  return m;
}

// controller (or "" for the unified hierarchy) -> this process's group path.
std::map<std::string, std::string> OwnGroups() {
  std::map<std::string, std::string> out;
  std::ifstream f("/proc/self/cgroup");
  std::string line;
  while (std::getline(f, line)) {
    auto first = line.find(':');
    auto second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    std::string controllers = line.substr(first + 1, second - first - 1);
    std::string path = line.substr(second + 1);
    if (controllers.empty()) {
      out[""] = path;
      continue;
    }
    for (const auto& c : Split(controllers, ',')) out[c] = path;
  }
  return out;
}

bool MakeDir(const std::string& dir, std::string* error) {
  if (mkdir(dir.c_str(), 0755) == 0 || errno == EEXIST) return true;
  *error = dir + ": " + strerror(errno);
  return false;
}

// Enables `controller` for the children of `dir` in the unified hierarchy. A group with
// processes cannot hand controllers down (the "no internal processes" rule), so when agentd
// sits in `dir` it first moves itself into a leaf beside the sandboxes.
bool EnableV2(const std::string& dir, const std::string& controller, std::string* error) {
  if (ReadFile(dir + "/cgroup.subtree_control").find(controller) != std::string::npos) {
    return true;
  }
  if (WriteFile(dir + "/cgroup.subtree_control", "+" + controller)) return true;
  if (errno != EBUSY) {
    *error = dir + "/cgroup.subtree_control: " + strerror(errno);
    return false;
  }
  std::string leaf = dir + "/agentd-daemon";
  if (!MakeDir(leaf, error)) return false;
  if (!WriteFile(leaf + "/cgroup.procs", "0")) {
    *error = leaf + "/cgroup.procs: " + strerror(errno);
    return false;
  }
  if (!WriteFile(dir + "/cgroup.subtree_control", "+" + controller)) {
    *error = dir + "/cgroup.subtree_control: " + strerror(errno);
    return false;
  }
  return true;
}

// Groups are named "<pid of the agentd that made them>-<sandbox>".
std::string GroupName(const std::string& sandbox) {
  return std::to_string(getpid()) + "-" + sandbox;
}

// Groups left by an agentd that was killed: their processes died with it (the supervisor
// exits when agentd's end of its socket closes), so rmdir removes them. Groups of a process
// that is still alive are left alone: another agentd (or test) on this host may have just
// made one, still empty, for a sandbox it is starting.
void RemoveStaleGroups(const std::string& folder) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(folder, ec)) {
    if (!entry.is_directory(ec)) continue;
    std::string name = entry.path().filename().string();
    pid_t owner = static_cast<pid_t>(std::atoll(name.substr(0, name.find('-')).c_str()));
    if (owner > 0 && (kill(owner, 0) == 0 || errno == EPERM)) continue;
    rmdir(entry.path().c_str());
  }
}

}  // namespace

Cgroups Cgroups::Detect() {
  Cgroups cg;
  Mounts mounts = FindMounts();
  auto own = OwnGroups();
  for (const char* c : kControllers) {
    std::string error;
    if (mounts.v1.count(c) != 0 && own.count(c) != 0) {
      std::string dir = mounts.v1[c] + own[c];
      if (dir.back() != '/') dir += '/';
      dir += kFolder;
      if (MakeDir(dir, &error)) {
        cg.places_[c] = {dir, 1};
        RemoveStaleGroups(dir);
        continue;
      }
    } else if (!mounts.v2.empty() && own.count("") != 0) {
      std::string parent = mounts.v2 + own[""];
      while (parent.size() > 1 && parent.back() == '/') parent.pop_back();
      std::string controllers = ReadFile(parent + "/cgroup.controllers");
      bool offered = false;
      for (const auto& have : Split(controllers.substr(0, controllers.find('\n')), ' ')) {
        offered = offered || have == c;
      }
      if (!offered) {
        error = std::string("the unified hierarchy does not offer the ") + c + " controller here";
      } else if (EnableV2(parent, c, &error) && MakeDir(parent + "/" + kFolder, &error) &&
                 EnableV2(parent + "/" + kFolder, c, &error)) {
        cg.places_[c] = {parent + "/" + kFolder, 2};
        RemoveStaleGroups(parent + "/" + kFolder);
        continue;
      }
    } else {
      error = "no cgroup hierarchy has this controller";
    }
    cg.missing_[c] = error;
  }
  return cg;
}

void Cgroups::Report(Capabilities* caps) const {
  for (const auto& [c, place] : places_) {
    caps->enforced.push_back(c + ":cgroup_v" + std::to_string(place.version));
  }
  for (const auto& [c, reason] : missing_) caps->not_enforced[c] = reason;
}

Result<std::unique_ptr<Cgroup>> Cgroups::Create(const std::string& name,
                                                const Limits& limits) const {
  std::unique_ptr<Cgroup> g(new Cgroup());
  g->leaf_ = GroupName(name);
  for (const auto& [c, place] : places_) g->members_.push_back({c, place.dir, place.version});
  g->SetPaths();
  for (const auto& dir : g->dirs_) {
    if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
      return Internal("cgroup " + dir + ": " + strerror(errno));
    }
  }
  RETURN_IF_ERROR(g->SetLimits(limits));
  return g;
}

void Cgroup::SetPaths() {
  dirs_.clear();
  procs_files_.clear();
  memory_events_.clear();
  has_kill_file_ = false;
  for (const auto& m : members_) {
    std::string dir = Dir(m);
    if (std::find(dirs_.begin(), dirs_.end(), dir) == dirs_.end()) {
      dirs_.push_back(dir);
      procs_files_.push_back(dir + "/cgroup.procs");
    }
    if (m.controller == "memory") {
      memory_events_ = dir + (m.version == 1 ? "/memory.oom_control" : "/memory.events");
    }
    if (m.version == 2) has_kill_file_ = Exists(dir + "/cgroup.kill");
  }
}

Status Cgroup::SetLimits(const Limits& limits) {
  for (const auto& m : members_) {
    const std::string dir = Dir(m);
    auto set = [&](const std::string& file, const std::string& value) -> Status {
      if (WriteFile(dir + "/" + file, value)) return Status::OK();
      return Internal("cgroup " + dir + "/" + file + ": " + strerror(errno));
    };
    if (m.controller == "memory" && limits.memory_mb > 0) {
      std::string bytes = std::to_string(limits.memory_mb << 20);
      if (m.version == 1) {
        RETURN_IF_ERROR(set("memory.limit_in_bytes", bytes));
        if (Exists(dir + "/memory.memsw.limit_in_bytes")) {
          RETURN_IF_ERROR(set("memory.memsw.limit_in_bytes", bytes));
        }
      } else {
        RETURN_IF_ERROR(set("memory.max", bytes));
        if (Exists(dir + "/memory.swap.max")) RETURN_IF_ERROR(set("memory.swap.max", "0"));
      }
    } else if (m.controller == "pids" && limits.pids > 0) {
      RETURN_IF_ERROR(set("pids.max", std::to_string(limits.pids)));
    } else if (m.controller == "cpu" && limits.cpus > 0) {
      int64_t quota = static_cast<int64_t>(limits.cpus * 100000);
      if (m.version == 1) {
        RETURN_IF_ERROR(set("cpu.cfs_period_us", "100000"));
        RETURN_IF_ERROR(set("cpu.cfs_quota_us", std::to_string(quota)));
      } else {
        RETURN_IF_ERROR(set("cpu.max", std::to_string(quota) + " 100000"));
      }
    }
  }
  return Status::OK();
}

Status Cgroup::Rename(const std::string& name) {
  const std::string old_leaf = leaf_, new_leaf = GroupName(name);
  if (new_leaf == old_leaf) return Status::OK();
  std::vector<std::string> parents;  // v2 controllers share one parent
  for (const auto& m : members_) {
    if (std::find(parents.begin(), parents.end(), m.parent) == parents.end()) {
      parents.push_back(m.parent);
    }
  }
  for (size_t i = 0; i < parents.size(); ++i) {
    const std::string from = parents[i] + "/" + old_leaf, to = parents[i] + "/" + new_leaf;
    // rename(2) replaces an empty folder of the new name; a group of that name belongs to
    // someone else, so it must not be taken over.
    const bool taken = Exists(to);
    if (taken || rename(from.c_str(), to.c_str()) != 0) {
      Status st = Internal("cgroup " + from + " -> " + new_leaf + ": " +
                           (taken ? "a group of that name exists" : strerror(errno)));
      while (i-- > 0) {
        rename((parents[i] + "/" + new_leaf).c_str(), (parents[i] + "/" + old_leaf).c_str());
      }
      return st;
    }
  }
  leaf_ = new_leaf;
  SetPaths();
  return Status::OK();
}

int64_t Cgroup::OomKills() const {
  if (memory_events_.empty()) return 0;
  std::istringstream in(ReadFile(memory_events_));
  std::string key;
  int64_t value;
  while (in >> key >> value) {
    if (key == "oom_kill") return value;
  }
  return 0;
}

void Cgroup::KillAll() {
  for (const auto& dir : dirs_) {
    if (has_kill_file_ && WriteFile(dir + "/cgroup.kill", "1")) continue;
    // v1: kill until empty (a forking process may add members while we read).
    for (int round = 0; round < 100; ++round) {
      std::istringstream in(ReadFile(dir + "/cgroup.procs"));
      pid_t pid;
      bool any = false;
      while (in >> pid) {
        kill(pid, SIGKILL);
        any = true;
      }
      if (!any) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
}

Cgroup::~Cgroup() {
  KillAll();
  for (const auto& dir : dirs_) {
    // Members leave asynchronously after SIGKILL; rmdir fails with EBUSY until they have.
    for (int attempt = 0; attempt < 200; ++attempt) {
      if (rmdir(dir.c_str()) == 0 || errno == ENOENT) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }
}

}  // namespace agentd::sandbox
