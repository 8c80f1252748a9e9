// A signer of JSON Web Tokens on OpenSSL, independent of agentd's own code, for tests and
// benchmarks that play an identity provider: keys, their public JWKs, and tokens signed
// with them (RS256, ES256 with the signature as r || s, EdDSA), plus HS256 for the
// algorithm-confusion attack. Failures abort: these are fixtures, not code under test.
#pragma once

#include <openssl/evp.h>

#include <memory>
#include <string>
#include <string_view>

#include "common/json.h"

namespace agentd::testing {

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
using Pkey = std::unique_ptr<EVP_PKEY, PkeyFree>;

Pkey GenRsa(size_t bits = 2048);
Pkey GenP256();
Pkey GenEd25519();

// base64url without padding.
std::string B64(std::string_view bytes);

// The public JWK of a key, with `kid` and without alg or use.
Json JwkOf(EVP_PKEY* k, const std::string& kid);
// The key's public half as PEM (SubjectPublicKeyInfo).
std::string PublicPem(EVP_PKEY* k);

// The JWS signature of `input` with `k`: RS256, ES256 or EdDSA by the key's type.
std::string SignRaw(EVP_PKEY* k, std::string_view input);
// header.payload.signature of the JSON texts given.
std::string SignToken(EVP_PKEY* k, const Json& header, const Json& payload);
std::string Hs256Token(std::string_view secret, const Json& header, const Json& payload);

}  // namespace agentd::testing
