#include "tools/builtin/workspace_files.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <random>

#include "common/utf8.h"

namespace agentd::tools {
namespace {

constexpr uint64_t kResolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;

std::string Quote(const std::string& path) { return "'" + path + "'"; }

// Maps an errno from resolving or opening `path` to a Status with a plain message.
Status PathError(int err, const std::string& path, const std::string& action) {
  switch (err) {
    case ENOENT:
      return NotFound(Quote(path) + " does not exist");
    case EXDEV:
    case ELOOP:
      return {StatusCode::kPermissionDenied,
              Quote(path) + " leads outside the workspace (through a symlink); refused"};
    case ENOTDIR:
      return InvalidArgument("a part of " + Quote(path) + " is not a folder");
    case EISDIR:
      return InvalidArgument(Quote(path) + " is a folder");
    case ENOSPC:
    case EDQUOT:
      return ResourceExhausted("the workspace is full (its disk quota is reached) while " +
                               action + " " + Quote(path));
    case EACCES:
    case EPERM:
      return {StatusCode::kPermissionDenied, "permission denied " + action + " " + Quote(path)};
    case ENAMETOOLONG:
      return InvalidArgument(Quote(path) + " is too long");
    default:
      return Internal(action + " " + Quote(path) + ": " + strerror(err));
  }
}

std::vector<std::string> Components(const std::string& path) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string::npos) end = path.size();
    if (end > start) parts.push_back(path.substr(start, end - start));
    start = end + 1;
  }
  return parts;
}

// Returns 0 or the errno of the failed write.
int WriteAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    off += static_cast<size_t>(n);
  }
  return 0;
}

}  // namespace

Status WorkspaceFiles::CheckPath(const std::string& path) {
  if (path.empty()) return InvalidArgument("the path is empty");
  if (path.size() > kMaxPathBytes) return InvalidArgument("the path is longer than 4096 bytes");
  if (path.find('\0') != std::string::npos) return InvalidArgument("the path contains a NUL byte");
  if (path[0] == '/') {
    return InvalidArgument(Quote(path) + " is absolute; paths are relative to the workspace");
  }
  for (const auto& part : Components(path)) {
    if (part == "..") {
      return InvalidArgument(Quote(path) + " contains '..'; paths must stay in the workspace");
    }
  }
  return Status::OK();
}

Result<WorkspaceFiles> WorkspaceFiles::Open(const std::string& root) {
  int fd = open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return Unavailable("the workspace is not available");
  struct stat st;
  if (fstat(fd, &st) != 0) {
    close(fd);
    return Unavailable("the workspace is not available");
  }
  return WorkspaceFiles(fd, st.st_uid, st.st_gid);
}

WorkspaceFiles::WorkspaceFiles(WorkspaceFiles&& other) noexcept
    : fd_(other.fd_), uid_(other.uid_), gid_(other.gid_) {
  other.fd_ = -1;
}

WorkspaceFiles::~WorkspaceFiles() {
  if (fd_ >= 0) close(fd_);
}

Result<int> WorkspaceFiles::OpenBeneath(const std::string& path, int flags, int mode) const {
  open_how how{};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.mode = static_cast<uint64_t>(mode);
  how.resolve = kResolve;
  const char* p = path.empty() ? "." : path.c_str();
  for (;;) {
    long fd = syscall(SYS_openat2, fd_, p, &how, sizeof(how));
    if (fd >= 0) return static_cast<int>(fd);
    if (errno == EINTR || errno == EAGAIN) continue;
    return PathError(errno, path.empty() ? "." : path, "opening");
  }
}

Status WorkspaceFiles::MakeParents(const std::string& path) const {
  auto parts = Components(path);
  std::string prefix;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    prefix += (prefix.empty() ? "" : "/") + parts[i];
    auto dir = OpenBeneath(prefix, O_PATH | O_DIRECTORY);
    if (dir.ok()) {
      close(*dir);
      continue;
    }
    if (dir.status().code() != StatusCode::kNotFound) return dir.status();
    // Create it beneath its (already checked) parent.
    std::string parent = prefix.substr(0, prefix.size() - parts[i].size());
    auto pfd = OpenBeneath(parent.empty() ? "" : parent, O_PATH | O_DIRECTORY);
    if (!pfd.ok()) return pfd.status();
    int rc = mkdirat(*pfd, parts[i].c_str(), 0755);
    int err = errno;
    if (rc == 0 && fchownat(*pfd, parts[i].c_str(), uid_, gid_, AT_SYMLINK_NOFOLLOW) != 0) {
      err = errno;
      rc = -1;
    }
    close(*pfd);
    if (rc != 0 && err != EEXIST) return PathError(err, prefix, "creating folder");
  }
  return Status::OK();
}

Result<std::string> WorkspaceFiles::ReadBytes(const std::string& path, size_t max_bytes) const {
  RETURN_IF_ERROR(CheckPath(path));
  // A symlink is followed only while it stays in the workspace (RESOLVE_BENEATH).
  auto fd = OpenBeneath(path, O_RDONLY | O_NONBLOCK);
  if (!fd.ok()) return fd.status();
  struct stat st;
  std::string out;
  Status st_err;
  if (fstat(*fd, &st) != 0) {
    st_err = PathError(errno, path, "reading");
  } else if (S_ISDIR(st.st_mode)) {
    st_err = InvalidArgument(Quote(path) + " is a folder; use list_files");
  } else if (!S_ISREG(st.st_mode)) {
    st_err = InvalidArgument(Quote(path) + " is not a regular file");
  } else if (static_cast<size_t>(st.st_size) > max_bytes) {
    st_err = ResourceExhausted(Quote(path) + " is " + std::to_string(st.st_size) +
                               " bytes, more than the " + std::to_string(max_bytes) +
                               " bytes this reads at once");
  } else {
    out.resize(static_cast<size_t>(st.st_size));
    size_t got = 0;
    while (got < out.size()) {
      ssize_t n = pread(*fd, out.data() + got, out.size() - got, static_cast<off_t>(got));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      got += static_cast<size_t>(n);
    }
    out.resize(got);  // the file may have shrunk meanwhile
  }
  close(*fd);
  if (!st_err.ok()) return st_err;
  return out;
}

Result<std::string> WorkspaceFiles::ReadText(const std::string& path) const {
  auto bytes = ReadBytes(path, kMaxReadBytes);
  if (!bytes.ok()) {
    if (bytes.status().code() == StatusCode::kResourceExhausted) {
      return ResourceExhausted(bytes.status().message() +
                               "; use exec with head, tail or sed to read a part");
    }
    return bytes.status();
  }
  if (!IsValidUtf8(*bytes) || bytes->find('\0') != std::string::npos) {
    return InvalidArgument(Quote(path) + " is not UTF-8 text (" + std::to_string(bytes->size()) +
                           " bytes); use exec to inspect binary files");
  }
  return bytes;
}

Status WorkspaceFiles::Write(const std::string& path, const std::string& content) const {
  RETURN_IF_ERROR(CheckPath(path));
  if (content.size() > kMaxWriteBytes) {
    return ResourceExhausted("the content is " + std::to_string(content.size()) +
                             " bytes, more than the 16 MiB write_file takes");
  }
  auto parts = Components(path);
  if (parts.empty()) return InvalidArgument(Quote(path) + " names the workspace itself");
  RETURN_IF_ERROR(MakeParents(path));
  std::string parent;
  for (size_t i = 0; i + 1 < parts.size(); ++i) parent += (i ? "/" : "") + parts[i];
  auto dir = OpenBeneath(parent, O_PATH | O_DIRECTORY);
  if (!dir.ok()) return dir.status();
  const std::string& name = parts.back();
  // An existing entry of that name must be a regular file (a symlink is never followed).
  struct stat st;
  bool exists = fstatat(*dir, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
  Status result;
  if (exists && S_ISLNK(st.st_mode)) {
    result = {StatusCode::kPermissionDenied, Quote(path) + " is a symlink; refused"};
  } else if (exists && !S_ISREG(st.st_mode)) {
    result = InvalidArgument(Quote(path) + " exists and is not a regular file");
  }
  if (!result.ok()) {
    close(*dir);
    return result;
  }
  std::string tmp = "." + name.substr(0, 200) + ".agentd-" + std::to_string(std::random_device()());
  int fd = openat(*dir, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                  exists ? (st.st_mode & 07777) : 0644);
  if (fd < 0) {
    result = PathError(errno, path, "writing");
  } else {
    if (int err = WriteAll(fd, content); err != 0) {
      result = PathError(err, path, "writing");
    } else if (fchown(fd, uid_, gid_) != 0) {
      result = PathError(errno, path, "writing");
    }
    close(fd);
    if (result.ok() && renameat(*dir, tmp.c_str(), *dir, name.c_str()) != 0) {
      result = PathError(errno, path, "writing");
    }
    if (!result.ok()) unlinkat(*dir, tmp.c_str(), 0);
  }
  close(*dir);
  return result;
}

Status WorkspaceFiles::Edit(const std::string& path, const std::string& old_text,
                            const std::string& new_text) const {
  if (old_text.empty()) return InvalidArgument("'old' is empty; give the text to replace");
  auto content = ReadText(path);
  if (!content.ok()) return content.status();
  size_t at = content->find(old_text);
  if (at == std::string::npos) {
    return InvalidArgument("'old' does not occur in " + Quote(path) + "; nothing changed");
  }
  size_t count = 0;
  for (size_t p = at; p != std::string::npos; p = content->find(old_text, p + 1)) ++count;
  if (count > 1) {
    return InvalidArgument("'old' occurs " + std::to_string(count) + " times in " + Quote(path) +
                           "; include more context so it occurs once. Nothing changed");
  }
  content->replace(at, old_text.size(), new_text);
  return Write(path, *content);
}

Result<std::vector<WorkspaceEntry>> WorkspaceFiles::List(const std::string& dir, bool recursive,
                                                         size_t max_entries,
                                                         bool* truncated) const {
  std::string base = dir;
  while (!base.empty() && base.back() == '/') base.pop_back();
  if (base == ".") base.clear();
  if (!base.empty()) RETURN_IF_ERROR(CheckPath(base));
  *truncated = false;
  std::vector<WorkspaceEntry> out;
  std::vector<std::string> pending = {base};
  while (!pending.empty()) {
    std::string d = pending.back();
    pending.pop_back();
    auto fd = OpenBeneath(d, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
    if (!fd.ok()) {
      if (d == base) return fd.status();
      continue;  // removed meanwhile
    }
    DIR* listing = fdopendir(*fd);
    if (listing == nullptr) {
      close(*fd);
      return PathError(errno, d, "listing");
    }
    std::vector<WorkspaceEntry> here;
    while (dirent* e = readdir(listing)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      struct stat st;
      if (fstatat(dirfd(listing), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
      WorkspaceEntry entry;
      entry.path = d.empty() ? name : d + "/" + name;
      entry.type = S_ISREG(st.st_mode)   ? "file"
                   : S_ISDIR(st.st_mode) ? "dir"
                   : S_ISLNK(st.st_mode) ? "symlink"
                                         : "other";
      entry.size = S_ISDIR(st.st_mode) ? 0 : st.st_size;
      here.push_back(std::move(entry));
    }
    closedir(listing);
    std::sort(here.begin(), here.end(),
              [](const auto& a, const auto& b) { return a.path < b.path; });
    for (auto it = here.rbegin(); recursive && it != here.rend(); ++it) {
      if (it->type == "dir") pending.push_back(it->path);
    }
    for (auto& e : here) {
      if (out.size() >= max_entries) {
        *truncated = true;
        break;
      }
      out.push_back(std::move(e));
    }
    if (*truncated) break;
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.path < b.path; });
  return out;
}

}  // namespace agentd::tools
