#include "cli/audit_verify.h"

#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <vector>

#include "audit/verify.h"
#include "cli/format.h"
#include "store/sqlite/sqlite_store.h"

namespace agentd::cli {
namespace {

// The database's name under a data directory (src/daemon/main.cc).
constexpr const char* kDatabaseFile = "agentd.db";

void Out(std::string_view text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fflush(stdout);
}

ExitCode Fail(ExitCode code, std::string_view message) {
  std::string m = fmt::format("error: {}\n", Sanitize(message, true));
  std::fwrite(m.data(), 1, m.size(), stderr);
  return code;
}

// The keys named by --public-key: a file holding a key, JWK or JWKS, or the key itself.
Result<std::vector<audit::PublicKey>> LoadKeys(const std::string& arg) {
  if (arg.empty()) return std::vector<audit::PublicKey>();
  std::error_code ec;
  if (std::filesystem::is_regular_file(arg, ec)) {
    std::ifstream in(arg, std::ios::binary);
    std::stringstream text;
    text << in.rdbuf();
    if (!in && !in.eof()) return InvalidArgument(fmt::format("cannot read {}", arg));
    auto keys = audit::ParsePublicKeys(text.str());
    if (!keys.ok()) return InvalidArgument(fmt::format("{}: {}", arg, keys.status().message()));
    return keys;
  }
  auto keys = audit::ParsePublicKeys(arg);
  if (!keys.ok()) {
    return InvalidArgument(fmt::format("--public-key is neither a file nor a key: {}",
                                       keys.status().message()));
  }
  return keys;
}

Json ReportJson(const audit::VerifyReport& r, bool keys_given) {
  Json problems = Json::array();
  for (const auto& p : r.problems) {
    problems.push_back({{"kind", audit::ProblemKindName(p.kind)},
                        {"seq", p.seq},
                        {"to_seq", p.to_seq},
                        {"detail", p.detail}});
  }
  return Json{{"tenant_id", r.tenant_id},
              {"ok", r.ok()},
              {"entries", r.entries},
              {"last_seq", r.last_seq},
              {"checkpoints", r.checkpoints},
              {"signatures_checked", keys_given ? Json(r.signatures_checked) : Json(nullptr)},
              {"last_checkpoint_seq", r.last_checkpoint_seq},
              {"uncovered", r.uncovered},
              {"problem_count", r.problem_count},
              {"problems", std::move(problems)}};
}

std::string ChainName(const std::string& tenant) {
  return tenant.empty() ? "system chain" : fmt::format("tenant '{}'", OneLine(tenant, 80));
}

std::string ReportText(const audit::VerifyReport& r, bool keys_given) {
  std::string out;
  std::string name = ChainName(r.tenant_id);
  std::string counts = fmt::format(
      "{} entries (last seq {}), {} checkpoints, {}", r.entries, r.last_seq, r.checkpoints,
      keys_given ? fmt::format("{} signatures checked", r.signatures_checked)
                 : std::string("signatures NOT checked (no --public-key)"));
  if (r.ok()) {
    out += fmt::format("{}: OK: {}\n", name, counts);
  } else {
    out += fmt::format("{}: {} PROBLEM{}: {}\n", name, r.problem_count,
                       r.problem_count == 1 ? "" : "S", counts);
    for (const auto& p : r.problems) out += "  " + OneLine(audit::FormatProblem(p), 400) + "\n";
    if (r.problem_count > static_cast<int64_t>(r.problems.size())) {
      out += fmt::format("  ... and {} more\n",
                         r.problem_count - static_cast<int64_t>(r.problems.size()));
    }
  }
  if (r.uncovered > 0) {
    out += fmt::format(
        "  note: {} {} after seq {} {} not yet covered by a checkpoint; a cut there is not "
        "detectable\n",
        r.uncovered, r.uncovered == 1 ? "entry" : "entries", r.last_checkpoint_seq,
        r.uncovered == 1 ? "is" : "are");
  }
  return out;
}

// `on_error` reports a failure of the source and gives the exit code.
ExitCode VerifyChains(audit::AuditSource& source, const std::vector<std::string>& tenants,
                      const std::vector<audit::PublicKey>& keys, bool json,
                      const std::function<ExitCode(const Status&)>& on_error) {
  audit::VerifyOptions options;
  options.keys = keys;
  bool all_ok = true;
  Json reports = Json::array();
  for (const auto& t : tenants) {
    auto report = audit::VerifyBlocking(source, t, options);
    if (!report.ok()) return on_error(report.status());
    all_ok = all_ok && report->ok();
    if (json) {
      reports.push_back(ReportJson(*report, !keys.empty()));
    } else {
      Out(ReportText(*report, !keys.empty()));
    }
  }
  if (json) Out(PrettyJson(Json{{"ok", all_ok}, {"chains", std::move(reports)}}) + "\n");
  if (!json && tenants.empty()) Out("OK: no audit entries\n");
  return all_ok ? ExitCode::kOk : ExitCode::kVerifyFailed;
}

// Pages of a live server's audit API.
class HttpSource final : public audit::AuditSource {
 public:
  explicit HttpSource(ApiClient& client) : client_(client) {}

  Result<std::vector<audit::AuditEntry>> ReadEntriesBlocking(const std::string& tenant_id,
                                                             int64_t after_seq,
                                                             int limit) override {
    ASSIGN_OR_RETURN(Json page, Get(fmt::format("/v1/audit?tenant_id={}&after_seq={}&limit={}",
                                                 UrlEncode(tenant_id), after_seq, limit)));
    std::vector<audit::AuditEntry> out;
    for (const Json& j : Data(page)) {
      auto e = audit::EntryFromJson(j);
      if (!e.ok()) return Internal("the server sent a malformed entry: " + e.status().message());
      out.push_back(std::move(e).value());
    }
    // A short page that says there is more would end the walk early.
    if (static_cast<int>(out.size()) < limit && page.value("has_more", false)) {
      return Internal("the server returned a short page with has_more set");
    }
    return out;
  }

  Result<std::vector<audit::Checkpoint>> ReadCheckpointsBlocking(
      const std::string& tenant_id) override {
    ASSIGN_OR_RETURN(Json page,
                     Get("/v1/audit/checkpoints?tenant_id=" + UrlEncode(tenant_id)));
    std::vector<audit::Checkpoint> out;
    for (const Json& j : Data(page)) {
      auto c = audit::CheckpointFromJson(j);
      if (!c.ok()) {
        return Internal("the server sent a malformed checkpoint: " + c.status().message());
      }
      out.push_back(std::move(c).value());
    }
    return out;
  }

  // The tenant of the caller's chain, from the first entry or checkpoint the server shows
  // without a tenant_id; nullopt when it shows none.
  Result<std::optional<std::string>> CallerTenantBlocking() {
    ASSIGN_OR_RETURN(Json page, Get("/v1/audit?limit=1"));
    for (const Json& j : Data(page)) {
      if (const std::string* t = FindString(j, "tenant_id")) return std::optional(*t);
    }
    ASSIGN_OR_RETURN(Json cps, Get("/v1/audit/checkpoints"));
    for (const Json& j : Data(cps)) {
      if (const std::string* t = FindString(j, "tenant_id")) return std::optional(*t);
    }
    return std::optional<std::string>();
  }

  // The HTTP status of the last failed request, for the exit code.
  int failed_http_status() const { return failed_http_status_; }

 private:
  static const Json& Data(const Json& page) {
    static const Json kEmpty = Json::array();
    auto it = page.is_object() ? page.find("data") : page.end();
    return it != page.end() && it->is_array() ? *it : kEmpty;
  }

  Result<Json> Get(const std::string& path) {
    ASSIGN_OR_RETURN(ApiResponse r, client_.CallBlocking("GET", path, nullptr));
    if (!r.ok()) {
      failed_http_status_ = r.http_status;
      return Unavailable(FormatProblem(ProblemFromResponse(r)));
    }
    return ParseResponseJson(r, "the server's response");
  }

  ApiClient& client_;
  int failed_http_status_ = 0;
};

}  // namespace

ExitCode AuditVerifyOffline(const AuditVerifyArgs& args) {
  // Without --public-key, the key agentd keeps in the data directory. That checks a copy
  // against itself; pin the key (from /.well-known/jwks.json, saved earlier) to rule out a
  // copy whose key was replaced along with its log.
  std::string key_arg = args.public_key;
  const std::string own_key = (std::filesystem::path(args.data_dir) / "signing.key").string();
  std::error_code key_ec;
  if (key_arg.empty() && std::filesystem::is_regular_file(own_key, key_ec)) key_arg = own_key;
  auto keys = LoadKeys(key_arg);
  if (!keys.ok()) return Fail(ExitCode::kUsage, keys.status().message());
  std::string path = (std::filesystem::path(args.data_dir) / kDatabaseFile).string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return Fail(ExitCode::kNotFound, fmt::format("no database at {}", path));
  }
  store::sqlite::SqliteOptions so;
  so.path = path;
  so.read_only = true;
  auto store = store::sqlite::OpenSqliteStore(so);
  if (!store.ok()) return Fail(ExitCode::kError, store.status().message());
  std::vector<std::string> tenants;
  if (args.tenant_given) {
    tenants.push_back(args.tenant);
  } else {
    auto all = (*store)->ListAuditTenants();
    if (!all.ok()) return Fail(ExitCode::kError, all.status().message());
    tenants = std::move(all).value();
  }
  auto source = audit::StoreSource(**store);
  return VerifyChains(*source, tenants, *keys, args.json, [](const Status& st) {
    return Fail(ExitCode::kError, st.message());
  });
}

ExitCode AuditVerifyLive(ApiClient& client, const AuditVerifyArgs& args) {
  auto keys = LoadKeys(args.public_key);
  if (!keys.ok()) return Fail(ExitCode::kUsage, keys.status().message());
  if (args.public_key.empty()) {
    // The keys the server publishes: enough to check its checkpoints were signed by the
    // key it signs tokens with; pin a saved copy with --public-key to check more.
    auto r = client.CallBlocking("GET", "/.well-known/jwks.json", nullptr);
    if (r.ok() && r->ok()) {
      auto published = audit::ParsePublicKeys(r->body);
      if (published.ok()) *keys = std::move(published).value();
    }
  }
  HttpSource source(client);
  auto fail = [&](const Status& st) {
    ExitCode code = source.failed_http_status() != 0
                        ? ExitCodeForHttpStatus(source.failed_http_status())
                        : ExitCodeForStatus(st);
    return Fail(code, st.message());
  };
  std::vector<std::string> tenants;
  if (args.tenant_given) {
    tenants.push_back(args.tenant);
  } else {
    auto t = source.CallerTenantBlocking();
    if (!t.ok()) return fail(t.status());
    if (t->has_value()) tenants.push_back(**t);
  }
  return VerifyChains(source, tenants, *keys, args.json, fail);
}

}  // namespace agentd::cli
