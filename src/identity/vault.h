// The secrets vault: values a tenant stores for its tools (API keys, tokens), sealed at rest
// and opened only to be handed to a tool call whose definition names them
// (docs/security.md, "Secrets").
//
// Sealing: XChaCha20-Poly1305 (libsodium AEAD) under a per-tenant key, BLAKE2b keyed by the
// master key over the tenant id. The associated data is `tenant id "\0" name`, so a sealed
// value copied to another tenant or another name does not open. A sealed value is
//   0x01 | 24-byte random nonce | ciphertext with its 16-byte tag
// The master key (32 bytes) is a file outside the database, created 0600 on first start;
// a copy of the database alone opens nothing.
//
// Values are write-only through the API: nothing here returns a value except Open, which
// the engine calls at the moment of a tool call.
//
// Thread-safe (immutable after Load). Methods that read or write the store block.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/json.h"
#include "common/status.h"
#include "store/store.h"

namespace agentd::identity {

struct VaultOptions {
  // The master key file; created (0600, 32 random bytes) when missing. A file that its
  // group or others can read is refused.
  std::string master_key_file;
};

// What the vault tells about a secret: never its value.
struct SecretInfo {
  std::string name;
  int64_t created_ms = 0;
  int64_t updated_ms = 0;

  // {name, object: "secret", created_at, updated_at}
  Json ToJson() const;
};

// Limits on what Put accepts.
inline constexpr size_t kMaxSecretBytes = 64 * 1024;

// True for a secret name: 1 to 128 of letters, digits, '_', '.' and '-'.
bool ValidSecretName(std::string_view name);

class Vault {
 public:
  // Reads the master key (creating it when missing). FailedPrecondition when the file is
  // readable by others or is not a 32-byte key.
  static Result<std::unique_ptr<Vault>> Load(store::Store* store, Clock* clock,
                                             VaultOptions options);
  ~Vault();
  Vault(const Vault&) = delete;
  Vault& operator=(const Vault&) = delete;

  // Stores or replaces the tenant's secret. InvalidArgument (naming 'name' or 'value') for a
  // bad name or an empty or too large value.
  Result<SecretInfo> Put(const std::string& tenant_id, const std::string& name,
                         std::string_view value);
  // The value. NotFound when the tenant has no such secret; FailedPrecondition when the
  // sealed value does not open (damaged, moved, or sealed under another master key).
  Result<std::string> Open(const std::string& tenant_id, const std::string& name);
  // The tenant's secrets by name, without values.
  Result<std::vector<SecretInfo>> List(const std::string& tenant_id);

 private:
  Vault(store::Store* store, Clock* clock, std::string master_key);

  // The tenant's key (32 bytes); the caller zeroes it.
  std::string TenantKey(const std::string& tenant_id) const;

  store::Store* store_;
  Clock* clock_;
  std::string master_key_;  // 32 bytes; zeroed by the destructor
};

}  // namespace agentd::identity
