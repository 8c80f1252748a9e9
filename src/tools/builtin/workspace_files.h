// Host-side access to a session's workspace for the file tools and the workspace API.
//
// Paths are workspace-relative and untrusted (they come from a model or a client). They are
// checked by name first (no absolute paths, no `..`, no NUL, bounded length), then every
// open goes through openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS) from the workspace's
// directory descriptor, so a symlink planted inside the workspace that leads out of it is
// refused by the kernel, whatever raced with the check. Files we create get the workspace
// owner's uid, so the sandbox can change them afterwards.
//
// Errors are InvalidArgument (bad path, not a text file, `old` not unique...), NotFound,
// PermissionDenied (leads outside the workspace) or ResourceExhausted (too large, disk
// quota). Messages name the path and say why; none names host paths.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"

namespace agentd::tools {

struct WorkspaceEntry {
  std::string path;  // relative to the listed directory's workspace root
  std::string type;  // file | dir | symlink | other
  int64_t size = 0;
};

class WorkspaceFiles {
 public:
  static constexpr size_t kMaxReadBytes = 1 << 20;
  static constexpr size_t kMaxWriteBytes = 16 << 20;
  static constexpr size_t kMaxPathBytes = 4096;

  // `root` is the workspace folder on the host.
  static Result<WorkspaceFiles> Open(const std::string& root);
  WorkspaceFiles(WorkspaceFiles&& other) noexcept;
  WorkspaceFiles& operator=(WorkspaceFiles&&) = delete;
  ~WorkspaceFiles();

  // The whole file, which must be UTF-8 text of at most kMaxReadBytes.
  Result<std::string> ReadText(const std::string& path) const;
  // Raw bytes (for downloads), at most `max_bytes`.
  Result<std::string> ReadBytes(const std::string& path, size_t max_bytes) const;
  // Creates or replaces the file atomically (write to a temporary file, then rename);
  // creates missing parent folders.
  Status Write(const std::string& path, const std::string& content) const;
  // Replaces the one occurrence of `old_text` with `new_text`.
  Status Edit(const std::string& path, const std::string& old_text,
              const std::string& new_text) const;
  // Entries under `dir` ("" or "." for the root), depth first, sorted by path, at most
  // `max_entries` (sets *truncated when there were more). Symlinks are listed, not followed.
  Result<std::vector<WorkspaceEntry>> List(const std::string& dir, bool recursive,
                                           size_t max_entries, bool* truncated) const;

  // Checks a path by name only; OK or InvalidArgument saying what is wrong.
  static Status CheckPath(const std::string& path);

 private:
  explicit WorkspaceFiles(int fd, uint32_t uid, uint32_t gid) : fd_(fd), uid_(uid), gid_(gid) {}
  Result<int> OpenBeneath(const std::string& path, int flags, int mode = 0) const;
  Status MakeParents(const std::string& path) const;

  int fd_;
  uint32_t uid_, gid_;
};

}  // namespace agentd::tools
