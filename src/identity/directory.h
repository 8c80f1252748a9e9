// The directory: tenants, principals and their API keys, and authentication of a request's
// credential (ARCHITECTURE.md, "Identity, policy, audit"; docs/security.md).
//
// An API key is shown once, at creation: `agk_<key id>.<secret>`. Only a keyed BLAKE2b-256
// hash of the secret is stored (the key is a random "pepper" kept in the data directory,
// not in the database), so a copy of the database alone cannot be used to sign in, nor to
// test guesses offline. Keys can expire and be revoked; a revocation takes effect on the
// next request.
//
// On first start the directory creates the tenant `default`, the service principal `admin`
// in it with a policy that allows everything, and an API key for it, written to
// `<data dir>/admin.key` (mode 0600). That key is how an operator first gets in.
//
// With JwtSignIn configured, a bearer credential that is not an API key is taken for a JWT
// from an identity provider: verified against the provider's JWKS (jwt.h), then mapped by its
// claims to a tenant and to a principal stored in it under the same name, which brings its
// policies; the token's groups join the stored principal's. A token cannot create a principal.
//
// Thread-safe. Methods that read or write the store block.
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/clock.h"
#include "common/json.h"
#include "common/status.h"
#include "identity/jwt.h"
#include "identity/policy.h"
#include "store/store.h"

namespace agentd::identity {

// Policies under one name: a principal's own, or those attached to a group or a role.
struct PolicySet {
  std::string source;  // "principal", "group/<name>" or "role/<name>"
  std::vector<Policy> policies;
};

// Who is calling, as authenticated. Immutable once built; shared between requests.
struct Principal {
  std::string id;
  std::string tenant_id;
  std::string name;
  std::string kind;  // user | service
  // Its stored groups and, signed in with a JWT, the token's.
  std::vector<std::string> groups;
  std::vector<std::string> roles;
  Json attributes = Json::object();
  // Its own policies first, then those of each of its groups and roles that exists; a
  // group named only by a token and never created brings no policies.
  std::vector<std::shared_ptr<const PolicySet>> policy_sets;
  std::string credential_id;  // the API key's id, or "jwt" for a token
  // A principal of the operator's tenant: the only kind the tenant wall lets reach another
  // tenant's objects (tenant_wall.h). Set by the directory, from its configuration.
  bool is_operator = false;

  PrincipalContext Context() const;
  std::vector<const Policy*> PolicyPointers() const;
};

// The bootstrap admin's policy: every action on every resource.
inline constexpr std::string_view kAdminPolicy =
    R"({"version":"2026-11-01","statements":[{"sid":"admin","effect":"allow","actions":["*"],)"
    R"("resources":["*"]}]})";

// Sign-in with JWTs from an identity provider (docs/security.md, "Identity, the gate and the
// audit log"). Claim names are top-level members of the token's claims set.
struct JwtSignIn {
  std::string issuer;                   // the `iss` a token must carry; required
  std::string audience;                 // must be `aud` or one of its entries; required
  std::string jwks;                     // the provider's key set: a file path or http(s) URL
  std::string tenant_claim = "tenant";  // the claim naming the caller's tenant
  std::string tenant;                   // a fixed tenant id instead of tenant_claim
  // With tenant_claim: the claim's values and the tenant id each signs in to. A token whose
  // claim is not listed is refused, so a provider reaches only the tenants mapped here.
  std::map<std::string, std::string> tenants;
  std::string principal_claim = "sub";  // the claim holding the stored principal's name
  std::string groups_claim = "groups";  // an array of strings; absent means none
  int64_t leeway_seconds = 60;          // tolerated clock skew for exp, nbf and iat
};

struct DirectoryOptions {
  std::string data_dir;          // admin.key and api-key.pepper
  std::optional<JwtSignIn> jwt;  // unset: API keys only
  // The operator's tenant, whose principals alone reach other tenants; "" is the bootstrap
  // tenant `default`. Must exist (Bootstrap() fails otherwise).
  std::string operator_tenant;
};

class Directory {
 public:
  static Result<std::unique_ptr<Directory>> Open(store::Store* store, Clock* clock,
                                                 DirectoryOptions options);

  // First start: the default tenant, the admin principal and its key (see above); rows from
  // before tenants existed join the default tenant. Later starts change nothing.
  // Also settles the operator's tenant (DirectoryOptions::operator_tenant).
  Status Bootstrap();
  const std::string& default_tenant() const { return default_tenant_; }
  const std::string& operator_tenant() const { return operator_tenant_; }

  // Resolves an Authorization header value ("Bearer agk_...", or "Bearer <JWT>" with JWT
  // sign-in configured). Unauthenticated, with a reason that never repeats the credential,
  // when it is missing, malformed, unknown, expired or revoked, when a token fails any check
  // of VerifyJwt, or when its claims name no existing tenant or no principal stored in it.
  // Unavailable when the provider's key set cannot be loaded.
  Result<std::shared_ptr<const Principal>> Authenticate(std::string_view authorization);
  // A principal by id (for work done on its behalf later, such as a turn's tool calls).
  Result<std::shared_ptr<const Principal>> LoadPrincipal(const std::string& id);

  // POST /v1/tenants {name}
  Result<Json> CreateTenant(const Json& body);
  Result<Json> GetTenant(const std::string& id);
  bool TenantExists(const std::string& id);
  // POST /v1/principals {tenant_id, name, kind, groups?, attributes?, policies?}
  Result<Json> CreatePrincipal(const Json& body);
  Result<Json> GetPrincipal(const std::string& id);
  Result<Json> ListPrincipals(const std::string& tenant_id, const store::Page& page);
  // PATCH /v1/principals/{id} {groups?, roles?, attributes?, policies?}: each field given
  // replaces the stored one; the next request of the principal acts with the change.
  Result<Json> UpdatePrincipal(const std::string& id, const Json& body);

  // Groups and roles (`kind` "group" or "role"): names that policies are attached to.
  // POST /v1/groups|roles {tenant_id?, name, description?, policies}; the tenant defaults
  // to `caller_tenant`.
  Result<Json> CreatePolicySet(const std::string& kind, const std::string& caller_tenant,
                               const Json& body);
  Result<Json> GetPolicySet(const std::string& kind, const std::string& id);
  Result<Json> ListPolicySets(const std::string& kind, const std::string& tenant_id,
                              const store::Page& page);
  // PUT /v1/groups|roles/{id} {description?, policies}: replaces both.
  Result<Json> ReplacePolicySet(const std::string& kind, const std::string& id, const Json& body);
  // DELETE: the principals that name it keep the name and lose its policies.
  Result<Json> DeletePolicySet(const std::string& kind, const std::string& id);
  // The tenant of an existing group or role of `kind` (NotFound otherwise), for the gate.
  Result<std::string> PolicySetTenant(const std::string& kind, const std::string& id);
  // POST /v1/principals/{id}/api-keys {expires_at?}: the key itself is in the answer only.
  Result<Json> CreateApiKey(const std::string& principal_id, const Json& body);
  // DELETE /v1/api-keys/{id}
  Result<Json> RevokeApiKey(const std::string& key_id);
  // The policies of the tenant's group or role `name`; null when there is none (cached).
  Result<std::shared_ptr<const PolicySet>> FindPolicySet(const std::string& tenant_id,
                                                         const std::string& kind,
                                                         const std::string& name);
  // The tenant of an existing principal / key (NotFound otherwise), for the gate.
  Result<std::string> PrincipalTenant(const std::string& id);
  Result<std::string> ApiKeyTenant(const std::string& id);

 private:
  Directory(store::Store* store, Clock* clock, DirectoryOptions options, std::string pepper);

  std::string HashSecret(std::string_view secret) const;
  Result<Json> IssueKey(const store::PrincipalRow& p, int64_t expires_ms,
                        std::vector<store::PrincipalRow> with_principals,
                        std::vector<store::TenantRow> with_tenants, std::string* key_out);
  Result<std::shared_ptr<const Principal>> Build(const store::PrincipalRow& row) const;
  Status SettleOperatorTenant();
  // The stored principal with its own policies only (cached).
  Result<std::shared_ptr<const Principal>> LoadStored(const std::string& id);
  // `stored` with `extra_groups` joined and the policies of its groups and roles attached.
  Result<std::shared_ptr<const Principal>> Attach(std::shared_ptr<const Principal> stored,
                                                  std::vector<std::string> extra_groups,
                                                  std::string credential_id);
  Result<store::PolicySetRow> StoredPolicySet(const std::string& kind, const std::string& id);
  void ForgetPolicySet(const store::PolicySetRow& row);
  Json PolicySetObject(const store::PolicySetRow& row) const;
  // groups, roles, attributes and policies of a principal's body, checked, into `stored`.
  Status ReadPrincipalFields(const std::string& tenant_id, FieldReader& r, Json* stored);
  Result<std::shared_ptr<const Principal>> AuthenticateJwt(std::string_view token);
  Json PrincipalObject(const store::PrincipalRow& row) const;

  store::Store* store_;
  Clock* clock_;
  DirectoryOptions options_;
  const std::string pepper_;  // 32 bytes
  std::string default_tenant_;
  std::string operator_tenant_;  // set by Bootstrap(), read-only after
  std::unique_ptr<JwksSource> jwks_;  // set when options_.jwt is

  std::mutex mu_;
  std::unordered_map<std::string, store::ApiKeyRow> keys_;  // by id; guarded by mu_
  std::unordered_map<std::string, std::shared_ptr<const Principal>> principals_;  // by id
  // Principal ids by "<tenant id>/<name>", for tokens; guarded by mu_.
  std::unordered_map<std::string, std::string> principal_ids_;
  // Claims of JWTs verified lately, by the BLAKE2b of the token; guarded by mu_.
  struct VerifiedToken {
    std::shared_ptr<const Json> claims;
    int64_t valid_until = 0;  // Unix seconds: the earlier of exp + leeway and a minute on
  };
  std::unordered_map<std::string, VerifiedToken> verified_tokens_;
  // Groups' and roles' policies by "<tenant id>/<kind>/<name>", null for none; guarded by
  // mu_. Every write goes through this directory, which forgets what it changes.
  std::unordered_map<std::string, std::shared_ptr<const PolicySet>> policy_sets_;
};

}  // namespace agentd::identity
