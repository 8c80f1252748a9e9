#include "identity/signing_key.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/base64.h"

namespace agentd::identity {
namespace {

constexpr size_t kMaxKeyFileBytes = 4096;

void InitSodium() {
  // Idempotent and thread-safe; fails only when no entropy source can be opened, which
  // makes every later random read abort anyway.
  static const int kInit = sodium_init();
  (void)kInit;
}

std::string B64(const unsigned char* p, size_t n) {
  return Base64Encode(std::string_view(reinterpret_cast<const char*>(p), n),
                      Base64Variant::kUrlNoPadding);
}

// RFC 7638: SHA-256 over the required members in lexicographic order, no whitespace.
std::string Thumbprint(std::string_view x_b64) {
  std::string canonical = fmt::format(R"({{"crv":"Ed25519","kty":"OKP","x":"{}"}})", x_b64);
  unsigned char digest[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(digest, reinterpret_cast<const unsigned char*>(canonical.data()),
                     canonical.size());
  return B64(digest, sizeof digest);
}

std::string Errno(std::string_view what, const std::string& path) {
  return fmt::format("{} {}: {}", what, path, std::strerror(errno));
}

struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) close(fd);
  }
};

Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = write(fd, data.data(), data.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Internal(Errno("cannot write", path));
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::OK();
}

Status FsyncDir(const std::string& dir) {
  Fd d{open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)};
  if (d.fd < 0 || fsync(d.fd) != 0) return Internal(Errno("cannot fsync the directory", dir));
  return Status::OK();
}

// Reads the key file. NotFound when there is none.
Result<std::string> ReadKeyFile(const std::string& path) {
  Fd f{open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW)};
  if (f.fd < 0) {
    if (errno == ENOENT) return NotFound(path);
    if (errno == ELOOP) return FailedPrecondition(fmt::format("key file {} is a symlink", path));
    return Internal(Errno("cannot open the key file", path));
  }
  struct stat st {};
  if (fstat(f.fd, &st) != 0) return Internal(Errno("cannot stat the key file", path));
  if (!S_ISREG(st.st_mode)) {
    return FailedPrecondition(fmt::format("key file {} is not a regular file", path));
  }
  if ((st.st_mode & 077) != 0) {
    return FailedPrecondition(
        fmt::format("key file {} can be read by group or others (mode {:04o}); run chmod 600 on it",
                    path, st.st_mode & 07777));
  }
  std::string text(kMaxKeyFileBytes + 1, '\0');
  size_t len = 0;
  while (len < text.size()) {
    ssize_t n = read(f.fd, text.data() + len, text.size() - len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Internal(Errno("cannot read the key file", path));
    if (n == 0) break;
    len += static_cast<size_t>(n);
  }
  if (len > kMaxKeyFileBytes) {
    return InvalidArgument(
        fmt::format("key file {} is longer than {} bytes", path, kMaxKeyFileBytes));
  }
  text.resize(len);
  return text;
}

std::string KeyFileJson(const SigningKey& key, std::string_view seed_b64) {
  Json j = key.Jwk();
  j.erase("alg");
  j.erase("use");
  j["d"] = std::string(seed_b64);
  return j.dump(2) + "\n";
}

}  // namespace

Result<SigningKey> SigningKey::FromSeed(std::string_view seed) {
  if (seed.size() != crypto_sign_SEEDBYTES) {
    return InvalidArgument(fmt::format("an Ed25519 seed is {} bytes", crypto_sign_SEEDBYTES));
  }
  InitSodium();
  SigningKey key;
  unsigned char pk[crypto_sign_PUBLICKEYBYTES];
  crypto_sign_seed_keypair(pk, key.secret_.data(),
                           reinterpret_cast<const unsigned char*>(seed.data()));
  key.kid_ = Thumbprint(B64(pk, sizeof pk));
  return key;
}

Result<SigningKey> SigningKey::LoadOrCreate(const std::string& path) {
  InitSodium();
  // Two passes at most: a file another process created between our read and our link is
  // read on the second.
  for (int attempt = 0; attempt < 2; ++attempt) {
    Result<std::string> text = ReadKeyFile(path);
    if (text.ok()) {
      auto bad = [&](std::string_view why) {
        return InvalidArgument(fmt::format("key file {}: {}", path, why));
      };
      Result<Json> doc = ParseJson(*text, "key file");
      if (!doc.ok()) return bad("not valid JSON");
      FieldReader r(*doc, "");
      std::string kty, crv, kid, d, x;
      if (!r.CheckObject().ok()) return bad("not a JSON object");
      Status st = r.String("kty", &kty, true);
      if (st.ok()) st = r.String("crv", &crv, true);
      if (st.ok()) st = r.String("kid", &kid, true);
      if (st.ok()) st = r.String("d", &d, true);
      if (st.ok()) st = r.String("x", &x, true);
      if (st.ok()) st = r.NoUnknownKeys();
      if (!st.ok()) return bad(st.message());
      if (kty != "OKP" || crv != "Ed25519") return bad("not an Ed25519 key (kty OKP, crv Ed25519)");
      Result<std::string> seed = Base64Decode(d, Base64Variant::kUrlNoPadding);
      if (!seed.ok() || seed->size() != crypto_sign_SEEDBYTES) {
        return bad("'d' must be 32 bytes of base64url");
      }
      ASSIGN_OR_RETURN(SigningKey key, FromSeed(*seed));
      sodium_memzero(seed->data(), seed->size());
      if (x != B64(key.secret_.data() + crypto_sign_SEEDBYTES, crypto_sign_PUBLICKEYBYTES)) {
        return bad("'x' is not the public key of 'd'");
      }
      if (kid != key.kid_) return bad("'kid' is not the thumbprint of the key");
      sodium_memzero(text->data(), text->size());
      return key;
    }
    if (text.status().code() != StatusCode::kNotFound) return text.status();

    // None yet: write a new key to a temporary file beside it, then link it into place.
    // link() fails with EEXIST instead of replacing a key another process created meanwhile.
    unsigned char seed[crypto_sign_SEEDBYTES];
    randombytes_buf(seed, sizeof seed);
    Result<SigningKey> key =
        FromSeed(std::string_view(reinterpret_cast<const char*>(seed), sizeof seed));
    std::string seed_b64 = B64(seed, sizeof seed);
    sodium_memzero(seed, sizeof seed);
    if (!key.ok()) return key.status();
    std::string content = KeyFileJson(*key, seed_b64);
    sodium_memzero(seed_b64.data(), seed_b64.size());

    std::filesystem::path p(path);
    std::string dir = p.has_parent_path() ? p.parent_path().string() : ".";
    std::string tmp = fmt::format("{}/.{}.tmp-{}", dir, p.filename().string(), getpid());
    unlink(tmp.c_str());  // a leftover of a crashed earlier attempt of this pid
    Status st;
    {
      Fd f{open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600)};
      if (f.fd < 0) {
        st = Internal(Errno("cannot create", tmp));
      } else {
        st = WriteAll(f.fd, content, tmp);
        if (st.ok() && fsync(f.fd) != 0) st = Internal(Errno("cannot fsync", tmp));
      }
    }
    sodium_memzero(content.data(), content.size());
    if (st.ok() && link(tmp.c_str(), path.c_str()) != 0) {
      st = errno == EEXIST ? AlreadyExists(path) : Internal(Errno("cannot create", path));
    }
    if (unlink(tmp.c_str()) != 0 && errno != ENOENT && st.ok()) {
      st = Internal(Errno("cannot remove", tmp));
    }
    if (st.code() == StatusCode::kAlreadyExists) continue;  // lost a race: read the winner's
    RETURN_IF_ERROR(st);
    RETURN_IF_ERROR(FsyncDir(dir));
    return key;
  }
  return Aborted(fmt::format("key file {} keeps appearing and disappearing", path));
}

SigningKey::SigningKey(SigningKey&& other) noexcept
    : secret_(other.secret_), kid_(std::move(other.kid_)) {
  other.Wipe();
}

SigningKey& SigningKey::operator=(SigningKey&& other) noexcept {
  if (this != &other) {
    secret_ = other.secret_;
    kid_ = std::move(other.kid_);
    other.Wipe();
  }
  return *this;
}

SigningKey::~SigningKey() { Wipe(); }

void SigningKey::Wipe() { sodium_memzero(secret_.data(), secret_.size()); }

std::string SigningKey::Sign(std::string_view bytes) const {
  std::string sig(crypto_sign_BYTES, '\0');
  crypto_sign_detached(reinterpret_cast<unsigned char*>(sig.data()), nullptr,
                       reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
                       secret_.data());
  return sig;
}

std::string SigningKey::public_key() const {
  return std::string(reinterpret_cast<const char*>(secret_.data()) + crypto_sign_SEEDBYTES,
                     crypto_sign_PUBLICKEYBYTES);
}

Json SigningKey::Jwk() const {
  return Json{{"kty", "OKP"},
              {"crv", "Ed25519"},
              {"x", B64(secret_.data() + crypto_sign_SEEDBYTES, crypto_sign_PUBLICKEYBYTES)},
              {"kid", kid_},
              {"alg", "EdDSA"},
              {"use", "sig"}};
}

Json JwksDocument(const std::vector<const SigningKey*>& keys) {
  Json list = Json::array();
  for (const SigningKey* k : keys) list.push_back(k->Jwk());
  return Json{{"keys", std::move(list)}};
}

std::string MintToken(const SigningKey& key, const Json& claims) {
  Json header = {{"alg", "EdDSA"}, {"typ", "JWT"}, {"kid", key.kid()}};
  std::string input = Base64Encode(DumpJson(header), Base64Variant::kUrlNoPadding);
  input += '.';
  input += Base64Encode(DumpJson(claims), Base64Variant::kUrlNoPadding);
  std::string sig = key.Sign(input);
  input += '.';
  input += Base64Encode(sig, Base64Variant::kUrlNoPadding);
  return input;
}

Json ToolTokenClaimsJson(const ToolTokenClaims& c) {
  std::string jti = c.jti;
  if (jti.empty()) {
    InitSodium();
    unsigned char bytes[16];
    randombytes_buf(bytes, sizeof bytes);
    jti = B64(bytes, sizeof bytes);
  }
  return Json{{"iss", c.issuer},
              {"sub", c.subject},
              {"aud", c.audience},
              {"act", {{"sub", c.actor}}},
              {"tenant", c.tenant},
              {"session", c.session_id},
              {"iat", c.issued_at},
              {"nbf", c.issued_at},
              {"exp", c.issued_at + c.expires_in.count()},
              {"jti", std::move(jti)}};
}

std::string MintToolToken(const SigningKey& key, const ToolTokenClaims& claims) {
  return MintToken(key, ToolTokenClaimsJson(claims));
}

}  // namespace agentd::identity
