// Small private files for agentd's secret keys: the API-key pepper, the vault's master key,
// the bootstrap admin key. Readable by their owner alone, never overwritten. Blocking.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace agentd::identity {

// Creates `path` (mode 0600, O_EXCL) with `bytes`, synced; fails when it exists.
Status WritePrivateFile(const std::string& path, std::string_view bytes);

// The `size`-byte key in `path` (its bytes raw, or as unpadded URL-safe base64); when there
// is no such file, a new random key written there as base64. A file others may read, or one
// that is not such a key, is refused with an error naming it.
Result<std::string> LoadOrCreateKeyFile(const std::string& path, size_t size);

}  // namespace agentd::identity
