// Byte-level helpers for code that reads or writes JSON text in one pass (the model request
// encoder, the fake model's parser).
#pragma once

#include <bit>
#include <cstddef>
#include <string_view>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace agentd {

// The number of bytes at the start of the 16 at `p` that a JSON string may hold as they are
// and that need no UTF-8 check: printable ASCII other than `"` and `\` (16 when all are).
// Reads 16 bytes: the caller makes sure they exist.
inline size_t PlainJsonPrefix16(const unsigned char* p) {
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
  while (n < 16 && p[n] >= 0x20 && p[n] < 0x80 && p[n] != '"' && p[n] != '\\') ++n;
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

// True when `s` is well-formed UTF-8 throughout.
inline bool IsValidUtf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p < end) {
    if (*p < 0x80) {
      ++p;
      continue;
    }
    size_t bad = 0;
    size_t len = Utf8Sequence(p, end, &bad);
    if (len == 0) return false;
    p += len;
  }
  return true;
}

}  // namespace agentd
