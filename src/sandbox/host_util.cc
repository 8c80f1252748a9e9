#include "sandbox/host_util.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <sys/file.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <vector>

#include <sodium.h>

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

std::string FirstUntraversable(const std::string& path) {
  std::error_code ec;
  std::filesystem::path p = std::filesystem::absolute(path, ec);
  for (; !p.empty(); p = p.parent_path()) {
    struct stat st;
    if (stat(p.c_str(), &st) == 0 && (st.st_mode & S_IXOTH) == 0) return p.string();
    if (p == p.root_path()) break;
  }
  return "";
}

namespace {

namespace fs = std::filesystem;

// SHA-256 over a tree: every entry's path below `root`, its kind and mode, and its
// content (a file's bytes, a symlink's target), in name order.
Result<std::string> TreeHash(const fs::path& root) {
  crypto_hash_sha256_state h;
  crypto_hash_sha256_init(&h);
  auto add = [&h](const std::string& s) {
    crypto_hash_sha256_update(&h, reinterpret_cast<const unsigned char*>(s.data()), s.size() + 1);
  };
  std::vector<fs::path> entries = {root};
  std::error_code ec;
  if (fs::is_directory(fs::symlink_status(root, ec))) {
    for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::end(it);
         it.increment(ec)) {
      entries.push_back(it->path());
    }
  }
  if (ec) return Internal("reading " + root.string() + ": " + ec.message());
  std::sort(entries.begin(), entries.end());
  for (const auto& e : entries) {
    struct stat st;
    if (lstat(e.c_str(), &st) != 0) return Internal(Errno(e.string()));
    add(e.lexically_relative(root).string());
    add(std::to_string(st.st_mode));
    if (S_ISLNK(st.st_mode)) {
      add(fs::read_symlink(e, ec).string());
    } else if (S_ISREG(st.st_mode)) {
      std::ifstream in(e, std::ios::binary);
      char buf[65536];
      while (in.read(buf, sizeof(buf)) || in.gcount() > 0) {
        crypto_hash_sha256_update(&h, reinterpret_cast<const unsigned char*>(buf),
                                  static_cast<unsigned long long>(in.gcount()));
      }
      if (in.bad()) return Internal("reading " + e.string());
    }
  }
  unsigned char digest[crypto_hash_sha256_BYTES];
  crypto_hash_sha256_final(&h, digest);
  static const char kHex[] = "0123456789abcdef";
  std::string hex;
  for (size_t i = 0; i < 8; ++i) {
    hex.push_back(kHex[digest[i] >> 4]);
    hex.push_back(kHex[digest[i] & 15]);
  }
  return hex;
}

}  // namespace

Result<std::string> PublishReachable(const std::string& src, const std::string& dir,
                                     const std::string& prefix, int* lock_fd) {
  *lock_fd = -1;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Internal("cannot create " + dir + ": " + ec.message());
  chmod(dir.c_str(), 0711);
  if (std::string blocked = FirstUntraversable(dir); !blocked.empty()) {
    return FailedPrecondition("sandbox users cannot pass through " + blocked +
                              " (its mode lacks o+x)");
  }
  // One agentd at a time copies, takes its lock and prunes.
  int guard = open((dir + "/.lock").c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (guard < 0 || flock(guard, LOCK_EX) != 0) {
    if (guard >= 0) close(guard);
    return Internal(Errno(dir + "/.lock"));
  }
  struct Unlock {
    int fd;
    ~Unlock() { close(fd); }
  } unlock{guard};
  const std::string tmp = dir + "/." + prefix + "-" + std::to_string(getpid());
  fs::remove_all(tmp, ec);
  fs::copy(src, tmp, fs::copy_options::recursive | fs::copy_options::copy_symlinks, ec);
  if (ec) {
    fs::remove_all(tmp, ec);
    return Internal("cannot copy " + src + " to " + dir + ": " + ec.message());
  }
  auto hash = TreeHash(tmp);
  if (!hash.ok()) {
    fs::remove_all(tmp, ec);
    return hash.status();
  }
  const std::string name = prefix + "-" + *hash;
  const std::string copy = dir + "/" + name;
  if (fs::exists(fs::symlink_status(copy, ec))) {
    fs::remove_all(tmp, ec);
  } else if (rename(tmp.c_str(), copy.c_str()) != 0) {
    Status st = Internal(Errno("rename " + tmp + " to " + copy));
    fs::remove_all(tmp, ec);
    return st;
  }
  int held = open(copy.c_str(), O_RDONLY | O_CLOEXEC);
  if (held < 0 || flock(held, LOCK_SH) != 0) {
    if (held >= 0) close(held);
    return Internal(Errno(copy));
  }
  *lock_fd = held;
  // Copies of this prefix no running agentd holds (a build replaced since), and copies a
  // killed agentd left half made.
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    std::string n = e.path().filename().string();
    bool ours = n.rfind(prefix + "-", 0) == 0 || n.rfind("." + prefix + "-", 0) == 0;
    if (!ours || n == name) continue;
    int fd = open(e.path().c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) continue;
    if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
      std::error_code rm;
      fs::remove_all(e.path(), rm);
    }
    close(fd);
  }
  return copy;
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
