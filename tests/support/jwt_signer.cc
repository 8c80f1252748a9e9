#include "tests/support/jwt_signer.h"

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/pem.h>

#include <cstdio>
#include <cstdlib>

#include "common/base64.h"

namespace agentd::testing {
namespace {

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "jwt_signer: %s failed\n", what);
  std::abort();
}

std::string BnParam(EVP_PKEY* k, const char* name, int pad = 0) {
  BIGNUM* bn = nullptr;
  if (EVP_PKEY_get_bn_param(k, name, &bn) != 1) Die(name);
  std::string out(pad > 0 ? pad : BN_num_bytes(bn), '\0');
  BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(out.size()));
  BN_free(bn);
  return out;
}

Pkey Checked(EVP_PKEY* k, const char* what) {
  if (k == nullptr) Die(what);
  return Pkey(k);
}

}  // namespace

Pkey GenRsa(size_t bits) {
  return Checked(EVP_PKEY_Q_keygen(nullptr, nullptr, "RSA", bits), "RSA keygen");
}
Pkey GenP256() { return Checked(EVP_PKEY_Q_keygen(nullptr, nullptr, "EC", "P-256"), "EC keygen"); }
Pkey GenEd25519() {
  return Checked(EVP_PKEY_Q_keygen(nullptr, nullptr, "ED25519"), "Ed25519 keygen");
}

std::string B64(std::string_view bytes) {
  return Base64Encode(bytes, Base64Variant::kUrlNoPadding);
}

Json JwkOf(EVP_PKEY* k, const std::string& kid) {
  Json j = {{"kid", kid}};
  switch (EVP_PKEY_get_base_id(k)) {
    case EVP_PKEY_RSA:
      j["kty"] = "RSA";
      j["n"] = B64(BnParam(k, OSSL_PKEY_PARAM_RSA_N));
      j["e"] = B64(BnParam(k, OSSL_PKEY_PARAM_RSA_E));
      break;
    case EVP_PKEY_EC:
      j["kty"] = "EC";
      j["crv"] = "P-256";
      j["x"] = B64(BnParam(k, OSSL_PKEY_PARAM_EC_PUB_X, 32));
      j["y"] = B64(BnParam(k, OSSL_PKEY_PARAM_EC_PUB_Y, 32));
      break;
    case EVP_PKEY_ED25519: {
      std::string raw(32, '\0');
      size_t len = raw.size();
      if (EVP_PKEY_get_raw_public_key(k, reinterpret_cast<unsigned char*>(raw.data()), &len) != 1) {
        Die("EVP_PKEY_get_raw_public_key");
      }
      j["kty"] = "OKP";
      j["crv"] = "Ed25519";
      j["x"] = B64(raw);
      break;
    }
    default:
      Die("JwkOf: key type");
  }
  return j;
}

std::string PublicPem(EVP_PKEY* k) {
  BIO* bio = BIO_new(BIO_s_mem());
  if (PEM_write_bio_PUBKEY(bio, k) != 1) Die("PEM_write_bio_PUBKEY");
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(n));
  BIO_free(bio);
  return out;
}

std::string SignRaw(EVP_PKEY* k, std::string_view input) {
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const bool ed = EVP_PKEY_get_base_id(k) == EVP_PKEY_ED25519;
  size_t len = 0;
  const auto* in = reinterpret_cast<const unsigned char*>(input.data());
  if (EVP_DigestSignInit(ctx, nullptr, ed ? nullptr : EVP_sha256(), nullptr, k) != 1 ||
      EVP_DigestSign(ctx, nullptr, &len, in, input.size()) != 1) {
    Die("EVP_DigestSign");
  }
  std::string sig(len, '\0');
  if (EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len, in, input.size()) !=
      1) {
    Die("EVP_DigestSign");
  }
  sig.resize(len);
  EVP_MD_CTX_free(ctx);
  if (EVP_PKEY_get_base_id(k) == EVP_PKEY_EC) {  // DER to JOSE's r || s
    const auto* p = reinterpret_cast<const unsigned char*>(sig.data());
    ECDSA_SIG* es = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size()));
    if (es == nullptr) Die("d2i_ECDSA_SIG");
    std::string raw(64, '\0');
    BN_bn2binpad(ECDSA_SIG_get0_r(es), reinterpret_cast<unsigned char*>(raw.data()), 32);
    BN_bn2binpad(ECDSA_SIG_get0_s(es), reinterpret_cast<unsigned char*>(raw.data()) + 32, 32);
    ECDSA_SIG_free(es);
    return raw;
  }
  return sig;
}

std::string SignToken(EVP_PKEY* k, const Json& header, const Json& payload) {
  std::string input = B64(header.dump()) + "." + B64(payload.dump());
  return input + "." + B64(SignRaw(k, input));
}

std::string Hs256Token(std::string_view secret, const Json& header, const Json& payload) {
  std::string input = B64(header.dump()) + "." + B64(payload.dump());
  unsigned char mac[32];
  size_t len = 0;
  if (EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, secret.data(), secret.size(),
                reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac,
                sizeof mac, &len) == nullptr) {
    Die("EVP_Q_mac");
  }
  return input + "." + B64(std::string_view(reinterpret_cast<char*>(mac), len));
}

}  // namespace agentd::testing
