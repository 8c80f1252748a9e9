// libFuzzer target for JWT verification and JWKS parsing (src/identity/jwt.h). Each input is
// tried three ways, and none may crash, hang, leak, or be answered with another status code
// than documented:
//   - as a token, verified against a fixed key set (RS256, ES256, EdDSA keys); a refusal must
//     not quote the token;
//   - as a JWKS document; when it parses, fixed tokens are verified against it;
//   - as the claims set of a token signed with a fixed agentd key (signing_key.h), so that
//     the claim checks see arbitrary JSON behind a valid signature.
//
//   tests/fuzz/run_fuzz.sh BUILD_DIR            (what ctest's fuzz_smoke runs), or by hand:
//   CXX=clang++ cmake -S . -B build-fuzz -DAGENTD_FUZZ=ON && cmake --build build-fuzz -t jwt_fuzz
//   build-fuzz/bin/jwt_fuzz -max_total_time=120 tests/fuzz/jwt_corpus
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/base64.h"
#include "identity/jwt.h"
#include "identity/signing_key.h"

using namespace agentd;
using namespace agentd::identity;

namespace {

// Keys generated once for this target; the tokens below are signed with them and expire in
// 2100. The set also holds a symmetric key, which must be skipped.
constexpr std::string_view kJwks =
    R"json({"keys": [{"kty": "RSA", "kid": "fz-rsa", "alg": "RS256", "use": "sig", "n": "3-N7PGQTK-xAmv1M9V6pDewaFNgvM-tiLy-mxHPq80fXKKcMHQVUvm0mu7xa0MIR9J1lH-ct05MvGLgWy1d-8tGnJup2sxBM5Z3LBgM3DXyC6QNYsXVghdnO-s6EnR1EEIS40lKl7cLUzUzCSedvrHuUMj0dENU65Rk3ya0whBOb3Ei-Q_Mee9v14PnGSL22NY4iBn1QxAiIaMYmEdKf5ckPcKSd85KGPFbZ2hTj8vC2Xw_rv3iWRFrqcwcHOH7Skubn5jGirQ4OhNkxdiu8n-nTdmyWdoVQOkbMYVfndD9i8QOjmyKvdVod6kkk4QS80ZRk7h4edYn-LXMIGvOtYQ", "e": "AQAB"}, {"kty": "EC", "kid": "fz-ec", "crv": "P-256", "x": "d5z7pHO7WOb_A5wde5KBikwxMwwvts48wkb3Ee-yAxU", "y": "NCAQAfrRhOlV4z1fZt2zfyDihCAHr_xJqidrwc0Wnd4"}, {"kty": "OKP", "kid": "fz-ed", "crv": "Ed25519", "x": "wvcAPpBhwe2FqY-gDT_hUXnnWriaCftOFP06JdDeCVk"}, {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"}]})json";

constexpr std::string_view kTokens[] = {
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImZ6LXJzYSJ9."
    "eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwiYXVkIjpbImFnZW50ZCIsIngiXSwic3ViIjoidS0xIiwiaWF0IjoxNz"
    "kwMDAwMDAwLCJuYmYiOjE3OTAwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMCwiYWN0Ijp7InN1YiI6ImFndF8xIn19."
    "jCn4K3FmS7qG41Id-kweWtP5yfqlBzvtCeWHOtzH2NEyoM_3YDlvF5r1K50J2aOdJ_"
    "PSv6yh0P5jkLmF5bmyZ8vhWZ1KYmU6bBHX5X1XAkVY3VVrBM_yZAN2KtDxL-Rs-NfQPXL6Yp6U-"
    "PANjRgoGASdhqxaSSJyhyt7bxl-"
    "Me1bciuJdG7oAQLoeeoP8QbHfzwf1w9zZoermIxtNZS2FTDBxoG53brLR6evykQd6rPP3_z8wcG51aQJOzqDuE5R54uC-"
    "ATeoiTGy5GVYhB6je_x_RrQuwFOgg23TMXB93NaJN076yv7oco1uxTWcEqFDZEK00lhh9EyzlxEbzbYqA",
    "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImZ6LWVjIn0."
    "eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwiYXVkIjpbImFnZW50ZCIsIngiXSwic3ViIjoidS0xIiwiaWF0IjoxNz"
    "kwMDAwMDAwLCJuYmYiOjE3OTAwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMCwiYWN0Ijp7InN1YiI6ImFndF8xIn19.-_"
    "qAZNEes_OrWIl4OAvgmpWi9XBgRmaygvomegbzuSf7PsHa9gBF7SkXGlf-YJS0tXQxqKkXw_EQkdFFvkLh_w",
    "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCIsImtpZCI6ImZ6LWVkIn0."
    "eyJpc3MiOiJodHRwczovL2lkcC5leGFtcGxlIiwiYXVkIjpbImFnZW50ZCIsIngiXSwic3ViIjoidS0xIiwiaWF0IjoxNz"
    "kwMDAwMDAwLCJuYmYiOjE3OTAwMDAwMDAsImV4cCI6NDEwMjQ0NDgwMCwiYWN0Ijp7InN1YiI6ImFndF8xIn19."
    "S15v8cJ6yA5UvfkBfmDRhGjZnn_v2Y1Kbdc9SjCPZwqkrg7eg0IjAHIBpEO9AhOGdMWTq9uqy0utflMymA-VCw",
};

VerifyOptions Opts() {
  VerifyOptions o;
  o.issuer = "https://idp.example";
  o.audience = "agentd";
  o.now = 1'790'000'100;
  return o;
}

const Jwks& FixedJwks() {
  static const Jwks* jwks = [] {
    Result<Jwks> j = Jwks::Parse(kJwks);
    if (!j.ok() || j->size() != 3) std::abort();
    return new Jwks(std::move(j).value());
  }();
  return *jwks;
}

struct AgentdKey {
  SigningKey key;
  Jwks jwks;
};

const AgentdKey& FixedAgentdKey() {
  static const AgentdKey* k = [] {
    Result<SigningKey> key = SigningKey::FromSeed(std::string(32, 'f'));
    if (!key.ok()) std::abort();
    Result<Jwks> jwks = Jwks::Parse(JwksDocument({&*key}).dump());
    if (!jwks.ok()) std::abort();
    return new AgentdKey{std::move(key).value(), std::move(jwks).value()};
  }();
  return *k;
}

void CheckRefusal(const Result<Json>& r, JwtFailure why, std::string_view token) {
  if (r.ok()) {
    if (why != JwtFailure::kNone || !r->is_object()) std::abort();
    return;
  }
  if (r.status().code() != StatusCode::kUnauthenticated || why == JwtFailure::kNone) std::abort();
  // A token has its segments joined by dots; a dotless input of 16 bytes can spell a piece
  // of the fixed wording ("...three dot-separated parts") without anything being quoted.
  if (token.size() >= 16 && token.find('.') != std::string_view::npos &&
      r.status().message().find(token) != std::string::npos) {
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  static const bool kFixedTokensVerify = [] {
    for (std::string_view t : kTokens) {
      if (!VerifyJwt(t, FixedJwks(), Opts()).ok()) std::abort();
    }
    return true;
  }();
  (void)kFixedTokensVerify;

  // 1. A token.
  Result<CompactJws> jws = ParseCompactJws(text);
  if (!jws.ok() && jws.status().code() != StatusCode::kInvalidArgument) std::abort();
  JwtFailure why = JwtFailure::kMalformed;
  Result<Json> claims = VerifyJwt(text, FixedJwks(), Opts(), &why);
  CheckRefusal(claims, why, text);
  if (claims.ok() && !jws.ok()) std::abort();  // verified what does not parse

  // 2. A key set.
  Result<Jwks> jwks = Jwks::Parse(text);
  if (!jwks.ok()) {
    if (jwks.status().code() != StatusCode::kInvalidArgument) std::abort();
  } else {
    for (std::string_view t : kTokens) {
      why = JwtFailure::kMalformed;
      Result<Json> r = VerifyJwt(t, *jwks, Opts(), &why);
      CheckRefusal(r, why, t);
    }
  }

  // 3. A claims set behind a valid signature.
  if (!text.empty() && text.front() == '{') {
    const AgentdKey& k = FixedAgentdKey();
    std::string input = Base64Encode(R"({"alg":"EdDSA","kid":")" + k.key.kid() + R"("})",
                                     Base64Variant::kUrlNoPadding) +
                        "." + Base64Encode(text, Base64Variant::kUrlNoPadding);
    std::string token = input + "." + Base64Encode(k.key.Sign(input), Base64Variant::kUrlNoPadding);
    why = JwtFailure::kMalformed;
    Result<Json> r = VerifyJwt(token, k.jwks, Opts(), &why);
    CheckRefusal(r, why, token);
    // The signature holds, so only the content can be the reason.
    if (why == JwtFailure::kBadSignature || why == JwtFailure::kUnknownKid) std::abort();
  }
  return 0;
}
