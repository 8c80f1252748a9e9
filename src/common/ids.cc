#include "common/ids.h"

#include <sodium.h>

#include <cstdint>

namespace agentd {
namespace {
constexpr char kAlphabet[] = "0123456789abcdefghjkmnpqrstvwxyz";
constexpr size_t kRandomChars = 26;
}  // namespace

std::string NewId(std::string_view prefix) {
  uint8_t bytes[17];
  randombytes_buf(bytes, sizeof(bytes));
  std::string out(prefix);
  out.reserve(prefix.size() + kRandomChars);
  // 26 chars x 5 bits = 130 bits taken from 136 random bits.
  uint32_t acc = 0;
  int bits = 0;
  size_t i = 0;
  while (out.size() < prefix.size() + kRandomChars) {
    if (bits < 5) {
      acc = (acc << 8) | bytes[i++];
      bits += 8;
    }
    out.push_back(kAlphabet[(acc >> (bits - 5)) & 31]);
    bits -= 5;
  }
  return out;
}

bool IsValidId(std::string_view id, std::string_view prefix) {
  if (id.size() != prefix.size() + kRandomChars || id.substr(0, prefix.size()) != prefix) {
    return false;
  }
  for (char c : id.substr(prefix.size())) {
    bool found = false;
    for (const char* p = kAlphabet; *p; ++p) found |= (*p == c);
    if (!found) return false;
  }
  return true;
}

}  // namespace agentd
