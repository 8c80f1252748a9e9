// The fake model server's JSON reader, against nlohmann's parser: the same documents
// accepted and rejected, the same values read.
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "common/json.h"
#include "fakes/model/json_scan.h"

namespace agentd::fakes {
namespace {

using namespace std::string_literals;

// Rebuilds the document from the scanner's events, numbers as null (the scanner does not
// read them), checking each string's code point count on the way.
class DomBuilder {
 public:
  Json root;

  bool StartObject() { return Push(Json::object()); }
  bool StartArray() { return Push(Json::array()); }
  bool EndObject() { return Pop(); }
  bool EndArray() { return Pop(); }
  bool Key(const JsonString& k) {
    key_.clear();
    AppendDecoded(k, &key_);
    return true;
  }
  bool String(const JsonString& s) {
    std::string v;
    AppendDecoded(s, &v);
    size_t cps = 0;
    for (char c : v) cps += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    EXPECT_EQ(s.chars, cps) << v;
    EXPECT_EQ(s.escaped, s.raw.find('\\') != std::string_view::npos);
    EXPECT_TRUE(DecodedEquals(s, v));
    return Add(Json(std::move(v)));
  }
  bool Bool(bool v) { return Add(Json(v)); }
  bool Null() { return Add(Json()); }
  bool Number() { return Add(Json()); }

 private:
  bool Add(Json v) {
    if (stack_.empty()) {
      root = std::move(v);
    } else if (stack_.back()->is_object()) {
      (*stack_.back())[key_] = std::move(v);
    } else {
      stack_.back()->push_back(std::move(v));
    }
    return true;
  }
  bool Push(Json v) {
    Add(std::move(v));
    Json* added = stack_.empty()               ? &root
                  : stack_.back()->is_object() ? &(*stack_.back())[key_]
                                               : &stack_.back()->back();
    stack_.push_back(added);
    return true;
  }
  bool Pop() {
    stack_.pop_back();
    return true;
  }

  std::vector<Json*> stack_;
  std::string key_;
};

// Numbers replaced by null, to compare with what DomBuilder builds.
Json NumbersAsNull(const Json& j) {
  if (j.is_number()) return Json();
  if (j.is_object()) {
    Json o = Json::object();
    for (auto it = j.begin(); it != j.end(); ++it) o[it.key()] = NumbersAsNull(it.value());
    return o;
  }
  if (j.is_array()) {
    Json a = Json::array();
    for (const Json& v : j) a.push_back(NumbersAsNull(v));
    return a;
  }
  return j;
}

// Expects ScanJson and nlohmann to agree on `text`; returns whether it is JSON.
bool ExpectSameAsNlohmann(const std::string& text) {
  Json parsed = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  DomBuilder b;
  size_t at = 0;
  ScanResult r = ScanJson(text, b, &at);
  EXPECT_EQ(r == ScanResult::kOk, !parsed.is_discarded())
      << Json(text).dump(-1, ' ', true, Json::error_handler_t::replace);
  if (r == ScanResult::kOk) {
    EXPECT_EQ(b.root, NumbersAsNull(parsed)) << text;
  } else {
    EXPECT_EQ(r, ScanResult::kSyntaxError);
    EXPECT_LE(at, text.size());
  }
  return r == ScanResult::kOk;
}

TEST(JsonScanTest, AcceptsAndRejectsLikeNlohmann) {
  const std::vector<std::string> docs = {
      "{}",
      "[]",
      " \t\r\n{ } ",
      "0",
      "-0",
      "1.5e+3",
      "-12.25E-2",
      "true",
      "false",
      "null",
      R"("s")",
      R"({"a":[1,{"b":null},"c\"d\\e\/f\b\f\n\r\t"],"e":true})",
      R"(["\u00e9\u20ac\ud83d\ude00\u0000"])",
      "[\"caf\xC3\xA9 \xF0\x9F\x98\x80 \xEF\xBF\xBF\"]",
      R"({"a":1,"a":2})",
      "[[[[[[[[[[[]]]]]]]]]]]",
      // Rejected:
      "",
      " ",
      "{",
      "}",
      "[1,]",
      "{\"a\":1,}",
      "[1 2]",
      "{\"a\" 1}",
      "{1:2}",
      "{\"a\":}",
      "01",
      "1.",
      ".5",
      "1e",
      "-",
      "+1",
      "0x10",
      "tru",
      "nul",
      "True",
      "[1]x",
      "{} {}",
      "\"unterminated",
      "\"bad \\x escape\"",
      "\"\\u12\"",
      "\"\\ud800\"",
      "\"\\udc00\"",
      "\"\\ud800\\u0041\"",
      "\"ctl \x01\"",
      "\"tab \t\"",
      "\"\xC0\xAF\"",
      "\"\xED\xA0\x80\"",
      "\"\xF4\x90\x80\x80\"",
      "\"\x80\"",
      "\"\xE2\x82\"",
      "\"\xE2\x82",
      "[\"a\"\"b\"]",
      "/* c */ {}",
      "{'a':1}",
      "[1,2",
      "\"\\",
      "\"\\u\"",
      "nan",
      "[-]",
      "[1e+]",
      "\"nul \0 inside\""s,
  };
  for (const std::string& d : docs) ExpectSameAsNlohmann(d);
}

TEST(JsonScanTest, RandomMutationsOfADocumentAgreeWithNlohmann) {
  const std::string base =
      R"({"model":"m","messages":[{"role":"user","content":"h\u00e9llo \"x\"\n"},)"
      R"({"role":"assistant","content":null,"tool_calls":[{"id":"c","function":)"
      R"({"name":"f","arguments":"{\"a\":[1,2.5e-3]}"}}]},{"role":"tool","content":)"
      "\"caf\xC3\xA9 \xF0\x9F\x98\x80\"}],\"stream\":true,\"n\":-0.5,\"t\":false}";
  ASSERT_TRUE(ExpectSameAsNlohmann(base));
  std::mt19937 rng(99);
  int valid = 0, invalid = 0;
  const std::string alphabet = "{}[],:\"\\/ \t\n0123456789.eE+-truefalsn\x01\x80\xC3\xA9\xED\xF0"s;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string d = base;
    for (int m = static_cast<int>(rng() % 3) + 1; m > 0; --m) {
      size_t pos = rng() % (d.size() + 1);
      switch (rng() % 3) {
        case 0:
          d.insert(pos, 1, alphabet[rng() % alphabet.size()]);
          break;
        case 1:
          if (pos < d.size()) d.erase(pos, 1);
          break;
        default:
          if (pos < d.size()) d[pos] = alphabet[rng() % alphabet.size()];
          break;
      }
    }
    (ExpectSameAsNlohmann(d) ? valid : invalid)++;
    if (HasFailure()) return;
  }
  EXPECT_GT(valid, 2000);
  EXPECT_GT(invalid, 2000);
}

TEST(JsonScanTest, DeepNestingNeedsNoRecursion) {
  std::string deep = std::string(100000, '[') + std::string(100000, ']');
  struct Counter {
    int depth = 0, max_depth = 0;
    bool StartObject() { return true; }
    bool EndObject() { return true; }
    bool StartArray() {
      max_depth = std::max(max_depth, ++depth);
      return true;
    }
    bool EndArray() {
      --depth;
      return true;
    }
    bool Key(const JsonString&) { return true; }
    bool String(const JsonString&) { return true; }
    bool Bool(bool) { return true; }
    bool Null() { return true; }
    bool Number() { return true; }
  } counter;
  size_t at = 0;
  EXPECT_EQ(ScanJson(deep, counter, &at), ScanResult::kOk);
  EXPECT_EQ(counter.max_depth, 100000);
  EXPECT_EQ(ScanJson(deep.substr(1), counter, &at), ScanResult::kSyntaxError);
}

TEST(JsonScanTest, AHandlerCanStopTheScan) {
  struct StopAtString {
    bool StartObject() { return true; }
    bool EndObject() { return true; }
    bool StartArray() { return true; }
    bool EndArray() { return true; }
    bool Key(const JsonString&) { return true; }
    bool String(const JsonString&) { return false; }
    bool Bool(bool) { return true; }
    bool Null() { return true; }
    bool Number() { return true; }
  } h;
  size_t at = 0;
  EXPECT_EQ(ScanJson(R"([1,"x",{)", h, &at), ScanResult::kStopped);
}

}  // namespace
}  // namespace agentd::fakes
