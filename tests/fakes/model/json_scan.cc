#include "fakes/model/json_scan.h"

#include <cstdint>
#include <cstring>

#include "common/utf8.h"

namespace agentd::fakes {
namespace {

// The value of four hex digits at p, or -1.
inline int Hex4(const unsigned char* p, const unsigned char* end) {
  if (end - p < 4) return -1;
  int v = 0;
  for (int i = 0; i < 4; ++i) {
    const unsigned char c = p[i];
    int d = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

inline bool IsDigit(char c) { return c >= '0' && c <= '9'; }

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace

namespace json_scan_internal {

const char* SkipSpace(const char* p, const char* end) {
  while (p != end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) ++p;
  return p;
}

bool ScanString(const char*& p, const char* end, JsonString* out) {
  const auto* const e = reinterpret_cast<const unsigned char*>(end);
  const auto* const start = reinterpret_cast<const unsigned char*>(p) + 1;
  const auto* q = start;
  size_t chars = 0;
  bool escaped = false;
  auto fail = [&](const unsigned char* at) {
    p = reinterpret_cast<const char*>(at);
    return false;
  };
  for (;;) {
    while (e - q >= 16) {
      size_t n = PlainJsonPrefix16(q);
      q += n;
      chars += n;
      if (n < 16) break;
    }
    if (q == e) return fail(q);  // unterminated
    const unsigned char c = *q;
    if (c == '"') break;
    if (c < 0x20) return fail(q);
    if (c < 0x80 && c != '\\') {
      ++q;
      ++chars;
      continue;
    }
    if (c >= 0x80) {
      size_t bad = 0;
      size_t len = Utf8Sequence(q, e, &bad);
      if (len == 0) return fail(q);
      q += len;
      ++chars;
      continue;
    }
    escaped = true;
    if (e - q < 2) return fail(e);
    switch (q[1]) {
      case '"':
      case '\\':
      case '/':
      case 'b':
      case 'f':
      case 'n':
      case 'r':
      case 't':
        q += 2;
        break;
      case 'u': {
        int u = Hex4(q + 2, e);
        if (u < 0 || (u >= 0xDC00 && u <= 0xDFFF)) return fail(q);
        if (u >= 0xD800 && u <= 0xDBFF) {
          if (e - q < 12 || q[6] != '\\' || q[7] != 'u') return fail(q);
          int low = Hex4(q + 8, e);
          if (low < 0xDC00 || low > 0xDFFF) return fail(q);
          q += 12;
        } else {
          q += 6;
        }
        break;
      }
      default:
        return fail(q + 1);
    }
    ++chars;
  }
  out->raw = std::string_view(reinterpret_cast<const char*>(start), static_cast<size_t>(q - start));
  out->escaped = escaped;
  out->chars = chars;
  p = reinterpret_cast<const char*>(q + 1);
  return true;
}

bool ScanNumber(const char*& p, const char* end) {
  const char* q = p;
  auto digits = [&] {
    if (q == end || !IsDigit(*q)) return false;
    while (q != end && IsDigit(*q)) ++q;
    return true;
  };
  if (q != end && *q == '-') ++q;
  if (q != end && *q == '0') {
    ++q;
  } else if (!digits()) {
    p = q;
    return false;
  }
  if (q != end && *q == '.') {
    ++q;
    if (!digits()) {
      p = q;
      return false;
    }
  }
  if (q != end && (*q == 'e' || *q == 'E')) {
    ++q;
    if (q != end && (*q == '+' || *q == '-')) ++q;
    if (!digits()) {
      p = q;
      return false;
    }
  }
  p = q;
  return true;
}

bool ScanLiteral(const char*& p, const char* end, std::string_view word) {
  size_t n = 0;
  while (n < word.size() && p + n != end && p[n] == word[n]) ++n;
  p += n;
  return n == word.size();
}

}  // namespace json_scan_internal

void AppendDecoded(const JsonString& s, std::string* out) {
  if (!s.escaped) {
    out->append(s.raw);
    return;
  }
  const auto* q = reinterpret_cast<const unsigned char*>(s.raw.data());
  const auto* const e = q + s.raw.size();
  while (q != e) {
    const auto* bs = static_cast<const unsigned char*>(std::memchr(q, '\\', e - q));
    if (bs == nullptr) bs = e;
    out->append(reinterpret_cast<const char*>(q), static_cast<size_t>(bs - q));
    q = bs;
    if (q == e) break;
    // ScanString accepted this escape, so it is complete and well formed.
    switch (q[1]) {
      case 'b':
        out->push_back('\b');
        break;
      case 'f':
        out->push_back('\f');
        break;
      case 'n':
        out->push_back('\n');
        break;
      case 'r':
        out->push_back('\r');
        break;
      case 't':
        out->push_back('\t');
        break;
      case 'u': {
        uint32_t cp = static_cast<uint32_t>(Hex4(q + 2, e));
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          uint32_t low = static_cast<uint32_t>(Hex4(q + 8, e));
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
          q += 6;
        }
        AppendUtf8(cp, out);
        q += 6;
        continue;
      }
      default:
        out->push_back(static_cast<char>(q[1]));
        break;  // " \ /
    }
    q += 2;
  }
}

bool DecodedEquals(const JsonString& s, std::string_view v) {
  if (!s.escaped) return s.raw == v;
  std::string decoded;
  AppendDecoded(s, &decoded);
  return decoded == v;
}

}  // namespace agentd::fakes
