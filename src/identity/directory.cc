#include "identity/directory.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <regex>

#include "common/base64.h"
#include "common/ids.h"
#include "identity/key_file.h"

namespace agentd::identity {

namespace {

constexpr std::string_view kKeyPrefix = "agk_";
constexpr size_t kSecretBytes = 32;
constexpr size_t kPepperBytes = 32;
constexpr size_t kMaxGroups = 100;
constexpr size_t kMaxPolicies = 20;
constexpr size_t kMaxAttributesBytes = 16 * 1024;
constexpr size_t kMaxCredentialBytes = 8 * 1024;
// How long a verified JWT is trusted without checking its signature again, and how many
// are remembered.
constexpr int64_t kVerifiedTokenSeconds = 60;
constexpr size_t kMaxVerifiedTokens = 10000;

Result<std::vector<std::string>> StringList(const Json* v, const std::string& field,
                                            size_t max_items, size_t max_len) {
  std::vector<std::string> out;
  if (v == nullptr) return out;
  if (!v->is_array()) return InvalidArgument(fmt::format("'{}' must be an array of strings", field));
  if (v->size() > max_items) {
    return InvalidArgument(fmt::format("'{}' has more than {} entries", field, max_items));
  }
  for (size_t i = 0; i < v->size(); ++i) {
    const Json& s = (*v)[i];
    if (!s.is_string() || s.get_ref<const std::string&>().empty() ||
        s.get_ref<const std::string&>().size() > max_len) {
      return InvalidArgument(
          fmt::format("'{}[{}]' must be a non-empty string of at most {} bytes", field, i,
                      max_len));
    }
    out.push_back(s.get<std::string>());
  }
  return out;
}

Status CheckName(const std::string& name, const std::string& field) {
  static const std::regex re("^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$");
  if (!std::regex_match(name, re)) {
    return InvalidArgument(fmt::format(
        "'{}' must be 1 to 128 characters of letters, digits, '.', '_', '@' or '-', starting "
        "with a letter or digit",
        field));
  }
  return Status::OK();
}

std::string Expiry(int64_t ms) { return ms == 0 ? "" : FormatRfc3339(ms); }

// The policy documents of a request body, each checked by the parser; the error names the
// document and the position in it.
Result<Json> PolicyDocuments(const Json* policies) {
  Json docs = Json::array();
  if (policies == nullptr) return docs;
  if (!policies->is_array()) return InvalidArgument("'policies' must be an array of documents");
  if (policies->size() > kMaxPolicies) {
    return InvalidArgument(fmt::format("'policies' has more than {} documents", kMaxPolicies));
  }
  for (size_t i = 0; i < policies->size(); ++i) {
    auto p = ParsePolicy(DumpJson((*policies)[i]));
    if (!p.ok()) {
      return InvalidArgument(fmt::format("'policies[{}]': {}", i, p.status().message()));
    }
    docs.push_back((*policies)[i]);
  }
  return docs;
}

// The parsed documents of a stored body's `policies`.
Result<std::vector<Policy>> StoredPolicies(const Json& body, const std::string& owner) {
  std::vector<Policy> out;
  if (auto ps = body.find("policies"); ps != body.end() && ps->is_array()) {
    for (const auto& doc : *ps) {
      auto policy = ParsePolicy(DumpJson(doc));
      if (!policy.ok()) {
        return Internal(fmt::format("stored policy of {} does not parse: {}", owner,
                                    policy.status().message()));
      }
      out.push_back(std::move(policy).value());
    }
  }
  return out;
}

Status CheckKind(const std::string& kind) {
  if (kind != "group" && kind != "role") return Internal("policy sets are groups or roles");
  return Status::OK();
}

std::string PolicySetKey(const std::string& tenant_id, const std::string& kind,
                         const std::string& name) {
  return tenant_id + "/" + kind + "/" + name;
}

}  // namespace

PrincipalContext Principal::Context() const {
  PrincipalContext c;
  c.id = id;
  c.tenant = tenant_id;
  c.kind = kind;
  c.groups = groups;
  c.attributes = attributes;
  return c;
}

std::vector<const Policy*> Principal::PolicyPointers() const {
  std::vector<const Policy*> out;
  for (const auto& set : policy_sets) {
    for (const auto& p : set->policies) out.push_back(&p);
  }
  return out;
}

Directory::Directory(store::Store* store, Clock* clock, DirectoryOptions options,
                     std::string pepper)
    : store_(store), clock_(clock), options_(std::move(options)), pepper_(std::move(pepper)) {
  if (options_.jwt) {
    JwksSourceOptions jo;
    jo.location = options_.jwt->jwks;
    jwks_ = std::make_unique<JwksSource>(std::move(jo), clock_);
  }
}

Result<std::unique_ptr<Directory>> Directory::Open(store::Store* store, Clock* clock,
                                                   DirectoryOptions options) {
  if (sodium_init() < 0) return Internal("libsodium failed to initialise");
  if (options.jwt && (options.jwt->issuer.empty() || options.jwt->audience.empty() ||
                      options.jwt->jwks.empty())) {
    return InvalidArgument("JWT sign-in needs an issuer, an audience and a key set");
  }
  ASSIGN_OR_RETURN(std::string pepper,
                   LoadOrCreateKeyFile(options.data_dir + "/api-key.pepper", kPepperBytes));
  std::unique_ptr<Directory> d(new Directory(store, clock, std::move(options), std::move(pepper)));
  // A key set in a file is there now or never: a missing or broken one stops the start. A
  // URL may be unreachable for a while; it is fetched when the first token comes.
  if (d->jwks_ != nullptr && !d->options_.jwt->jwks.starts_with("http://") &&
      !d->options_.jwt->jwks.starts_with("https://")) {
    auto loaded = d->jwks_->GetBlocking();
    if (!loaded.ok()) {
      return FailedPrecondition(fmt::format("the JWKS file of JWT sign-in cannot be used: {}",
                                            loaded.status().message()));
    }
    if ((*loaded)->size() == 0) {
      return FailedPrecondition(fmt::format(
          "the JWKS file {} holds no key agentd can verify with (RS256, ES256 or EdDSA)",
          d->options_.jwt->jwks));
    }
  }
  return d;
}

std::string Directory::HashSecret(std::string_view secret) const {
  unsigned char out[32];
  crypto_generichash(out, sizeof out, reinterpret_cast<const unsigned char*>(secret.data()),
                     secret.size(), reinterpret_cast<const unsigned char*>(pepper_.data()),
                     pepper_.size());
  char hex[65];
  sodium_bin2hex(hex, sizeof hex, out, sizeof out);
  return hex;
}

Status Directory::Bootstrap() {
  // The default tenant is the first tenant named "default".
  store::Page page;
  page.limit = 100;
  do {
    ASSIGN_OR_RETURN(auto tenants, store_->ListTenants(page));
    for (const auto& t : tenants.first) {
      if (t.name == "default") {
        default_tenant_ = t.id;
        return SettleOperatorTenant();
      }
    }
    page.cursor = tenants.second;
  } while (!page.cursor.empty());

  const int64_t now = clock_->NowMillis();
  store::TenantRow tenant{NewId("ten_"), "default", now};
  Json body = {{"groups", Json::array()},
               {"attributes", Json::object()},
               {"policies", Json::array({*ParseJson(kAdminPolicy, "admin policy")})}};
  store::PrincipalRow admin{NewId("prn_"), tenant.id, "admin", "service", DumpJson(body), now};
  // The key file is written before the commit that makes the key valid: a crash between
  // the two leaves a file with a key that opens nothing, and the next start (which finds no
  // tenant) replaces it.
  const std::string path = options_.data_dir + "/admin.key";
  ::unlink(path.c_str());
  std::string key;
  auto issued = IssueKey(admin, 0, {admin}, {tenant}, &key);
  if (!issued.ok()) return issued.status();
  default_tenant_ = tenant.id;
  spdlog::info("created tenant 'default' ({}) and its admin; the admin API key is in {}",
               tenant.id, path);
  return SettleOperatorTenant();
}

Status Directory::SettleOperatorTenant() {
  const std::string& chosen = options_.operator_tenant;
  if (!chosen.empty() && !TenantExists(chosen)) {
    return FailedPrecondition(fmt::format(
        "the operator tenant {} (auth.operator_tenant) does not exist; create it first with "
        "POST /v1/tenants, or leave the key out for the bootstrap tenant 'default'",
        chosen));
  }
  operator_tenant_ = chosen.empty() ? default_tenant_ : chosen;
  {
    // Principals loaded before now were built without knowing it.
    std::lock_guard lock(mu_);
    principals_.clear();
  }
  spdlog::info("operator tenant: {}; its principals alone reach other tenants",
               operator_tenant_);
  return Status::OK();
}

Result<Json> Directory::IssueKey(const store::PrincipalRow& p, int64_t expires_ms,
                                 std::vector<store::PrincipalRow> with_principals,
                                 std::vector<store::TenantRow> with_tenants,
                                 std::string* key_out) {
  std::string secret(kSecretBytes, '\0');
  randombytes_buf(secret.data(), secret.size());
  std::string secret_text = Base64Encode(secret, Base64Variant::kUrlNoPadding);
  sodium_memzero(secret.data(), secret.size());
  store::ApiKeyRow row{NewId("key_"), p.tenant_id, p.id, HashSecret(secret_text),
                       clock_->NowMillis(), expires_ms, 0};
  std::string key = fmt::format("{}{}.{}", kKeyPrefix, row.id, secret_text);
  store::WriteBatch b;
  b.tenants = std::move(with_tenants);
  b.principals = std::move(with_principals);
  b.api_keys.push_back(row);
  if (!b.tenants.empty()) b.adopt_untenanted = b.tenants[0].id;
  if (key_out != nullptr) {
    // The bootstrap key goes to its file before the commit that makes it valid.
    RETURN_IF_ERROR(WritePrivateFile(options_.data_dir + "/admin.key", key + "\n"));
  }
  RETURN_IF_ERROR(store_->CommitBlocking(std::move(b)));
  Json out = {{"id", row.id},
              {"object", "api_key"},
              {"principal_id", row.principal_id},
              {"tenant_id", row.tenant_id},
              {"created_at", FormatRfc3339(row.created_ms)},
              {"expires_at", expires_ms == 0 ? Json(nullptr) : Json(Expiry(expires_ms))},
              {"key", key}};
  if (key_out != nullptr) *key_out = std::move(key);
  return out;
}

Result<std::shared_ptr<const Principal>> Directory::Authenticate(std::string_view authorization) {
  if (authorization.empty()) {
    return Unauthenticated(jwks_ ? "missing credentials: send 'Authorization: Bearer <API key or "
                                   "token>'"
                                 : "missing credentials: send 'Authorization: Bearer <API key>'");
  }
  if (authorization.size() > kMaxCredentialBytes) {
    return Unauthenticated("the Authorization header is too long");
  }
  constexpr std::string_view kBearer = "bearer ";
  if (authorization.size() <= kBearer.size() ||
      !std::equal(kBearer.begin(), kBearer.end(), authorization.begin(),
                  [](char a, char b) { return a == std::tolower(static_cast<unsigned char>(b)); })) {
    return Unauthenticated("the Authorization header must be 'Bearer <credential>'");
  }
  std::string_view cred = authorization.substr(kBearer.size());
  while (!cred.empty() && cred.front() == ' ') cred.remove_prefix(1);
  if (cred.substr(0, kKeyPrefix.size()) != kKeyPrefix) {
    if (jwks_ != nullptr) return AuthenticateJwt(cred);
    return Unauthenticated("the bearer credential is not an agentd API key");
  }
  cred.remove_prefix(kKeyPrefix.size());
  size_t dot = cred.find('.');
  if (dot == std::string_view::npos) return Unauthenticated("malformed API key");
  std::string key_id(cred.substr(0, dot));
  std::string_view secret = cred.substr(dot + 1);
  if (!IsValidId(key_id, "key_") || secret.size() != 43) {
    return Unauthenticated("malformed API key");
  }

  store::ApiKeyRow row;
  {
    std::lock_guard lock(mu_);
    auto it = keys_.find(key_id);
    if (it != keys_.end()) row = it->second;
  }
  if (row.id.empty()) {
    ASSIGN_OR_RETURN(auto stored, store_->GetApiKey(key_id));
    if (!stored) return Unauthenticated("unknown API key");
    row = *stored;
    std::lock_guard lock(mu_);
    if (keys_.size() > 100000) keys_.clear();
    keys_.emplace(key_id, row);
  }
  std::string hash = HashSecret(secret);
  if (hash.size() != row.hash.size() ||
      sodium_memcmp(hash.data(), row.hash.data(), hash.size()) != 0) {
    return Unauthenticated("unknown API key");
  }
  if (row.revoked_ms != 0) return Unauthenticated("the API key has been revoked");
  if (row.expires_ms != 0 && clock_->NowMillis() >= row.expires_ms) {
    return Unauthenticated("the API key has expired");
  }
  ASSIGN_OR_RETURN(auto principal, LoadPrincipal(row.principal_id));
  return principal;
}

Result<std::shared_ptr<const Principal>> Directory::AuthenticateJwt(std::string_view token) {
  const JwtSignIn& cfg = *options_.jwt;
  VerifyOptions vo;
  vo.issuer = cfg.issuer;
  vo.audience = cfg.audience;
  vo.leeway_seconds = cfg.leeway_seconds;
  vo.now = clock_->NowMillis() / 1000;
  // A token verified lately is not verified again (its signature check is most of a
  // sign-in's cost), but never past its expiry, nor for longer than a minute: a key the
  // provider withdraws stops working within that time.
  unsigned char digest[crypto_generichash_BYTES];
  crypto_generichash(digest, sizeof digest, reinterpret_cast<const unsigned char*>(token.data()),
                     token.size(), nullptr, 0);
  const std::string token_key(reinterpret_cast<const char*>(digest), sizeof digest);
  std::shared_ptr<const Json> cached;
  {
    std::lock_guard lock(mu_);
    auto it = verified_tokens_.find(token_key);
    if (it != verified_tokens_.end()) {
      if (vo.now < it->second.valid_until) {
        cached = it->second.claims;
      } else {
        verified_tokens_.erase(it);
      }
    }
  }
  if (!cached) {
    Result<Json> verified = jwks_->VerifyBlocking(token, vo);
    if (!verified.ok()) {
      if (verified.status().code() == StatusCode::kUnauthenticated) return verified.status();
      // The location of the key set and why it failed are for the operator, not the caller.
      spdlog::warn("JWT sign-in: the key set cannot be loaded: {}", verified.status().message());
      return Unavailable("the identity provider's key set cannot be loaded; try again later");
    }
    cached = std::make_shared<const Json>(std::move(verified).value());
    int64_t valid_until = vo.now + kVerifiedTokenSeconds;
    if (auto exp = cached->find("exp"); exp != cached->end() && exp->is_number()) {
      // Expired at exp + leeway, as VerifyJwt decides (compared as doubles: no overflow).
      const double ends = std::floor(exp->get<double>()) + static_cast<double>(cfg.leeway_seconds);
      if (ends < static_cast<double>(valid_until)) valid_until = static_cast<int64_t>(ends);
    }
    std::lock_guard lock(mu_);
    if (verified_tokens_.size() >= kMaxVerifiedTokens) verified_tokens_.clear();
    verified_tokens_[token_key] = {cached, valid_until};
  }
  const Json& claims = *cached;

  // The signature holds, so the claims are the provider's; their values may be quoted back,
  // but only when short and printable.
  // A token signs in to the tenant the config maps it to, never to one it names itself.
  std::string tenant_id = cfg.tenant;
  auto t = claims.find(cfg.tenant_claim);
  if (tenant_id.empty()) {
    if (t == claims.end()) {
      return Unauthenticated(fmt::format("the token has no '{}' claim", cfg.tenant_claim));
    }
    if (!t->is_string()) {
      return Unauthenticated(
          fmt::format("the token's '{}' claim is not a string", cfg.tenant_claim));
    }
    auto mapped = cfg.tenants.find(t->get<std::string>());
    if (mapped == cfg.tenants.end()) {
      return Unauthenticated(fmt::format(
          "the token's '{}' claim names no tenant this identity provider signs in to",
          cfg.tenant_claim));
    }
    tenant_id = mapped->second;
  } else if (t != claims.end() && !(t->is_string() && t->get<std::string>() == tenant_id)) {
    return Unauthenticated(fmt::format(
        "the token's '{}' claim names another tenant than the one this identity provider "
        "signs in to",
        cfg.tenant_claim));
  }
  auto n = claims.find(cfg.principal_claim);
  if (n == claims.end()) {
    return Unauthenticated(fmt::format("the token has no '{}' claim", cfg.principal_claim));
  }
  if (!n->is_string() || !CheckName(n->get<std::string>(), cfg.principal_claim).ok()) {
    return Unauthenticated(
        fmt::format("the token's '{}' claim is not a principal name", cfg.principal_claim));
  }
  const std::string name = n->get<std::string>();
  std::vector<std::string> token_groups;
  if (auto g = claims.find(cfg.groups_claim); g != claims.end()) {
    auto list = StringList(&*g, cfg.groups_claim, kMaxGroups, 128);
    if (!list.ok()) {
      return Unauthenticated(fmt::format("the token's groups: {}", list.status().message()));
    }
    token_groups = std::move(list).value();
  }

  // Stored principals are never renamed nor removed, so a name once found stays found.
  const std::string cache_key = tenant_id + "/" + name;
  std::string principal_id;
  {
    std::lock_guard lock(mu_);
    auto it = principal_ids_.find(cache_key);
    if (it != principal_ids_.end()) principal_id = it->second;
  }
  if (principal_id.empty()) {
    if (!IsValidId(tenant_id, "ten_") || !TenantExists(tenant_id)) {
      return Unauthenticated("unknown tenant: no tenant has the id the token names");
    }
    ASSIGN_OR_RETURN(auto row, store_->GetPrincipalByName(tenant_id, name));
    if (!row) return Unauthenticated(fmt::format("no principal '{}' in the tenant", name));
    principal_id = row->id;
    std::lock_guard lock(mu_);
    if (principal_ids_.size() > 100000) principal_ids_.clear();
    principal_ids_.emplace(cache_key, principal_id);
  }
  ASSIGN_OR_RETURN(auto stored, LoadStored(principal_id));
  return Attach(std::move(stored), std::move(token_groups), "jwt");
}

Result<std::shared_ptr<const Principal>> Directory::LoadPrincipal(const std::string& id) {
  ASSIGN_OR_RETURN(auto stored, LoadStored(id));
  return Attach(std::move(stored), {}, "");
}

Result<std::shared_ptr<const Principal>> Directory::Attach(std::shared_ptr<const Principal> stored,
                                                           std::vector<std::string> extra_groups,
                                                           std::string credential_id) {
  if (stored->groups.empty() && stored->roles.empty() && extra_groups.empty() &&
      credential_id.empty()) {
    return stored;
  }
  auto p = std::make_shared<Principal>(*stored);
  for (auto& g : extra_groups) {
    if (std::find(p->groups.begin(), p->groups.end(), g) == p->groups.end()) {
      p->groups.push_back(std::move(g));
    }
  }
  for (const auto& [kind, names] : {std::pair{"group", &p->groups}, {"role", &p->roles}}) {
    for (const auto& name : *names) {
      ASSIGN_OR_RETURN(auto set, FindPolicySet(p->tenant_id, kind, name));
      if (set) p->policy_sets.push_back(std::move(set));
    }
  }
  if (!credential_id.empty()) p->credential_id = std::move(credential_id);
  return std::shared_ptr<const Principal>(std::move(p));
}

Result<std::shared_ptr<const PolicySet>> Directory::FindPolicySet(const std::string& tenant_id,
                                                                  const std::string& kind,
                                                                  const std::string& name) {
  const std::string key = PolicySetKey(tenant_id, kind, name);
  {
    std::lock_guard lock(mu_);
    auto it = policy_sets_.find(key);
    if (it != policy_sets_.end()) return it->second;
  }
  ASSIGN_OR_RETURN(auto row, store_->GetPolicySetByName(tenant_id, kind, name));
  std::shared_ptr<const PolicySet> set;
  if (row) {
    ASSIGN_OR_RETURN(Json body, ParseJson(row->body, "stored policy set"));
    auto made = std::make_shared<PolicySet>();
    made->source = kind + std::string("/") + name;
    ASSIGN_OR_RETURN(made->policies, StoredPolicies(body, made->source));
    set = std::move(made);
  }
  std::lock_guard lock(mu_);
  if (policy_sets_.size() > 100000) policy_sets_.clear();
  policy_sets_.emplace(key, set);
  return set;
}

Result<std::shared_ptr<const Principal>> Directory::LoadStored(const std::string& id) {
  {
    std::lock_guard lock(mu_);
    auto it = principals_.find(id);
    if (it != principals_.end()) return it->second;
  }
  ASSIGN_OR_RETURN(auto row, store_->GetPrincipal(id));
  if (!row) return NotFound(fmt::format("principal {} not found", id));
  ASSIGN_OR_RETURN(auto built, Build(*row));
  std::lock_guard lock(mu_);
  if (principals_.size() > 100000) principals_.clear();
  principals_.emplace(id, built);
  return built;
}

Result<std::shared_ptr<const Principal>> Directory::Build(const store::PrincipalRow& row) const {
  auto p = std::make_shared<Principal>();
  p->id = row.id;
  p->tenant_id = row.tenant_id;
  p->is_operator = !operator_tenant_.empty() && row.tenant_id == operator_tenant_;
  p->name = row.name;
  p->kind = row.kind;
  ASSIGN_OR_RETURN(Json body, ParseJson(row.body, "stored principal"));
  if (auto g = body.find("groups"); g != body.end() && g->is_array()) {
    for (const auto& x : *g) {
      if (x.is_string()) p->groups.push_back(x.get<std::string>());
    }
  }
  if (auto r = body.find("roles"); r != body.end() && r->is_array()) {
    for (const auto& x : *r) {
      if (x.is_string()) p->roles.push_back(x.get<std::string>());
    }
  }
  if (auto a = body.find("attributes"); a != body.end() && a->is_object()) p->attributes = *a;
  auto own = std::make_shared<PolicySet>();
  own->source = "principal";
  ASSIGN_OR_RETURN(own->policies, StoredPolicies(body, "principal " + row.id));
  p->policy_sets.push_back(std::move(own));
  return std::shared_ptr<const Principal>(std::move(p));
}

Json Directory::PrincipalObject(const store::PrincipalRow& row) const {
  auto parsed = ParseJson(row.body, "stored principal");
  Json body = parsed.ok() ? *parsed : Json::object();
  Json out = {{"id", row.id},
              {"object", "principal"},
              {"tenant_id", row.tenant_id},
              {"name", row.name},
              {"kind", row.kind},
              {"created_at", FormatRfc3339(row.created_ms)}};
  for (const char* k : {"groups", "roles", "attributes", "policies"}) {
    out[k] = body.contains(k) ? body[k] : (std::string_view(k) == "attributes"
                                               ? Json::object()
                                               : Json::array());
  }
  return out;
}

Result<Json> Directory::CreateTenant(const Json& body) {
  FieldReader r(body, "");
  std::string name;
  RETURN_IF_ERROR(r.CheckObject());
  RETURN_IF_ERROR(r.String("name", &name, true, 128));
  RETURN_IF_ERROR(r.NoUnknownKeys());
  RETURN_IF_ERROR(CheckName(name, "name"));
  store::TenantRow t{NewId("ten_"), name, clock_->NowMillis()};
  store::WriteBatch b;
  b.tenants.push_back(t);
  Status st = store_->CommitBlocking(std::move(b));
  if (st.code() == StatusCode::kAlreadyExists) {
    return AlreadyExists(fmt::format("a tenant named '{}' exists", name));
  }
  RETURN_IF_ERROR(st);
  return Json{{"id", t.id}, {"object", "tenant"}, {"name", t.name},
              {"created_at", FormatRfc3339(t.created_ms)}};
}

Result<Json> Directory::GetTenant(const std::string& id) {
  ASSIGN_OR_RETURN(auto t, store_->GetTenant(id));
  if (!t) return NotFound(fmt::format("tenant {} not found", id));
  return Json{{"id", t->id}, {"object", "tenant"}, {"name", t->name},
              {"created_at", FormatRfc3339(t->created_ms)}};
}

bool Directory::TenantExists(const std::string& id) {
  auto t = store_->GetTenant(id);
  return t.ok() && t->has_value();
}

Result<Json> Directory::CreatePrincipal(const Json& body) {
  FieldReader r(body, "");
  std::string tenant_id, name, kind;
  RETURN_IF_ERROR(r.CheckObject());
  RETURN_IF_ERROR(r.String("tenant_id", &tenant_id, true, 64));
  RETURN_IF_ERROR(r.String("name", &name, true, 128));
  RETURN_IF_ERROR(r.String("kind", &kind, true, 16));
  RETURN_IF_ERROR(CheckName(name, "name"));
  if (kind != "user" && kind != "service") {
    return InvalidArgument("'kind' must be 'user' or 'service'");
  }
  if (!TenantExists(tenant_id)) return NotFound(fmt::format("tenant {} not found", tenant_id));
  Json stored = {{"groups", Json::array()},
                 {"roles", Json::array()},
                 {"attributes", Json::object()},
                 {"policies", Json::array()}};
  RETURN_IF_ERROR(ReadPrincipalFields(tenant_id, r, &stored));
  RETURN_IF_ERROR(r.NoUnknownKeys());
  store::PrincipalRow row{NewId("prn_"), tenant_id, name, kind, DumpJson(stored),
                          clock_->NowMillis()};
  store::WriteBatch b;
  b.principals.push_back(row);
  Status st = store_->CommitBlocking(std::move(b));
  if (st.code() == StatusCode::kAlreadyExists) {
    return AlreadyExists(fmt::format("tenant {} has a principal named '{}'", tenant_id, name));
  }
  RETURN_IF_ERROR(st);
  return PrincipalObject(row);
}

Result<Json> Directory::GetPrincipal(const std::string& id) {
  ASSIGN_OR_RETURN(auto row, store_->GetPrincipal(id));
  if (!row) return NotFound(fmt::format("principal {} not found", id));
  return PrincipalObject(*row);
}

Result<Json> Directory::ListPrincipals(const std::string& tenant_id, const store::Page& page) {
  ASSIGN_OR_RETURN(auto rows, store_->ListPrincipals(tenant_id, page));
  Json data = Json::array();
  for (const auto& row : rows.first) data.push_back(PrincipalObject(row));
  Json out = {{"data", data}, {"has_more", !rows.second.empty()}};
  if (!rows.second.empty()) out["next_cursor"] = rows.second;
  return out;
}

Status Directory::ReadPrincipalFields(const std::string& tenant_id, FieldReader& r, Json* stored) {
  const Json *groups = nullptr, *roles = nullptr, *attributes = nullptr, *policies = nullptr;
  RETURN_IF_ERROR(r.Value("groups", &groups, false));
  RETURN_IF_ERROR(r.Value("roles", &roles, false));
  RETURN_IF_ERROR(r.Value("attributes", &attributes, false));
  RETURN_IF_ERROR(r.Value("policies", &policies, false));
  if (groups != nullptr) {
    ASSIGN_OR_RETURN(auto names, StringList(groups, "groups", kMaxGroups, 128));
    (*stored)["groups"] = names;
  }
  if (roles != nullptr) {
    // A role is given to a principal only once it exists: a typo must not pass silently.
    ASSIGN_OR_RETURN(auto names, StringList(roles, "roles", kMaxGroups, 128));
    for (size_t i = 0; i < names.size(); ++i) {
      ASSIGN_OR_RETURN(auto set, FindPolicySet(tenant_id, "role", names[i]));
      if (!set) {
        return InvalidArgument(
            fmt::format("'roles[{}]': the tenant has no role named '{}'", i, names[i]));
      }
    }
    (*stored)["roles"] = names;
  }
  if (attributes != nullptr) {
    if (!attributes->is_object()) return InvalidArgument("'attributes' must be an object");
    if (DumpJson(*attributes).size() > kMaxAttributesBytes) {
      return InvalidArgument(
          fmt::format("'attributes' is larger than {} bytes", kMaxAttributesBytes));
    }
    (*stored)["attributes"] = *attributes;
  }
  if (policies != nullptr) {
    ASSIGN_OR_RETURN((*stored)["policies"], PolicyDocuments(policies));
  }
  return Status::OK();
}

Result<Json> Directory::UpdatePrincipal(const std::string& id, const Json& body) {
  ASSIGN_OR_RETURN(auto row, store_->GetPrincipal(id));
  if (!row) return NotFound(fmt::format("principal {} not found", id));
  FieldReader r(body, "");
  RETURN_IF_ERROR(r.CheckObject());
  auto parsed = ParseJson(row->body, "stored principal");
  Json stored = parsed.ok() && parsed->is_object() ? *parsed : Json::object();
  RETURN_IF_ERROR(ReadPrincipalFields(row->tenant_id, r, &stored));
  RETURN_IF_ERROR(r.NoUnknownKeys());
  row->body = DumpJson(stored);
  store::WriteBatch b;
  b.principals.push_back(*row);
  RETURN_IF_ERROR(store_->CommitBlocking(std::move(b)));
  {
    std::lock_guard lock(mu_);
    principals_.erase(id);
  }
  return PrincipalObject(*row);
}

Json Directory::PolicySetObject(const store::PolicySetRow& row) const {
  auto parsed = ParseJson(row.body, "stored policy set");
  Json body = parsed.ok() && parsed->is_object() ? *parsed : Json::object();
  return Json{{"id", row.id},
              {"object", row.kind},
              {"tenant_id", row.tenant_id},
              {"name", row.name},
              {"description", body.value("description", "")},
              {"policies", body.contains("policies") ? body["policies"] : Json::array()},
              {"created_at", FormatRfc3339(row.created_ms)},
              {"updated_at", FormatRfc3339(row.updated_ms)}};
}

Result<Json> Directory::CreatePolicySet(const std::string& kind, const std::string& caller_tenant,
                                        const Json& body) {
  RETURN_IF_ERROR(CheckKind(kind));
  FieldReader r(body, "");
  std::string tenant_id, name, description;
  const Json* policies = nullptr;
  RETURN_IF_ERROR(r.CheckObject());
  RETURN_IF_ERROR(r.String("tenant_id", &tenant_id, false, 64));
  RETURN_IF_ERROR(r.String("name", &name, true, 128));
  RETURN_IF_ERROR(r.String("description", &description, false, 1024));
  RETURN_IF_ERROR(r.Value("policies", &policies, true));
  RETURN_IF_ERROR(r.NoUnknownKeys());
  RETURN_IF_ERROR(CheckName(name, "name"));
  ASSIGN_OR_RETURN(Json docs, PolicyDocuments(policies));
  if (tenant_id.empty()) tenant_id = caller_tenant;
  if (!TenantExists(tenant_id)) return NotFound(fmt::format("tenant {} not found", tenant_id));
  const int64_t now = clock_->NowMillis();
  store::PolicySetRow row{NewId(kind == "group" ? "grp_" : "rol_"),
                          tenant_id,
                          kind,
                          name,
                          DumpJson(Json{{"description", description}, {"policies", docs}}),
                          now,
                          now};
  store::WriteBatch b;
  b.policy_sets.push_back(row);
  Status st = store_->CommitBlocking(std::move(b));
  if (st.code() == StatusCode::kAlreadyExists) {
    return AlreadyExists(fmt::format("tenant {} has a {} named '{}'", tenant_id, kind, name));
  }
  RETURN_IF_ERROR(st);
  ForgetPolicySet(row);
  return PolicySetObject(row);
}

Result<store::PolicySetRow> Directory::StoredPolicySet(const std::string& kind,
                                                       const std::string& id) {
  RETURN_IF_ERROR(CheckKind(kind));
  ASSIGN_OR_RETURN(auto row, store_->GetPolicySet(id));
  if (!row || row->kind != kind) return NotFound(fmt::format("{} {} not found", kind, id));
  return *row;
}

Result<Json> Directory::GetPolicySet(const std::string& kind, const std::string& id) {
  ASSIGN_OR_RETURN(auto row, StoredPolicySet(kind, id));
  return PolicySetObject(row);
}

Result<Json> Directory::ListPolicySets(const std::string& kind, const std::string& tenant_id,
                                       const store::Page& page) {
  RETURN_IF_ERROR(CheckKind(kind));
  ASSIGN_OR_RETURN(auto rows, store_->ListPolicySets(tenant_id, kind, page));
  Json data = Json::array();
  for (const auto& row : rows.first) data.push_back(PolicySetObject(row));
  Json out = {{"data", data}, {"has_more", !rows.second.empty()}};
  if (!rows.second.empty()) out["next_cursor"] = rows.second;
  return out;
}

Result<Json> Directory::ReplacePolicySet(const std::string& kind, const std::string& id,
                                         const Json& body) {
  ASSIGN_OR_RETURN(auto row, StoredPolicySet(kind, id));
  FieldReader r(body, "");
  std::string description;
  const Json* policies = nullptr;
  RETURN_IF_ERROR(r.CheckObject());
  RETURN_IF_ERROR(r.String("description", &description, false, 1024));
  RETURN_IF_ERROR(r.Value("policies", &policies, true));
  RETURN_IF_ERROR(r.NoUnknownKeys());
  ASSIGN_OR_RETURN(Json docs, PolicyDocuments(policies));
  row.body = DumpJson(Json{{"description", description}, {"policies", docs}});
  row.updated_ms = clock_->NowMillis();
  store::WriteBatch b;
  b.policy_sets.push_back(row);
  RETURN_IF_ERROR(store_->CommitBlocking(std::move(b)));
  ForgetPolicySet(row);
  return PolicySetObject(row);
}

Result<Json> Directory::DeletePolicySet(const std::string& kind, const std::string& id) {
  ASSIGN_OR_RETURN(auto row, StoredPolicySet(kind, id));
  store::WriteBatch b;
  b.delete_policy_sets.push_back(id);
  RETURN_IF_ERROR(store_->CommitBlocking(std::move(b)));
  ForgetPolicySet(row);
  return Json{{"id", id}, {"object", kind}, {"deleted", true}};
}

Result<std::string> Directory::PolicySetTenant(const std::string& kind, const std::string& id) {
  ASSIGN_OR_RETURN(auto row, StoredPolicySet(kind, id));
  return row.tenant_id;
}

void Directory::ForgetPolicySet(const store::PolicySetRow& row) {
  std::lock_guard lock(mu_);
  policy_sets_.erase(PolicySetKey(row.tenant_id, row.kind, row.name));
}

Result<Json> Directory::CreateApiKey(const std::string& principal_id, const Json& body) {
  const Json fields = body.is_null() ? Json::object() : body;
  FieldReader r(fields, "");
  std::string expires_at;
  RETURN_IF_ERROR(r.CheckObject());
  RETURN_IF_ERROR(r.String("expires_at", &expires_at, false, 64));
  RETURN_IF_ERROR(r.NoUnknownKeys());
  int64_t expires_ms = 0;
  if (!expires_at.empty()) {
    auto t = ParseRfc3339(expires_at);
    if (!t) return InvalidArgument("'expires_at' must be an RFC 3339 date-time");
    if (*t <= clock_->NowMillis()) return InvalidArgument("'expires_at' is in the past");
    expires_ms = *t;
  }
  ASSIGN_OR_RETURN(auto p, store_->GetPrincipal(principal_id));
  if (!p) return NotFound(fmt::format("principal {} not found", principal_id));
  return IssueKey(*p, expires_ms, {}, {}, nullptr);
}

Result<Json> Directory::RevokeApiKey(const std::string& key_id) {
  ASSIGN_OR_RETURN(auto row, store_->GetApiKey(key_id));
  if (!row) return NotFound(fmt::format("API key {} not found", key_id));
  if (row->revoked_ms == 0) {
    row->revoked_ms = clock_->NowMillis();
    store::WriteBatch b;
    b.api_keys.push_back(*row);
    RETURN_IF_ERROR(store_->CommitBlocking(std::move(b)));
  }
  {
    std::lock_guard lock(mu_);
    keys_.erase(key_id);
  }
  return Json{{"id", row->id},
              {"object", "api_key"},
              {"principal_id", row->principal_id},
              {"tenant_id", row->tenant_id},
              {"revoked_at", FormatRfc3339(row->revoked_ms)}};
}

Result<std::string> Directory::PrincipalTenant(const std::string& id) {
  ASSIGN_OR_RETURN(auto row, store_->GetPrincipal(id));
  if (!row) return NotFound(fmt::format("principal {} not found", id));
  return row->tenant_id;
}

Result<std::string> Directory::ApiKeyTenant(const std::string& id) {
  ASSIGN_OR_RETURN(auto row, store_->GetApiKey(id));
  if (!row) return NotFound(fmt::format("API key {} not found", id));
  return row->tenant_id;
}

}  // namespace agentd::identity
