// Resource limits with cgroups, v2 where the host gives a controller to the unified
// hierarchy and v1 where it does not (hybrid hosts have memory, cpu and pids on v1). Each
// controller is placed on its own, so a host may mix both.
//
// Sandbox groups are made below agentd's own group (ours to manage, and bounded by whatever
// limits the host put on agentd), in a folder named `agentd-sandboxes`.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/status.h"
#include "sandbox/sandbox.h"

namespace agentd::sandbox {

// The groups of one sandbox. Destroying it kills what is left in them and removes them.
class Cgroup {
 public:
  ~Cgroup();
  Cgroup(const Cgroup&) = delete;
  Cgroup& operator=(const Cgroup&) = delete;

  // cgroup.procs files a new process joins by writing "0" to each (before it execs).
  const std::vector<std::string>& procs_files() const { return procs_files_; }
  // How many times the memory limit's OOM killer has killed a process in this group.
  int64_t OomKills() const;
  // Kills every process in the groups.
  void KillAll();
  // Sets `limits` (fields <= 0 are left as they are): a few small file writes, cheap next to
  // moving a process into the groups. On failure some limits may be set and others not.
  Status SetLimits(const Limits& limits);
  // Gives the groups the names of sandbox `name`; their processes stay in them. Fails, with
  // every group keeping its old name, where a folder cannot be renamed (cgroup v2 folders)
  // or one of that name exists. Not thread-safe: call before the paths are shared.
  Status Rename(const std::string& name);

 private:
  friend class Cgroups;
  struct Member {
    std::string controller;
    std::string parent;  // folder holding sandbox groups
    int version = 0;
  };
  Cgroup() = default;
  std::string Dir(const Member& m) const { return m.parent + "/" + leaf_; }
  void SetPaths();  // dirs_, procs_files_ and memory_events_ from members_ and leaf_

  std::vector<Member> members_;  // one per controller in use
  std::string leaf_;             // the groups' folder name, "<agentd pid>-<sandbox>"
  std::vector<std::string> dirs_;  // v2 controllers share one folder
  std::vector<std::string> procs_files_;
  std::string memory_events_;  // file with an "oom_kill N" line; empty when none
  bool has_kill_file_ = false;  // v2 cgroup.kill
};

class Cgroups {
 public:
  // Finds where each controller can be used; `enforced`/`not_enforced` say what was found
  // (e.g. "memory:cgroup_v1"; "cpu" -> "not writable: ...").
  static Cgroups Detect();

  void Report(Capabilities* caps) const;
  // Creates the groups of sandbox `name` with `limits` (fields <= 0 are left unlimited).
  Result<std::unique_ptr<Cgroup>> Create(const std::string& name, const Limits& limits) const;

 private:
  struct Place {
    std::string dir;  // folder holding sandbox groups
    int version = 0;
  };
  std::map<std::string, Place> places_;             // controller -> place
  std::map<std::string, std::string> missing_;      // controller -> reason
};

}  // namespace agentd::sandbox
