// Base64 (RFC 4648): the standard alphabet with padding, and the URL-safe alphabet without
// padding that JOSE (JWS, JWK) uses. Backed by libsodium. Thread-safe.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace agentd {

enum class Base64Variant { kStandard, kUrlNoPadding };

std::string Base64Encode(std::string_view bytes, Base64Variant variant = Base64Variant::kStandard);
// Fails with InvalidArgument on any character outside the variant's alphabet (whitespace
// included) or a wrong length or padding.
Result<std::string> Base64Decode(std::string_view text,
                                 Base64Variant variant = Base64Variant::kStandard);

}  // namespace agentd
