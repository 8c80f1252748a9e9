// A validating JSON reader that builds nothing, for the fake model server: it walks a
// document once and reports each token to a handler, strings as views into the text, so
// the fake picks the few values it needs out of a long conversation at memory speed
// instead of paying for nlohmann's character-at-a-time lexer (about 85 MB/s).
//
// It accepts exactly RFC 8259 JSON: one value with optional whitespace around it, UTF-8
// checked (no overlong forms, surrogates or code points above U+10FFFF), \u escapes of
// surrogates only in valid pairs, no control characters in strings, no trailing commas.
// Unlike nlohmann it does not reject numbers too large for a double (nothing reads them).
// Nesting depth is limited only by memory (an explicit stack, no recursion).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace agentd::fakes {

// A string as it appears in the text, between its quotes.
struct JsonString {
  std::string_view raw;  // escapes as written
  bool escaped = false;  // raw holds backslash escapes, so it differs from the value
  size_t chars = 0;      // code points of the value
};

// Appends the value of `s`, which ScanJson validated, as UTF-8.
void AppendDecoded(const JsonString& s, std::string* out);

// `s`'s value == `v`, decoding only when `s` has escapes.
bool DecodedEquals(const JsonString& s, std::string_view v);

enum class ScanResult { kOk, kSyntaxError, kStopped };

namespace json_scan_internal {
const char* SkipSpace(const char* p, const char* end);
// Each reads the token at p (a string from its opening quote), sets p past it and returns
// true; on a syntax error sets p to the offending byte and returns false.
bool ScanString(const char*& p, const char* end, JsonString* out);
bool ScanNumber(const char*& p, const char* end);
bool ScanLiteral(const char*& p, const char* end, std::string_view word);
}  // namespace json_scan_internal

// Scans `text` as one JSON value, calling on `h`, in document order:
//   bool StartObject(), EndObject(), StartArray(), EndArray(), Key(const JsonString&),
//   String(const JsonString&), Bool(bool), Null(), Number()
// A handler returning false stops the scan (kStopped). On kSyntaxError *error_offset is the
// offset of the first byte that cannot be part of a valid document (text.size() when the
// text ends early).
template <typename Handler>
ScanResult ScanJson(std::string_view text, Handler& h, size_t* error_offset) {
  using namespace json_scan_internal;
  const char* const begin = text.data();
  const char* const end = begin + text.size();
  const char* p = begin;
  std::vector<char> open;  // '{' or '[' for each container being read
  JsonString s;
  auto syntax_error = [&] {
    *error_offset = static_cast<size_t>(p - begin);
    return ScanResult::kSyntaxError;
  };
  // Reads `"key" :` at p (after whitespace); 0 ok, 1 syntax error, 2 stopped.
  auto key = [&]() -> int {
    p = SkipSpace(p, end);
    if (p == end || *p != '"' || !ScanString(p, end, &s)) return 1;
    if (!h.Key(s)) return 2;
    p = SkipSpace(p, end);
    if (p == end || *p != ':') return 1;
    ++p;
    return 0;
  };
  auto after_key = [&](int k) { return k == 1 ? syntax_error() : ScanResult::kStopped; };

  for (;;) {
    // A value starts here.
    p = SkipSpace(p, end);
    if (p == end) return syntax_error();
    switch (*p) {
      case '{': {
        if (!h.StartObject()) return ScanResult::kStopped;
        p = SkipSpace(p + 1, end);
        if (p != end && *p == '}') {
          ++p;
          if (!h.EndObject()) return ScanResult::kStopped;
          break;
        }
        open.push_back('{');
        if (int k = key(); k != 0) return after_key(k);
        continue;
      }
      case '[': {
        if (!h.StartArray()) return ScanResult::kStopped;
        p = SkipSpace(p + 1, end);
        if (p != end && *p == ']') {
          ++p;
          if (!h.EndArray()) return ScanResult::kStopped;
          break;
        }
        open.push_back('[');
        continue;
      }
      case '"':
        if (!ScanString(p, end, &s)) return syntax_error();
        if (!h.String(s)) return ScanResult::kStopped;
        break;
      case 't':
      case 'f': {
        const bool v = *p == 't';
        if (!ScanLiteral(p, end, v ? "true" : "false")) return syntax_error();
        if (!h.Bool(v)) return ScanResult::kStopped;
        break;
      }
      case 'n':
        if (!ScanLiteral(p, end, "null")) return syntax_error();
        if (!h.Null()) return ScanResult::kStopped;
        break;
      default:
        if (!ScanNumber(p, end)) return syntax_error();
        if (!h.Number()) return ScanResult::kStopped;
        break;
    }
    // A value ended: close containers until one continues with a comma.
    for (;;) {
      p = SkipSpace(p, end);
      if (open.empty()) return p == end ? ScanResult::kOk : syntax_error();
      if (p == end) return syntax_error();
      const bool object = open.back() == '{';
      if (*p == ',') {
        ++p;
        if (object) {
          if (int k = key(); k != 0) return after_key(k);
        }
        break;
      }
      if (*p != (object ? '}' : ']')) return syntax_error();
      ++p;
      open.pop_back();
      if (!(object ? h.EndObject() : h.EndArray())) return ScanResult::kStopped;
    }
  }
}

}  // namespace agentd::fakes
