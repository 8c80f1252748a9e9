// Random, prefixed identifiers: `agt_`, `ses_`, `trn_`, ... followed by 26 characters of
// Crockford base32 (130 bits; the top 128 are from libsodium's CSPRNG). Thread-safe.
#pragma once

#include <string>
#include <string_view>

namespace agentd {

std::string NewId(std::string_view prefix);
// True when `id` has the given prefix and a well-formed random part.
bool IsValidId(std::string_view id, std::string_view prefix);

}  // namespace agentd
