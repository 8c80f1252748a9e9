// Verification of audit chains (audit.h) and their checkpoints, from a live server or from a
// copy of a data directory: both are an AuditSource. What a verification can and cannot
// detect is in docs/state-format.md, "Audit log".
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "audit/audit.h"
#include "common/status.h"
#include "store/store.h"

namespace agentd::audit {

// Where the entries and checkpoints of a chain come from. Not required to be thread-safe.
class AuditSource {
 public:
  virtual ~AuditSource() = default;
  // Up to `limit` entries of the tenant's chain with seq > after_seq, in seq order.
  virtual Result<std::vector<AuditEntry>> ReadEntriesBlocking(const std::string& tenant_id,
                                                              int64_t after_seq, int limit) = 0;
  // The tenant's checkpoints, in any order.
  virtual Result<std::vector<Checkpoint>> ReadCheckpointsBlocking(
      const std::string& tenant_id) = 0;
};

// Reads from a store (for instance one opened read-only on a copy of a data directory).
std::unique_ptr<AuditSource> StoreSource(store::Store& store);

// An Ed25519 public key that checkpoints are checked against.
struct PublicKey {
  std::string key_id;  // "" matches a checkpoint of any key id
  std::string key;     // the 32 raw bytes
};

// A public key given as base64url (or standard base64) of its 32 bytes, or a JWK / JWKS
// document whose OKP Ed25519 keys ("kty":"OKP", "crv":"Ed25519", "x", optional "kid") are
// taken. Fails with InvalidArgument when it holds no such key.
Result<std::vector<PublicKey>> ParsePublicKeys(std::string_view text);

enum class ProblemKind {
  kChanged,             // an entry's hash does not match its content
  kRenumbered,          // an entry's hash matches its content only under another seq
  kRemoved,             // seqs missing from the chain
  kInserted,            // an entry that the next one does not link to, which links past it
  kReordered,           // an entry that links to one stored after it
  kBrokenLink,          // prev_hash matches no stored entry: one replaced, or some removed
  kCheckpointMismatch,  // a checkpoint's head differs from the chain's entry at its seq
  kBadSignature,        // a checkpoint's signature does not verify with any given key
  kTruncated,           // the chain ends before its last checkpoint
};

std::string_view ProblemKindName(ProblemKind kind);

struct Problem {
  ProblemKind kind;
  int64_t seq = 0;     // first seq concerned
  int64_t to_seq = 0;  // last seq concerned (== seq for one entry)
  std::string detail;
};

struct VerifyOptions {
  std::vector<PublicKey> keys;  // empty: signatures are not checked (reported as such)
  int page = 1000;              // entries read at a time
  size_t max_problems = 1000;   // problems kept in the report (all are counted)
};

struct VerifyReport {
  std::string tenant_id;
  int64_t entries = 0;
  int64_t last_seq = 0;
  int64_t checkpoints = 0;
  int64_t signatures_checked = 0;  // 0 when no key was given
  int64_t last_checkpoint_seq = 0;  // the highest checkpointed seq within the chain
  int64_t uncovered = 0;            // entries after it: a cut there is not detectable
  std::vector<Problem> problems;
  int64_t problem_count = 0;  // including those beyond max_problems

  bool ok() const { return problem_count == 0; }
};

// Walks the tenant's chain in pages (memory does not grow with its length) and checks its
// checkpoints. Problems found are in the report; the Status is an error only when the
// source fails.
Result<VerifyReport> VerifyBlocking(AuditSource& source, const std::string& tenant_id,
                                    const VerifyOptions& options);

// "seq 5: changed: ..." — one line, no newline.
std::string FormatProblem(const Problem& problem);

}  // namespace agentd::audit
