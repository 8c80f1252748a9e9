// JSON Web Tokens: verification of RS256, ES256 and EdDSA tokens against a JWKS (every
// check refusing what it should, with a reason and without echoing the token), JWKS parsing,
// the cached JWKS source, agentd's signing key file and the tokens it mints.
//
// Keys are generated at test time with OpenSSL and tokens are signed by the test signer
// (tests/support/jwt_signer.h), independent of the code under test.
#include "identity/jwt.h"

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <memory>

#include "common/base64.h"
#include "identity/signing_key.h"
#include "tests/support/jwt_signer.h"

namespace agentd::identity {
namespace {

namespace fs = std::filesystem;

constexpr int64_t kNow = 1'790'000'000;
constexpr const char* kIssuer = "https://idp.example.com";
constexpr const char* kAudience = "agentd";

// ---- a test-side signer on OpenSSL (tests/support/jwt_signer.h) -------------------------------

using agentd::testing::B64;
using agentd::testing::GenEd25519;
using agentd::testing::GenP256;
using agentd::testing::GenRsa;
using agentd::testing::Hs256Token;
using agentd::testing::JwkOf;
using agentd::testing::Pkey;
using agentd::testing::PublicPem;
using agentd::testing::SignRaw;

std::string Unb64(std::string_view text) {
  Result<std::string> r = Base64Decode(text, Base64Variant::kUrlNoPadding);
  EXPECT_TRUE(r.ok());
  return r.ok() ? *r : std::string();
}

std::string Token(EVP_PKEY* k, const Json& header, const Json& payload) {
  return agentd::testing::SignToken(k, header, payload);
}

Json Claims() {
  return {{"iss", kIssuer},   {"aud", kAudience}, {"sub", "u-alice"},
          {"iat", kNow - 10}, {"nbf", kNow - 10}, {"exp", kNow + 300}};
}

VerifyOptions Opts() {
  VerifyOptions o;
  o.issuer = kIssuer;
  o.audience = kAudience;
  o.now = kNow;
  return o;
}

// Keys shared by the tests: an RSA-2048 key takes a while to generate.
struct Keys {
  Pkey rsa = GenRsa(2048);
  Pkey rsa_other = GenRsa(2048);
  Pkey ec = GenP256();
  Pkey ec_other = GenP256();
  Pkey ed = GenEd25519();
  Pkey ed_other = GenEd25519();
};

const Keys& K() {
  static const Keys* keys = new Keys();
  return *keys;
}

Json JwksJson() {
  return {
      {"keys",
       {JwkOf(K().rsa.get(), "k-rsa"), JwkOf(K().ec.get(), "k-ec"), JwkOf(K().ed.get(), "k-ed")}}};
}

Jwks ParseJwksOrDie(const Json& doc) {
  Result<Jwks> j = Jwks::Parse(doc.dump());
  EXPECT_TRUE(j.ok()) << j.status().ToString();
  return j.ok() ? std::move(j).value() : Jwks();
}

const Jwks& TheJwks() {
  static const Jwks* jwks = new Jwks(ParseJwksOrDie(JwksJson()));
  return *jwks;
}

Json Header(const char* alg, const char* kid) {
  Json h = {{"alg", alg}, {"typ", "JWT"}};
  if (kid != nullptr) h["kid"] = kid;
  return h;
}

std::string RsaToken(const Json& claims = Claims()) {
  return Token(K().rsa.get(), Header("RS256", "k-rsa"), claims);
}

// Expects `token` to be refused for `why`, with a message that quotes no part of it.
void ExpectRefused(const std::string& token, JwtFailure why, const VerifyOptions& opts = Opts(),
                   const Jwks& jwks = TheJwks()) {
  JwtFailure got = JwtFailure::kNone;
  Result<Json> r = VerifyJwt(token, jwks, opts, &got);
  ASSERT_FALSE(r.ok()) << "accepted; expected " << JwtFailureName(why);
  EXPECT_EQ(r.status().code(), StatusCode::kUnauthenticated);
  EXPECT_EQ(JwtFailureName(got), JwtFailureName(why)) << r.status().message();
  const std::string msg = r.status().message();
  if (!token.empty()) {
    EXPECT_EQ(msg.find(token), std::string::npos) << msg;
  }
  size_t start = 0;
  while (start <= token.size()) {
    size_t dot = token.find('.', start);
    if (dot == std::string::npos) dot = token.size();
    std::string part = token.substr(start, dot - start);
    if (part.size() >= 8) {
      EXPECT_EQ(msg.find(part.substr(0, 8)), std::string::npos) << msg;
    }
    start = dot + 1;
  }
}

void ExpectAccepted(const std::string& token, const VerifyOptions& opts = Opts()) {
  JwtFailure got = JwtFailure::kMalformed;
  Result<Json> r = VerifyJwt(token, TheJwks(), opts, &got);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(got, JwtFailure::kNone);
  EXPECT_EQ((*r)["sub"], "u-alice");
}

// Replaces one of the three segments (0, 1, 2) of a token.
std::string WithSegment(const std::string& token, int index, const std::string& text) {
  size_t d1 = token.find('.');
  size_t d2 = token.find('.', d1 + 1);
  std::string parts[3] = {token.substr(0, d1), token.substr(d1 + 1, d2 - d1 - 1),
                          token.substr(d2 + 1)};
  parts[index] = text;
  return parts[0] + "." + parts[1] + "." + parts[2];
}

std::string FlipBit(const std::string& token, int segment, size_t byte) {
  size_t d1 = token.find('.');
  size_t d2 = token.find('.', d1 + 1);
  std::string seg = segment == 0   ? token.substr(0, d1)
                    : segment == 1 ? token.substr(d1 + 1, d2 - d1 - 1)
                                   : token.substr(d2 + 1);
  std::string bytes = Unb64(seg);
  bytes[byte % bytes.size()] ^= 0x01;
  return WithSegment(token, segment, B64(bytes));
}

// ---- valid tokens -------------------------------------------------------------------------------

TEST(JwtVerify, AcceptsRs256Es256AndEdDsa) {
  ExpectAccepted(RsaToken());
  ExpectAccepted(Token(K().ec.get(), Header("ES256", "k-ec"), Claims()));
  ExpectAccepted(Token(K().ed.get(), Header("EdDSA", "k-ed"), Claims()));
}

TEST(JwtVerify, ReturnsTheClaims) {
  Json c = Claims();
  c["tenant"] = "acme";
  Result<Json> r = VerifyJwt(RsaToken(c), TheJwks(), Opts());
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(*r, c);
}

TEST(JwtVerify, AudienceMayBeAnArrayHoldingOurs) {
  Json c = Claims();
  c["aud"] = {"other", kAudience};
  ExpectAccepted(RsaToken(c));
}

TEST(JwtVerify, TokenWithoutKidUsesTheOnlyKeyOfItsAlg) {
  ExpectAccepted(Token(K().ec.get(), Header("ES256", nullptr), Claims()));
  // Two EdDSA keys: which one is meant cannot be told.
  Json doc = JwksJson();
  doc["keys"].push_back(JwkOf(K().ed_other.get(), "k-ed-2"));
  Jwks two = ParseJwksOrDie(doc);
  ExpectRefused(Token(K().ed.get(), Header("EdDSA", nullptr), Claims()), JwtFailure::kUnknownKid,
                Opts(), two);
}

TEST(JwtVerify, FractionalNumericDatesAreAccepted) {
  Json c = Claims();
  c["exp"] = kNow + 10.5;
  c["iat"] = kNow - 0.25;
  ExpectAccepted(RsaToken(c));
}

// ---- time ---------------------------------------------------------------------------------------

TEST(JwtVerify, RefusesAnExpiredTokenBeyondTheLeeway) {
  Json c = Claims();
  c["exp"] = kNow - 61;
  ExpectRefused(RsaToken(c), JwtFailure::kExpired);
  c["exp"] = kNow - 60;  // exactly at the end of the leeway
  ExpectRefused(RsaToken(c), JwtFailure::kExpired);
  c["exp"] = kNow - 59;
  ExpectAccepted(RsaToken(c));
  VerifyOptions strict = Opts();
  strict.leeway_seconds = 0;
  ExpectRefused(RsaToken(c), JwtFailure::kExpired, strict);
}

TEST(JwtVerify, RefusesATokenNotYetValid) {
  Json c = Claims();
  c["nbf"] = kNow + 61;
  ExpectRefused(RsaToken(c), JwtFailure::kNotYetValid);
  c["nbf"] = kNow + 60;
  ExpectAccepted(RsaToken(c));
}

TEST(JwtVerify, RefusesATokenIssuedInTheFuture) {
  Json c = Claims();
  c.erase("nbf");
  c["iat"] = kNow + 3600;
  ExpectRefused(RsaToken(c), JwtFailure::kIssuedInFuture);
}

TEST(JwtVerify, RequiresExp) {
  Json c = Claims();
  c.erase("exp");
  ExpectRefused(RsaToken(c), JwtFailure::kMissingClaim);
  c["exp"] = "tomorrow";
  ExpectRefused(RsaToken(c), JwtFailure::kMalformed);
}

// ---- issuer and audience -----------------------------------------------------------------------

TEST(JwtVerify, RefusesTheWrongAudience) {
  Json c = Claims();
  c["aud"] = "someone-else";
  ExpectRefused(RsaToken(c), JwtFailure::kWrongAudience);
  c["aud"] = {"someone-else", "agentd2"};
  ExpectRefused(RsaToken(c), JwtFailure::kWrongAudience);
  c["aud"] = Json::array();
  ExpectRefused(RsaToken(c), JwtFailure::kWrongAudience);
  c.erase("aud");
  ExpectRefused(RsaToken(c), JwtFailure::kWrongAudience);
  c["aud"] = {kAudience, 7};
  ExpectRefused(RsaToken(c), JwtFailure::kMalformed);
}

TEST(JwtVerify, RefusesTheWrongIssuer) {
  Json c = Claims();
  c["iss"] = "https://idp.example.com/";
  ExpectRefused(RsaToken(c), JwtFailure::kWrongIssuer);
  c.erase("iss");
  ExpectRefused(RsaToken(c), JwtFailure::kMissingClaim);
}

TEST(JwtVerify, OptionsNeedIssuerAndAudience) {
  VerifyOptions o = Opts();
  o.audience.clear();
  Result<Json> r = VerifyJwt(RsaToken(), TheJwks(), o);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

// ---- signatures and algorithms
// -------------------------------------------------------------------

TEST(JwtVerify, RefusesAFlippedBitInSignatureOrPayload) {
  std::vector<std::string> tokens = {RsaToken(),
                                     Token(K().ec.get(), Header("ES256", "k-ec"), Claims()),
                                     Token(K().ed.get(), Header("EdDSA", "k-ed"), Claims())};
  for (const std::string& t : tokens) {
    ExpectRefused(FlipBit(t, 2, 0), JwtFailure::kBadSignature);
    ExpectRefused(FlipBit(t, 2, 40), JwtFailure::kBadSignature);
    ExpectRefused(FlipBit(t, 1, 5), JwtFailure::kBadSignature);
  }
}

TEST(JwtVerify, RefusesAnotherKeysSignatureUnderTheSameKid) {
  ExpectRefused(Token(K().rsa_other.get(), Header("RS256", "k-rsa"), Claims()),
                JwtFailure::kBadSignature);
  ExpectRefused(Token(K().ec_other.get(), Header("ES256", "k-ec"), Claims()),
                JwtFailure::kBadSignature);
  ExpectRefused(Token(K().ed_other.get(), Header("EdDSA", "k-ed"), Claims()),
                JwtFailure::kBadSignature);
}

TEST(JwtVerify, RefusesAlgNone) {
  std::string unsigned_token = B64(Header("none", "k-rsa").dump()) + "." + B64(Claims().dump());
  ExpectRefused(unsigned_token + ".", JwtFailure::kMalformed);
  ExpectRefused(unsigned_token + "." + B64("x"), JwtFailure::kUnsupportedAlg);
  ExpectRefused(B64(Header("None", nullptr).dump()) + "." + B64(Claims().dump()) + "." + B64("x"),
                JwtFailure::kUnsupportedAlg);
}

TEST(JwtVerify, RefusesHs256KeyedWithTheRsaPublicKey) {
  // The classic confusion: a verifier that takes the key material for an HMAC secret.
  std::string pem = PublicPem(K().rsa.get());
  ExpectRefused(Hs256Token(pem, Header("HS256", "k-rsa"), Claims()), JwtFailure::kUnsupportedAlg);
  ExpectRefused(Hs256Token(pem, Header("HS256", nullptr), Claims()), JwtFailure::kUnsupportedAlg);
}

TEST(JwtVerify, RefusesAnAlgOtherThanTheKeys) {
  // Signed correctly with the EC key, but naming the RSA key's kid.
  ExpectRefused(Token(K().ec.get(), Header("ES256", "k-rsa"), Claims()), JwtFailure::kAlgMismatch);
  ExpectRefused(Token(K().ed.get(), Header("EdDSA", "k-ec"), Claims()), JwtFailure::kAlgMismatch);
  ExpectRefused(Token(K().rsa.get(), Header("RS256", "k-ed"), Claims()), JwtFailure::kAlgMismatch);
  // An algorithm of the same family that agentd does not verify with.
  ExpectRefused(WithSegment(RsaToken(), 0, B64(Header("RS512", "k-rsa").dump())),
                JwtFailure::kUnsupportedAlg);
  ExpectRefused(WithSegment(RsaToken(), 0, B64(Header("PS256", "k-rsa").dump())),
                JwtFailure::kUnsupportedAlg);
}

TEST(JwtVerify, RefusesAnUnknownKid) {
  ExpectRefused(Token(K().rsa.get(), Header("RS256", "k-nobody"), Claims()),
                JwtFailure::kUnknownKid);
}

// ---- malformed tokens
// ----------------------------------------------------------------------------

TEST(JwtVerify, RefusesMalformedSegments) {
  const std::string t = RsaToken();
  size_t d1 = t.find('.');
  size_t d2 = t.find('.', d1 + 1);
  std::string h = t.substr(0, d1), p = t.substr(d1 + 1, d2 - d1 - 1), s = t.substr(d2 + 1);
  std::vector<std::string> bad = {
      "",
      h + "." + p,                      // 2 parts
      h + "." + p + "." + s + "." + s,  // 4 parts
      h + "." + p + "." + s + ".",      // trailing dot
      "." + p + "." + s,                // empty header
      h + ".." + s,                     // empty payload
      h + "=." + p + "." + s,           // padding
      h + "." + p + "." + s + "==",
      B64(Header("RS256", "k-rsa").dump() + "  ") + "=." + p + "." + s,
      h + "." + p + "+" + "." + s,  // standard alphabet
      h + "." + p + "." + s.substr(0, s.size() - 1) + "/",
      h + " ." + p + "." + s,  // whitespace
      h + "." + p + "." + s + "\n",
      h + "." + p + "." + s.substr(0, s.size() - 1),  // a length base64 cannot have (342 mod 4)
  };
  for (const std::string& token : bad) {
    SCOPED_TRACE(token.substr(0, 40));
    ExpectRefused(token, JwtFailure::kMalformed);
  }
}

TEST(JwtVerify, RefusesNonCanonicalBase64url) {
  // An RS256 signature is 256 bytes: 342 characters, the last carrying 2 bits of data and 4
  // unused ones. A decoder that ignored the unused bits would read the same signature from
  // a second spelling of the token.
  const std::string t = RsaToken();
  const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t v = alphabet.find(t.back());
  ASSERT_EQ(v & 0x0F, 0u);
  std::string odd = t.substr(0, t.size() - 1) + alphabet[v | 1];
  ExpectRefused(odd, JwtFailure::kMalformed);
}

TEST(JwtVerify, RefusesHeadersAndPayloadsThatAreNotJsonObjects) {
  const std::string t = RsaToken();
  ExpectRefused(WithSegment(t, 0, B64("not json")), JwtFailure::kMalformed);
  ExpectRefused(WithSegment(t, 0, B64(R"(["RS256"])")), JwtFailure::kMalformed);
  ExpectRefused(WithSegment(t, 0, B64(R"({"typ":"JWT"})")), JwtFailure::kMalformed);  // no alg
  ExpectRefused(WithSegment(t, 0, B64(R"({"alg":256})")), JwtFailure::kMalformed);
  ExpectRefused(WithSegment(t, 0, B64(R"({"alg":"RS256","kid":7})")), JwtFailure::kMalformed);
  ExpectRefused(WithSegment(t, 0, B64(R"({"alg":"RS256","crit":["exp"]})")),
                JwtFailure::kMalformed);
  // Correctly signed, but a payload that is a string.
  Json h = Header("RS256", "k-rsa");
  std::string input = B64(h.dump()) + "." + B64(R"("claims")");
  ExpectRefused(input + "." + B64(SignRaw(K().rsa.get(), input)), JwtFailure::kMalformed);
}

TEST(JwtVerify, RefusesDuplicateMemberNames) {
  // Signed, so only the duplicate can be the reason.
  std::string payload = Claims().dump();
  payload.insert(1, R"("aud":"other",)");
  std::string input = B64(Header("RS256", "k-rsa").dump()) + "." + B64(payload);
  ExpectRefused(input + "." + B64(SignRaw(K().rsa.get(), input)), JwtFailure::kMalformed);
  std::string header = R"({"alg":"HS256","alg":"RS256","kid":"k-rsa"})";
  input = B64(header) + "." + B64(Claims().dump());
  ExpectRefused(input + "." + B64(SignRaw(K().rsa.get(), input)), JwtFailure::kMalformed);
}

TEST(JwtVerify, RefusesDeepNesting) {
  Json c = Claims();
  std::string deep(40, '[');
  deep += std::string(40, ']');
  std::string payload = c.dump();
  payload.insert(1, R"("x":)" + deep + ",");
  std::string input = B64(Header("RS256", "k-rsa").dump()) + "." + B64(payload);
  ExpectRefused(input + "." + B64(SignRaw(K().rsa.get(), input)), JwtFailure::kMalformed);
}

TEST(JwtVerify, RefusesAHugeToken) {
  Json c = Claims();
  c["pad"] = std::string(kMaxTokenBytes, 'a');
  std::string t = RsaToken(c);
  ExpectRefused(t, JwtFailure::kMalformed);
  JwtFailure why;
  Result<Json> r = VerifyJwt(t, TheJwks(), Opts(), &why);
  EXPECT_NE(r.status().message().find("longer than"), std::string::npos) << r.status().message();
}

TEST(JwtVerify, MessagesNeverQuoteTheToken) {
  // A long alg name of the attacker's choosing is not quoted either.
  std::string alg(64, 'Z');
  std::string t = WithSegment(RsaToken(), 0, B64(Json{{"alg", alg}}.dump()));
  Result<Json> r = VerifyJwt(t, TheJwks(), Opts());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message().find("ZZZZ"), std::string::npos) << r.status().message();
}

// ---- JWKS parsing ------------------------------------------------------------------------------

Status JwksError(const Json& doc) {
  Result<Jwks> j = Jwks::Parse(doc.dump());
  return j.status();
}

TEST(Jwks, SkipsKeysItDoesNotUse) {
  Json doc = JwksJson();
  doc["keys"].push_back({{"kty", "oct"}, {"k", "c2VjcmV0"}, {"kid", "sym"}});
  doc["keys"].push_back({{"kty", "EC"}, {"crv", "P-384"}, {"x", "AA"}, {"y", "AA"}});
  doc["keys"].push_back({{"kty", "OKP"}, {"crv", "X25519"}, {"x", "AA"}});
  Json enc = JwkOf(K().rsa_other.get(), "enc");
  enc["use"] = "enc";
  doc["keys"].push_back(enc);
  Json rs512 = JwkOf(K().rsa_other.get(), "rs512");
  rs512["alg"] = "RS512";
  doc["keys"].push_back(rs512);
  Json wrap = JwkOf(K().rsa_other.get(), "wrap");
  wrap["key_ops"] = {"wrapKey"};
  doc["keys"].push_back(wrap);
  Result<Jwks> j = Jwks::Parse(doc.dump());
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_EQ(j->size(), 3u);
  EXPECT_TRUE(j->HasKid("k-ec"));
  EXPECT_FALSE(j->HasKid("sym"));
  EXPECT_FALSE(j->HasKid("rs512"));
}

TEST(Jwks, AcceptsAMatchingAlgAndUse) {
  Json k = JwkOf(K().ec.get(), "k");
  k["alg"] = "ES256";
  k["use"] = "sig";
  k["key_ops"] = {"verify"};
  Result<Jwks> j = Jwks::Parse(Json{{"keys", {k}}}.dump());
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_EQ(j->size(), 1u);
}

void ExpectKeyError(Json key, std::string_view want) {
  Json doc = JwksJson();
  doc["keys"].push_back(std::move(key));
  Status st = JwksError(doc);
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
  EXPECT_NE(st.message().find("keys[3]"), std::string::npos) << st.message();
  EXPECT_NE(st.message().find(want), std::string::npos) << st.message();
}

TEST(Jwks, MalformedKeysAreErrorsNamingTheIndex) {
  Json rsa = JwkOf(K().rsa_other.get(), "r");
  Json no_n = rsa;
  no_n.erase("n");
  ExpectKeyError(no_n, "'n'");
  Json padded = rsa;
  padded["e"] = "AQAB==";
  ExpectKeyError(padded, "'e'");
  Pkey small = GenRsa(1024);
  ExpectKeyError(JwkOf(small.get(), "small"), "1024 bits");
  Json even_e = rsa;
  even_e["e"] = B64(std::string("\x01\x00\x00", 3));
  ExpectKeyError(even_e, "not a valid RSA");

  Json ec = JwkOf(K().ec_other.get(), "e");
  Json off_curve = ec;
  std::string y = Unb64(ec["y"].get<std::string>());
  y[31] ^= 1;
  off_curve["y"] = B64(y);
  ExpectKeyError(off_curve, "not on P-256");
  Json short_x = ec;
  short_x["x"] = B64(std::string(31, 'a'));
  ExpectKeyError(short_x, "32 bytes");
  Json no_crv = ec;
  no_crv.erase("crv");
  ExpectKeyError(no_crv, "'crv'");

  Json ed = JwkOf(K().ed_other.get(), "d");
  ed["x"] = B64(std::string(33, 'a'));
  ExpectKeyError(ed, "32 bytes");

  Json confused = JwkOf(K().rsa_other.get(), "c");
  confused["alg"] = "ES256";
  ExpectKeyError(confused, "does not fit kty RSA");
  Json hs = JwkOf(K().rsa_other.get(), "h");
  hs["alg"] = "HS256";
  ExpectKeyError(hs, "does not fit");
  Json numeric_kid = JwkOf(K().ed_other.get(), "d");
  numeric_kid["kid"] = 5;
  ExpectKeyError(numeric_kid, "'kid'");
  ExpectKeyError(Json("a string"), "object");
  ExpectKeyError(Json{{"crv", "P-256"}}, "'kty'");
}

TEST(Jwks, RefusesTwoKeysATokenCannotTellApart) {
  Json doc = JwksJson();
  doc["keys"].push_back(JwkOf(K().rsa_other.get(), "k-rsa"));
  Status st = JwksError(doc);
  EXPECT_NE(st.message().find("keys[3]: another RS256 key has the same kid"), std::string::npos)
      << st.ToString();
}

TEST(Jwks, RefusesMalformedDocuments) {
  for (const char* text :
       {"", "[]", "{}", R"({"keys": {}})", R"({"keys": [], "keys": []})", "{\"keys\": [", "null"}) {
    Result<Jwks> j = Jwks::Parse(text);
    EXPECT_FALSE(j.ok()) << text;
    EXPECT_EQ(j.status().code(), StatusCode::kInvalidArgument) << text;
  }
  Result<Jwks> empty = Jwks::Parse(R"({"keys": []})");
  ASSERT_TRUE(empty.ok());
  ExpectRefused(RsaToken(), JwtFailure::kUnknownKid, Opts(), *empty);
}

// ---- JwksSource
// ------------------------------------------------------------------------------------

class FakeClock final : public Clock {
 public:
  int64_t NowMillis() const override { return kNow * 1000; }
  std::chrono::steady_clock::time_point Steady() const override {
    return std::chrono::steady_clock::time_point(std::chrono::seconds(seconds_));
  }
  void Advance(int64_t s) { seconds_ += s; }

 private:
  int64_t seconds_ = 1000;
};

class JwksSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("jwt_test_" + std::to_string(getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
    path_ = (dir_ / "jwks.json").string();
  }
  void TearDown() override { fs::remove_all(dir_); }
  void Write(const Json& doc) { std::ofstream(path_) << doc.dump(); }

  fs::path dir_;
  std::string path_;
  FakeClock clock_;
};

TEST_F(JwksSourceTest, LoadsAFileAndReloadsOnAnUnknownKidAtMostOncePerInterval) {
  Write({{"keys", {JwkOf(K().rsa.get(), "k-rsa")}}});
  std::atomic<int> fetches = 0;
  JwksSourceOptions o;
  o.location = path_;
  o.min_refresh_interval = std::chrono::seconds(30);
  JwksSource src(o, &clock_, [&](const std::string& loc) {
    ++fetches;
    return FetchJwksBlocking(loc, std::chrono::seconds(1));
  });
  ASSERT_TRUE(src.VerifyBlocking(RsaToken(), Opts()).ok());
  ASSERT_TRUE(src.VerifyBlocking(RsaToken(), Opts()).ok());
  EXPECT_EQ(fetches, 1);

  // The provider rotates in an EC key.
  Write({{"keys", {JwkOf(K().rsa.get(), "k-rsa"), JwkOf(K().ec.get(), "k-ec")}}});
  std::string ec_token = Token(K().ec.get(), Header("ES256", "k-ec"), Claims());
  Result<Json> r = src.VerifyBlocking(ec_token, Opts());
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(fetches, 2);

  // Unknown kids do not make it fetch on every token: the reload just now was the one for
  // this interval.
  JwtFailure why;
  for (int i = 0; i < 5; ++i) {
    EXPECT_FALSE(
        src.VerifyBlocking(Token(K().ed.get(), Header("EdDSA", "k-ed"), Claims()), Opts(), &why)
            .ok());
    EXPECT_EQ(why, JwtFailure::kUnknownKid);
  }
  EXPECT_EQ(fetches, 2);
  clock_.Advance(31);
  EXPECT_FALSE(
      src.VerifyBlocking(Token(K().ed.get(), Header("EdDSA", "k-ed"), Claims()), Opts()).ok());
  EXPECT_EQ(fetches, 3);
}

TEST_F(JwksSourceTest, ReloadsAfterMaxAgeAndKeepsTheLastGoodSet) {
  Write({{"keys", {JwkOf(K().rsa.get(), "k-rsa")}}});
  JwksSourceOptions o;
  o.location = path_;
  o.max_age = std::chrono::seconds(600);
  JwksSource src(o, &clock_);
  ASSERT_TRUE(src.VerifyBlocking(RsaToken(), Opts()).ok());
  std::ofstream(path_) << "{ not json";
  clock_.Advance(601);
  Result<std::shared_ptr<const Jwks>> j = src.GetBlocking();
  ASSERT_TRUE(j.ok()) << j.status().ToString();
  EXPECT_TRUE((*j)->HasKid("k-rsa"));
  EXPECT_TRUE(src.VerifyBlocking(RsaToken(), Opts()).ok());
}

TEST_F(JwksSourceTest, MissingFileIsUnavailable) {
  JwksSourceOptions o;
  o.location = (dir_ / "none.json").string();
  JwksSource src(o, &clock_);
  Result<Json> r = src.VerifyBlocking(RsaToken(), Opts());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
}

// ---- SigningKey --------------------------------------------------------------------------------

class SigningKeyTest : public JwksSourceTest {
 protected:
  std::string KeyPath() const { return (dir_ / "signing_key.json").string(); }
};

TEST_F(SigningKeyTest, CreatesA0600FileAndReloadsTheSameKey) {
  Result<SigningKey> a = SigningKey::LoadOrCreate(KeyPath());
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  struct stat st {};
  ASSERT_EQ(stat(KeyPath().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(a->public_key().size(), 32u);
  EXPECT_EQ(a->kid().size(), 43u);
  // No temporary file is left beside it.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir_), fs::directory_iterator()), 1);

  Result<SigningKey> b = SigningKey::LoadOrCreate(KeyPath());
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(a->public_key(), b->public_key());
  EXPECT_EQ(a->kid(), b->kid());
  EXPECT_EQ(a->Sign("x"), b->Sign("x"));

  Result<Json> file = ParseJson(
      std::string(std::istreambuf_iterator<char>(std::ifstream(KeyPath()).rdbuf()), {}), "key");
  ASSERT_TRUE(file.ok());
  EXPECT_EQ((*file)["kty"], "OKP");
  EXPECT_EQ((*file)["crv"], "Ed25519");
  EXPECT_EQ((*file)["kid"], a->kid());
  EXPECT_EQ(Unb64((*file)["x"].get<std::string>()), a->public_key());
  EXPECT_EQ(Unb64((*file)["d"].get<std::string>()).size(), 32u);
}

TEST_F(SigningKeyTest, KidIsTheRfc7638Thumbprint) {
  // RFC 8037 appendix A.3: the thumbprint of its example Ed25519 key.
  std::string seed = Unb64("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A");
  Result<SigningKey> k = SigningKey::FromSeed(seed);
  ASSERT_TRUE(k.ok());
  EXPECT_EQ(B64(k->public_key()), "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
  EXPECT_EQ(k->kid(), "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k");
}

TEST_F(SigningKeyTest, RefusesAFileOthersCanRead) {
  ASSERT_TRUE(SigningKey::LoadOrCreate(KeyPath()).ok());
  for (mode_t mode : {0644, 0640, 0604, 0660}) {
    ASSERT_EQ(chmod(KeyPath().c_str(), mode), 0);
    Result<SigningKey> k = SigningKey::LoadOrCreate(KeyPath());
    ASSERT_FALSE(k.ok()) << std::oct << mode;
    EXPECT_EQ(k.status().code(), StatusCode::kFailedPrecondition);
    EXPECT_NE(k.status().message().find("chmod 600"), std::string::npos) << k.status().message();
  }
}

TEST_F(SigningKeyTest, RefusesACorruptFile) {
  ASSERT_TRUE(SigningKey::LoadOrCreate(KeyPath()).ok());
  std::string good(std::istreambuf_iterator<char>(std::ifstream(KeyPath()).rdbuf()), {});
  Json doc = Json::parse(good);
  Json other = SigningKey::FromSeed(std::string(32, '\7'))->Jwk();
  std::vector<std::string> bad = {"", "{", "[]", "{}"};
  for (const char* field : {"kty", "crv", "kid", "d", "x"}) {
    Json d = doc;
    d.erase(field);
    bad.push_back(d.dump());
  }
  Json d = doc;
  d["x"] = other["x"];  // not the public key of d
  bad.push_back(d.dump());
  d = doc;
  d["kid"] = other["kid"];
  bad.push_back(d.dump());
  d = doc;
  d["d"] = B64(std::string(31, 'a'));
  bad.push_back(d.dump());
  d = doc;
  d["crv"] = "X25519";
  bad.push_back(d.dump());
  d = doc;
  d["extra"] = 1;
  bad.push_back(d.dump());
  for (const std::string& text : bad) {
    std::ofstream(KeyPath(), std::ios::trunc) << text;
    Result<SigningKey> k = SigningKey::LoadOrCreate(KeyPath());
    ASSERT_FALSE(k.ok()) << text;
    EXPECT_EQ(k.status().code(), StatusCode::kInvalidArgument) << k.status().ToString();
    EXPECT_NE(k.status().message().find(KeyPath()), std::string::npos) << k.status().message();
  }
  std::ofstream(KeyPath(), std::ios::trunc) << good;
  EXPECT_TRUE(SigningKey::LoadOrCreate(KeyPath()).ok());
}

TEST_F(SigningKeyTest, RefusesADirectoryOrASymlink) {
  fs::create_directory(KeyPath());
  EXPECT_FALSE(SigningKey::LoadOrCreate(KeyPath()).ok());
  fs::remove(KeyPath());
  std::string target = (dir_ / "real.json").string();
  ASSERT_TRUE(SigningKey::LoadOrCreate(target).ok());
  fs::create_symlink(target, KeyPath());
  Result<SigningKey> k = SigningKey::LoadOrCreate(KeyPath());
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.status().code(), StatusCode::kFailedPrecondition) << k.status().ToString();
}

TEST_F(SigningKeyTest, MissingDirectoryIsAnError) {
  Result<SigningKey> k = SigningKey::LoadOrCreate((dir_ / "no" / "key.json").string());
  ASSERT_FALSE(k.ok());
  EXPECT_EQ(k.status().code(), StatusCode::kInternal) << k.status().ToString();
}

// ---- minted tokens -----------------------------------------------------------------------------

VerifyOptions ToolOpts(const char* tool) {
  VerifyOptions o;
  o.issuer = "https://agentd.example";
  o.audience = tool;
  o.now = kNow;
  return o;
}

ToolTokenClaims ToolClaims() {
  ToolTokenClaims c;
  c.issuer = "https://agentd.example";
  c.tenant = "acme";
  c.subject = "usr_alice";
  c.actor = "agt_helper";
  c.session_id = "ses_42";
  c.audience = "tool:search";
  c.issued_at = kNow;
  return c;
}

TEST_F(SigningKeyTest, MintedTokensVerifyWithThePublishedJwk) {
  Result<SigningKey> key = SigningKey::LoadOrCreate(KeyPath());
  ASSERT_TRUE(key.ok());
  Json jwk = key->Jwk();
  EXPECT_EQ(jwk["alg"], "EdDSA");
  EXPECT_EQ(jwk["use"], "sig");
  EXPECT_FALSE(jwk.contains("d"));
  Result<Jwks> jwks = Jwks::Parse(JwksDocument({&*key}).dump());
  ASSERT_TRUE(jwks.ok()) << jwks.status().ToString();

  std::string token = MintToolToken(*key, ToolClaims());
  Result<CompactJws> jws = ParseCompactJws(token);
  ASSERT_TRUE(jws.ok());
  EXPECT_EQ(jws->header, (Json{{"alg", "EdDSA"}, {"typ", "JWT"}, {"kid", key->kid()}}));

  Result<Json> claims = VerifyJwt(token, *jwks, ToolOpts("tool:search"));
  ASSERT_TRUE(claims.ok()) << claims.status().ToString();
  ExpectRefused(token, JwtFailure::kWrongAudience, ToolOpts("tool:other"), *jwks);
  ExpectRefused(FlipBit(token, 2, 3), JwtFailure::kBadSignature, ToolOpts("tool:search"), *jwks);
  // Another agentd's key with the same kid does not verify.
  Result<SigningKey> other = SigningKey::FromSeed(std::string(32, '\1'));
  std::string theirs = MintToolToken(*other, ToolClaims());
  ExpectRefused(WithSegment(theirs, 0, B64(jws->header.dump())), JwtFailure::kBadSignature,
                ToolOpts("tool:search"), *jwks);
  // After expires_in (300 s) and the leeway.
  VerifyOptions later = ToolOpts("tool:search");
  later.now = kNow + 300 + 60;
  ExpectRefused(token, JwtFailure::kExpired, later, *jwks);
}

TEST_F(SigningKeyTest, ToolTokenClaimsAreExactly) {
  Result<SigningKey> key = SigningKey::FromSeed(std::string(32, '\3'));
  ASSERT_TRUE(key.ok());
  ToolTokenClaims c = ToolClaims();
  c.expires_in = std::chrono::seconds(120);
  Result<Jwks> jwks = Jwks::Parse(JwksDocument({&*key}).dump());
  ASSERT_TRUE(jwks.ok());
  Result<Json> got = VerifyJwt(MintToolToken(*key, c), *jwks, ToolOpts("tool:search"));
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  std::string jti = (*got)["jti"].get<std::string>();
  EXPECT_EQ(Unb64(jti).size(), 16u);
  EXPECT_EQ(*got, (Json{{"iss", "https://agentd.example"},
                        {"sub", "usr_alice"},
                        {"aud", "tool:search"},
                        {"act", {{"sub", "agt_helper"}}},
                        {"tenant", "acme"},
                        {"session", "ses_42"},
                        {"iat", kNow},
                        {"nbf", kNow},
                        {"exp", kNow + 120},
                        {"jti", jti}}));
  // A fresh jti for every token unless one is given.
  EXPECT_NE(ToolTokenClaimsJson(c)["jti"], ToolTokenClaimsJson(c)["jti"]);
  c.jti = "fixed";
  EXPECT_EQ(ToolTokenClaimsJson(c)["jti"], "fixed");
}

TEST_F(SigningKeyTest, SignaturesAreEd25519OverTheBytes) {
  Result<SigningKey> key = SigningKey::FromSeed(std::string(32, '\5'));
  ASSERT_TRUE(key.ok());
  std::string sig = key->Sign("hello");
  ASSERT_EQ(sig.size(), 64u);
  EVP_PKEY* pk = EVP_PKEY_new_raw_public_key(
      EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(key->public_key().data()),
      32);
  ASSERT_NE(pk, nullptr);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ASSERT_EQ(EVP_DigestVerifyInit(ctx, nullptr, nullptr, nullptr, pk), 1);
  EXPECT_EQ(EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(sig.data()), 64,
                             reinterpret_cast<const unsigned char*>("hello"), 5),
            1);
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(pk);
  EXPECT_FALSE(SigningKey::FromSeed("short").ok());
}

}  // namespace
}  // namespace agentd::identity
