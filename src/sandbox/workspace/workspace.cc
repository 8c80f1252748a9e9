#include "sandbox/workspace/workspace.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sodium.h>
#include <spdlog/spdlog.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "common/json.h"
#include "common/utf8.h"

namespace agentd::sandbox::workspace {
namespace {

constexpr size_t kHashBytes = 32;  // BLAKE2b-256
constexpr size_t kMaxPathBytes = 4096;
constexpr size_t kMaxNameBytes = 255;
constexpr size_t kMaxTargetBytes = 4095;
constexpr int64_t kMaxManifestBytes = int64_t{256} << 20;
// Files read but not yet checked against the store are held up to this many bytes.
constexpr int64_t kPendingBytes = int64_t{32} << 20;
constexpr size_t kPendingFiles = 512;
constexpr char kZstd[] = "zstd";

// A file descriptor closed when it goes out of scope.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(Fd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      Reset();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  bool ok() const { return fd_ >= 0; }
  void Reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

Status Errno(std::string_view what, const std::string& path, int err = errno) {
  std::string m = fmt::format("{} '{}': {}", what, path, std::strerror(err));
  if (err == ENOENT) return NotFound(std::move(m));
  if (err == ENOSPC || err == EDQUOT) return ResourceExhausted(std::move(m));
  return Unavailable(std::move(m));
}

// The kernel's wall clock, which stamps mtime and ctime: an injected clock would not match
// the file system's timestamps, so this one is read directly.
int64_t NowNs() {
  timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

int64_t Ns(const timespec& ts) { return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec; }

StatSignature SignatureOf(const struct stat& st) {
  return {static_cast<int64_t>(st.st_dev), static_cast<int64_t>(st.st_ino),
          static_cast<int64_t>(st.st_size), Ns(st.st_mtim), Ns(st.st_ctim)};
}

bool SameSignature(const StatSignature& a, const StatSignature& b) {
  return a.dev == b.dev && a.ino == b.ino && a.size == b.size && a.mtime_ns == b.mtime_ns &&
         a.ctime_ns == b.ctime_ns;
}

std::string Hex(const unsigned char* p, size_t n) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(n * 2, '\0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kDigits[p[i] >> 4];
    out[2 * i + 1] = kDigits[p[i] & 15];
  }
  return out;
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

}  // namespace

bool IsContentHash(std::string_view h) {
  return h.size() == 2 * kHashBytes &&
         std::all_of(h.begin(), h.end(), [](char c) { return HexValue(c) >= 0; });
}

namespace {

bool IsUtf8(std::string_view s) {
  auto* p = reinterpret_cast<const unsigned char*>(s.data());
  auto* end = p + s.size();
  while (p < end) {
    if (*p < 0x80) {
      ++p;
      continue;
    }
    size_t bad = 0;
    size_t n = Utf8Sequence(p, end, &bad);
    if (n == 0) return false;
    p += n;
  }
  return true;
}

// ---- canonical JSON ----

void AppendJsonString(std::string& out, std::string_view s) {
  out += '"';
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20) {
          out += fmt::format("\\u{:04x}", c);
        } else {
          out += ch;
        }
    }
  }
  out += '"';
}

// "key":"text", or "key_hex":"..." when the text is not UTF-8 (a JSON string cannot hold it).
void AppendName(std::string& out, std::string_view key, std::string_view text) {
  if (IsUtf8(text)) {
    out += fmt::format("\"{}\":", key);
    AppendJsonString(out, text);
  } else {
    out += fmt::format("\"{}_hex\":\"", key);
    out += Hex(reinterpret_cast<const unsigned char*>(text.data()), text.size());
    out += '"';
  }
}

const char* TypeName(EntryType t) {
  switch (t) {
    case EntryType::kDir:
      return "dir";
    case EntryType::kFile:
      return "file";
    case EntryType::kSymlink:
      return "symlink";
  }
  return "file";
}

// Checks a relative path from an untrusted manifest: no leading '/', no empty, "." or ".."
// component, no NUL, bounded lengths.
Status CheckPath(std::string_view path, std::string_view where) {
  if (path.empty()) return InvalidArgument(fmt::format("{}: empty path", where));
  if (path.size() > kMaxPathBytes) {
    return InvalidArgument(fmt::format("{}: path longer than {} bytes", where, kMaxPathBytes));
  }
  if (path.find('\0') != std::string_view::npos) {
    return InvalidArgument(fmt::format("{}: path contains NUL", where));
  }
  if (path.front() == '/') {
    return InvalidArgument(fmt::format("{}: absolute path '{}'", where, path));
  }
  size_t at = 0;
  while (true) {
    size_t slash = path.find('/', at);
    std::string_view c = path.substr(at, slash == std::string_view::npos ? path.npos : slash - at);
    if (c.empty()) return InvalidArgument(fmt::format("{}: empty component in '{}'", where, path));
    if (c == "." || c == "..") {
      return InvalidArgument(fmt::format("{}: '{}' component in '{}'", where, c, path));
    }
    if (c.size() > kMaxNameBytes) {
      return InvalidArgument(
          fmt::format("{}: a name in '{}' is longer than {} bytes", where, path, kMaxNameBytes));
    }
    if (slash == std::string_view::npos) break;
    at = slash + 1;
  }
  return Status::OK();
}

// Reads "key" or "key_hex" (exactly one) as raw bytes.
Status ReadName(FieldReader& r, std::string_view key, size_t max_len, std::string* out) {
  std::string text, hex;
  RETURN_IF_ERROR(r.String(key, &text, false, max_len));
  std::string hex_key = std::string(key) + "_hex";
  RETURN_IF_ERROR(r.String(hex_key, &hex, false, 2 * max_len));
  const Json* has_text = nullptr;
  const Json* has_hex = nullptr;
  RETURN_IF_ERROR(r.Value(key, &has_text, false));
  RETURN_IF_ERROR(r.Value(hex_key, &has_hex, false));
  if ((has_text == nullptr) == (has_hex == nullptr)) {
    return InvalidArgument(
        fmt::format("exactly one of '{}' and '{}' is required", r.PathOf(key), r.PathOf(hex_key)));
  }
  if (has_text != nullptr) {
    *out = std::move(text);
    return Status::OK();
  }
  if (hex.size() % 2 != 0) {
    return InvalidArgument(fmt::format("'{}' is not hex", r.PathOf(hex_key)));
  }
  out->clear();
  for (size_t i = 0; i < hex.size(); i += 2) {
    int hi = HexValue(hex[i]), lo = HexValue(hex[i + 1]);
    if (hi < 0 || lo < 0) return InvalidArgument(fmt::format("'{}' is not hex", r.PathOf(hex_key)));
    out->push_back(static_cast<char>(hi * 16 + lo));
  }
  return Status::OK();
}

// ---- blobs ----

// zstd contexts, reused across the blobs of one snapshot or restore: making one costs more
// than compressing a small file.
using CompressContext = std::unique_ptr<ZSTD_CCtx, size_t (*)(ZSTD_CCtx*)>;
using DecompressContext = std::unique_ptr<ZSTD_DCtx, size_t (*)(ZSTD_DCtx*)>;
CompressContext NewCompressContext() { return {ZSTD_createCCtx(), ZSTD_freeCCtx}; }
DecompressContext NewDecompressContext() { return {ZSTD_createDCtx(), ZSTD_freeDCtx}; }

Result<store::BlobRow> MakeBlob(ZSTD_CCtx* zc, std::string hash, std::string_view data, int level) {
  store::BlobRow b;
  b.hash = std::move(hash);
  b.size = static_cast<int64_t>(data.size());
  if (data.size() >= 64) {
    std::string out(ZSTD_compressBound(data.size()), '\0');
    if (zc == nullptr) return ResourceExhausted("out of memory for zstd");
    size_t n = ZSTD_compressCCtx(zc, out.data(), out.size(), data.data(), data.size(), level);
    if (ZSTD_isError(n)) return Internal(fmt::format("zstd: {}", ZSTD_getErrorName(n)));
    // Content that does not shrink (already compressed, random) is kept as it is.
    if (n < data.size()) {
      out.resize(n);
      b.data = std::move(out);
      b.codec = kZstd;
      return b;
    }
  }
  b.data.assign(data);
  return b;
}

// The content of `blob`, checked against its hash and against `expected_size` (the size the
// referring manifest states; -1 for any up to `max_size`). `what` names the referrer.
Result<std::string> OpenBlob(ZSTD_DCtx* zd, const store::BlobRow& blob, int64_t expected_size,
                             int64_t max_size, const std::string& what) {
  auto corrupt = [&](std::string_view why) {
    return Internal(fmt::format("workspace blob {} of {} is corrupt: {}", blob.hash, what, why));
  };
  if (expected_size >= 0 && blob.size != expected_size) {
    return corrupt(fmt::format("stored size {} but {} expected", blob.size, expected_size));
  }
  if (blob.size < 0 || blob.size > max_size) {
    return corrupt(fmt::format("size {} out of range", blob.size));
  }
  std::string data;
  if (blob.codec.empty()) {
    if (static_cast<int64_t>(blob.data.size()) != blob.size) return corrupt("wrong length");
    data = blob.data;
  } else if (blob.codec == kZstd) {
    unsigned long long n = ZSTD_getFrameContentSize(blob.data.data(), blob.data.size());
    if (n == ZSTD_CONTENTSIZE_ERROR || n == ZSTD_CONTENTSIZE_UNKNOWN ||
        n != static_cast<unsigned long long>(blob.size)) {
      return corrupt("bad zstd frame header");
    }
    data.resize(static_cast<size_t>(blob.size));
    if (zd == nullptr) return ResourceExhausted("out of memory for zstd");
    size_t got =
        ZSTD_decompressDCtx(zd, data.data(), data.size(), blob.data.data(), blob.data.size());
    if (ZSTD_isError(got)) return corrupt(fmt::format("zstd: {}", ZSTD_getErrorName(got)));
    if (got != data.size()) return corrupt("truncated");
  } else {
    return corrupt(fmt::format("unknown codec '{}'", blob.codec));
  }
  if (ContentHash(data) != blob.hash) return corrupt("content does not match its hash");
  return data;
}

// ---- snapshot ----

// Reads `fd` to its end; `size_hint` is its expected size.
Result<std::string> ReadAll(int fd, int64_t size_hint, int64_t max_bytes, const std::string& path) {
  // One byte more than expected, so that the usual read ends at EOF without growing.
  std::string data(static_cast<size_t>(std::clamp<int64_t>(size_hint, 0, max_bytes)) + 1, '\0');
  size_t have = 0;
  while (true) {
    if (have == data.size()) data.resize(data.size() * 2);
    ssize_t n = ::read(fd, data.data() + have, data.size() - have);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("cannot read", path);
    }
    if (n == 0) break;
    have += static_cast<size_t>(n);
    if (static_cast<int64_t>(have) > max_bytes) {
      return ResourceExhausted(
          fmt::format("workspace file '{}' is larger than the limit of {} bytes", path, max_bytes));
    }
  }
  data.resize(have);
  return data;
}

class Snapshotter {
 public:
  Snapshotter(const Manifest* previous, store::Store& store, const std::string& tenant_id,
              const SnapshotOptions& options)
      : store_(store), tenant_id_(tenant_id), options_(options), start_ns_(NowNs()) {
    if (previous != nullptr) {
      for (const Entry& e : previous->entries) {
        if (e.type == EntryType::kFile && e.signature) previous_.emplace(e.path, &e);
      }
    }
    trusted_before_ns_ = start_ns_ - options_.racy_window_ms * 1'000'000;
  }

  Result<SnapshotResult> Run(int root_fd) {
    struct stat st {};
    if (::fstat(root_fd, &st) != 0) return Errno("cannot stat", "workspace root");
    if (!S_ISDIR(st.st_mode)) return InvalidArgument("workspace root is not a directory");
    result_.manifest.root_mode = st.st_mode & 0777;
    RETURN_IF_ERROR(Walk(root_fd, "", 0));
    RETURN_IF_ERROR(Flush());
    RETURN_IF_ERROR(CheckReused(root_fd));
    auto& entries = result_.manifest.entries;
    std::sort(entries.begin(), entries.end(),
              [](const Entry& a, const Entry& b) { return a.path < b.path; });
    std::string text = EncodeManifest(result_.manifest);
    result_.manifest_hash = ContentHash(text);
    ASSIGN_OR_RETURN(auto missing, store_.MissingBlobs(tenant_id_, {result_.manifest_hash}));
    if (!missing.empty()) {
      ASSIGN_OR_RETURN(auto blob,
                       MakeBlob(zc_.get(), result_.manifest_hash, text, options_.zstd_level));
      Add(std::move(blob));
    }
    return std::move(result_);
  }

  std::vector<store::BlobRow>& blobs() { return blobs_; }

 private:
  struct Pending {
    size_t entry;  // index in result_.manifest.entries
    std::string data;
  };

  Status CountEntry() {
    if (static_cast<int64_t>(result_.manifest.entries.size()) >= options_.limits.max_entries) {
      return ResourceExhausted(
          fmt::format("workspace has more than {} entries (files, directories and symlinks)",
                      options_.limits.max_entries));
    }
    return Status::OK();
  }

  Status CountBytes(int64_t size, const std::string& path) {
    if (size > options_.limits.max_file_bytes) {
      return ResourceExhausted(
          fmt::format("workspace file '{}' is larger than the limit of {} bytes", path,
                      options_.limits.max_file_bytes));
    }
    result_.stats.bytes_total += size;
    if (result_.stats.bytes_total > options_.limits.max_total_bytes) {
      return ResourceExhausted(fmt::format("workspace holds more than the limit of {} bytes",
                                           options_.limits.max_total_bytes));
    }
    return Status::OK();
  }

  Status Walk(int dir_fd, const std::string& prefix, int depth) {
    if (depth >= options_.limits.max_depth) {
      return ResourceExhausted(fmt::format("workspace directory '{}' is nested deeper than {}",
                                           prefix, options_.limits.max_depth));
    }
    int dup = ::fcntl(dir_fd, F_DUPFD_CLOEXEC, 0);
    if (dup < 0) return Errno("cannot read directory", prefix);
    DIR* d = ::fdopendir(dup);
    if (d == nullptr) {
      ::close(dup);
      return Errno("cannot read directory", prefix);
    }
    std::unique_ptr<DIR, int (*)(DIR*)> closer(d, ::closedir);
    ::rewinddir(d);  // the dup shares its offset with dir_fd
    std::vector<std::string> names;
    while (true) {
      errno = 0;
      dirent* de = ::readdir(d);
      if (de == nullptr) {
        if (errno != 0) return Errno("cannot read directory", prefix);
        break;
      }
      std::string_view n = de->d_name;
      if (n == "." || n == "..") continue;
      names.emplace_back(n);
    }
    closer.reset();
    for (const std::string& name : names) {
      std::string path = prefix.empty() ? name : prefix + "/" + name;
      struct stat st {};
      if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
        if (errno == ENOENT) continue;  // deleted while we walk
        return Errno("cannot stat", path);
      }
      if (S_ISREG(st.st_mode)) {
        RETURN_IF_ERROR(CountEntry());
        RETURN_IF_ERROR(File(dir_fd, name, path, st));
      } else if (S_ISDIR(st.st_mode)) {
        RETURN_IF_ERROR(CountEntry());
        Fd sub(::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
        if (!sub.ok()) {
          if (errno == ENOENT) continue;
          return Errno("cannot open directory", path);
        }
        Entry e;
        e.path = path;
        e.type = EntryType::kDir;
        e.mode = st.st_mode & 0777;
        result_.manifest.entries.push_back(std::move(e));
        result_.stats.dirs++;
        RETURN_IF_ERROR(Walk(sub.get(), path, depth + 1));
      } else if (S_ISLNK(st.st_mode)) {
        RETURN_IF_ERROR(CountEntry());
        std::string target(kMaxTargetBytes + 1, '\0');
        ssize_t n = ::readlinkat(dir_fd, name.c_str(), target.data(), target.size());
        if (n < 0) {
          if (errno == ENOENT) continue;
          return Errno("cannot read symlink", path);
        }
        if (n == 0 || static_cast<size_t>(n) > kMaxTargetBytes) {
          return InvalidArgument(
              fmt::format("workspace symlink '{}' has a target of {} bytes", path, n));
        }
        target.resize(static_cast<size_t>(n));
        Entry e;
        e.path = path;
        e.type = EntryType::kSymlink;
        e.target = std::move(target);
        result_.manifest.entries.push_back(std::move(e));
        result_.stats.symlinks++;
      } else {
        result_.stats.skipped_special++;
      }
    }
    return Status::OK();
  }

  Status File(int dir_fd, const std::string& name, const std::string& path, const struct stat& st) {
    Entry e;
    e.path = path;
    e.type = EntryType::kFile;
    e.mode = st.st_mode & 0777;
    StatSignature sig = SignatureOf(st);
    auto prev = previous_.find(path);
    if (prev != previous_.end() && SameSignature(*prev->second->signature, sig)) {
      RETURN_IF_ERROR(CountBytes(sig.size, path));
      e.size = prev->second->size;
      e.mtime_ns = prev->second->mtime_ns;
      e.hash = prev->second->hash;
      e.signature = sig;
      result_.manifest.entries.push_back(std::move(e));
      result_.stats.files++;
      result_.stats.files_reused++;
      return Status::OK();
    }
    Fd fd(
        ::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
    if (!fd.ok()) {
      if (errno == ENOENT) return Status::OK();
      return Errno("cannot open", path);
    }
    struct stat before {};
    if (::fstat(fd.get(), &before) != 0) return Errno("cannot stat", path);
    if (!S_ISREG(before.st_mode)) {  // replaced since fstatat
      result_.stats.skipped_special++;
      return Status::OK();
    }
    if (before.st_size > options_.limits.max_file_bytes) {
      RETURN_IF_ERROR(CountBytes(before.st_size, path));  // fails before reading it
    }
    ASSIGN_OR_RETURN(std::string data,
                     ReadAll(fd.get(), before.st_size, options_.limits.max_file_bytes, path));
    struct stat after {};
    if (::fstat(fd.get(), &after) != 0) return Errno("cannot stat", path);
    RETURN_IF_ERROR(CountBytes(static_cast<int64_t>(data.size()), path));
    e.size = static_cast<int64_t>(data.size());
    e.mtime_ns = Ns(before.st_mtim);
    e.mode = before.st_mode & 0777;
    e.hash = ContentHash(data);
    StatSignature sig_before = SignatureOf(before);
    // Trusted next time only if nothing changed while we read, and a later change cannot
    // leave the same timestamps behind.
    if (SameSignature(sig_before, SignatureOf(after)) && sig_before.size == e.size &&
        sig_before.ctime_ns < trusted_before_ns_) {
      e.signature = sig_before;
    }
    result_.stats.files++;
    result_.stats.files_read++;
    result_.stats.bytes_read += e.size;
    pending_bytes_ += e.size;
    pending_.push_back({result_.manifest.entries.size(), std::move(data)});
    result_.manifest.entries.push_back(std::move(e));
    if (pending_bytes_ >= kPendingBytes || pending_.size() >= kPendingFiles) return Flush();
    return Status::OK();
  }

  void Add(store::BlobRow blob) {
    blob.tenant_id = tenant_id_;
    added_.insert(blob.hash);
    result_.stats.blobs_new++;
    result_.stats.blob_bytes_new += static_cast<int64_t>(blob.data.size());
    blobs_.push_back(std::move(blob));
  }

  // Writes the blobs of the files read since the last flush that the store lacks.
  Status Flush() {
    std::vector<std::string> hashes;
    for (const Pending& p : pending_) {
      const std::string& h = result_.manifest.entries[p.entry].hash;
      if (!added_.contains(h)) hashes.push_back(h);
    }
    if (!hashes.empty()) {
      ASSIGN_OR_RETURN(auto missing, store_.MissingBlobs(tenant_id_, hashes));
      std::unordered_set<std::string> want(missing.begin(), missing.end());
      for (Pending& p : pending_) {
        const std::string& h = result_.manifest.entries[p.entry].hash;
        if (!want.contains(h) || added_.contains(h)) continue;
        ASSIGN_OR_RETURN(auto blob, MakeBlob(zc_.get(), h, p.data, options_.zstd_level));
        Add(std::move(blob));
      }
    }
    pending_.clear();
    pending_bytes_ = 0;
    return Status::OK();
  }

  // A file reused from the previous manifest whose blob the store lacks (that snapshot was
  // never committed, or its blob was reclaimed) is read now after all.
  Status CheckReused(int root_fd) {
    std::vector<std::string> hashes;
    std::unordered_set<std::string> asked;
    for (const Entry& e : result_.manifest.entries) {
      if (e.type == EntryType::kFile && !added_.contains(e.hash) && asked.insert(e.hash).second) {
        hashes.push_back(e.hash);
      }
    }
    if (hashes.empty()) return Status::OK();
    ASSIGN_OR_RETURN(auto missing, store_.MissingBlobs(tenant_id_, hashes));
    if (missing.empty()) return Status::OK();
    std::unordered_set<std::string> want(missing.begin(), missing.end());
    for (Entry& e : result_.manifest.entries) {
      if (e.type != EntryType::kFile || !want.contains(e.hash) || added_.contains(e.hash)) {
        continue;
      }
      ASSIGN_OR_RETURN(Fd fd, OpenBeneath(root_fd, e.path));
      ASSIGN_OR_RETURN(std::string data,
                       ReadAll(fd.get(), e.size, options_.limits.max_file_bytes, e.path));
      if (static_cast<int64_t>(data.size()) != e.size || ContentHash(data) != e.hash) {
        return Aborted(fmt::format("workspace file '{}' changed during the snapshot", e.path));
      }
      ASSIGN_OR_RETURN(auto blob, MakeBlob(zc_.get(), e.hash, data, options_.zstd_level));
      Add(std::move(blob));
    }
    return Status::OK();
  }

  // Opens the regular file at `path` under `root_fd` one component at a time, following
  // no symlink.
  static Result<Fd> OpenBeneath(int root_fd, const std::string& path) {
    Fd dir;
    int at = root_fd;
    size_t from = 0;
    while (true) {
      size_t slash = path.find('/', from);
      std::string name = path.substr(from, slash == std::string::npos ? path.npos : slash - from);
      bool last = slash == std::string::npos;
      int flags = O_RDONLY | O_NOFOLLOW | O_CLOEXEC | (last ? O_NONBLOCK | O_NOCTTY : O_DIRECTORY);
      Fd next(::openat(at, name.c_str(), flags));
      if (!next.ok()) return Errno("cannot open", path);
      if (last) return next;
      dir = std::move(next);
      at = dir.get();
      from = slash + 1;
    }
  }

  store::Store& store_;
  const std::string tenant_id_;  // whose blobs the snapshot finds and writes
  const SnapshotOptions& options_;
  const int64_t start_ns_;
  int64_t trusted_before_ns_ = 0;
  std::unordered_map<std::string_view, const Entry*> previous_;
  SnapshotResult result_;
  std::vector<Pending> pending_;
  int64_t pending_bytes_ = 0;
  std::unordered_set<std::string> added_;  // hashes of blobs_
  CompressContext zc_ = NewCompressContext();
  std::vector<store::BlobRow> blobs_;
};

// ---- restore ----

// Removes `name` under `dir_fd` and everything below it, following no symlink. Directories
// are made writable first, since a restored (or agent-made) tree may have read-only ones.
Status RemoveTreeAt(int dir_fd, const std::string& name, int depth = 0) {
  struct stat st {};
  if (::fstatat(dir_fd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
    return errno == ENOENT ? Status::OK() : Errno("cannot stat", name);
  }
  if (S_ISDIR(st.st_mode)) {
    if (depth > 4096) return Internal(fmt::format("cannot remove '{}': too deep", name));
    Fd sub(::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub.ok()) {
      // A directory without read or search permission: grant them and try again.
      if (errno != EACCES || ::fchmodat(dir_fd, name.c_str(), 0700, 0) != 0) {
        return Errno("cannot open", name);
      }
      sub = Fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!sub.ok()) return Errno("cannot open", name);
    }
    if (::fchmod(sub.get(), 0700) != 0) return Errno("cannot chmod", name);
    int dup = ::fcntl(sub.get(), F_DUPFD_CLOEXEC, 0);
    DIR* d = dup < 0 ? nullptr : ::fdopendir(dup);
    if (d == nullptr) {
      if (dup >= 0) ::close(dup);
      return Errno("cannot read directory", name);
    }
    std::vector<std::string> names;
    while (dirent* de = ::readdir(d)) {
      std::string_view n = de->d_name;
      if (n != "." && n != "..") names.emplace_back(n);
    }
    ::closedir(d);
    for (const auto& n : names) RETURN_IF_ERROR(RemoveTreeAt(sub.get(), n, depth + 1));
    if (::unlinkat(dir_fd, name.c_str(), AT_REMOVEDIR) != 0) return Errno("cannot remove", name);
    return Status::OK();
  }
  if (::unlinkat(dir_fd, name.c_str(), 0) != 0 && errno != ENOENT) {
    return Errno("cannot remove", name);
  }
  return Status::OK();
}

Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("cannot write", path);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::OK();
}

class Restorer {
 public:
  Restorer(store::Store& store, const std::string& tenant_id, const RestoreOptions& options)
      : store_(store),
        tenant_id_(tenant_id),
        options_(options),
        chown_(options.owner_uid >= 0 || options.owner_gid >= 0),
        uid_(static_cast<uid_t>(options.owner_uid)),
        gid_(static_cast<gid_t>(options.owner_gid)) {}

  // Builds `manifest` inside the empty directory `root_fd` (not closed).
  Status Build(int root_fd, Manifest& manifest) {
    root_fd_ = root_fd;
    for (Entry& e : manifest.entries) {
      size_t slash = e.path.rfind('/');
      std::string parent = slash == std::string::npos ? "" : e.path.substr(0, slash);
      std::string leaf = slash == std::string::npos ? e.path : e.path.substr(slash + 1);
      ASSIGN_OR_RETURN(int dir, OpenDir(parent));
      switch (e.type) {
        case EntryType::kDir:
          if (::mkdirat(dir, leaf.c_str(), 0700) != 0) return Errno("cannot create", e.path);
          break;
        case EntryType::kSymlink:
          if (::symlinkat(e.target.c_str(), dir, leaf.c_str()) != 0) {
            return Errno("cannot create symlink", e.path);
          }
          if (chown_ && ::fchownat(dir, leaf.c_str(), uid_, gid_, AT_SYMLINK_NOFOLLOW) != 0) {
            return Errno("cannot chown", e.path);
          }
          break;
        case EntryType::kFile:
          RETURN_IF_ERROR(WriteFile(dir, leaf, e));
          break;
      }
    }
    // Directory modes last and deepest first, so that a read-only directory is filled
    // before it becomes read-only.
    parent_path_.reset();
    parent_fd_.Reset();
    for (auto it = manifest.entries.rbegin(); it != manifest.entries.rend(); ++it) {
      if (it->type != EntryType::kDir) continue;
      Fd d(OpenPath(it->path));
      if (!d.ok()) return Errno("cannot open", it->path);
      if (::fchmod(d.get(), it->mode) != 0) return Errno("cannot chmod", it->path);
      if (chown_ && ::fchown(d.get(), uid_, gid_) != 0) return Errno("cannot chown", it->path);
    }
    if (::fchmod(root_fd, manifest.root_mode) != 0) return Errno("cannot chmod", "workspace root");
    if (chown_ && ::fchown(root_fd, uid_, gid_) != 0)
      return Errno("cannot chown", "workspace root");
    return Status::OK();
  }

 private:
  Status WriteFile(int dir, const std::string& leaf, Entry& e) {
    ASSIGN_OR_RETURN(auto row, store_.GetBlob(tenant_id_, e.hash));
    if (!row) {
      return NotFound(fmt::format("workspace blob {} of '{}' is not in the store", e.hash, e.path));
    }
    ASSIGN_OR_RETURN(
        std::string data,
        OpenBlob(zd_.get(), *row, e.size, options_.limits.max_file_bytes, "'" + e.path + "'"));
    Fd fd(::openat(dir, leaf.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd.ok()) return Errno("cannot create", e.path);
    RETURN_IF_ERROR(WriteAll(fd.get(), data, e.path));
    timespec times[2] = {{0, UTIME_OMIT},
                         {static_cast<time_t>(e.mtime_ns / 1'000'000'000),
                          static_cast<long>(e.mtime_ns % 1'000'000'000)}};
    if (e.mtime_ns < 0) {  // the remainder of a negative time is negative too
      times[1].tv_sec -= 1;
      times[1].tv_nsec += 1'000'000'000;
    }
    if (::futimens(fd.get(), times) != 0) return Errno("cannot set the times of", e.path);
    if (::fchmod(fd.get(), e.mode) != 0) return Errno("cannot chmod", e.path);
    if (chown_ && ::fchown(fd.get(), uid_, gid_) != 0) return Errno("cannot chown", e.path);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return Errno("cannot stat", e.path);
    e.signature = SignatureOf(st);
    return Status::OK();
  }

  // The directory at `path` ("" for the root), kept open while consecutive entries share it.
  Result<int> OpenDir(const std::string& path) {
    if (path.empty()) return root_fd_;
    if (parent_path_ && *parent_path_ == path) return parent_fd_.get();
    parent_fd_ = Fd(OpenPath(path));
    if (!parent_fd_.ok()) {
      parent_path_.reset();
      return Errno("cannot open", path);
    }
    parent_path_ = path;
    return parent_fd_.get();
  }

  // Opens a directory this restore made, one component at a time from the root with
  // O_NOFOLLOW: a checked manifest has no ".." and no entry under a symlink, and this
  // refuses to follow one regardless. Returns -1 with errno set on failure.
  int OpenPath(const std::string& path) {
    Fd dir;
    int at = root_fd_;
    size_t from = 0;
    while (true) {
      size_t slash = path.find('/', from);
      std::string name = path.substr(from, slash == std::string::npos ? path.npos : slash - from);
      int fd = ::openat(at, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (fd < 0 || slash == std::string::npos) return fd;
      dir = Fd(fd);
      at = fd;
      from = slash + 1;
    }
  }

  store::Store& store_;
  const std::string tenant_id_;  // whose blobs the restore reads
  const RestoreOptions& options_;
  const bool chown_;
  const uid_t uid_;  // -1 (unchanged) when owner_uid is
  const gid_t gid_;
  DecompressContext zd_ = NewDecompressContext();
  int root_fd_ = -1;
  std::optional<std::string> parent_path_;
  Fd parent_fd_;
};

}  // namespace

Result<std::string> BlobContent(const store::BlobRow& blob, int64_t max_size) {
  auto content = OpenBlob(NewDecompressContext().get(), blob, -1, max_size, "the export");
  if (!content.ok()) return InvalidArgument(content.status().message());
  return content;
}

std::string ContentHash(std::string_view data) {
  unsigned char out[kHashBytes];
  crypto_generichash(out, sizeof out, reinterpret_cast<const unsigned char*>(data.data()),
                     data.size(), nullptr, 0);
  return Hex(out, sizeof out);
}

std::string EncodeManifest(const Manifest& m) {
  std::string out = "{\"entries\":[";
  out.reserve(64 + m.entries.size() * 160);
  bool first = true;
  for (const Entry& e : m.entries) {
    if (!first) out += ',';
    first = false;
    out += '{';
    switch (e.type) {
      case EntryType::kDir:
        out += fmt::format("\"mode\":{},", e.mode);
        AppendName(out, "path", e.path);
        break;
      case EntryType::kFile:
        out +=
            fmt::format("\"hash\":\"{}\",\"mode\":{},\"mtime_ns\":{},", e.hash, e.mode, e.mtime_ns);
        AppendName(out, "path", e.path);
        out += fmt::format(",\"size\":{}", e.size);
        break;
      case EntryType::kSymlink:
        AppendName(out, "path", e.path);
        out += ',';
        AppendName(out, "target", e.target);
        break;
    }
    out += fmt::format(",\"type\":\"{}\"}}", TypeName(e.type));
  }
  out += fmt::format("],\"format\":\"{}\",\"root_mode\":{}}}", kManifestFormat, m.root_mode);
  return out;
}

Result<Manifest> DecodeManifest(std::string_view text, const Limits& limits) {
  ASSIGN_OR_RETURN(Json doc, ParseJson(text, "workspace manifest"));
  FieldReader top(doc, "");
  if (!doc.is_object()) return InvalidArgument("workspace manifest is not a JSON object");
  std::string format;
  RETURN_IF_ERROR(top.String("format", &format, true, 64));
  if (format != kManifestFormat) {
    return InvalidArgument(
        fmt::format("workspace manifest format '{}' is not supported "
                    "(expected '{}')",
                    format, kManifestFormat));
  }
  Manifest m;
  int64_t root_mode = 0;
  RETURN_IF_ERROR(top.Int("root_mode", &root_mode, true, 0, 0777));
  m.root_mode = static_cast<uint32_t>(root_mode);
  const Json* entries = nullptr;
  RETURN_IF_ERROR(top.Value("entries", &entries, true));
  RETURN_IF_ERROR(top.NoUnknownKeys());
  if (!entries->is_array()) return InvalidArgument("'entries' must be an array");
  if (static_cast<int64_t>(entries->size()) > limits.max_entries) {
    return ResourceExhausted(fmt::format("workspace manifest has {} entries; the limit is {}",
                                         entries->size(), limits.max_entries));
  }
  m.entries.reserve(entries->size());
  // Kinds of the entries so far, to check each entry's parent.
  std::unordered_map<std::string, EntryType> kinds;
  int64_t total = 0;
  for (size_t i = 0; i < entries->size(); ++i) {
    const Json& j = (*entries)[i];
    std::string where = fmt::format("entries[{}]", i);
    FieldReader r(j, where);
    RETURN_IF_ERROR(r.CheckObject());
    Entry e;
    std::string type;
    RETURN_IF_ERROR(r.String("type", &type, true, 16));
    RETURN_IF_ERROR(ReadName(r, "path", kMaxPathBytes, &e.path));
    RETURN_IF_ERROR(CheckPath(e.path, where));
    int64_t mode = 0;
    if (type == "dir") {
      e.type = EntryType::kDir;
      RETURN_IF_ERROR(r.Int("mode", &mode, true, 0, 0777));
    } else if (type == "file") {
      e.type = EntryType::kFile;
      RETURN_IF_ERROR(r.Int("mode", &mode, true, 0, 0777));
      RETURN_IF_ERROR(r.String("hash", &e.hash, true, 2 * kHashBytes));
      if (!IsContentHash(e.hash)) {
        return InvalidArgument(
            fmt::format("{} ('{}'): 'hash' is not a BLAKE2b-256 hex digest", where, e.path));
      }
      RETURN_IF_ERROR(r.Int("size", &e.size, true, 0, INT64_MAX));
      RETURN_IF_ERROR(r.Int("mtime_ns", &e.mtime_ns, true, INT64_MIN, INT64_MAX));
      if (e.size > limits.max_file_bytes) {
        return ResourceExhausted(
            fmt::format("workspace file '{}' of {} bytes is larger than "
                        "the limit of {} bytes",
                        e.path, e.size, limits.max_file_bytes));
      }
      total += e.size;
      if (total > limits.max_total_bytes) {
        return ResourceExhausted(
            fmt::format("workspace manifest holds more than the limit of "
                        "{} bytes",
                        limits.max_total_bytes));
      }
    } else if (type == "symlink") {
      e.type = EntryType::kSymlink;
      RETURN_IF_ERROR(ReadName(r, "target", kMaxTargetBytes, &e.target));
      if (e.target.empty() || e.target.find('\0') != std::string::npos) {
        return InvalidArgument(
            fmt::format("{} ('{}'): symlink target is empty or has NUL", where, e.path));
      }
    } else {
      return InvalidArgument(fmt::format("{}: unknown type '{}'", where, type));
    }
    e.mode = static_cast<uint32_t>(mode);
    RETURN_IF_ERROR(r.NoUnknownKeys());
    if (!m.entries.empty() && !(m.entries.back().path < e.path)) {
      return InvalidArgument(fmt::format(
          "{}: '{}' is a duplicate or out of order (entries are sorted by path)", where, e.path));
    }
    size_t slash = e.path.rfind('/');
    if (slash != std::string::npos) {
      auto parent = kinds.find(e.path.substr(0, slash));
      if (parent == kinds.end()) {
        return InvalidArgument(
            fmt::format("{}: the parent directory of '{}' is not listed before it", where, e.path));
      }
      if (parent->second != EntryType::kDir) {
        return InvalidArgument(
            fmt::format("{}: '{}' is under a {}", where, e.path, TypeName(parent->second)));
      }
    }
    kinds.emplace(e.path, e.type);
    m.entries.push_back(std::move(e));
  }
  return m;
}

Result<Manifest> LoadManifest(const std::string& manifest_hash, store::Store& store,
                              const std::string& tenant_id, const Limits& limits) {
  if (!IsContentHash(manifest_hash)) {
    return InvalidArgument(fmt::format("'{}' is not a workspace snapshot hash", manifest_hash));
  }
  ASSIGN_OR_RETURN(auto row, store.GetBlob(tenant_id, manifest_hash));
  if (!row)
    return NotFound(fmt::format("workspace snapshot {} is not in the store", manifest_hash));
  ASSIGN_OR_RETURN(std::string text, OpenBlob(NewDecompressContext().get(), *row, -1,
                                              kMaxManifestBytes, "the manifest"));
  return DecodeManifest(text, limits);
}

Result<std::string> ReadSnapshotFile(const std::string& manifest_hash, const std::string& path,
                                     store::Store& store, const std::string& tenant_id,
                                     size_t max_bytes) {
  ASSIGN_OR_RETURN(Manifest m, LoadManifest(manifest_hash, store, tenant_id));
  auto it = std::lower_bound(m.entries.begin(), m.entries.end(), path,
                             [](const Entry& e, const std::string& p) { return e.path < p; });
  if (it == m.entries.end() || it->path != path) {
    return NotFound(fmt::format("'{}' does not exist", path));
  }
  if (it->type != EntryType::kFile) {
    return InvalidArgument(fmt::format("'{}' is not a regular file", path));
  }
  if (it->size > static_cast<int64_t>(max_bytes)) {
    return ResourceExhausted(fmt::format("'{}' is {} bytes, more than the {} bytes this reads",
                                         path, it->size, max_bytes));
  }
  ASSIGN_OR_RETURN(auto row, store.GetBlob(tenant_id, it->hash));
  if (!row) return NotFound(fmt::format("the content of '{}' is not in the store", path));
  return OpenBlob(NewDecompressContext().get(), *row, it->size, it->size, path);
}

Result<SnapshotResult> SnapshotAt(int root_fd, const Manifest* previous, store::Store& store,
                                  const std::string& tenant_id, store::WriteBatch& batch,
                                  const SnapshotOptions& options) {
  if (tenant_id.empty()) return InvalidArgument("a workspace snapshot needs a tenant");
  Snapshotter s(previous, store, tenant_id, options);
  ASSIGN_OR_RETURN(SnapshotResult r, s.Run(root_fd));
  for (auto& b : s.blobs()) batch.blobs.push_back(std::move(b));
  return r;
}

Result<SnapshotResult> Snapshot(const std::string& root, const Manifest* previous,
                                store::Store& store, const std::string& tenant_id,
                                store::WriteBatch& batch, const SnapshotOptions& options) {
  Fd fd(::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd.ok()) return Errno("cannot open workspace", root);
  return SnapshotAt(fd.get(), previous, store, tenant_id, batch, options);
}

Result<SnapshotResult> SnapshotBlocking(const std::string& root, const Manifest* previous,
                                        store::Store& store, const std::string& tenant_id,
                                        const SnapshotOptions& options) {
  store::WriteBatch batch;
  ASSIGN_OR_RETURN(SnapshotResult r, Snapshot(root, previous, store, tenant_id, batch, options));
  if (!batch.empty()) RETURN_IF_ERROR(store.CommitBlocking(std::move(batch)));
  return r;
}

Result<Manifest> RestoreBlocking(const std::string& manifest_hash, store::Store& store,
                                 const std::string& tenant_id, const std::string& target,
                                 const RestoreOptions& options) {
  ASSIGN_OR_RETURN(Manifest manifest,
                   LoadManifest(manifest_hash, store, tenant_id, options.limits));
  std::string t = target;
  while (t.size() > 1 && t.back() == '/') t.pop_back();
  size_t slash = t.rfind('/');
  std::string parent = slash == std::string::npos ? "." : (slash == 0 ? "/" : t.substr(0, slash));
  std::string name = slash == std::string::npos ? t : t.substr(slash + 1);
  if (name.empty() || name == "." || name == "..") {
    return InvalidArgument(fmt::format("'{}' cannot be a workspace directory", target));
  }
  Fd parent_fd(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!parent_fd.ok()) return Errno("cannot open the parent of", target);
  struct stat st {};
  bool exists = ::fstatat(parent_fd.get(), name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
  if (!exists && errno != ENOENT) return Errno("cannot stat", target);
  if (exists && !S_ISDIR(st.st_mode)) {
    return FailedPrecondition(fmt::format("'{}' exists and is not a directory", target));
  }

  // Leftovers of a restore that crashed (a half-built tree, or a replaced one not yet
  // removed) go first; restores of one target do not overlap.
  const std::string prefix = "." + name + ".restore-";
  {
    int dup = ::fcntl(parent_fd.get(), F_DUPFD_CLOEXEC, 0);
    DIR* d = dup < 0 ? nullptr : ::fdopendir(dup);
    if (d == nullptr) {
      if (dup >= 0) ::close(dup);
      return Errno("cannot read directory", parent);
    }
    std::vector<std::string> stale;
    while (dirent* de = ::readdir(d)) {
      if (std::string_view(de->d_name).starts_with(prefix)) stale.emplace_back(de->d_name);
    }
    ::closedir(d);
    for (const auto& s : stale) RETURN_IF_ERROR(RemoveTreeAt(parent_fd.get(), s));
  }

  std::string tmp_path = parent + "/" + prefix + "XXXXXX";
  if (::mkdtemp(tmp_path.data()) == nullptr)
    return Errno("cannot create a directory beside", target);
  std::string tmp_name = tmp_path.substr(tmp_path.rfind('/') + 1);
  auto fail = [&](Status st) {
    RemoveTreeAt(parent_fd.get(), tmp_name).IgnoreError();
    return st;
  };
  Fd tmp_fd(
      ::openat(parent_fd.get(), tmp_name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!tmp_fd.ok()) return fail(Errno("cannot open", tmp_path));
  Restorer r(store, tenant_id, options);
  if (Status st = r.Build(tmp_fd.get(), manifest); !st.ok()) return fail(st);
  if (options.sync && ::syncfs(tmp_fd.get()) != 0) return fail(Errno("cannot sync", tmp_path));
  // Signatures of files written in the racy window are not to be trusted (see Snapshot).
  const int64_t trusted_before = NowNs() - options.racy_window_ms * 1'000'000;
  for (Entry& e : manifest.entries) {
    if (e.signature && e.signature->ctime_ns >= trusted_before) e.signature.reset();
  }
  tmp_fd.Reset();
  const int pfd = parent_fd.get();
  std::string replaced;  // where the old tree went
  if (!exists) {
    if (::renameat2(pfd, tmp_name.c_str(), pfd, name.c_str(), RENAME_NOREPLACE) != 0) {
      return fail(Errno("cannot move the restored workspace into", target));
    }
  } else if (::renameat2(pfd, tmp_name.c_str(), pfd, name.c_str(), RENAME_EXCHANGE) == 0) {
    replaced = tmp_name;
  } else if (errno == EINVAL) {
    // A file system without RENAME_EXCHANGE: the target is briefly absent, never partial.
    replaced = tmp_name + ".old";
    if (::renameat(pfd, name.c_str(), pfd, replaced.c_str()) != 0) {
      return fail(Errno("cannot move aside", target));
    }
    if (::renameat(pfd, tmp_name.c_str(), pfd, name.c_str()) != 0) {
      Status st = Errno("cannot move the restored workspace into", target);
      if (::renameat(pfd, replaced.c_str(), pfd, name.c_str()) != 0) {
        spdlog::error("workspace restore: cannot put '{}' back: {}", target, std::strerror(errno));
      }
      return fail(st);
    }
  } else {
    return fail(Errno("cannot move the restored workspace into", target));
  }
  if (!replaced.empty()) {
    // The restore has succeeded; what is left is removed by the next restore of this target.
    if (Status st = RemoveTreeAt(pfd, replaced); !st.ok()) {
      spdlog::warn("workspace restore: cannot remove the replaced tree: {}", st.ToString());
    }
  }
  if (options.sync && ::fsync(parent_fd.get()) != 0) return Errno("cannot sync", parent);
  return manifest;
}

}  // namespace agentd::sandbox::workspace
