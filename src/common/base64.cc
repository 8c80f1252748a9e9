#include "common/base64.h"

#include <sodium.h>

namespace agentd {
namespace {

int SodiumVariant(Base64Variant v) {
  return v == Base64Variant::kStandard ? sodium_base64_VARIANT_ORIGINAL
                                       : sodium_base64_VARIANT_URLSAFE_NO_PADDING;
}

}  // namespace

std::string Base64Encode(std::string_view bytes, Base64Variant variant) {
  int v = SodiumVariant(variant);
  std::string out(sodium_base64_encoded_len(bytes.size(), v), '\0');
  sodium_bin2base64(out.data(), out.size(), reinterpret_cast<const unsigned char*>(bytes.data()),
                    bytes.size(), v);
  out.resize(out.size() - 1);  // the terminating NUL libsodium writes
  return out;
}

Result<std::string> Base64Decode(std::string_view text, Base64Variant variant) {
  std::string out(text.size() / 4 * 3 + 3, '\0');
  size_t len = 0;
  const char* end = nullptr;
  if (sodium_base642bin(reinterpret_cast<unsigned char*>(out.data()), out.size(), text.data(),
                        text.size(), nullptr, &len, &end, SodiumVariant(variant)) != 0 ||
      end != text.data() + text.size()) {
    return InvalidArgument("not valid base64");
  }
  out.resize(len);
  return out;
}

}  // namespace agentd
