// Tokens (src/identity/jwt.h, src/identity/signing_key.h): what authenticating one request
// and minting one tool call's token cost.
//   mint_tool_token  MintToolToken: claims to JSON, base64url, Ed25519 signature (libsodium),
//                    a fresh random jti; paid on every tool call
//   verify_rs256     VerifyJwt of an identity provider's token signed with RSA-2048
//   verify_es256     the same with P-256
//   verify_eddsa     the same with Ed25519 (also how a tool checks agentd's token)
//   gate_api_key/G   what the API adds to a request before its handler runs: Directory::
//                    Authenticate of an API key (its row and principal cached after the
//                    first request, as in a running agentd; the keyed hash is computed
//                    every time) and the gate's policy decision. The principal has one policy
//                    of its own and G groups of 20 statements each (SQLite store, real keys).
//   gate_jwt         the same for an identity provider's EdDSA token (verified every time)
//                    naming the principal and one group
// The verifying key set holds the three keys; tokens carry a kid. Keys are generated at start.
// Besides Google Benchmark's mean time per operation, each benchmark reports p50_ns and
// p99_ns: percentiles of 5,000 operations timed one by one (the clock reads included).
#include <benchmark/benchmark.h>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <vector>

#include "common/clock.h"
#include "identity/directory.h"
#include "identity/jwt.h"
#include "identity/signing_key.h"
#include "store/sqlite/sqlite_store.h"
#include "tests/support/jwt_signer.h"

using agentd::Json;
using agentd::Result;
namespace id = agentd::identity;

namespace {

constexpr int64_t kNow = 1'790'000'000;

void Die(const std::string& what) {
  std::cerr << "identity_bench: " << what << "\n";
  std::abort();
}

// An identity provider: one key, its JWK, and tokens signed with it
// (tests/support/jwt_signer.h).
struct Provider {
  agentd::testing::Pkey key;
  const char* alg = nullptr;
  const char* kid = nullptr;

  Json Jwk() const { return agentd::testing::JwkOf(key.get(), kid); }
  std::string Token(const Json& claims) const {
    return agentd::testing::SignToken(key.get(), {{"alg", alg}, {"typ", "JWT"}, {"kid", kid}},
                                      claims);
  }
};

struct Setup {
  Provider rsa{agentd::testing::GenRsa(2048), "RS256", "idp-rsa"};
  Provider ec{agentd::testing::GenP256(), "ES256", "idp-ec"};
  Provider ed{agentd::testing::GenEd25519(), "EdDSA", "idp-ed"};
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

// A policy document of `n` statements for the tenant's sessions and agents; the last one
// allows what the benchmark asks.
Json Document(int n, const std::string& sid_prefix) {
  Json statements = Json::array();
  for (int i = 0; i + 1 < n; ++i) {
    statements.push_back({{"sid", sid_prefix + std::to_string(i)},
                          {"effect", "allow"},
                          {"actions", {"agents:Read"}},
                          {"resources", {"agentd:${principal.tenant}:agent/agt_" + std::to_string(i)}}});
  }
  statements.push_back({{"sid", sid_prefix + "sessions"},
                        {"effect", "allow"},
                        {"actions", {"sessions:Read", "sessions:Invoke"}},
                        {"resources", {"agentd:${principal.tenant}:session/*"}}});
  return {{"version", "2026-11-01"}, {"statements", statements}};
}

// A data directory with a store, a directory, a tenant, `groups` groups and alice in them.
struct Tenancy {
  std::string dir;
  std::unique_ptr<agentd::store::Store> store;
  std::unique_ptr<id::Directory> directory;
  std::string tenant;
  std::string key;

  Tenancy(int groups, std::optional<id::JwtSignIn> jwt = std::nullopt) {
    char tmpl[] = "/tmp/identity-bench-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) Die("mkdtemp");
    dir = tmpl;
    agentd::store::sqlite::SqliteOptions so;
    so.path = dir + "/agentd.db";
    auto st = agentd::store::sqlite::OpenSqliteStore(so);
    if (!st.ok()) Die(st.status().ToString());
    store = std::move(st).value();
    if (jwt) {
      std::ofstream(dir + "/jwks.json") << Json{{"keys", {S().ed.Jwk()}}}.dump();
      jwt->jwks = dir + "/jwks.json";
    }
    auto d = id::Directory::Open(store.get(), agentd::SystemClock::Default(), {dir, {}, ""});
    if (!d.ok()) Die(d.status().ToString());
    directory = std::move(d).value();
    Check(directory->Bootstrap());
    tenant = Value(directory->CreateTenant({{"name", "acme"}}))["id"];
    Json names = Json::array();
    for (int g = 0; g < groups; ++g) {
      std::string name = "group-" + std::to_string(g);
      Value(directory->CreatePolicySet("group", tenant,
                                       {{"name", name}, {"policies", {Document(20, name + "-")}}}));
      names.push_back(name);
    }
    Json alice = Value(directory->CreatePrincipal({{"tenant_id", tenant},
                                                   {"name", "alice@acme.example"},
                                                   {"kind", "user"},
                                                   {"groups", names},
                                                   {"policies", {Document(5, "own-")}}}));
    key = Value(directory->CreateApiKey(alice["id"], Json::object()))["key"];
    if (jwt) {
      // The provider's tenant claim "acme" signs in to the tenant just made.
      jwt->tenants = {{"acme", tenant}};
      auto with_jwt = id::Directory::Open(store.get(), agentd::SystemClock::Default(),
                                          {dir, jwt, ""});
      if (!with_jwt.ok()) Die(with_jwt.status().ToString());
      directory = std::move(with_jwt).value();
      Check(directory->Bootstrap());
    }
  }
  ~Tenancy() {
    store->Close();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  static void Check(const agentd::Status& st) {
    if (!st.ok()) Die(st.ToString());
  }
  static Json Value(Result<Json> r) {
    if (!r.ok()) Die(r.status().ToString());
    return *r;
  }
};

// Authenticates `authorization` and decides a session read, as the gate does.
void Gate(benchmark::State& state, Tenancy& t, const std::string& authorization) {
  id::Request req;
  req.action = "sessions:Read";
  req.resource = "agentd:" + t.tenant + ":session/ses_01JD3K8Q9Z7M2X4V6B8N0P2R4T";
  auto op = [&] {
    auto who = t.directory->Authenticate(authorization);
    if (!who.ok()) Die(who.status().ToString());
    req.principal = (*who)->Context();
    req.time_millis = agentd::SystemClock::Default()->NowMillis();
    id::Decision d = id::Decide((*who)->PolicyPointers(), req);
    if (!d.allowed()) Die("the gate refused");
    benchmark::DoNotOptimize(d);
  };
  op();  // the first request fills the caches
  for (auto _ : state) op();
  Percentiles(state, op);
}

void BM_GateApiKey(benchmark::State& state) {
  Tenancy t(static_cast<int>(state.range(0)));
  Gate(state, t, "Bearer " + t.key);
}

void BM_GateJwt(benchmark::State& state) {
  id::JwtSignIn jwt;
  jwt.issuer = "https://idp.example.com/realms/acme";
  jwt.audience = "agentd";
  jwt.principal_claim = "email";
  Tenancy t(1, jwt);
  // The claim names the provider's tenant, which the directory maps to agentd's.
  const int64_t now = static_cast<int64_t>(std::time(nullptr));
  Json claims = ProviderClaims();
  claims["iat"] = now - 30;
  claims["nbf"] = now - 30;
  claims["exp"] = now + 3600;
  claims["tenant"] = "acme";
  claims["groups"] = {"group-0", "dev"};
  Gate(state, t, "Bearer " + S().ed.Token(claims));
}

BENCHMARK(BM_MintToolToken)->Name("mint_tool_token")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GateApiKey)->Name("gate_api_key")->Arg(0)->Arg(1)->Arg(4)->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GateJwt)->Name("gate_jwt")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_VerifyRs256)->Name("verify_rs256")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_VerifyEs256)->Name("verify_es256")->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_VerifyEdDsa)->Name("verify_eddsa")->Unit(benchmark::kMicrosecond);

}  // namespace

BENCHMARK_MAIN();
