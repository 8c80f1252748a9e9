#include "identity/jwt.h"

#include <fmt/format.h>
#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/param_build.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "common/base64.h"
#include "common/http_client.h"

namespace agentd::identity {

// A public key and the one algorithm it verifies with.
struct JwkKey {
  std::string kid;
  JwsAlg alg;
  std::shared_ptr<EVP_PKEY> pkey;
};

namespace {

constexpr int kMinRsaBits = 2048;
// Larger moduli only make verification slower; no provider uses them.
constexpr int kMaxRsaBits = 8192;

struct EvpPkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct EvpPkeyCtxFree {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct EvpMdCtxFree {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct BnFree {
  void operator()(BIGNUM* p) const { BN_free(p); }
};
struct ParamBldFree {
  void operator()(OSSL_PARAM_BLD* p) const { OSSL_PARAM_BLD_free(p); }
};
struct ParamFree {
  void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); }
};
struct EcdsaSigFree {
  void operator()(ECDSA_SIG* p) const { ECDSA_SIG_free(p); }
};
using BnPtr = std::unique_ptr<BIGNUM, BnFree>;

// ---- strict JSON ----------------------------------------------------------------------------

// Parses `text` like ParseJson, and also refuses duplicate member names (nlohmann keeps the
// last silently, so two `aud` or two `alg` could mean different things to different readers)
// and nesting deeper than kMaxJwtJsonDepth.
Result<Json> ParseStrictJson(std::string_view text, std::string_view what) {
  if (text.empty()) return InvalidArgument(fmt::format("{} is empty", what));
  std::vector<std::vector<std::string>> names;  // member names seen, per open object
  bool duplicate = false;
  bool too_deep = false;
  Json::parser_callback_t cb = [&](int depth, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        names.emplace_back();
        [[fallthrough]];
      case Json::parse_event_t::array_start:
        if (depth >= kMaxJwtJsonDepth) too_deep = true;
        break;
      case Json::parse_event_t::object_end:
        if (!names.empty()) names.pop_back();
        break;
      case Json::parse_event_t::key:
        if (!names.empty() && parsed.is_string()) {
          auto& seen = names.back();
          const auto& key = parsed.get_ref<const std::string&>();
          if (std::find(seen.begin(), seen.end(), key) != seen.end()) {
            duplicate = true;
          } else {
            seen.push_back(key);
          }
        }
        break;
      default:
        break;
    }
    return true;
  };
  Json j;
  try {
    j = Json::parse(text.begin(), text.end(), cb);
  } catch (const Json::parse_error& e) {
    return InvalidArgument(fmt::format("{} is not valid JSON (at byte {})", what, e.byte));
  } catch (const std::exception&) {
    return InvalidArgument(fmt::format("{} is not valid JSON", what));
  }
  if (duplicate) return InvalidArgument(fmt::format("{} has a duplicate member name", what));
  if (too_deep) {
    return InvalidArgument(fmt::format("{} nests deeper than {}", what, kMaxJwtJsonDepth));
  }
  return j;
}

// Strict base64url: libsodium refuses padding, characters outside the alphabet, impossible
// lengths and non-zero unused bits in the last character (one encoding per value).
Result<std::string> DecodeSegment(std::string_view text, std::string_view what) {
  if (text.empty()) return InvalidArgument(fmt::format("{} is empty", what));
  Result<std::string> bytes = Base64Decode(text, Base64Variant::kUrlNoPadding);
  if (!bytes.ok()) return InvalidArgument(fmt::format("{} is not base64url without padding", what));
  return bytes;
}

std::optional<JwsAlg> AlgFromName(std::string_view name) {
  if (name == "RS256") return JwsAlg::kRs256;
  if (name == "ES256") return JwsAlg::kEs256;
  if (name == "EdDSA") return JwsAlg::kEdDsa;
  return std::nullopt;
}

// ---- keys -----------------------------------------------------------------------------------

Result<std::string> KeyMember(const Json& key, std::string_view name, std::string_view where) {
  const std::string* s = FindString(key, name);
  if (s == nullptr) return InvalidArgument(fmt::format("{}: '{}' must be a string", where, name));
  Result<std::string> bytes = DecodeSegment(*s, fmt::format("{}: '{}'", where, name));
  if (!bytes.ok()) return bytes.status();
  return bytes;
}

Result<std::shared_ptr<EVP_PKEY>> FromData(const char* type, OSSL_PARAM_BLD* bld,
                                           std::string_view where) {
  std::unique_ptr<OSSL_PARAM, ParamFree> params(OSSL_PARAM_BLD_to_param(bld));
  std::unique_ptr<EVP_PKEY_CTX, EvpPkeyCtxFree> ctx(
      EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  if (params == nullptr || ctx == nullptr) return Internal("OpenSSL: out of memory");
  EVP_PKEY* raw = nullptr;
  if (EVP_PKEY_fromdata_init(ctx.get()) <= 0 ||
      EVP_PKEY_fromdata(ctx.get(), &raw, EVP_PKEY_PUBLIC_KEY, params.get()) <= 0) {
    return InvalidArgument(fmt::format("{}: not a valid {} public key", where, type));
  }
  return std::shared_ptr<EVP_PKEY>(raw, EvpPkeyFree());
}

Result<std::shared_ptr<EVP_PKEY>> RsaKey(const Json& key, std::string_view where) {
  ASSIGN_OR_RETURN(std::string n, KeyMember(key, "n", where));
  ASSIGN_OR_RETURN(std::string e, KeyMember(key, "e", where));
  BnPtr bn_n(BN_bin2bn(reinterpret_cast<const unsigned char*>(n.data()), static_cast<int>(n.size()),
                       nullptr));
  BnPtr bn_e(BN_bin2bn(reinterpret_cast<const unsigned char*>(e.data()), static_cast<int>(e.size()),
                       nullptr));
  if (bn_n == nullptr || bn_e == nullptr) return Internal("OpenSSL: out of memory");
  int bits = BN_num_bits(bn_n.get());
  if (bits < kMinRsaBits) {
    return InvalidArgument(
        fmt::format("{}: RSA modulus of {} bits; at least {} required", where, bits, kMinRsaBits));
  }
  if (bits > kMaxRsaBits) {
    return InvalidArgument(
        fmt::format("{}: RSA modulus of {} bits; at most {} accepted", where, bits, kMaxRsaBits));
  }
  // e: odd, at least 3, and small (providers use 65537; a huge e only costs time).
  if (!BN_is_odd(bn_n.get()) || !BN_is_odd(bn_e.get()) || BN_num_bits(bn_e.get()) < 2 ||
      BN_num_bits(bn_e.get()) > 64) {
    return InvalidArgument(fmt::format("{}: not a valid RSA public key", where));
  }
  std::unique_ptr<OSSL_PARAM_BLD, ParamBldFree> bld(OSSL_PARAM_BLD_new());
  if (bld == nullptr || !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) ||
      !OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get())) {
    return Internal("OpenSSL: out of memory");
  }
  return FromData("RSA", bld.get(), where);
}

Result<std::shared_ptr<EVP_PKEY>> P256Key(const Json& key, std::string_view where) {
  ASSIGN_OR_RETURN(std::string x, KeyMember(key, "x", where));
  ASSIGN_OR_RETURN(std::string y, KeyMember(key, "y", where));
  if (x.size() != 32 || y.size() != 32) {
    return InvalidArgument(fmt::format("{}: P-256 'x' and 'y' must be 32 bytes each", where));
  }
  std::string point = "\x04" + x + y;  // SEC 1 uncompressed point
  std::unique_ptr<OSSL_PARAM_BLD, ParamBldFree> bld(OSSL_PARAM_BLD_new());
  if (bld == nullptr ||
      !OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) ||
      !OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                        point.size())) {
    return Internal("OpenSSL: out of memory");
  }
  Result<std::shared_ptr<EVP_PKEY>> made = FromData("EC", bld.get(), where);
  if (!made.ok()) return InvalidArgument(fmt::format("{}: the point is not on P-256", where));
  std::shared_ptr<EVP_PKEY> pkey = std::move(made).value();
  // OpenSSL checks the point when importing it; check again rather than rely on that.
  std::unique_ptr<EVP_PKEY_CTX, EvpPkeyCtxFree> ctx(
      EVP_PKEY_CTX_new_from_pkey(nullptr, pkey.get(), nullptr));
  if (ctx == nullptr) return Internal("OpenSSL: out of memory");
  if (EVP_PKEY_public_check(ctx.get()) != 1) {
    return InvalidArgument(fmt::format("{}: the point is not on P-256", where));
  }
  return pkey;
}

Result<std::shared_ptr<EVP_PKEY>> Ed25519Key(const Json& key, std::string_view where) {
  ASSIGN_OR_RETURN(std::string x, KeyMember(key, "x", where));
  if (x.size() != 32)
    return InvalidArgument(fmt::format("{}: Ed25519 'x' must be 32 bytes", where));
  EVP_PKEY* raw = EVP_PKEY_new_raw_public_key(
      EVP_PKEY_ED25519, nullptr, reinterpret_cast<const unsigned char*>(x.data()), x.size());
  if (raw == nullptr) return InvalidArgument(fmt::format("{}: not a valid Ed25519 key", where));
  return std::shared_ptr<EVP_PKEY>(raw, EvpPkeyFree());
}

// What one JWKS entry is: a key to use, one to skip, or an error.
Result<std::shared_ptr<JwkKey>> ParseKey(const Json& key, size_t index) {
  const std::string where = fmt::format("keys[{}]", index);
  if (!key.is_object()) return InvalidArgument(where + ": must be an object");
  const std::string* kty = FindString(key, "kty");
  if (kty == nullptr) return InvalidArgument(where + ": 'kty' must be a string");
  const std::string* crv = FindString(key, "crv");
  // The algorithm a key of this type verifies with; nullopt for types agentd skips.
  std::optional<JwsAlg> alg;
  // Algorithms of the same family that agentd does not verify with: a key declaring one is
  // skipped, a key declaring any other is malformed.
  std::vector<std::string_view> family;
  if (*kty == "RSA") {
    alg = JwsAlg::kRs256;
    family = {"RS384", "RS512", "PS256", "PS384", "PS512", "RSA-OAEP", "RSA-OAEP-256", "RSA1_5"};
  } else if (*kty == "EC") {
    if (crv == nullptr) return InvalidArgument(where + ": 'crv' must be a string");
    if (*crv == "P-256") alg = JwsAlg::kEs256;
    family = {"ES384", "ES512", "ES256K", "ECDH-ES"};
  } else if (*kty == "OKP") {
    if (crv == nullptr) return InvalidArgument(where + ": 'crv' must be a string");
    if (*crv == "Ed25519") alg = JwsAlg::kEdDsa;
    family = {"ECDH-ES"};
  }
  if (!alg) return std::shared_ptr<JwkKey>();  // another kty or curve: skipped
  if (auto it = key.find("alg"); it != key.end()) {
    if (!it->is_string()) return InvalidArgument(where + ": 'alg' must be a string");
    const auto& name = it->get_ref<const std::string&>();
    if (name != JwsAlgName(*alg)) {
      if (std::find(family.begin(), family.end(), name) != family.end()) {
        return std::shared_ptr<JwkKey>();
      }
      return InvalidArgument(fmt::format("{}: 'alg' {} does not fit kty {}", where,
                                         name.size() <= 16 ? name : "(long)", *kty));
    }
  }
  if (auto it = key.find("use"); it != key.end()) {
    if (!it->is_string()) return InvalidArgument(where + ": 'use' must be a string");
    if (*it != "sig") return std::shared_ptr<JwkKey>();
  }
  if (auto it = key.find("key_ops"); it != key.end()) {
    if (!it->is_array()) return InvalidArgument(where + ": 'key_ops' must be an array");
    if (std::find(it->begin(), it->end(), Json("verify")) == it->end()) {
      return std::shared_ptr<JwkKey>();
    }
  }
  auto out = std::make_shared<JwkKey>();
  out->alg = *alg;
  if (auto it = key.find("kid"); it != key.end()) {
    if (!it->is_string()) return InvalidArgument(where + ": 'kid' must be a string");
    out->kid = it->get<std::string>();
  }
  Result<std::shared_ptr<EVP_PKEY>> pkey = Status();
  switch (*alg) {
    case JwsAlg::kRs256:
      pkey = RsaKey(key, where);
      break;
    case JwsAlg::kEs256:
      pkey = P256Key(key, where);
      break;
    case JwsAlg::kEdDsa:
      pkey = Ed25519Key(key, where);
      break;
  }
  if (!pkey.ok()) return pkey.status();
  out->pkey = std::move(pkey).value();
  return out;
}

// ---- signatures -------------------------------------------------------------------------------

// JOSE writes an ES256 signature as r || s, 32 bytes each; OpenSSL wants DER.
std::optional<std::string> EcdsaRawToDer(std::string_view raw) {
  if (raw.size() != 64) return std::nullopt;
  std::unique_ptr<ECDSA_SIG, EcdsaSigFree> sig(ECDSA_SIG_new());
  BIGNUM* r = BN_bin2bn(reinterpret_cast<const unsigned char*>(raw.data()), 32, nullptr);
  BIGNUM* s = BN_bin2bn(reinterpret_cast<const unsigned char*>(raw.data()) + 32, 32, nullptr);
  if (sig == nullptr || r == nullptr || s == nullptr) {
    BN_free(r);
    BN_free(s);
    return std::nullopt;
  }
  ECDSA_SIG_set0(sig.get(), r, s);  // takes r and s
  unsigned char* der = nullptr;
  int len = i2d_ECDSA_SIG(sig.get(), &der);
  if (len <= 0) return std::nullopt;
  std::string out(reinterpret_cast<const char*>(der), static_cast<size_t>(len));
  OPENSSL_free(der);
  return out;
}

bool VerifySignature(const JwkKey& key, std::string_view input, std::string_view sig) {
  std::string der;
  const EVP_MD* md = EVP_sha256();
  switch (key.alg) {
    case JwsAlg::kRs256:
      break;
    case JwsAlg::kEs256: {
      std::optional<std::string> d = EcdsaRawToDer(sig);
      if (!d) return false;
      der = std::move(*d);
      sig = der;
      break;
    }
    case JwsAlg::kEdDsa:
      if (sig.size() != 64) return false;
      md = nullptr;  // Ed25519 hashes internally
      break;
  }
  std::unique_ptr<EVP_MD_CTX, EvpMdCtxFree> ctx(EVP_MD_CTX_new());
  if (ctx == nullptr) return false;
  if (EVP_DigestVerifyInit(ctx.get(), nullptr, md, nullptr, key.pkey.get()) != 1) return false;
  return EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                          reinterpret_cast<const unsigned char*>(input.data()), input.size()) == 1;
}

// ---- claims -----------------------------------------------------------------------------------

// A NumericDate claim (RFC 7519 section 2): a JSON number of seconds, possibly fractional.
// nullopt when absent; an error when present and not a usable number.
Result<std::optional<int64_t>> NumericDate(const Json& claims, std::string_view name) {
  auto it = claims.find(name);
  if (it == claims.end()) return std::optional<int64_t>();
  if (it->is_number_integer()) {
    if (it->is_number_unsigned() && it->get<uint64_t>() > (uint64_t{1} << 40)) {
      return std::optional<int64_t>(int64_t{1} << 40);  // far future; keeps arithmetic safe
    }
    int64_t v = it->get<int64_t>();
    return std::optional<int64_t>(std::clamp<int64_t>(v, -(int64_t{1} << 40), int64_t{1} << 40));
  }
  if (it->is_number_float()) {
    double v = it->get<double>();
    if (!std::isfinite(v)) return InvalidArgument(fmt::format("'{}' is not a number", name));
    v = std::clamp(std::floor(v), -1099511627776.0, 1099511627776.0);
    return std::optional<int64_t>(static_cast<int64_t>(v));
  }
  return InvalidArgument(fmt::format("'{}' must be a number of seconds", name));
}

Status Fail(JwtFailure* out, JwtFailure f, std::string message) {
  if (out != nullptr) *out = f;
  return Status(StatusCode::kUnauthenticated, std::move(message));
}

}  // namespace

class JwtVerifierInternal {
 public:
  // The key that verifies a token with this kid and alg, or why there is none.
  static Result<const JwkKey*> Select(const Jwks& jwks, std::string_view kid, JwsAlg alg,
                                      JwtFailure* failure) {
    if (kid.empty()) {
      const JwkKey* only = nullptr;
      size_t n = 0;
      for (const auto& k : jwks.keys_) {
        if (k->alg == alg) {
          only = k.get();
          ++n;
        }
      }
      if (n == 1) return only;
      return Fail(failure, JwtFailure::kUnknownKid,
                  fmt::format("unknown kid: the token has no kid and the key set has {} {} keys", n,
                              JwsAlgName(alg)));
    }
    bool kid_found = false;
    for (const auto& k : jwks.keys_) {
      if (k->kid != kid) continue;
      kid_found = true;
      if (k->alg == alg) return k.get();
    }
    if (kid_found) {
      return Fail(failure, JwtFailure::kAlgMismatch,
                  fmt::format("alg mismatch: the key with the token's kid does not verify {}",
                              JwsAlgName(alg)));
    }
    return Fail(failure, JwtFailure::kUnknownKid,
                "unknown kid: no key in the set has the token's kid");
  }
};

std::string_view JwsAlgName(JwsAlg alg) {
  switch (alg) {
    case JwsAlg::kRs256:
      return "RS256";
    case JwsAlg::kEs256:
      return "ES256";
    case JwsAlg::kEdDsa:
      return "EdDSA";
  }
  return "?";
}

std::string_view JwtFailureName(JwtFailure f) {
  constexpr std::string_view kNames[] = {
      "none",           "malformed",     "unsupported_alg", "unknown_kid",      "alg_mismatch",
      "bad_signature",  "expired",       "not_yet_valid",   "issued_in_future", "wrong_issuer",
      "wrong_audience", "missing_claim",
  };
  auto i = static_cast<size_t>(f);
  return i < std::size(kNames) ? kNames[i] : "?";
}

namespace {

// ParseCompactJws without the payload's JSON: VerifyJwt parses the payload only once the
// signature holds, so unauthenticated bytes reach no more code than they must.
Result<CompactJws> ParseJwsHeader(std::string_view token, std::string* payload) {
  if (token.size() > kMaxTokenBytes) {
    return InvalidArgument(fmt::format("token is longer than {} bytes", kMaxTokenBytes));
  }
  size_t dot1 = token.find('.');
  size_t dot2 = dot1 == std::string_view::npos ? dot1 : token.find('.', dot1 + 1);
  if (dot2 == std::string_view::npos || token.find('.', dot2 + 1) != std::string_view::npos) {
    return InvalidArgument("token must have three dot-separated parts");
  }
  std::string_view h64 = token.substr(0, dot1);
  std::string_view p64 = token.substr(dot1 + 1, dot2 - dot1 - 1);
  std::string_view s64 = token.substr(dot2 + 1);
  CompactJws out;
  ASSIGN_OR_RETURN(std::string header, DecodeSegment(h64, "token header"));
  ASSIGN_OR_RETURN(*payload, DecodeSegment(p64, "token payload"));
  ASSIGN_OR_RETURN(out.signature, DecodeSegment(s64, "token signature"));
  ASSIGN_OR_RETURN(out.header, ParseStrictJson(header, "token header"));
  if (!out.header.is_object()) return InvalidArgument("token header must be a JSON object");
  const std::string* alg = FindString(out.header, "alg");
  if (alg == nullptr) return InvalidArgument("token header must have a string 'alg'");
  out.alg_name = *alg;
  if (auto it = out.header.find("kid"); it != out.header.end()) {
    if (!it->is_string()) return InvalidArgument("token header 'kid' must be a string");
    out.kid = it->get<std::string>();
  }
  // RFC 7515 section 4.1.11: extensions the recipient does not understand must be refused;
  // agentd understands none.
  if (out.header.contains("crit")) return InvalidArgument("token header has 'crit'");
  out.signing_input = token.substr(0, dot2);
  return out;
}

Status ParseJwsPayload(std::string_view payload, CompactJws* jws) {
  ASSIGN_OR_RETURN(jws->payload, ParseStrictJson(payload, "token payload"));
  if (!jws->payload.is_object()) return InvalidArgument("token payload must be a JSON object");
  return Status::OK();
}

}  // namespace

Result<CompactJws> ParseCompactJws(std::string_view token) {
  std::string payload;
  ASSIGN_OR_RETURN(CompactJws out, ParseJwsHeader(token, &payload));
  RETURN_IF_ERROR(ParseJwsPayload(payload, &out));
  return out;
}

Jwks::Jwks() = default;
Jwks::~Jwks() = default;
Jwks::Jwks(Jwks&&) noexcept = default;
Jwks& Jwks::operator=(Jwks&&) noexcept = default;

bool Jwks::HasKid(std::string_view kid) const {
  return std::any_of(keys_.begin(), keys_.end(), [&](const auto& k) { return k->kid == kid; });
}

Result<Jwks> Jwks::Parse(std::string_view json_text) {
  if (json_text.size() > kMaxJwksBytes) {
    return InvalidArgument(fmt::format("JWKS is longer than {} bytes", kMaxJwksBytes));
  }
  ASSIGN_OR_RETURN(Json doc, ParseStrictJson(json_text, "JWKS"));
  if (!doc.is_object()) return InvalidArgument("JWKS must be a JSON object");
  auto keys = doc.find("keys");
  if (keys == doc.end() || !keys->is_array())
    return InvalidArgument("JWKS 'keys' must be an array");
  if (keys->size() > kMaxJwksKeys) {
    return InvalidArgument(fmt::format("JWKS has more than {} keys", kMaxJwksKeys));
  }
  Jwks out;
  for (size_t i = 0; i < keys->size(); ++i) {
    ASSIGN_OR_RETURN(std::shared_ptr<JwkKey> key, ParseKey((*keys)[i], i));
    if (key == nullptr) continue;
    for (const auto& other : out.keys_) {
      // Two keys a token could not tell apart: which one verifies would be arbitrary.
      if (other->kid == key->kid && other->alg == key->alg) {
        return InvalidArgument(
            fmt::format("keys[{}]: another {} key has the same kid", i, JwsAlgName(key->alg)));
      }
    }
    out.keys_.push_back(std::move(key));
  }
  return out;
}

Result<Json> VerifyJwt(std::string_view token, const Jwks& jwks, const VerifyOptions& opts,
                       JwtFailure* failure) {
  if (failure != nullptr) *failure = JwtFailure::kNone;
  if (opts.issuer.empty() || opts.audience.empty()) {
    return InvalidArgument("VerifyOptions needs an issuer and an audience");
  }
  std::string payload;
  Result<CompactJws> jws = ParseJwsHeader(token, &payload);
  if (!jws.ok()) {
    return Fail(failure, JwtFailure::kMalformed, "malformed token: " + jws.status().message());
  }
  std::optional<JwsAlg> alg = AlgFromName(jws->alg_name);
  if (!alg) {
    // The name is the attacker's; quote it only when short and printable.
    std::string_view name = jws->alg_name;
    bool printable = name.size() <= 16 && std::all_of(name.begin(), name.end(),
                                                      [](char c) { return c > ' ' && c < 0x7f; });
    return Fail(failure, JwtFailure::kUnsupportedAlg,
                fmt::format("unsupported alg{}: only RS256, ES256 and EdDSA are accepted",
                            printable ? " '" + std::string(name) + "'" : ""));
  }
  ASSIGN_OR_RETURN(const JwkKey* key, JwtVerifierInternal::Select(jwks, jws->kid, *alg, failure));
  if (!VerifySignature(*key, jws->signing_input, jws->signature)) {
    return Fail(failure, JwtFailure::kBadSignature, "bad signature");
  }
  if (Status st = ParseJwsPayload(payload, &*jws); !st.ok()) {
    return Fail(failure, JwtFailure::kMalformed, "malformed token: " + st.message());
  }

  // The signature holds: the claims are the issuer's. Check they are meant for us, now.
  Json& claims = jws->payload;
  const std::string* iss = FindString(claims, "iss");
  if (claims.contains("iss") && iss == nullptr) {
    return Fail(failure, JwtFailure::kMalformed, "malformed token: 'iss' must be a string");
  }
  if (iss == nullptr) return Fail(failure, JwtFailure::kMissingClaim, "token has no 'iss'");
  if (*iss != opts.issuer) return Fail(failure, JwtFailure::kWrongIssuer, "wrong issuer");

  auto aud = claims.find("aud");
  bool aud_ok = false;
  if (aud != claims.end() && aud->is_string()) {
    aud_ok = *aud == opts.audience;
  } else if (aud != claims.end() && aud->is_array()) {
    for (const Json& a : *aud) {
      if (!a.is_string()) {
        return Fail(failure, JwtFailure::kMalformed, "malformed token: 'aud' must hold strings");
      }
      aud_ok = aud_ok || a == opts.audience;
    }
  } else if (aud != claims.end()) {
    return Fail(failure, JwtFailure::kMalformed,
                "malformed token: 'aud' must be a string or an array of strings");
  }
  if (!aud_ok) return Fail(failure, JwtFailure::kWrongAudience, "wrong audience");

  int64_t now = opts.now != 0 ? opts.now : SystemClock::Default()->NowMillis() / 1000;
  int64_t leeway = std::clamp<int64_t>(opts.leeway_seconds, 0, int64_t{1} << 30);
  Result<std::optional<int64_t>> exp = NumericDate(claims, "exp");
  Result<std::optional<int64_t>> nbf = NumericDate(claims, "nbf");
  Result<std::optional<int64_t>> iat = NumericDate(claims, "iat");
  for (const auto* r : {&exp, &nbf, &iat}) {
    if (!r->ok()) {
      return Fail(failure, JwtFailure::kMalformed, "malformed token: " + r->status().message());
    }
  }
  if (!exp->has_value()) return Fail(failure, JwtFailure::kMissingClaim, "token has no 'exp'");
  if (now >= **exp + leeway) return Fail(failure, JwtFailure::kExpired, "token expired");
  if (nbf->has_value() && **nbf - leeway > now) {
    return Fail(failure, JwtFailure::kNotYetValid, "token not yet valid (nbf)");
  }
  if (iat->has_value() && **iat - leeway > now) {
    return Fail(failure, JwtFailure::kIssuedInFuture, "token issued in the future (iat)");
  }
  return std::move(claims);
}

// ---- JwksSource -------------------------------------------------------------------------------

Result<std::string> FetchJwksBlocking(const std::string& location,
                                      std::chrono::milliseconds timeout) {
  if (location.starts_with("http://") || location.starts_with("https://")) {
    HttpRequest req;
    req.method = "GET";
    req.url = location;
    req.headers = {{"Accept", "application/json"}};
    req.timeout = timeout;
    req.max_response_bytes = kMaxJwksBytes;
    ASSIGN_OR_RETURN(HttpResponse resp, HttpDoBlocking(req));
    if (resp.status != 200) {
      return Unavailable(fmt::format("JWKS {}: HTTP status {}", location, resp.status));
    }
    return std::move(resp.body);
  }
  std::ifstream in(location, std::ios::binary);
  if (!in) return Unavailable(fmt::format("JWKS {}: cannot open the file", location));
  std::string text;
  text.resize(kMaxJwksBytes + 1);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) return Unavailable(fmt::format("JWKS {}: cannot read the file", location));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxJwksBytes) {
    return InvalidArgument(fmt::format("JWKS {}: longer than {} bytes", location, kMaxJwksBytes));
  }
  return text;
}

JwksSource::JwksSource(JwksSourceOptions opts, const Clock* clock, Fetcher fetch)
    : opts_(std::move(opts)),
      clock_(clock),
      fetch_(fetch ? std::move(fetch) : Fetcher([this](const std::string& loc) {
        return FetchJwksBlocking(loc, opts_.http_timeout);
      })) {}

Result<std::shared_ptr<const Jwks>> JwksSource::Load(bool force) {
  std::lock_guard<std::mutex> lock(mu_);
  auto now = clock_->Steady();
  if (force) {
    // Unknown kids are the caller's to choose: reload at most once per interval.
    if (loaded_once_ && now < next_forced_) {
      if (jwks_ != nullptr) return jwks_;
      return last_error_;
    }
  } else if (loaded_once_ && now < next_load_) {
    if (jwks_ != nullptr) return jwks_;
    return last_error_;
  }
  loaded_once_ = true;
  if (force) next_forced_ = now + opts_.min_refresh_interval;
  Result<std::string> text = fetch_(opts_.location);
  Result<Jwks> parsed = text.ok() ? Jwks::Parse(*text) : Result<Jwks>(text.status());
  if (!parsed.ok()) {
    next_load_ = now + opts_.min_refresh_interval;
    last_error_ = Unavailable(fmt::format("cannot load the JWKS: {}", parsed.status().message()));
    if (jwks_ != nullptr) return jwks_;  // keep serving the last good set
    return last_error_;
  }
  jwks_ = std::make_shared<const Jwks>(std::move(parsed).value());
  next_load_ = now + opts_.max_age;
  return jwks_;
}

Result<std::shared_ptr<const Jwks>> JwksSource::GetBlocking() { return Load(/*force=*/false); }

Result<Json> JwksSource::VerifyBlocking(std::string_view token, const VerifyOptions& opts,
                                        JwtFailure* failure) {
  ASSIGN_OR_RETURN(std::shared_ptr<const Jwks> jwks, Load(/*force=*/false));
  JwtFailure why = JwtFailure::kNone;
  Result<Json> claims = VerifyJwt(token, *jwks, opts, &why);
  if (why == JwtFailure::kUnknownKid) {
    ASSIGN_OR_RETURN(std::shared_ptr<const Jwks> fresh, Load(/*force=*/true));
    if (fresh != jwks) claims = VerifyJwt(token, *fresh, opts, &why);
  }
  if (failure != nullptr) *failure = why;
  return claims;
}

}  // namespace agentd::identity
