#include "identity/vault.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cerrno>
#include <cstring>

#include "common/base64.h"
#include "identity/key_file.h"

namespace agentd::identity {

namespace {

constexpr size_t kMasterKeyBytes = 32;
constexpr unsigned char kSealVersion = 1;
constexpr size_t kNonceBytes = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES;
constexpr size_t kTagBytes = crypto_aead_xchacha20poly1305_ietf_ABYTES;
// Separates the tenant keys from any other use of the master key.
constexpr std::string_view kTenantKeyContext = "agentd secrets v1 tenant key";

// Zeroes a string's bytes when it goes out of scope.
struct Wipe {
  std::string& s;
  ~Wipe() { sodium_memzero(s.data(), s.size()); }
};

std::string AssociatedData(const std::string& tenant_id, const std::string& name) {
  std::string ad = tenant_id;
  ad.push_back('\0');
  ad += name;
  return ad;
}

}  // namespace

bool ValidSecretName(std::string_view name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-';
    if (!ok) return false;
  }
  return true;
}

Json SecretInfo::ToJson() const {
  return Json{{"name", name},
              {"object", "secret"},
              {"created_at", FormatRfc3339(created_ms)},
              {"updated_at", FormatRfc3339(updated_ms)}};
}

Vault::Vault(store::Store* store, Clock* clock, std::string master_key)
    : store_(store), clock_(clock), master_key_(std::move(master_key)) {}

Vault::~Vault() { sodium_memzero(master_key_.data(), master_key_.size()); }

Result<std::unique_ptr<Vault>> Vault::Load(store::Store* store, Clock* clock,
                                           VaultOptions options) {
  if (sodium_init() < 0) return Internal("libsodium failed to initialise");
  ASSIGN_OR_RETURN(std::string key, LoadOrCreateKeyFile(options.master_key_file, kMasterKeyBytes));
  return std::unique_ptr<Vault>(new Vault(store, clock, std::move(key)));
}

std::string Vault::TenantKey(const std::string& tenant_id) const {
  std::string input(kTenantKeyContext);
  input.push_back('\0');
  input += tenant_id;
  std::string key(crypto_aead_xchacha20poly1305_ietf_KEYBYTES, '\0');
  crypto_generichash(reinterpret_cast<unsigned char*>(key.data()), key.size(),
                     reinterpret_cast<const unsigned char*>(input.data()), input.size(),
                     reinterpret_cast<const unsigned char*>(master_key_.data()),
                     master_key_.size());
  return key;
}

Result<SecretInfo> Vault::Put(const std::string& tenant_id, const std::string& name,
                              std::string_view value) {
  if (!ValidSecretName(name)) {
    return InvalidArgument(
        "'name' must be 1 to 128 characters of letters, digits, '_', '.' or '-'");
  }
  if (value.empty() || value.size() > kMaxSecretBytes) {
    return InvalidArgument(
        fmt::format("'value' must be a non-empty string of at most {} bytes", kMaxSecretBytes));
  }
  std::string key = TenantKey(tenant_id);
  Wipe wipe_key{key};
  const std::string ad = AssociatedData(tenant_id, name);
  std::string sealed(1 + kNonceBytes + value.size() + kTagBytes, '\0');
  auto* out = reinterpret_cast<unsigned char*>(sealed.data());
  out[0] = kSealVersion;
  randombytes_buf(out + 1, kNonceBytes);
  unsigned long long sealed_len = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(
      out + 1 + kNonceBytes, &sealed_len, reinterpret_cast<const unsigned char*>(value.data()),
      value.size(), reinterpret_cast<const unsigned char*>(ad.data()), ad.size(), nullptr,
      out + 1, reinterpret_cast<const unsigned char*>(key.data()));

  const int64_t now = clock_->NowMillis();
  ASSIGN_OR_RETURN(auto existing, store_->GetSecret(tenant_id, name));
  store::SecretRow row{tenant_id, name, std::move(sealed), existing ? existing->created_ms : now,
                       now};
  SecretInfo info{name, row.created_ms, row.updated_ms};
  store::WriteBatch b;
  b.secrets.push_back(std::move(row));
  RETURN_IF_ERROR(store_->CommitBlocking(std::move(b)));
  return info;
}

Result<std::string> Vault::Open(const std::string& tenant_id, const std::string& name) {
  ASSIGN_OR_RETURN(auto row, store_->GetSecret(tenant_id, name));
  if (!row) return NotFound(fmt::format("secret '{}' not found", name));
  const std::string& sealed = row->sealed;
  auto damaged = [&] {
    return FailedPrecondition(
        fmt::format("secret '{}' does not open: it is damaged or was sealed under another "
                    "master key",
                    name));
  };
  if (sealed.size() < 1 + kNonceBytes + kTagBytes ||
      static_cast<unsigned char>(sealed[0]) != kSealVersion) {
    return damaged();
  }
  std::string key = TenantKey(tenant_id);
  Wipe wipe_key{key};
  const std::string ad = AssociatedData(tenant_id, name);
  const auto* in = reinterpret_cast<const unsigned char*>(sealed.data());
  const size_t cipher_len = sealed.size() - 1 - kNonceBytes;
  std::string value(cipher_len - kTagBytes, '\0');
  unsigned long long value_len = 0;
  if (crypto_aead_xchacha20poly1305_ietf_decrypt(
          reinterpret_cast<unsigned char*>(value.data()), &value_len, nullptr,
          in + 1 + kNonceBytes, cipher_len, reinterpret_cast<const unsigned char*>(ad.data()),
          ad.size(), in + 1, reinterpret_cast<const unsigned char*>(key.data())) != 0) {
    return damaged();
  }
  value.resize(value_len);
  return value;
}

Result<std::vector<SecretInfo>> Vault::List(const std::string& tenant_id) {
  ASSIGN_OR_RETURN(auto rows, store_->ListSecrets(tenant_id));
  std::vector<SecretInfo> out;
  out.reserve(rows.size());
  for (const auto& r : rows) out.push_back({r.name, r.created_ms, r.updated_ms});
  return out;
}

}  // namespace agentd::identity
