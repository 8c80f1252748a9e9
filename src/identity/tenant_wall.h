// The wall between tenants (docs/security.md, "Tenants are walls"). A principal reaches the
// objects of its own tenant only, whatever its policies, groups, roles or token claims say;
// principals of the operator's tenant alone reach other tenants. The wall is checked before
// policy is evaluated, so no policy a tenant writes for itself can widen it: a policy that
// names another tenant (`agentd:*:...`, `agentd:other:...`, `*`) is accepted, and its reach is
// clamped to the tenant it is stored in.
//
// Pure functions of immutable values; thread-safe.
#pragma once

#include <string_view>

#include "identity/directory.h"

namespace agentd::identity {

// Whether `who` may act on an object of `tenant` ("*" for the installation as a whole, such
// as creating tenants).
inline bool ReachesTenant(const Principal& who, std::string_view tenant) {
  return who.is_operator || (!tenant.empty() && tenant == who.tenant_id);
}

// The tenant part of a resource name "agentd:<tenant>:<type>/<id>"; "" for a name of any
// other shape, which no one but the operator's principals reaches.
inline std::string_view ResourceTenant(std::string_view resource) {
  constexpr std::string_view kPrefix = "agentd:";
  if (!resource.starts_with(kPrefix)) return {};
  resource.remove_prefix(kPrefix.size());
  size_t colon = resource.find(':');
  if (colon == std::string_view::npos) return {};
  return resource.substr(0, colon);
}

}  // namespace agentd::identity
