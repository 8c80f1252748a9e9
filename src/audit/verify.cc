#include "audit/verify.h"

#include <sodium.h>

#include <algorithm>
#include <cctype>
#include <map>
#include <optional>
#include <unordered_map>

#include <fmt/format.h>

#include "common/base64.h"
#include "common/json.h"

namespace agentd::audit {
namespace {

// How far (in entries) a broken link may be resolved as a reordering by a later entry, and
// how many unresolved links are remembered.
constexpr int64_t kWindow = 4096;

class StoreAuditSource final : public AuditSource {
 public:
  explicit StoreAuditSource(store::Store& store) : store_(store) {}

  Result<std::vector<AuditEntry>> ReadEntriesBlocking(const std::string& tenant_id,
                                                      int64_t after_seq, int limit) override {
    store::AuditFilter f;
    f.tenant_id = tenant_id;
    f.after_seq = after_seq;
    ASSIGN_OR_RETURN(auto rows, store_.ReadAudit(f, limit));
    std::vector<AuditEntry> out;
    out.reserve(rows.size());
    for (const auto& r : rows) out.push_back(FromRow(r));
    return out;
  }

  Result<std::vector<Checkpoint>> ReadCheckpointsBlocking(const std::string& tenant_id) override {
    ASSIGN_OR_RETURN(auto rows, store_.ReadAuditCheckpoints(tenant_id));
    std::vector<Checkpoint> out;
    out.reserve(rows.size());
    for (const auto& r : rows) out.push_back(FromRow(r));
    return out;
  }

 private:
  store::Store& store_;
};

Result<PublicKey> KeyFromJwk(const Json& jwk) {
  const std::string* kty = FindString(jwk, "kty");
  const std::string* crv = FindString(jwk, "crv");
  const std::string* x = FindString(jwk, "x");
  if (!kty || *kty != "OKP" || !crv || *crv != "Ed25519" || !x) {
    return InvalidArgument("not an OKP Ed25519 key");
  }
  ASSIGN_OR_RETURN(std::string raw, Base64Decode(*x, Base64Variant::kUrlNoPadding));
  if (raw.size() != crypto_sign_PUBLICKEYBYTES) {
    return InvalidArgument("an Ed25519 key's x must decode to 32 bytes");
  }
  const std::string* kid = FindString(jwk, "kid");
  return PublicKey{kid ? *kid : "", std::move(raw)};
}

bool SignatureHolds(const Checkpoint& c, const PublicKey& key) {
  auto sig = Base64Decode(c.signature, Base64Variant::kUrlNoPadding);
  if (!sig.ok() || sig->size() != crypto_sign_BYTES) return false;
  std::string m = CheckpointMessage(c);
  return crypto_sign_verify_detached(reinterpret_cast<const unsigned char*>(sig->data()),
                                     reinterpret_cast<const unsigned char*>(m.data()), m.size(),
                                     reinterpret_cast<const unsigned char*>(key.key.data())) == 0;
}

// Collects problems: counts them all, keeps the first max_problems, and merges a changed or
// renumbered entry into the range of the one before it.
class Problems {
 public:
  Problems(VerifyReport& report, size_t max) : report_(report), max_(max) {}

  void Add(ProblemKind kind, int64_t seq, int64_t to_seq, std::string detail) {
    const bool ranged = kind == ProblemKind::kChanged || kind == ProblemKind::kRenumbered;
    std::optional<size_t>& last = kind == ProblemKind::kChanged ? last_changed_ : last_renumbered_;
    if (ranged && last && report_.problems[*last].to_seq + 1 == seq) {
      report_.problems[*last].to_seq = to_seq;
      return;
    }
    ++report_.problem_count;
    if (report_.problems.size() >= max_) return;
    report_.problems.push_back(Problem{kind, seq, to_seq, std::move(detail)});
    if (ranged) last = report_.problems.size() - 1;
  }

 private:
  VerifyReport& report_;
  size_t max_;
  std::optional<size_t> last_changed_, last_renumbered_;
};

}  // namespace

std::unique_ptr<AuditSource> StoreSource(store::Store& store) {
  return std::make_unique<StoreAuditSource>(store);
}

Result<std::vector<PublicKey>> ParsePublicKeys(std::string_view text) {
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back()))) {
    text.remove_suffix(1);
  }
  while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front()))) {
    text.remove_prefix(1);
  }
  std::vector<PublicKey> keys;
  if (!text.empty() && text.front() == '{') {
    ASSIGN_OR_RETURN(Json doc, ParseJson(text, "public key document"));
    std::vector<Json> jwks;
    if (auto it = doc.find("keys"); it != doc.end() && it->is_array()) {
      jwks.assign(it->begin(), it->end());
    } else {
      jwks.push_back(doc);
    }
    for (const Json& jwk : jwks) {
      if (auto k = KeyFromJwk(jwk); k.ok()) keys.push_back(std::move(k).value());
    }
    if (keys.empty()) return InvalidArgument("the document holds no OKP Ed25519 key");
    return keys;
  }
  auto raw = Base64Decode(text, Base64Variant::kUrlNoPadding);
  if (!raw.ok()) raw = Base64Decode(text, Base64Variant::kStandard);
  if (!raw.ok() || raw->size() != crypto_sign_PUBLICKEYBYTES) {
    return InvalidArgument(
        "a public key is base64url of 32 bytes, or a JWK or JWKS with an OKP Ed25519 key");
  }
  keys.push_back(PublicKey{"", std::move(raw).value()});
  return keys;
}

std::string_view ProblemKindName(ProblemKind kind) {
  switch (kind) {
    case ProblemKind::kChanged: return "changed";
    case ProblemKind::kRenumbered: return "renumbered";
    case ProblemKind::kRemoved: return "removed";
    case ProblemKind::kInserted: return "inserted";
    case ProblemKind::kReordered: return "reordered";
    case ProblemKind::kBrokenLink: return "broken_link";
    case ProblemKind::kCheckpointMismatch: return "checkpoint_mismatch";
    case ProblemKind::kBadSignature: return "bad_signature";
    case ProblemKind::kTruncated: return "truncated";
  }
  return "unknown";
}

std::string FormatProblem(const Problem& p) {
  std::string where = p.to_seq > p.seq ? fmt::format("seq {}..{}", p.seq, p.to_seq)
                                       : fmt::format("seq {}", p.seq);
  return fmt::format("{}: {}: {}", where, ProblemKindName(p.kind), p.detail);
}

Result<VerifyReport> VerifyBlocking(AuditSource& source, const std::string& tenant_id,
                                    const VerifyOptions& options) {
  VerifyReport report;
  report.tenant_id = tenant_id;
  Problems problems(report, options.max_problems);

  ASSIGN_OR_RETURN(std::vector<Checkpoint> cps, source.ReadCheckpointsBlocking(tenant_id));
  std::sort(cps.begin(), cps.end(),
            [](const Checkpoint& a, const Checkpoint& b) { return a.seq < b.seq; });
  report.checkpoints = static_cast<int64_t>(cps.size());
  for (const Checkpoint& c : cps) {
    if (options.keys.empty()) break;
    ++report.signatures_checked;
    bool holds = false;
    bool named = std::any_of(options.keys.begin(), options.keys.end(),
                             [&](const PublicKey& k) { return k.key_id == c.key_id; });
    for (const PublicKey& k : options.keys) {
      if (named && k.key_id != c.key_id) continue;
      if (c.tenant_id == tenant_id && SignatureHolds(c, k)) holds = true;
    }
    if (!holds) {
      problems.Add(ProblemKind::kBadSignature, c.seq, c.seq,
                   fmt::format("the checkpoint (key id '{}') is not signed by a given key",
                               c.key_id));
    }
  }

  int64_t prev_seq = 0;
  std::string prev_hash = kGenesisHash;
  std::string prev2_hash;  // the hash of the entry before the previous one
  int64_t shift = 0;       // entries inserted so far: later ones were renumbered by this much
  int64_t suppress_until = 0;  // links up to this seq are explained by a reordering
  std::unordered_map<std::string, int64_t> forward;  // unresolved prev_hash -> its entry's seq
  std::map<int64_t, Problem> pending;                 // broken links not yet explained
  size_t ci = 0;
  int64_t last_matching_cp = 0;

  auto flush_pending = [&](int64_t before) {
    while (!pending.empty() && pending.begin()->first < before) {
      Problem p = std::move(pending.begin()->second);
      pending.erase(pending.begin());
      problems.Add(p.kind, p.seq, p.to_seq, std::move(p.detail));
    }
  };

  const int page = std::max(1, options.page);
  int64_t after = 0;
  while (true) {
    ASSIGN_OR_RETURN(std::vector<AuditEntry> entries,
                     source.ReadEntriesBlocking(tenant_id, after, page));
    for (const AuditEntry& e : entries) {
      ++report.entries;
      after = std::max(after, e.seq);
      if (e.seq <= prev_seq) {
        problems.Add(ProblemKind::kReordered, e.seq, e.seq,
                     fmt::format("stored after seq {}", prev_seq));
        continue;
      }
      flush_pending(e.seq - kWindow);
      if (forward.size() > static_cast<size_t>(kWindow)) forward.clear();

      const bool gap = e.seq > prev_seq + 1;
      if (gap) {
        problems.Add(ProblemKind::kRemoved, prev_seq + 1, e.seq - 1,
                     fmt::format("missing: seq {} is followed by seq {}", prev_seq, e.seq));
      }
      // Links first: an insertion found here explains the seqs of the entries after it.
      if (auto f = forward.find(e.hash); f != forward.end()) {
        int64_t from = f->second;
        forward.erase(f);
        pending.erase(from);
        problems.Add(ProblemKind::kReordered, from, e.seq,
                     fmt::format("seq {} links to seq {}, which is stored after it", from,
                                 e.seq));
        suppress_until = e.seq + 1;
      } else if (!gap && e.prev_hash != prev_hash && e.seq > suppress_until) {
        if (!prev2_hash.empty() && e.prev_hash == prev2_hash) {
          problems.Add(ProblemKind::kInserted, prev_seq, prev_seq,
                       fmt::format("seq {} links to seq {}, past this entry", e.seq,
                                   prev_seq - 1));
          ++shift;
        } else {
          forward[e.prev_hash] = e.seq;
          pending[e.seq] = Problem{
              ProblemKind::kBrokenLink, e.seq, e.seq,
              fmt::format("prev_hash is not the hash of seq {}: seq {} was replaced, or "
                          "entries were removed before this one",
                          prev_seq, prev_seq)};
        }
      }
      if (EntryHash(e.prev_hash, e) != e.hash) {
        bool renumbered = false;
        if (shift != 0) {
          AuditEntry original = e;
          original.seq -= shift;
          renumbered = EntryHash(e.prev_hash, original) == e.hash;
        }
        if (renumbered) {
          problems.Add(ProblemKind::kRenumbered, e.seq, e.seq,
                       fmt::format("entries moved up by {} seq", shift));
        } else {
          problems.Add(ProblemKind::kChanged, e.seq, e.seq,
                       "the hash does not match the entry's content");
        }
      }
      while (ci < cps.size() && cps[ci].seq < e.seq) ++ci;  // in a gap reported above
      if (ci < cps.size() && cps[ci].seq == e.seq) {
        if (cps[ci].head_hash != e.hash) {
          problems.Add(ProblemKind::kCheckpointMismatch, e.seq, e.seq,
                       fmt::format("the checkpoint signs head {:.16}… but the entry's hash is "
                                   "{:.16}…: entries after seq {} (the last checkpoint that "
                                   "matches) were changed and hashed again",
                                   cps[ci].head_hash, e.hash, last_matching_cp));
        } else {
          last_matching_cp = e.seq;
        }
        report.last_checkpoint_seq = e.seq;
        ++ci;
      }
      prev2_hash = std::move(prev_hash);
      prev_hash = e.hash;
      prev_seq = e.seq;
    }
    if (static_cast<int>(entries.size()) < page) break;
  }
  flush_pending(INT64_MAX);

  report.last_seq = prev_seq;
  report.uncovered = prev_seq - report.last_checkpoint_seq;
  if (!cps.empty() && cps.back().seq > prev_seq) {
    problems.Add(ProblemKind::kTruncated, prev_seq + 1, cps.back().seq,
                 fmt::format("the chain ends at seq {} but a checkpoint signs it up to seq {}",
                             prev_seq, cps.back().seq));
  }
  std::stable_sort(report.problems.begin(), report.problems.end(),
                   [](const Problem& a, const Problem& b) { return a.seq < b.seq; });
  return report;
}

}  // namespace agentd::audit
