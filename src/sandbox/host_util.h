// Host-side helpers the sandbox drivers share: default limits, the sandbox's view of /etc,
// the workspace filesystem checks, and small file and process utilities.
#pragma once

#include <sys/types.h>

#include <string>

#include "common/status.h"
#include "sandbox/sandbox.h"

namespace agentd::sandbox::host {

// Limits left at 0 get the drivers' defaults: 512 MB, 1 CPU, 256 processes, 256 MB of
// workspace, 60 s per command.
Limits WithDefaults(Limits l);

// Files of the host's /etc that programs in a sandbox need (nullptr-terminated); the rest of
// /etc stays hidden.
extern const char* const kEtcFiles[];

// "what: strerror(errno)".
std::string Errno(const std::string& what);
bool IsTmpfs(const std::string& path);
bool IsMountPoint(const std::string& path);
// Gives every file under `dir` (symlinks themselves, not their targets) to uid:uid.
Status ChownTree(const std::string& dir, uid_t uid);
// Closes `fd` when open and sets it to -1.
void CloseFd(int& fd);
Status WriteText(const std::string& path, const std::string& text);
// The first executable `name` on $PATH, or "".
std::string FindOnPath(const std::string& name);
// agentd-sandbox-init beside the running executable.
std::string DefaultInitPath();

// When sandboxes run as other uids, whatever bwrap binds by path must be reachable by them:
// every folder above it must let others pass (mode o+x; listing is not needed). Returns the
// first folder on `path` (or `path` itself) that does not, or "" when all do.
std::string FirstUntraversable(const std::string& path);

// Where agentd (as root) puts copies of its own files that sandbox users must reach when
// the folders above the originals do not let them pass, as in a checkout in root's 0700
// home: one copy per content, shared by every agentd of the host.
inline constexpr const char* kReachableDir = "/run/agentd";

// Copies `src` (a file, or a folder with everything in it) to <dir>/<prefix>-<hash of its
// content>, unless that copy exists, and returns the copy's path. *lock_fd receives a
// descriptor holding a shared lock on the copy for as long as it stays open, so that no
// agentd removes a copy another one uses; copies of `prefix` that no agentd holds any more
// are removed. `dir` is created (mode 0711) when missing.
Result<std::string> PublishReachable(const std::string& src, const std::string& dir,
                                     const std::string& prefix, int* lock_fd);

// Mounts the size-capped tmpfs a sandbox's workspace lives on at `root` (mode 0700; owned
// by `owner` when it is not -1), or, when `root` already is one (taken over from an earlier
// run), keeps its files and applies this run's size. Needs root.
Status MountWorkspaceFs(const std::string& root, int64_t disk_mb, int64_t owner = -1);
// Unmounts what is mounted on `root`, then removes it and everything in it.
Status DiscardRoot(const std::string& root);
Status RemoveTree(const std::string& dir);

}  // namespace agentd::sandbox::host
