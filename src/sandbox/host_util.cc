#include "sandbox/host_util.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <filesystem>

namespace agentd::sandbox::host {

Limits WithDefaults(Limits l) {
  if (l.memory_mb <= 0) l.memory_mb = 512;
  if (l.cpus <= 0) l.cpus = 1;
  if (l.pids <= 0) l.pids = 256;
  if (l.disk_mb <= 0) l.disk_mb = 256;
  if (l.timeout_ms <= 0) l.timeout_ms = 60000;
  return l;
}

const char* const kEtcFiles[] = {
    "alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "ssl", "ca-certificates",
    "ca-certificates.conf", "localtime", "timezone", "nsswitch.conf", "protocols", "services",
    "mime.types", "magic", "gitconfig", "bash.bashrc", "profile", "environment", "inputrc",
    "python3", "python3.11", "perl", "java-17-openjdk", "nodejs", nullptr,
};

std::string Errno(const std::string& what) { return what + ": " + strerror(errno); }

bool IsTmpfs(const std::string& path) {
  struct statfs s;
  return statfs(path.c_str(), &s) == 0 && s.f_type == TMPFS_MAGIC;
}

bool IsMountPoint(const std::string& path) {
  struct stat self, parent;
  if (lstat(path.c_str(), &self) != 0) return false;
  if (lstat((path + "/..").c_str(), &parent) != 0) return false;
  return self.st_dev != parent.st_dev;
}

Status ChownTree(const std::string& dir, uid_t uid) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (lchown(dir.c_str(), uid, uid) != 0) return Internal(Errno("chown " + dir));
  for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
       it.increment(ec)) {
    if (lchown(it->path().c_str(), uid, uid) != 0) {
      return Internal(Errno("chown " + it->path().string()));
    }
  }
  if (ec) return Internal("chown " + dir + ": " + ec.message());
  return Status::OK();
}

void CloseFd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

Status WriteText(const std::string& path, const std::string& text) {
  FILE* f = fopen(path.c_str(), "we");
  if (f == nullptr) return Internal(Errno(path));
  bool ok = fwrite(text.data(), 1, text.size(), f) == text.size();
  ok = fclose(f) == 0 && ok;
  return ok ? Status::OK() : Internal(Errno(path));
}

std::string FindOnPath(const std::string& name) {
  const char* path = getenv("PATH");
  std::string p = path ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find(':', start);
    if (end == std::string::npos) end = p.size();
    std::string candidate = p.substr(start, end - start) + "/" + name;
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
    start = end + 1;
  }
  return "";
}

std::string DefaultInitPath() {
  std::error_code ec;
  return (std::filesystem::read_symlink("/proc/self/exe", ec).parent_path() /
          "agentd-sandbox-init")
      .string();
}

Status MountWorkspaceFs(const std::string& root, int64_t disk_mb, int64_t owner) {
  std::string size = "size=" + std::to_string(disk_mb) + "m";
  if (IsTmpfs(root) && IsMountPoint(root)) {
    if (mount(nullptr, root.c_str(), nullptr, MS_REMOUNT | MS_NOSUID | MS_NODEV,
              size.c_str()) != 0) {
      return Internal(Errno("remount workspace tmpfs " + root));
    }
    return Status::OK();
  }
  std::string opts = size + ",mode=0700";
  if (owner >= 0) opts += ",uid=" + std::to_string(owner) + ",gid=" + std::to_string(owner);
  if (mount("tmpfs", root.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, opts.c_str()) != 0) {
    return Internal(Errno("mount workspace tmpfs on " + root));
  }
  return Status::OK();
}

Status RemoveTree(const std::string& dir) {
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  if (ec) return Internal("remove " + dir + ": " + ec.message());
  return Status::OK();
}

Status DiscardRoot(const std::string& root) {
  if (IsMountPoint(root) && umount2(root.c_str(), MNT_DETACH) != 0) {
    return Internal(Errno("unmount " + root));
  }
  return RemoveTree(root);
}

}  // namespace agentd::sandbox::host
