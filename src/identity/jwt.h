// Verifying JSON Web Tokens (RFC 7519) from an identity provider: compact JWS (RFC 7515)
// signed with RS256 (RSA >= 2048 bits), ES256 (P-256) or EdDSA (Ed25519), checked against a
// JSON Web Key Set (RFC 7517) that the provider publishes.
//
// Strict by design. A token is at most kMaxTokenBytes of three base64url segments without
// padding; header and payload are JSON objects without duplicate member names; `alg` must
// be one of the three above and must be the algorithm of the key that verifies it, so that
// `none`, HS256 keyed with an RSA public key, and a token that names another algorithm than
// its key's are all refused (no algorithm confusion). Each key verifies with exactly one
// algorithm, fixed by its kty/crv (and by its `alg`, when the JWKS gives one).
//
// Failure messages say why a token was refused and never contain the token or any part of
// it. Every failure of VerifyJwt is Unauthenticated; JwtFailure says which check failed.
//
// Jwks is immutable after parsing and safe to share between threads; VerifyJwt is
// thread-safe. JwksSource is thread-safe; its methods block while it loads the key set.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/clock.h"
#include "common/json.h"
#include "common/status.h"

namespace agentd::identity {

inline constexpr size_t kMaxTokenBytes = 16 * 1024;
inline constexpr size_t kMaxJwksBytes = 1 << 20;
inline constexpr size_t kMaxJwksKeys = 100;
// Nesting deeper than this in a token's header or payload, or in a JWKS, is refused.
inline constexpr int kMaxJwtJsonDepth = 32;

// The signature algorithms agentd accepts (RFC 7518 and RFC 8037 names).
enum class JwsAlg : uint8_t { kRs256, kEs256, kEdDsa };
std::string_view JwsAlgName(JwsAlg alg);  // "RS256", "ES256", "EdDSA"

// A compact JWS split and decoded, its signature not yet checked.
struct CompactJws {
  Json header;                     // an object with a string `alg`
  Json payload;                    // an object
  std::string kid;                 // the header's `kid`; empty when it has none
  std::string alg_name;            // the header's `alg`, as written
  std::string_view signing_input;  // "<header>.<payload>": a view into the parsed token
  std::string signature;           // decoded bytes
};

// Splits and decodes `token` (header.payload.signature). Fails with InvalidArgument on more
// than kMaxTokenBytes, a number of segments other than three, an empty segment, base64url
// with padding or characters outside its alphabet, a header or payload that is not a JSON
// object (or has duplicate names, or nests deeper than kMaxJwtJsonDepth), a header without
// a string `alg` or with `crit`. The result views into `token`, which must outlive it.
Result<CompactJws> ParseCompactJws(std::string_view token);

// One public key of a key set, usable for exactly one algorithm.
struct JwkKey;

// A parsed JSON Web Key Set.
class Jwks {
 public:
  // Parses a JWKS document ({"keys": [...]}, at most kMaxJwksBytes and kMaxJwksKeys keys).
  // Keys of another kty (or an unsupported curve, an algorithm agentd does not verify with,
  // `use` other than "sig", `key_ops` without "verify") are skipped. A key agentd would use
  // that is malformed (missing or badly encoded members, an RSA modulus under 2048 bits, a
  // point not on the curve, an `alg` that does not fit its kty) fails the whole document
  // with InvalidArgument naming the key's index ("keys[2]: ...").
  static Result<Jwks> Parse(std::string_view json_text);

  Jwks();
  ~Jwks();
  Jwks(Jwks&&) noexcept;
  Jwks& operator=(Jwks&&) noexcept;
  Jwks(const Jwks&) = delete;
  Jwks& operator=(const Jwks&) = delete;

  // How many usable keys the set holds.
  size_t size() const { return keys_.size(); }
  bool HasKid(std::string_view kid) const;

 private:
  friend class JwtVerifierInternal;
  std::vector<std::shared_ptr<const JwkKey>> keys_;
};

// Which check refused a token.
enum class JwtFailure : uint8_t {
  kNone,
  kMalformed,       // not a well-formed compact JWS or claims set
  kUnsupportedAlg,  // `alg` is none, HS*, or anything but RS256/ES256/EdDSA
  kUnknownKid,      // no key with the token's kid (or no kid and not exactly one candidate)
  kAlgMismatch,     // the key with that kid verifies with another algorithm
  kBadSignature,
  kExpired,         // exp + leeway <= now
  kNotYetValid,     // nbf - leeway > now
  kIssuedInFuture,  // iat - leeway > now
  kWrongIssuer,
  kWrongAudience,
  kMissingClaim,  // exp or iss absent
};
std::string_view JwtFailureName(JwtFailure f);  // "expired", "bad_signature", ...

struct VerifyOptions {
  // The `iss` the token must carry, compared exactly. Required.
  std::string issuer;
  // Must equal `aud` or be one of its entries when `aud` is an array. Required.
  std::string audience;
  // Tolerated clock skew for exp, nbf and iat.
  int64_t leeway_seconds = 60;
  // The current time in Unix seconds; 0 reads the system clock.
  int64_t now = 0;
};

// Verifies the token's signature with a key of `jwks`, then its claims: `iss`, `aud`,
// `exp` (required), `nbf` and `iat` (when present). Returns the claims set on success and
// Unauthenticated otherwise; `*failure`, when given, says which check failed (kNone on
// success). InvalidArgument when `opts` lacks an issuer or an audience.
Result<Json> VerifyJwt(std::string_view token, const Jwks& jwks, const VerifyOptions& opts,
                       JwtFailure* failure = nullptr);

// Where a JWKS comes from and how long it is kept.
struct JwksSourceOptions {
  // A file path, or an http:// or https:// URL.
  std::string location;
  // A loaded key set is reloaded on the first use after this long.
  std::chrono::seconds max_age{600};
  // A token with an unknown kid reloads the set (the provider may have rotated its keys),
  // at most once in this interval.
  std::chrono::seconds min_refresh_interval{30};
  // Timeout of one HTTP fetch.
  std::chrono::milliseconds http_timeout{5000};
};

// A JWKS loaded from a file or a URL, cached, and reloaded when it is old or when a token
// names a kid it does not hold. A failed load keeps the previous set and is retried after
// min_refresh_interval, not on every call. Thread-safe; the methods block while loading.
class JwksSource {
 public:
  // Fetches the document at a location: the file's or the HTTP response's body.
  using Fetcher = std::function<Result<std::string>(const std::string& location)>;

  // `clock` must outlive the source. `fetch` defaults to FetchJwksBlocking.
  JwksSource(JwksSourceOptions opts, const Clock* clock, Fetcher fetch = nullptr);

  // The current key set, loaded when there is none yet or it is older than max_age.
  // Unavailable when it cannot be loaded and no earlier set is held.
  Result<std::shared_ptr<const Jwks>> GetBlocking();

  // VerifyJwt against the current set; on an unknown kid, reloads the set (rate-limited)
  // and tries once more.
  Result<Json> VerifyBlocking(std::string_view token, const VerifyOptions& opts,
                              JwtFailure* failure = nullptr);

 private:
  Result<std::shared_ptr<const Jwks>> Load(bool force);

  const JwksSourceOptions opts_;
  const Clock* const clock_;
  const Fetcher fetch_;
  std::mutex mu_;  // guards the members below; held while loading, so one load at a time
  std::shared_ptr<const Jwks> jwks_;
  Status last_error_;  // of the last load, when it failed
  bool loaded_once_ = false;
  std::chrono::steady_clock::time_point next_load_{};    // when jwks_ is due for a reload
  std::chrono::steady_clock::time_point next_forced_{};  // the earliest forced reload
};

// Reads a JWKS document from a file path or fetches it with GET from an http(s) URL (status
// 200 required, at most kMaxJwksBytes). Blocking.
Result<std::string> FetchJwksBlocking(const std::string& location,
                                      std::chrono::milliseconds timeout);

}  // namespace agentd::identity
