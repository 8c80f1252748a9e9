#include "model/openai_chat/json_text.h"

#include <array>
#include <cstdint>
#include <cstring>

#include "common/utf8.h"

namespace agentd::model::openai_chat {
namespace {

// Bytes that are copied without a second look: printable ASCII other than `"` and `\`.
constexpr std::array<bool, 256> kPlain = [] {
  std::array<bool, 256> t{};
  for (int c = 0x20; c < 0x80; ++c) t[c] = c != '"' && c != '\\';
  return t;
}();

constexpr char kHex[] = "0123456789abcdef";

// The letter of a control character's short escape (\b \t \n \f \r), 0 for \u00xx.
constexpr std::array<char, 0x20> kShortEscape = [] {
  std::array<char, 0x20> t{};
  t['\b'] = 'b';
  t['\t'] = 't';
  t['\n'] = 'n';
  t['\f'] = 'f';
  t['\r'] = 'r';
  return t;
}();

}  // namespace

void AppendJsonString(std::string* out, std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* const end = p + s.size();
  // Written through a pointer into room made ahead: the text plus an eighth for escapes,
  // grown when that runs out. One step writes at most 22 bytes (a 16-byte block, then an
  // escape) and the closing quote one more, so a step starts only with kRoom bytes free.
  constexpr size_t kRoom = 24;
  char* d = nullptr;
  char* limit = nullptr;
  auto make_room = [&](size_t used) {
    size_t left = static_cast<size_t>(end - p);
    out->resize(used + left + left / 8 + 2 * kRoom);
    d = out->data() + used;
    limit = out->data() + out->size() - kRoom;
  };
  make_room(out->size());
  *d++ = '"';
  while (p < end) {
    if (d > limit) make_room(static_cast<size_t>(d - out->data()));
    if (end - p >= 16) {
      // Copies all 16 and keeps the plain ones; the rest are written again below.
      size_t n = PlainJsonPrefix16(p);
      std::memcpy(d, p, 16);
      d += n;
      p += n;
      if (n == 16) continue;
    }
    const unsigned char c = *p;
    if (kPlain[c]) {
      *d++ = static_cast<char>(c);
      ++p;
      continue;
    }
    if (c >= 0x80) {
      size_t bad = 0;
      if (size_t len = Utf8Sequence(p, end, &bad); len != 0) {
        std::memcpy(d, p, len);
        d += len;
        p += len;
      } else {
        std::memcpy(d, "\xEF\xBF\xBD", 3);
        d += 3;
        p += bad;
      }
      continue;
    }
    ++p;
    *d++ = '\\';
    if (c == '"' || c == '\\') {
      *d++ = static_cast<char>(c);
    } else if (kShortEscape[c] != 0) {
      *d++ = kShortEscape[c];
    } else {
      const char u[] = {'u', '0', '0', kHex[c >> 4], kHex[c & 0xF]};
      std::memcpy(d, u, sizeof(u));
      d += sizeof(u);
    }
  }
  *d++ = '"';
  out->resize(static_cast<size_t>(d - out->data()));
}

}  // namespace agentd::model::openai_chat
