#include "identity/key_file.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

#include "common/base64.h"

namespace agentd::identity {

Status WritePrivateFile(const std::string& path, std::string_view bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    return Unavailable(fmt::format("cannot create {}: {}", path, std::strerror(errno)));
  }
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) {
      int err = errno;
      ::close(fd);
      ::unlink(path.c_str());
      return Unavailable(fmt::format("cannot write {}: {}", path, std::strerror(err)));
    }
    done += static_cast<size_t>(n);
  }
  bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!synced) {
    ::unlink(path.c_str());
    return Unavailable(fmt::format("cannot sync {}", path));
  }
  return Status::OK();
}

Result<std::string> LoadOrCreateKeyFile(const std::string& path, size_t size) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    std::string key(size, '\0');
    randombytes_buf(key.data(), key.size());
    std::string text = Base64Encode(key, Base64Variant::kUrlNoPadding) + "\n";
    Status st = WritePrivateFile(path, text);
    sodium_memzero(text.data(), text.size());
    if (!st.ok()) return st;
    return key;
  }
  if (fd < 0) return Unavailable(fmt::format("cannot open {}: {}", path, std::strerror(errno)));
  struct stat st {};
  char buf[256];
  ssize_t n = ::fstat(fd, &st) == 0 ? ::read(fd, buf, sizeof buf) : -1;
  ::close(fd);
  if (n < 0) return Unavailable(fmt::format("cannot read {}", path));
  std::string text(buf, static_cast<size_t>(n));
  sodium_memzero(buf, sizeof buf);
  Result<std::string> out = FailedPrecondition(fmt::format("{} is not a {}-byte key", path, size));
  if ((st.st_mode & 077) != 0) {
    out = FailedPrecondition(fmt::format("{} is readable by others (mode {:o}); make it 0600",
                                         path, st.st_mode & 0777));
  } else if (text.size() == size) {
    out = text;
  } else {
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
    auto key = Base64Decode(text, Base64Variant::kUrlNoPadding);
    if (key.ok() && key->size() == size) out = std::move(key).value();
  }
  sodium_memzero(text.data(), text.size());
  return out;
}

}  // namespace agentd::identity
