#include "model/openai_chat/json_text.h"

#include <array>
#include <bit>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace agentd::model::openai_chat {
namespace {

// Bytes that are copied without a second look: printable ASCII other than `"` and `\`.
constexpr std::array<bool, 256> kPlain = [] {
  std::array<bool, 256> t{};
  for (int c = 0x20; c < 0x80; ++c) t[c] = c != '"' && c != '\\';
  return t;
}();

// The number of plain bytes at the start of the 16 at `p` (16 when all are).
inline size_t PlainPrefix16(const unsigned char* p) {
#if defined(__SSE2__)
  const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  // A signed compare: bytes below 0x20 and bytes from 0x80 up (negative) in one go.
  const __m128i special = _mm_or_si128(
      _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')), _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))),
      _mm_cmplt_epi8(v, _mm_set1_epi8(0x20)));
  const auto mask = static_cast<unsigned>(_mm_movemask_epi8(special));
  return mask == 0 ? 16 : static_cast<size_t>(std::countr_zero(mask));
#else
  size_t n = 0;
  while (n < 16 && kPlain[p[n]]) ++n;
  return n;
#endif
}

// The length (2 to 4) of the well-formed UTF-8 sequence starting at p[0] >= 0x80, or 0 when
// it is ill-formed, with *bad set to the length of its maximal subpart (at least 1): the
// bytes one U+FFFD replaces. The ranges are those of Unicode's table 3-7, which excludes
// overlong forms, surrogates and code points above U+10FFFF.
inline size_t Utf8Sequence(const unsigned char* p, const unsigned char* end, size_t* bad) {
  const unsigned char c = p[0];
  size_t len = 0;
  unsigned char lo = 0x80, hi = 0xBF;  // range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c == 0xE0) {
    len = 3;
    lo = 0xA0;
  } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
    len = 3;
  } else if (c == 0xED) {
    len = 3;
    hi = 0x9F;
  } else if (c == 0xF0) {
    len = 4;
    lo = 0x90;
  } else if (c >= 0xF1 && c <= 0xF3) {
    len = 4;
  } else if (c == 0xF4) {
    len = 4;
    hi = 0x8F;
  } else {
    *bad = 1;  // a continuation byte, C0, C1 or F5..FF cannot start a sequence
    return 0;
  }
  for (size_t i = 1; i < len; ++i) {
    if (p + i >= end || p[i] < lo || p[i] > hi) {
      *bad = i;
      return 0;
    }
    lo = 0x80;
    hi = 0xBF;
  }
  return len;
}

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
      size_t n = PlainPrefix16(p);
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
