// agentd's own Ed25519 signing key (libsodium crypto_sign), and the tokens it mints: the
// short-lived, per-tool-call tokens that tell a tool on whose behalf it is called, without
// ever handing it the caller's credentials.
//
// The key lives in one file, created on first start with mode 0600:
//
//   {"kty": "OKP", "crv": "Ed25519", "kid": "<RFC 7638 thumbprint>",
//    "d": "<base64url 32-byte seed>", "x": "<base64url 32-byte public key>"}
//
// The kid is the RFC 7638 JWK thumbprint of the public key (base64url of SHA-256 over
// {"crv":"Ed25519","kty":"OKP","x":"..."}), so anyone holding the public JWK can recompute it.
// Tools and other services verify minted tokens against the JWKS agentd publishes at
// /.well-known/jwks.json (JwksDocument), e.g. with identity::VerifyJwt (jwt.h).
//
// A per-tool-call token (MintToolToken) carries these claims:
//
//   iss      agentd's issuer URL
//   sub      the user principal the session acts for
//   aud      the tool being called
//   act      {"sub": "<agent id>"}: the agent acting for `sub` (RFC 8693 section 4.1)
//   tenant   the tenant of the principal, the agent and the session
//   session  the session id
//   iat, nbf the time of minting (Unix seconds)
//   exp      iat + expires_in
//   jti      128 random bits, base64url: a tool can refuse a replayed token
//
// SigningKey is immutable after loading and safe to share between threads. It wipes its
// secret on destruction and cannot be copied.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "common/status.h"

namespace agentd::identity {

class SigningKey {
 public:
  // Loads the key file at `path`, or creates it (a new random key) when there is none.
  // Creation is atomic: the file appears complete with mode 0600 or not at all, and when
  // two processes race, both end up with the one key that won. Blocking (fsyncs the file
  // and its directory). Fails with FailedPrecondition when the file can be read by group or
  // others, or is not a regular file; InvalidArgument when its content is malformed or
  // inconsistent (x or kid not those of d); Internal on I/O errors.
  static Result<SigningKey> LoadOrCreate(const std::string& path);

  // A key from a 32-byte seed (tests and benchmarks); InvalidArgument on another size.
  static Result<SigningKey> FromSeed(std::string_view seed);

  SigningKey(SigningKey&& other) noexcept;
  SigningKey& operator=(SigningKey&& other) noexcept;
  SigningKey(const SigningKey&) = delete;
  SigningKey& operator=(const SigningKey&) = delete;
  ~SigningKey();

  // The 64-byte Ed25519 signature of `bytes`.
  std::string Sign(std::string_view bytes) const;
  // The 32-byte public key.
  std::string public_key() const;
  // The RFC 7638 thumbprint, base64url (43 characters).
  const std::string& kid() const { return kid_; }
  // The public JWK: kty, crv, x, kid, "alg": "EdDSA", "use": "sig".
  Json Jwk() const;

 private:
  SigningKey() = default;
  void Wipe();

  std::array<unsigned char, 64> secret_{};  // libsodium's secret key: seed || public key
  std::string kid_;
};

// The JWKS document ({"keys": [<Jwk()>...]}) for /.well-known/jwks.json. Several keys while
// one is being rotated out.
Json JwksDocument(const std::vector<const SigningKey*>& keys);

// A compact JWS over `claims` (a JSON object), signed with EdDSA, header
// {"alg":"EdDSA","typ":"JWT","kid":<key.kid()>}.
std::string MintToken(const SigningKey& key, const Json& claims);

// What a per-tool-call token says; see the claims table above.
struct ToolTokenClaims {
  std::string issuer;                    // iss: agentd's issuer URL
  std::string tenant;                    // tenant
  std::string subject;                   // sub: the user principal id
  std::string actor;                     // act.sub: the agent id
  std::string session_id;                // session
  std::string audience;                  // aud: the tool
  std::string jti;                       // empty: 128 random bits, base64url
  int64_t issued_at = 0;                 // iat and nbf, Unix seconds
  std::chrono::seconds expires_in{300};  // exp = iat + expires_in
};

// The claims set of a per-tool-call token.
Json ToolTokenClaimsJson(const ToolTokenClaims& claims);
// MintToken(key, ToolTokenClaimsJson(claims)).
std::string MintToolToken(const SigningKey& key, const ToolTokenClaims& claims);

}  // namespace agentd::identity
