#include "audit/audit.h"

#include <sodium.h>

#include <algorithm>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/base64.h"

namespace agentd::audit {
namespace {

constexpr std::string_view kEntryTag("agentd.audit.entry.v1\0", 22);
constexpr std::string_view kCheckpointTag("agentd.audit.checkpoint.v1\0", 27);

void PutU32(std::string& out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<char>(v >> shift));
}
void PutI64(std::string& out, int64_t v) {
  auto u = static_cast<uint64_t>(v);
  for (int shift = 56; shift >= 0; shift -= 8) out.push_back(static_cast<char>(u >> shift));
}
void PutStr(std::string& out, std::string_view s) {
  PutU32(out, static_cast<uint32_t>(s.size()));
  out.append(s);
}

std::string Hex(const unsigned char* p, size_t n) {
  std::string out(n * 2 + 1, '\0');
  sodium_bin2hex(out.data(), out.size(), p, n);
  out.pop_back();
  return out;
}

void InitSodium() {
  // Thread-safe and idempotent; it fails only when no randomness is available, which
  // hashing and signing do not need.
  static const int kInit = sodium_init();
  (void)kInit;
}

bool IsDecimal(const std::string& s) {
  if (s.empty() || s.size() > 18) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

}  // namespace

std::string EncodeEntry(const AuditEntry& e) {
  std::string out;
  out.reserve(kEntryTag.size() + 64 + e.tenant_id.size() + e.principal.size() +
              e.action.size() + e.resource.size() + e.decision.size() + e.result.size() +
              e.data.size());
  out.append(kEntryTag);
  PutStr(out, e.tenant_id);
  PutI64(out, e.seq);
  PutI64(out, e.time_ms);
  PutStr(out, e.principal);
  PutStr(out, e.action);
  PutStr(out, e.resource);
  PutStr(out, e.decision);
  PutStr(out, e.result);
  PutStr(out, e.data);
  return out;
}

std::string EntryHash(std::string_view prev_hash, const AuditEntry& entry) {
  std::string enc = EncodeEntry(entry);
  crypto_generichash_state st;
  crypto_generichash_init(&st, nullptr, 0, 32);
  crypto_generichash_update(&st, reinterpret_cast<const unsigned char*>(prev_hash.data()),
                            prev_hash.size());
  crypto_generichash_update(&st, reinterpret_cast<const unsigned char*>(enc.data()), enc.size());
  unsigned char out[32];
  crypto_generichash_final(&st, out, sizeof out);
  return Hex(out, sizeof out);
}

std::string CheckpointMessage(const Checkpoint& c) {
  std::string out(kCheckpointTag);
  PutStr(out, c.tenant_id);
  PutI64(out, c.seq);
  PutStr(out, c.head_hash);
  PutI64(out, c.time_ms);
  PutStr(out, c.key_id);
  return out;
}

Result<std::string> CanonicalData(std::string_view text) {
  if (text.empty()) return std::string("{}");
  ASSIGN_OR_RETURN(Json j, ParseJson(text, "audit entry data"));
  if (!j.is_object()) return InvalidArgument("audit entry data must be a JSON object");
  return DumpJson(j);
}

store::AuditChainFn ChainFunction() {
  return [](store::AuditRow& row, const std::string& prev_hash) {
    row.prev_hash = prev_hash;
    row.hash = EntryHash(prev_hash, FromRow(row));
  };
}

store::AuditRow ToRow(const AuditEntry& e) {
  return store::AuditRow{e.tenant_id, e.seq,    e.time_ms, e.principal, e.action,   e.resource,
                         e.decision,  e.result, e.data,    e.prev_hash, e.hash};
}

AuditEntry FromRow(const store::AuditRow& r) {
  return AuditEntry{r.tenant_id, r.seq,    r.time_ms, r.principal, r.action,   r.resource,
                    r.decision,  r.result, r.data,    r.prev_hash, r.hash};
}

store::AuditCheckpointRow ToRow(const Checkpoint& c) {
  return {c.tenant_id, c.seq, c.head_hash, c.time_ms, c.key_id, c.signature};
}

Checkpoint FromRow(const store::AuditCheckpointRow& r) {
  return {r.tenant_id, r.seq, r.head_hash, r.time_ms, r.key_id, r.signature};
}

Json EntryToJson(const AuditEntry& e) {
  Json data = e.data;
  if (Result<Json> parsed = ParseJson(e.data, "data"); parsed.ok() && parsed->is_object() &&
                                                        DumpJson(*parsed) == e.data) {
    data = std::move(parsed).value();
  }
  return Json{{"tenant_id", e.tenant_id}, {"seq", e.seq},
              {"time_ms", e.time_ms},     {"time", FormatRfc3339(e.time_ms)},
              {"principal", e.principal}, {"action", e.action},
              {"resource", e.resource},   {"decision", e.decision},
              {"result", e.result},       {"data", std::move(data)},
              {"prev_hash", e.prev_hash}, {"hash", e.hash}};
}

Result<AuditEntry> EntryFromJson(const Json& json) {
  AuditEntry e;
  FieldReader r(json, "");
  RETURN_IF_ERROR(r.CheckObject());
  RETURN_IF_ERROR(r.String("tenant_id", &e.tenant_id, true));
  RETURN_IF_ERROR(r.Int("seq", &e.seq, true, INT64_MIN, INT64_MAX));
  RETURN_IF_ERROR(r.Int("time_ms", &e.time_ms, true, INT64_MIN, INT64_MAX));
  std::string time;
  RETURN_IF_ERROR(r.String("time", &time, false));
  RETURN_IF_ERROR(r.String("principal", &e.principal, true));
  RETURN_IF_ERROR(r.String("action", &e.action, true));
  RETURN_IF_ERROR(r.String("resource", &e.resource, true));
  RETURN_IF_ERROR(r.String("decision", &e.decision, true));
  RETURN_IF_ERROR(r.String("result", &e.result, true));
  const Json* data = nullptr;
  RETURN_IF_ERROR(r.Value("data", &data, true));
  if (data->is_string()) {
    e.data = data->get<std::string>();
  } else if (data->is_object()) {
    e.data = DumpJson(*data);
  } else {
    return InvalidArgument("data must be an object or a string");
  }
  RETURN_IF_ERROR(r.String("prev_hash", &e.prev_hash, true));
  RETURN_IF_ERROR(r.String("hash", &e.hash, true));
  return e;
}

Json CheckpointToJson(const Checkpoint& c) {
  return Json{{"tenant_id", c.tenant_id}, {"seq", c.seq},
              {"head_hash", c.head_hash}, {"time_ms", c.time_ms},
              {"time", FormatRfc3339(c.time_ms)}, {"key_id", c.key_id},
              {"signature", c.signature}};
}

Result<Checkpoint> CheckpointFromJson(const Json& json) {
  Checkpoint c;
  FieldReader r(json, "");
  RETURN_IF_ERROR(r.CheckObject());
  RETURN_IF_ERROR(r.String("tenant_id", &c.tenant_id, true));
  RETURN_IF_ERROR(r.Int("seq", &c.seq, true, INT64_MIN, INT64_MAX));
  RETURN_IF_ERROR(r.String("head_hash", &c.head_hash, true));
  RETURN_IF_ERROR(r.Int("time_ms", &c.time_ms, true, INT64_MIN, INT64_MAX));
  std::string time;
  RETURN_IF_ERROR(r.String("time", &time, false));
  RETURN_IF_ERROR(r.String("key_id", &c.key_id, true));
  RETURN_IF_ERROR(r.String("signature", &c.signature, true));
  return c;
}

Result<Signer> Ed25519Signer(std::string key_id, std::string secret_key) {
  if (secret_key.size() != crypto_sign_SECRETKEYBYTES) {
    return InvalidArgument(fmt::format("an Ed25519 secret key has {} bytes, not {}",
                                       crypto_sign_SECRETKEYBYTES, secret_key.size()));
  }
  InitSodium();
  return Signer{std::move(key_id),
                [sk = std::move(secret_key)](std::string_view m) -> Result<std::string> {
                  std::string sig(crypto_sign_BYTES, '\0');
                  crypto_sign_detached(reinterpret_cast<unsigned char*>(sig.data()), nullptr,
                                       reinterpret_cast<const unsigned char*>(m.data()),
                                       m.size(),
                                       reinterpret_cast<const unsigned char*>(sk.data()));
                  return sig;
                }};
}

// ---- AuditLog -----------------------------------------------------------------------------

AuditLog::AuditLog(store::Store& store, Signer signer, AuditOptions options, Clock* clock)
    : store_(store), signer_(std::move(signer)), options_(options), clock_(clock) {
  InitSodium();
  if (signer_.sign && options_.checkpoint_thread) {
    thread_ = std::thread([this] { RunCheckpointer(); });
  }
}

AuditLog::~AuditLog() { Close(); }

void AuditLog::Close() {
  {
    std::lock_guard lock(mu_);
    if (closing_) return;
    closing_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Status AuditLog::Prepare(AuditEntry& e) {
  ASSIGN_OR_RETURN(e.data, CanonicalData(e.data));
  if (e.time_ms == 0) e.time_ms = clock_->NowMillis();
  e.seq = 0;
  e.prev_hash.clear();
  e.hash.clear();
  return Status::OK();
}

void AuditLog::NoteStaged(const std::string& tenant_id) {
  if (!thread_.joinable()) return;
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    int64_t& n = pending_[tenant_id];
    if (++n >= options_.checkpoint_every && due_.insert(tenant_id).second) wake = true;
  }
  if (wake) cv_.notify_all();
}

Status AuditLog::AppendBlocking(AuditEntry entry) {
  RETURN_IF_ERROR(Prepare(entry));
  std::string tenant = entry.tenant_id;
  store::WriteBatch batch;
  batch.audit.push_back(ToRow(entry));
  RETURN_IF_ERROR(store_.CommitBlocking(std::move(batch)));
  NoteStaged(tenant);
  return Status::OK();
}

Status AuditLog::Stage(store::WriteBatch& batch, AuditEntry entry) {
  RETURN_IF_ERROR(Prepare(entry));
  std::string tenant = entry.tenant_id;
  batch.audit.push_back(ToRow(entry));
  NoteStaged(tenant);
  return Status::OK();
}

Result<std::optional<Checkpoint>> AuditLog::CheckpointBlocking(const std::string& tenant_id) {
  if (!signer_.sign) return std::optional<Checkpoint>();
  std::lock_guard lock(checkpoint_mu_);
  auto last = last_checkpoint_.find(tenant_id);
  if (last == last_checkpoint_.end()) {
    ASSIGN_OR_RETURN(auto cps, store_.ReadAuditCheckpoints(tenant_id));
    last = last_checkpoint_.emplace(tenant_id, cps.empty() ? 0 : cps.back().seq).first;
  }
  ASSIGN_OR_RETURN(std::optional<store::AuditRow> head, store_.ReadAuditHead(tenant_id));
  if (!head || head->seq <= last->second) return std::optional<Checkpoint>();
  Checkpoint c{tenant_id, head->seq, head->hash, clock_->NowMillis(), signer_.key_id, ""};
  ASSIGN_OR_RETURN(std::string sig, signer_.sign(CheckpointMessage(c)));
  c.signature = Base64Encode(sig, Base64Variant::kUrlNoPadding);
  store::WriteBatch batch;
  batch.audit_checkpoints.push_back(ToRow(c));
  RETURN_IF_ERROR(store_.CommitBlocking(std::move(batch)));
  last->second = c.seq;
  return std::optional<Checkpoint>(std::move(c));
}

void AuditLog::RunCheckpointer() {
  // Chains with entries from before this process started (say, after a crash) are signed
  // in the first round.
  std::set<std::string> known;
  if (auto tenants = store_.ListAuditTenants(); tenants.ok()) {
    known.insert(tenants->begin(), tenants->end());
  } else {
    spdlog::warn("audit: cannot list chains: {}", tenants.status().ToString());
  }
  auto round = [&](const std::set<std::string>& tenants) {
    for (const auto& t : tenants) {
      auto r = CheckpointBlocking(t);
      if (!r.ok()) spdlog::warn("audit: checkpoint of chain '{}' failed: {}", t,
                                r.status().ToString());
    }
  };
  round(known);
  auto next_round = clock_->Steady() + options_.checkpoint_interval;
  while (true) {
    std::set<std::string> due;
    bool closing;
    {
      std::unique_lock lock(mu_);
      cv_.wait_until(lock, next_round, [&] { return closing_ || !due_.empty(); });
      closing = closing_;
      for (const auto& [t, n] : pending_) known.insert(t);
      if (closing || clock_->Steady() >= next_round) {
        due = known;  // CheckpointBlocking skips the chains whose head is covered
        pending_.clear();
        due_.clear();
        next_round = clock_->Steady() + options_.checkpoint_interval;
      } else {
        due.swap(due_);
        for (const auto& t : due) pending_.erase(t);
      }
    }
    round(due);
    if (closing) return;
  }
}

Result<Json> AuditLog::Query(const AuditQuery& q) {
  int limit = q.limit == 0 ? options_.default_page : q.limit;
  if (limit < 1 || limit > options_.max_page) {
    return InvalidArgument(fmt::format("limit must be 1 to {}", options_.max_page));
  }
  store::AuditFilter f = q.filter;
  if (!q.cursor.empty()) {
    if (!IsDecimal(q.cursor)) return InvalidArgument("cursor is not one this server gave");
    f.after_seq = std::max<int64_t>(f.after_seq, std::stoll(q.cursor));
  }
  ASSIGN_OR_RETURN(auto rows, store_.ReadAudit(f, limit + 1));
  bool more = static_cast<int>(rows.size()) > limit;
  if (more) rows.pop_back();
  Json data = Json::array();
  for (const auto& r : rows) data.push_back(EntryToJson(FromRow(r)));
  Json next = more ? Json(std::to_string(rows.back().seq)) : Json(nullptr);
  return Json{{"data", std::move(data)}, {"has_more", more}, {"next_cursor", std::move(next)}};
}

Result<Json> AuditLog::Checkpoints(const std::string& tenant_id) {
  ASSIGN_OR_RETURN(auto rows, store_.ReadAuditCheckpoints(tenant_id));
  Json data = Json::array();
  for (const auto& r : rows) data.push_back(CheckpointToJson(FromRow(r)));
  return Json{{"data", std::move(data)}};
}

}  // namespace agentd::audit
