// Tokens (src/identity/jwt.h, src/identity/signing_key.h): what authenticating one request
// and minting one tool call's token cost.
//   mint_tool_token  MintToolToken: claims to JSON, base64url, Ed25519 signature (libsodium),
//                    a fresh random jti; paid on every tool call
//   verify_rs256     VerifyJwt of an identity provider's token signed with RSA-2048
//   verify_es256     the same with P-256
//   verify_eddsa     the same with Ed25519 (also how a tool checks agentd's token)
// The verifying key set holds the three keys; tokens carry a kid. Keys are generated at start.
// Besides Google Benchmark's mean time per operation, each benchmark reports p50_ns and
// p99_ns: percentiles of 5,000 operations timed one by one (the clock reads included).
#include <benchmark/benchmark.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <vector>

#include "common/base64.h"
#include "identity/jwt.h"
#include "identity/signing_key.h"

using agentd::Base64Encode;
using agentd::Base64Variant;
using agentd::Json;
using agentd::Result;
namespace id = agentd::identity;

namespace {

constexpr int64_t kNow = 1'790'000'000;

void Die(const std::string& what) {
  std::cerr << "identity_bench: " << what << "\n";
  std::abort();
}

std::string B64(std::string_view b) { return Base64Encode(b, Base64Variant::kUrlNoPadding); }

std::string BnParam(EVP_PKEY* k, const char* name, int pad = 0) {
  BIGNUM* bn = nullptr;
  if (EVP_PKEY_get_bn_param(k, name, &bn) != 1) Die(name);
  std::string out(pad > 0 ? pad : BN_num_bytes(bn), '\0');
  BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(out.size()));
  BN_free(bn);
  return out;
}

// An identity provider: one key, its JWK, and tokens signed with it.
struct Provider {
  EVP_PKEY* key = nullptr;
  const char* alg = nullptr;
  const char* kid = nullptr;

  Json Jwk() const {
    Json j = {{"kid", kid}};
    if (std::string_view(alg) == "RS256") {
      j.update({{"kty", "RSA"},
                {"n", B64(BnParam(key, OSSL_PKEY_PARAM_RSA_N))},
                {"e", B64(BnParam(key, OSSL_PKEY_PARAM_RSA_E))}});
    } else if (std::string_view(alg) == "ES256") {
      j.update({{"kty", "EC"},
                {"crv", "P-256"},
                {"x", B64(BnParam(key, OSSL_PKEY_PARAM_EC_PUB_X, 32))},
                {"y", B64(BnParam(key, OSSL_PKEY_PARAM_EC_PUB_Y, 32))}});
    } else {
      std::string raw(32, '\0');
      size_t len = raw.size();
      EVP_PKEY_get_raw_public_key(key, reinterpret_cast<unsigned char*>(raw.data()), &len);
      j.update({{"kty", "OKP"}, {"crv", "Ed25519"}, {"x", B64(raw)}});
    }
    return j;
  }

  std::string Token(const Json& claims) const {
    std::string input =
        B64(Json{{"alg", alg}, {"typ", "JWT"}, {"kid", kid}}.dump()) + "." + B64(claims.dump());
    const bool ed = std::string_view(alg) == "EdDSA";
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    size_t len = 0;
    const auto* in = reinterpret_cast<const unsigned char*>(input.data());
    if (EVP_DigestSignInit(ctx, nullptr, ed ? nullptr : EVP_sha256(), nullptr, key) != 1 ||
        EVP_DigestSign(ctx, nullptr, &len, in, input.size()) != 1) {
      Die("sign");
    }
    std::string sig(len, '\0');
    EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len, in, input.size());
    sig.resize(len);
    EVP_MD_CTX_free(ctx);
    if (std::string_view(alg) == "ES256") {  // DER to JOSE's r || s
      const auto* p = reinterpret_cast<const unsigned char*>(sig.data());
      ECDSA_SIG* es = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size()));
      std::string raw(64, '\0');
      BN_bn2binpad(ECDSA_SIG_get0_r(es), reinterpret_cast<unsigned char*>(raw.data()), 32);
      BN_bn2binpad(ECDSA_SIG_get0_s(es), reinterpret_cast<unsigned char*>(raw.data()) + 32, 32);
      ECDSA_SIG_free(es);
      sig = raw;
    }
    return input + "." + B64(sig);
  }
};

struct Setup {
  Provider rsa{EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", size_t{2048}), "RS256", "idp-rsa"};
  Provider ec{EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"), "ES256", "idp-ec"};
  Provider ed{EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"), "EdDSA", "idp-ed"};
  id::Jwks jwks;

  Setup() {
    Result<id::Jwks> j = id::Jwks::Parse(Json{{"keys", {rsa.Jwk(), ec.Jwk(), ed.Jwk()}}}.dump());
    if (!j.ok()) Die(j.status().ToString());
    jwks = std::move(j).value();
  }
};

const Setup& S() {
  static const Setup* s = new Setup();
  return *s;
}

// A token as an identity provider issues it for a user of a tenant.
Json ProviderClaims() {
  return {{"iss", "https://idp.example.com/realms/acme"},
          {"sub", "5f1c2e7a-93d4-4b8e-a1f2-0c6d9e8b7a41"},
          {"aud", {"agentd", "account"}},
          {"iat", kNow - 30},
          {"nbf", kNow - 30},
          {"exp", kNow + 270},
          {"email", "alice@acme.example"},
          {"tenant", "acme"},
          {"groups", {"dev", "ops"}},
          {"jti", "b8c4f1d2-6a7e-4e93-9c1b-2d5f8a0e3c67"}};
}

template <typename F>
void Percentiles(benchmark::State& state, F op) {
  std::vector<double> ns(5000);
  for (double& t : ns) {
    auto start = std::chrono::steady_clock::now();
    op();
    t = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
  }
  std::sort(ns.begin(), ns.end());
  state.counters["p50_ns"] = ns[ns.size() / 2];
  state.counters["p99_ns"] = ns[ns.size() * 99 / 100];
}

void BM_MintToolToken(benchmark::State& state) {
  Result<id::SigningKey> key = id::SigningKey::FromSeed(std::string(32, 'k'));
  if (!key.ok()) Die(key.status().ToString());
  id::ToolTokenClaims c;
  c.issuer = "https://agentd.example.com";
  c.tenant = "acme";
  c.subject = "usr_01JD3K8Q9Z7M2X4V6B8N0P2R4T";
  c.actor = "agt_01JD3K8Q9Z7M2X4V6B8N0P2R4T";
  c.session_id = "ses_01JD3K8Q9Z7M2X4V6B8N0P2R4T";
  c.audience = "tool:github.create_issue";
  c.issued_at = kNow;
  auto op = [&] {
    std::string t = id::MintToolToken(*key, c);
    benchmark::DoNotOptimize(t);
  };
  for (auto _ : state) op();
  Percentiles(state, op);
  state.SetLabel(std::to_string(id::MintToolToken(*key, c).size()) + " B token");
}

void Verify(benchmark::State& state, const Provider& p) {
  const std::string token = p.Token(ProviderClaims());
  id::VerifyOptions o;
  o.issuer = "https://idp.example.com/realms/acme";
  o.audience = "agentd";
  o.now = kNow;
  Result<Json> first = id::VerifyJwt(token, S().jwks, o);
  if (!first.ok()) {
    state.SkipWithError(first.status().ToString().c_str());
    return;
  }
  auto op = [&] {
    Result<Json> r = id::VerifyJwt(token, S().jwks, o);
    benchmark::DoNotOptimize(r);
  };
  for (auto _ : state) op();
  Percentiles(state, op);
  state.SetLabel(std::to_string(token.size()) + " B token");
}

void BM_VerifyRs256(benchmark::State& s) { Verify(s, S().rsa); }
void BM_VerifyEs256(benchmark::State& s) { Verify(s, S().ec); }
void BM_VerifyEdDsa(benchmark::State& s) { Verify(s, S().ed); }

BENCHMARK(BM_MintToolToken)->Name("mint_tool_token")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_VerifyRs256)->Name("verify_rs256")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_VerifyEs256)->Name("verify_es256")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_VerifyEdDsa)->Name("verify_eddsa")->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
