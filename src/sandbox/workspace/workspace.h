// Session workspaces in the store: content-addressed, incremental, compressed snapshots of a
// directory tree, and their restore (ARCHITECTURE.md, "Isolation").
//
// A snapshot is a Manifest (every directory, regular file and symlink under the root, with
// permission bits, file sizes, mtimes and content hashes) plus one blob per distinct file
// content. Blobs are named by the BLAKE2b-256 hex of their uncompressed bytes and stored
// zstd-compressed; the manifest is itself a blob, in canonical JSON, and its hash names the
// snapshot. Blobs belong to the session's tenant (store::BlobRow): a snapshot writes the
// content that tenant lacks, whatever other tenants hold, and a restore reads that tenant's
// blobs only. A file whose stat signature has not changed since the previous snapshot is not
// read at all.
//
// Manifest format "agentd.workspace/1" (canonical: keys in alphabetical order, no spaces,
// entries sorted by the bytes of their path, parents before children):
//   {"entries":[E,...],"format":"agentd.workspace/1","root_mode":493}
//   E is {"mode":493,"path":"src","type":"dir"}
//        {"hash":"<64 hex>","mode":420,"mtime_ns":N,"path":"src/a.c","size":N,"type":"file"}
//        {"path":"link","target":"../x","type":"symlink"}
//   A path or target that is not valid UTF-8 is written as "path_hex"/"target_hex" instead.
//   Paths are relative, '/'-separated, with no empty, "." or ".." component. Modes are the
//   0777 permission bits only: set-id and sticky bits are neither kept nor restored.
//
// Restore treats a manifest as untrusted input (it may come from an imported file): it
// checks every path, hash and size before it writes, builds the tree in a fresh directory
// beside the target, and renames it into place, so the target is either untouched or wholly
// replaced. It must not run while a sandbox uses the target.
//
// Functions here are thread-safe as long as two calls do not use the same directory.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "store/store.h"

namespace agentd::sandbox::workspace {

inline constexpr char kManifestFormat[] = "agentd.workspace/1";

enum class EntryType { kDir, kFile, kSymlink };

// What a file looked like when it was last hashed. Never serialised: it is valid only on
// the host (and file system) where it was taken.
struct StatSignature {
  int64_t dev = 0;
  int64_t ino = 0;
  int64_t size = 0;
  int64_t mtime_ns = 0;
  int64_t ctime_ns = 0;
};

struct Entry {
  std::string path;  // relative to the root, '/'-separated
  EntryType type = EntryType::kFile;
  uint32_t mode = 0;     // dirs and files: permission bits (0777)
  int64_t size = 0;      // files: bytes
  int64_t mtime_ns = 0;  // files: modification time, ns since the epoch
  std::string hash;      // files: BLAKE2b-256 of the content, 64 lowercase hex digits
  std::string target;    // symlinks: the link's text, never followed
  // Files whose signature may be trusted next time; empty after loading from the store.
  std::optional<StatSignature> signature;
};

struct Manifest {
  uint32_t root_mode = 0755;
  std::vector<Entry> entries;  // sorted by path (bytewise), unique
};

struct Limits {
  int64_t max_entries = 100'000;                // files, directories and symlinks together
  int64_t max_total_bytes = int64_t{1} << 30;   // sum of file sizes
  int64_t max_file_bytes = int64_t{256} << 20;  // one file (a blob is held in memory)
  int max_depth = 256;                          // directory nesting
};

struct SnapshotOptions {
  Limits limits;
  int zstd_level = 3;
  // A file changed less than this long before the snapshot began may change again without
  // its mtime or ctime moving (timestamps are as coarse as the kernel's tick, or a second
  // on some file systems); its signature is not trusted next time, so it is read again.
  int64_t racy_window_ms = 3000;
};

struct SnapshotStats {
  int64_t files = 0;
  int64_t dirs = 0;
  int64_t symlinks = 0;
  int64_t skipped_special = 0;  // sockets, fifos and devices: not kept
  int64_t files_read = 0;       // read and hashed
  int64_t files_reused = 0;     // hash taken from the previous manifest without reading
  int64_t bytes_total = 0;      // sum of file sizes
  int64_t bytes_read = 0;
  int64_t blobs_new = 0;       // blobs added to the batch, the manifest included
  int64_t blob_bytes_new = 0;  // their stored (compressed) size
};

struct SnapshotResult {
  Manifest manifest;
  std::string manifest_hash;
  SnapshotStats stats;
};

// Walks the tree under `root` (never following a symlink, never leaving the root) and adds
// to `batch` every blob `tenant_id` lacks in the store, as that tenant's, the manifest last;
// committing `batch` (perhaps with the journal event that names manifest_hash) makes the
// snapshot durable at once. `previous`, when given, is the manifest of an earlier snapshot
// or restore of the same directory on this host: files whose signature is unchanged keep
// their hash unread. Fails with InvalidArgument for an empty `tenant_id`, ResourceExhausted
// past a limit, NotFound when `root` is missing, Unavailable on I/O errors; `batch` is then
// unchanged.
Result<SnapshotResult> Snapshot(const std::string& root, const Manifest* previous,
                                store::Store& store, const std::string& tenant_id,
                                store::WriteBatch& batch, const SnapshotOptions& options = {});
// The same, for a directory open as `root_fd` (not closed).
Result<SnapshotResult> SnapshotAt(int root_fd, const Manifest* previous, store::Store& store,
                                  const std::string& tenant_id, store::WriteBatch& batch,
                                  const SnapshotOptions& options = {});

// Snapshot and commit the batch on its own. Blocking.
Result<SnapshotResult> SnapshotBlocking(const std::string& root, const Manifest* previous,
                                        store::Store& store, const std::string& tenant_id,
                                        const SnapshotOptions& options = {});

struct RestoreOptions {
  Limits limits;
  bool sync = true;  // flush the restored tree to disk before it replaces the target
  // As in SnapshotOptions: files written this recently get no signature.
  int64_t racy_window_ms = 3000;
  // Owner of everything restored (the sandbox's user); -1 keeps the caller's.
  int64_t owner_uid = -1;
  int64_t owner_gid = -1;
};

// Replaces the directory `target` (created when missing; its parent must exist) with the
// snapshot `manifest_hash` of `tenant_id`. Returns the manifest, with the signatures of the
// restored files, to pass as `previous` to the next Snapshot. On failure the target is
// untouched: NotFound when a blob is missing (from the tenant's blobs, whatever other tenants
// hold), InvalidArgument naming the entry when the manifest is malformed or hostile, Internal
// naming the path when a stored blob is corrupt (its content does not match its hash),
// ResourceExhausted past a limit, Unavailable on I/O errors.
Result<Manifest> RestoreBlocking(const std::string& manifest_hash, store::Store& store,
                                 const std::string& tenant_id, const std::string& target,
                                 const RestoreOptions& options = {});

// The canonical manifest text and its parse, which checks everything Restore relies on.
std::string EncodeManifest(const Manifest& manifest);
Result<Manifest> DecodeManifest(std::string_view text, const Limits& limits);

// The content of the regular file `path` in snapshot `manifest_hash` of `tenant_id`, checked
// against its hash; NotFound when the snapshot has no such file, ResourceExhausted over
// `max_bytes`.
Result<std::string> ReadSnapshotFile(const std::string& manifest_hash, const std::string& path,
                                     store::Store& store, const std::string& tenant_id,
                                     size_t max_bytes);

// The content of a blob as stored (or as read from an export file), decompressed and checked
// against its hash; InvalidArgument naming the blob when it is corrupt or over `max_size`.
Result<std::string> BlobContent(const store::BlobRow& blob, int64_t max_size);

// True for a hash as ContentHash writes it: 64 lowercase hex digits.
bool IsContentHash(std::string_view hash);

// BLAKE2b-256 of `data`, as lowercase hex.
std::string ContentHash(std::string_view data);

// The manifest stored under `manifest_hash` among the blobs of `tenant_id`, checked against
// its hash; NotFound when that tenant has none.
Result<Manifest> LoadManifest(const std::string& manifest_hash, store::Store& store,
                              const std::string& tenant_id, const Limits& limits = {});

}  // namespace agentd::sandbox::workspace
