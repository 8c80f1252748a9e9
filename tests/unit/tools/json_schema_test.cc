#include "tools/json_schema.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <random>
#include <string>

namespace agentd::tools {
namespace {

Json J(const char* text) { return Json::parse(text); }

// "" when `value` is valid, else the error message.
std::string Why(const Json& schema, const Json& value) {
  Status st = ValidateAgainstSchema(schema, value);
  if (st.ok()) return "";
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  return st.message();
}

std::string CheckWhy(const Json& schema) {
  Status st = CheckSchema(schema);
  if (st.ok()) return "";
  EXPECT_EQ(st.code(), StatusCode::kInvalidArgument);
  return st.message();
}

#define EXPECT_CONTAINS(haystack, needle)                                       \
  do {                                                                          \
    std::string h_ = (haystack);                                                \
    EXPECT_NE(h_.find(needle), std::string::npos) << "message: '" << h_ << "'"; \
  } while (0)

// --------------------------------------------------------------------------------------
// CheckSchema

TEST(CheckSchemaTest, AcceptsATypicalFunctionSchema) {
  Json s = J(R"({
    "$schema": "https://json-schema.org/draft/2020-12/schema", "$id": "weather",
    "type": "object", "title": "Weather", "description": "Get the weather",
    "properties": {
      "city": {"type": "string", "minLength": 1, "maxLength": 100, "pattern": "^[A-Za-z ]+$",
               "examples": ["Paris"], "$comment": "free text"},
      "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
      "days": {"type": "integer", "minimum": 1, "maximum": 14, "exclusiveMinimum": 0,
               "exclusiveMaximum": 15.5},
      "when": {"type": ["string", "null"], "format": "date"},
      "tags": {"type": "array", "items": {"type": "string"}, "minItems": 0, "maxItems": 5,
               "uniqueItems": true},
      "kind": {"const": "forecast"},
      "loc": {"anyOf": [{"$ref": "#/$defs/point"}, {"type": "string"}]},
      "mode": {"oneOf": [{"type": "integer"}, {"type": "boolean"}]},
      "both": {"allOf": [{"type": "number"}, {"not": {"const": 0}}]},
      "legacy": {"$ref": "#/definitions/old"},
      "anything": true
    },
    "required": ["city"],
    "additionalProperties": false,
    "$defs": {"point": {"type": "object", "properties": {"lat": {"type": "number"}},
                        "additionalProperties": {"type": "number"}}},
    "definitions": {"old": {"type": "string"}}
  })");
  EXPECT_EQ(CheckWhy(s), "");
}

TEST(CheckSchemaTest, RootMustBeAnObjectSchema) {
  EXPECT_CONTAINS(CheckWhy(J("[]")), "parameters: schema must be a JSON object");
  EXPECT_CONTAINS(CheckWhy(J("true")), "must be a JSON object");
  EXPECT_CONTAINS(CheckWhy(J(R"({"type": "string"})")), "\"type\": \"object\"");
  EXPECT_CONTAINS(CheckWhy(J(R"({"properties": {}})")), "\"type\": \"object\"");
  EXPECT_EQ(CheckWhy(J(R"({"type": "object"})")), "");
}

TEST(CheckSchemaTest, UnknownKeywordNamesItsLocation) {
  EXPECT_EQ(CheckWhy(J(R"({"type":"object","properties":{"x":{"type":"string","foo":1}}})")),
            "parameters/properties/x: unsupported keyword 'foo'");
  EXPECT_EQ(CheckWhy(J(R"({"type":"object","nullable":true})")),
            "parameters: unsupported keyword 'nullable'");
  EXPECT_EQ(CheckWhy(J(R"({"type":"object","properties":{"a/b~":{"if":{}}}})")),
            "parameters/properties/a~1b~0: unsupported keyword 'if'");
  Status st = CheckSchema(J(R"({"type":"object","x":1})"), "tools[2].parameters");
  EXPECT_EQ(st.message(), "tools[2].parameters: unsupported keyword 'x'");
}

TEST(CheckSchemaTest, WrongKeywordTypesAreRejected) {
  struct Case {
    const char* keyword_and_value;
    const char* message;
  };
  const Case cases[] = {
      {R"("type": "int")", "unknown type \"int\""},
      {R"("type": [])", "non-empty array of type names"},
      {R"("type": ["string", "string"])", "listed twice"},
      {R"("type": 3)", "must be a type name"},
      {R"("properties": [])", "must be an object of schemas"},
      {R"("properties": {"a": 3})", "a schema must be an object or a boolean"},
      {R"("required": "a")", "must be an array of property names"},
      {R"("required": [1])", "must be an array of property names"},
      {R"("required": ["a", "a"])", "listed twice"},
      {R"("additionalProperties": "no")", "a schema must be an object or a boolean"},
      {R"("items": [{"type": "string"}])", "array form of 'items' is not supported"},
      {R"("items": 1)", "a schema must be an object or a boolean"},
      {R"("enum": [])", "must be a non-empty array"},
      {R"("enum": "a")", "must be a non-empty array"},
      {R"("minimum": "1")", "must be a number"},
      {R"("maximum": null)", "must be a number"},
      {R"("exclusiveMinimum": true)", "must be a number"},
      {R"("exclusiveMaximum": [1])", "must be a number"},
      {R"("minLength": -1)", "must be a non-negative integer"},
      {R"("maxLength": 1.5)", "must be a non-negative integer"},
      {R"("minItems": "2")", "must be a non-negative integer"},
      {R"("maxItems": true)", "must be a non-negative integer"},
      {R"("uniqueItems": 1)", "must be a boolean"},
      {R"("pattern": 5)", "must be a string"},
      {R"("anyOf": [])", "must be a non-empty array of schemas"},
      {R"("oneOf": {})", "must be a non-empty array of schemas"},
      {R"("allOf": [3])", "a schema must be an object or a boolean"},
      {R"("not": [])", "a schema must be an object or a boolean"},
      {R"("description": 1)", "must be a string"},
      {R"("title": {})", "must be a string"},
      {R"("format": 1)", "must be a string"},
      {R"("$schema": 1)", "must be a string"},
      {R"("$id": 1)", "must be a string"},
      {R"("examples": "x")", "must be an array"},
      {R"("$defs": [])", "must be an object of schemas"},
      {R"("definitions": 1)", "must be an object of schemas"},
      {R"("$ref": 1)", "must be a string"},
  };
  for (const auto& c : cases) {
    std::string text =
        std::string(R"({"type":"object","properties":{"p":{)") + c.keyword_and_value + "}}}";
    std::string why = CheckWhy(Json::parse(text));
    EXPECT_CONTAINS(why, "parameters/properties/p");
    EXPECT_CONTAINS(why, c.message);
  }
  // An integral float is an integer for the count keywords.
  EXPECT_EQ(CheckWhy(J(R"({"type":"object","properties":{"p":{"maxLength":3.0}}})")), "");
}

TEST(CheckSchemaTest, PatternsMustCompile) {
  EXPECT_CONTAINS(CheckWhy(J(R"({"type":"object","properties":{"p":{"pattern":"(a"}}})")),
                  "parameters/properties/p/pattern: pattern '(a' is not a valid ECMAScript");
  EXPECT_CONTAINS(CheckWhy(J(R"({"type":"object","properties":{"p":{"pattern":"[z-a]"}}})")),
                  "not a valid ECMAScript");
  EXPECT_CONTAINS(CheckWhy(J(R"({"type":"object","properties":{"p":{"pattern":"(a)\\1"}}})")),
                  "back-references");
  Json long_pattern = {{"type", "object"},
                       {"properties", {{"p", {{"pattern", std::string(600, 'a')}}}}}};
  EXPECT_CONTAINS(CheckWhy(long_pattern), "longer than 512 bytes");
}

TEST(CheckSchemaTest, RefsMustBeLocalAndResolve) {
  EXPECT_CONTAINS(CheckWhy(J(R"({"type":"object","properties":{"p":{"$ref":"#/$defs/nope"}}})")),
                  "does not resolve");
  EXPECT_CONTAINS(
      CheckWhy(J(R"({"type":"object","properties":{"p":{"$ref":"https://x/y.json"}}})")),
      "only local references");
  EXPECT_CONTAINS(CheckWhy(J(R"({"type":"object","properties":{"p":{"$ref":"#foo"}}})")),
                  "not a JSON pointer");
  EXPECT_CONTAINS(CheckWhy(J(R"({"type":"object","properties":{"p":{"$ref":"#/required"}},
                                 "required":["p"]})")),
                  "a schema must be an object or a boolean");
  // Escapes in the pointer: ~1 is '/', %25 is '%'.
  EXPECT_EQ(CheckWhy(J(R"({"type":"object","properties":{"p":{"$ref":"#/$defs/a~1b%25"}},
                           "$defs":{"a/b%":{"type":"string"}}})")),
            "");
  // A ref to a place that is not otherwise checked is checked as a schema.
  EXPECT_CONTAINS(CheckWhy(J(R"({"type":"object","properties":{"p":{"$ref":"#/examples/0"}},
                                 "examples":[{"bogus":1}]})")),
                  "unsupported keyword 'bogus'");
}

TEST(CheckSchemaTest, RefCyclesThatDoNotDescendAreRejected) {
  EXPECT_CONTAINS(CheckWhy(J(R"({"type":"object","allOf":[{"$ref":"#"}]})")), "$ref cycle");
  EXPECT_CONTAINS(CheckWhy(J(R"({"type":"object","properties":{"p":{"$ref":"#/$defs/a"}},
                     "$defs":{"a":{"$ref":"#/$defs/b"},"b":{"anyOf":[{"$ref":"#/$defs/a"}]}}})")),
                  "$ref cycle");
  EXPECT_CONTAINS(CheckWhy(J(R"({"type":"object","$defs":{"a":{"not":{"$ref":"#/$defs/a"}}}})")),
                  "$ref cycle");
  // Recursion through properties or items descends into the value: fine.
  EXPECT_EQ(CheckWhy(J(R"({"type":"object","properties":{
                             "name":{"type":"string"},
                             "children":{"type":"array","items":{"$ref":"#"}}}})")),
            "");
}

TEST(CheckSchemaTest, DepthAndSizeAreBounded) {
  Json deep = {{"type", "object"}};
  Json* cur = &deep;
  for (int i = 0; i < 40; ++i) {
    (*cur)["properties"] = {{"p", {{"type", "object"}}}};
    cur = &(*cur)["properties"]["p"];
  }
  EXPECT_CONTAINS(CheckWhy(deep), "nested deeper than 32 levels");

  Json shallow = {{"type", "object"}};
  cur = &shallow;
  for (int i = 0; i < 30; ++i) {
    (*cur)["properties"] = {{"p", {{"type", "object"}}}};
    cur = &(*cur)["properties"]["p"];
  }
  EXPECT_EQ(CheckWhy(shallow), "");

  Json wide = {{"type", "object"}, {"properties", Json::object()}};
  for (int i = 0; i < 10001; ++i) wide["properties"]["p" + std::to_string(i)] = Json::object();
  EXPECT_CONTAINS(CheckWhy(wide), "more than 10000 subschemas");

  // A long chain of in-place refs.
  Json chain = {{"type", "object"}, {"$defs", Json::object()}};
  for (int i = 0; i < 100; ++i) {
    chain["$defs"]["d" + std::to_string(i)] = {{"$ref", "#/$defs/d" + std::to_string(i + 1)}};
  }
  chain["$defs"]["d100"] = {{"type", "string"}};
  chain["properties"] = {{"p", {{"$ref", "#/$defs/d0"}}}};
  EXPECT_CONTAINS(CheckWhy(chain), "chains deeper than");
}

// --------------------------------------------------------------------------------------
// ValidateAgainstSchema

TEST(ValidateTest, Types) {
  struct Case {
    const char* type;
    const char* good;
    const char* bad;
    const char* got;
  };
  const Case cases[] = {
      {"object", "{}", "[]", "array"},     {"array", "[1]", "{}", "object"},
      {"string", "\"s\"", "1", "integer"}, {"number", "1.5", "\"1\"", "string"},
      {"integer", "3", "3.5", "number"},   {"boolean", "false", "null", "null"},
      {"null", "null", "0", "integer"},
  };
  for (const auto& c : cases) {
    Json s = {{"type", c.type}};
    EXPECT_EQ(Why(s, Json::parse(c.good)), "") << c.type;
    EXPECT_EQ(Why(s, Json::parse(c.bad)), fmt::format("/: expected {}, got {}", c.type, c.got));
  }
  EXPECT_EQ(Why(J(R"({"type":"integer"})"), J("2.0")), "");  // 2.0 is an integer
  EXPECT_EQ(Why(J(R"({"type":"number"})"), J("2")), "");
  EXPECT_EQ(Why(J(R"({"type":"integer"})"), J("18446744073709551615")), "");
  EXPECT_EQ(Why(J(R"({"type":["string","null"]})"), J("null")), "");
  EXPECT_EQ(Why(J(R"({"type":["string","null"]})"), J("1")),
            "/: expected string or null, got integer");
}

TEST(ValidateTest, PropertiesRequiredAndAdditional) {
  Json s = J(R"({"type":"object",
                 "properties":{"city":{"type":"string"},"a":{"type":"integer"},
                               "nested":{"type":"object","properties":{"x/y":{"type":"boolean"}}}},
                 "required":["city"], "additionalProperties": false})");
  EXPECT_EQ(Why(s, J(R"({"city":"Paris","a":1})")), "");
  EXPECT_EQ(Why(s, J(R"({"a":1})")), "/: missing required property 'city'");
  EXPECT_EQ(Why(s, J(R"({"city":"P","a":"1"})")), "/a: expected integer, got string");
  EXPECT_EQ(Why(s, J(R"({"city":"P","x":1})")), "/x: additional property not allowed");
  EXPECT_EQ(Why(s, J(R"({"city":"P","nested":{"x/y":3}})")),
            "/nested/x~1y: expected boolean, got integer");

  Json typed_extra = J(R"({"type":"object","properties":{"a":{}},
                           "additionalProperties":{"type":"number"}})");
  EXPECT_EQ(Why(typed_extra, J(R"({"a":"anything","b":1.5})")), "");
  EXPECT_EQ(Why(typed_extra, J(R"({"b":"no"})")), "/b: expected number, got string");
  // Without additionalProperties, extra properties are allowed.
  EXPECT_EQ(Why(J(R"({"type":"object","properties":{}})"), J(R"({"z":1})")), "");
  // A false property schema forbids the property.
  EXPECT_EQ(Why(J(R"({"properties":{"z":false}})"), J(R"({"z":1})")),
            "/z: no value is allowed here");
}

TEST(ValidateTest, EnumAndConst) {
  Json e = J(R"({"enum":["c","f",1,null,{"k":[1]}]})");
  EXPECT_EQ(Why(e, J("\"c\"")), "");
  EXPECT_EQ(Why(e, J("1.0")), "");  // 1.0 equals 1 in JSON Schema
  EXPECT_EQ(Why(e, J(R"({"k":[1]})")), "");
  EXPECT_EQ(Why(e, J("null")), "");
  EXPECT_CONTAINS(Why(e, J("\"k\"")), "/: value must be one of [\"c\",\"f\",1,null");
  EXPECT_EQ(Why(J(R"({"const":{"a":1}})"), J(R"({"a":1})")), "");
  EXPECT_EQ(Why(J(R"({"const":"x"})"), J("\"y\"")), "/: value must be \"x\"");
  EXPECT_EQ(Why(J(R"({"const":false})"), J("0")), "/: value must be false");
}

TEST(ValidateTest, NumericBounds) {
  Json s = J(R"({"minimum":1,"maximum":10})");
  EXPECT_EQ(Why(s, J("1")), "");
  EXPECT_EQ(Why(s, J("10")), "");
  EXPECT_EQ(Why(s, J("0.5")), "/: must be >= 1, got 0.5");
  EXPECT_EQ(Why(s, J("11")), "/: must be <= 10, got 11");
  Json x = J(R"({"exclusiveMinimum":0,"exclusiveMaximum":1.5})");
  EXPECT_EQ(Why(x, J("1")), "");
  EXPECT_EQ(Why(x, J("0")), "/: must be > 0, got 0");
  EXPECT_EQ(Why(x, J("1.5")), "/: must be < 1.5, got 1.5");
  // Large integers compare exactly.
  EXPECT_NE(Why(J(R"({"maximum":9007199254740992})"), J("9007199254740993")), "");
  // Bounds only apply to numbers.
  EXPECT_EQ(Why(s, J("\"100\"")), "");
}

TEST(ValidateTest, StringLengthCountsCodePoints) {
  Json s = J(R"({"minLength":2,"maxLength":3})");
  EXPECT_EQ(Why(s, Json("\xc3\xa9\xc3\xa9\xc3\xa9")), "");  // three 2-byte characters
  EXPECT_EQ(Why(s, Json("a")), "/: string must be at least 2 characters long, got 1");
  EXPECT_EQ(Why(s, Json("abcd")), "/: string must be at most 3 characters long, got 4");
  EXPECT_EQ(Why(s, J("12345")), "");  // not a string
}

TEST(ValidateTest, Pattern) {
  Json s = J(R"({"pattern":"^[a-z]+-[0-9]{2}$"})");
  EXPECT_EQ(Why(s, Json("abc-12")), "");
  EXPECT_EQ(Why(s, Json("abc-1")), "/: string does not match pattern '^[a-z]+-[0-9]{2}$'");
  // Unanchored patterns match anywhere, as in ECMA-262.
  EXPECT_EQ(Why(J(R"({"pattern":"b+"})"), Json("aaabbbccc")), "");
  EXPECT_NE(Why(J(R"({"pattern":"x"})"), Json("aaabbbccc")), "");
  // Long subjects must not overflow the stack, and overlong ones are refused cleanly.
  EXPECT_EQ(Why(J(R"({"pattern":"^(a|b)*$"})"), Json(std::string(2000, 'a'))), "");
  EXPECT_CONTAINS(Why(J(R"({"pattern":"^(a|b)*$"})"), Json(std::string(100000, 'a'))),
                  "longer than 2048 bytes");
  // A bad pattern in an unchecked schema is reported, not thrown.
  EXPECT_CONTAINS(Why(J(R"({"pattern":"(("})"), Json("x")), "invalid schema: 'pattern'");
  EXPECT_CONTAINS(Why(J(R"({"pattern":"(a)\\1"})"), Json("aa")), "back-references");
}

TEST(ValidateTest, ArrayKeywords) {
  Json s = J(R"({"type":"object","properties":{"list":{"type":"array","minItems":1,
                 "maxItems":3,"uniqueItems":true,"items":{"type":"integer"}}}})");
  EXPECT_EQ(Why(s, J(R"({"list":[1,2,3]})")), "");
  EXPECT_EQ(Why(s, J(R"({"list":[]})")), "/list: array must have at least 1 items, got 0");
  EXPECT_EQ(Why(s, J(R"({"list":[1,2,3,4]})")), "/list: array must have at most 3 items, got 4");
  EXPECT_EQ(Why(s, J(R"({"list":[1,2,1.0]})")),
            "/list: array items must be unique; item 2 repeats an earlier item");
  EXPECT_EQ(Why(s, J(R"({"list":[1,"2"]})")), "/list/1: expected integer, got string");
  EXPECT_EQ(Why(J(R"({"uniqueItems":true})"), J(R"([{"a":[1,2]},{"a":[2,1]},[1]])")), "");
  EXPECT_NE(Why(J(R"({"uniqueItems":true})"), J(R"([{"a":[1,2]},{"a":[1,2.0]}])")), "");
  EXPECT_EQ(Why(J(R"({"uniqueItems":false})"), J("[1,1]")), "");
  EXPECT_EQ(Why(J(R"({"items":false})"), J("[]")), "");
  EXPECT_EQ(Why(J(R"({"items":false})"), J("[1]")), "/0: no value is allowed here");
}

TEST(ValidateTest, Combinators) {
  Json any = J(R"({"anyOf":[{"type":"string"},{"type":"integer","minimum":5}]})");
  EXPECT_EQ(Why(any, J("\"s\"")), "");
  EXPECT_EQ(Why(any, J("7")), "");
  EXPECT_CONTAINS(Why(any, J("true")), "/: value matches none of the anyOf alternatives");
  EXPECT_CONTAINS(Why(any, J("true")), "expected string, got boolean");

  Json one = J(R"({"oneOf":[{"type":"integer"},{"type":"number","minimum":2}]})");
  EXPECT_EQ(Why(one, J("1")), "");
  EXPECT_EQ(Why(one, J("2.5")), "");
  EXPECT_EQ(Why(one, J("3")),
            "/: value matches 2 of the oneOf alternatives; it must match exactly one");
  EXPECT_CONTAINS(Why(one, J("\"x\"")), "value matches none of the oneOf alternatives");

  Json all = J(R"({"allOf":[{"type":"number"},{"maximum":3}]})");
  EXPECT_EQ(Why(all, J("2")), "");
  EXPECT_EQ(Why(all, J("4")), "/: must be <= 3, got 4");
  EXPECT_EQ(Why(all, J("\"x\"")), "/: expected number, got string");

  Json no = J(R"({"type":"object","properties":{"p":{"not":{"type":"string"}}}})");
  EXPECT_EQ(Why(no, J(R"({"p":1})")), "");
  EXPECT_EQ(Why(no, J(R"({"p":"s"})")), "/p: value must not match the 'not' schema");
}

TEST(ValidateTest, RefsAndRecursion) {
  Json s = J(R"({"type":"object","properties":{"loc":{"$ref":"#/$defs/point"},
                 "old":{"$ref":"#/definitions/o"}},
                 "$defs":{"point":{"type":"object","required":["lat"],
                                   "properties":{"lat":{"type":"number"}}}},
                 "definitions":{"o":{"enum":[1]}}})");
  EXPECT_EQ(Why(s, J(R"({"loc":{"lat":1.5},"old":1})")), "");
  EXPECT_EQ(Why(s, J(R"({"loc":{}})")), "/loc: missing required property 'lat'");
  EXPECT_EQ(Why(s, J(R"({"loc":{"lat":"n"}})")), "/loc/lat: expected number, got string");
  EXPECT_CONTAINS(Why(s, J(R"({"old":2})")), "/old: value must be one of [1]");

  Json tree = J(R"({"type":"object","properties":{"v":{"type":"integer"},
                    "kids":{"type":"array","items":{"$ref":"#"}}}})");
  EXPECT_EQ(CheckSchema(tree).ok(), true);
  EXPECT_EQ(Why(tree, J(R"({"v":1,"kids":[{"v":2,"kids":[{"v":3}]}]})")), "");
  EXPECT_EQ(Why(tree, J(R"({"v":1,"kids":[{"v":2,"kids":[{"v":"x"}]}]})")),
            "/kids/0/kids/0/v: expected integer, got string");
  // A value nested deeper than the validator will follow fails cleanly.
  Json deep = {{"v", 1}};
  for (int i = 0; i < 500; ++i) deep = {{"kids", Json::array({deep})}};
  EXPECT_CONTAINS(Why(tree, deep), "nested too deeply to validate");
}

TEST(ValidateTest, HostileSchemasFailCleanly) {
  // Ref cycles that CheckSchema would reject must not loop when validated directly.
  EXPECT_CONTAINS(Why(J(R"({"$ref":"#"})"), J("1")), "reference cycle");
  EXPECT_CONTAINS(Why(J(R"({"$defs":{"a":{"$ref":"#/$defs/b"},"b":{"$ref":"#/$defs/a"}},
                            "$ref":"#/$defs/a"})"),
                      J("1")),
                  "reference cycle");
  // A `not` over a broken schema is not turned into a match.
  EXPECT_CONTAINS(Why(J(R"({"not":{"$ref":"#"}})"), J("1")), "reference cycle");
  // Exponential fan-out over shared refs hits the work budget quickly.
  Json fan = {{"$defs", Json::object()}};
  for (int i = 0; i < 40; ++i) {
    std::string next = "#/$defs/d" + std::to_string(i + 1);
    fan["$defs"]["d" + std::to_string(i)] = {{"anyOf", {{{"$ref", next}}, {{"$ref", next}}}}};
  }
  fan["$defs"]["d40"] = {{"type", "string"}};
  fan["$ref"] = "#/$defs/d0";
  auto start = std::chrono::steady_clock::now();
  EXPECT_CONTAINS(Why(fan, J("1")), "too complex");
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
  // Malformed keywords in an unchecked schema are reported, not thrown.
  EXPECT_CONTAINS(Why(J(R"({"minimum":"1"})"), J("1")), "invalid schema: 'minimum'");
  EXPECT_CONTAINS(Why(J(R"({"type":"int"})"), J("1")), "invalid schema: 'type'");
  EXPECT_CONTAINS(Why(J(R"({"required":"a"})"), J("{}")), "invalid schema: 'required'");
  EXPECT_CONTAINS(Why(J(R"({"items":3})"), J("[1]")), "invalid schema: 'items'");
  EXPECT_CONTAINS(Why(J(R"({"$ref":"#/nope"})"), J("1")), "invalid schema: '$ref'");
  EXPECT_CONTAINS(Why(J("[1]"), J("1")), "invalid schema");
  EXPECT_CONTAINS(Why(J(R"({"maxLength":-3})"), J("\"a\"")), "invalid schema: 'maxLength'");
}

// Random schemas built from the supported vocabulary, with random (often ill-typed) values:
// neither function may throw or crash, whatever the input.
TEST(ValidateTest, RandomSchemasNeverThrow) {
  std::mt19937 rng(12345);
  auto pick = [&](int n) { return static_cast<int>(rng() % static_cast<unsigned>(n)); };
  std::function<Json(int)> value = [&](int depth) -> Json {
    switch (pick(depth > 3 ? 6 : 8)) {
      case 0:
        return nullptr;
      case 1:
        return pick(2) == 1;
      case 2:
        return pick(20) - 5;
      case 3:
        return pick(100) / 7.0;
      case 4:
        return std::string(static_cast<size_t>(pick(6)), static_cast<char>('a' + pick(3)));
      case 5:
        return "#/$defs/d" + std::to_string(pick(3));
      case 6: {
        Json a = Json::array();
        for (int i = pick(4); i > 0; --i) a.push_back(value(depth + 1));
        return a;
      }
      default: {
        Json o = Json::object();
        for (int i = pick(4); i > 0; --i) o["k" + std::to_string(pick(4))] = value(depth + 1);
        return o;
      }
    }
  };
  const char* keywords[] = {"type",        "properties",
                            "required",    "additionalProperties",
                            "items",       "enum",
                            "const",       "minimum",
                            "maximum",     "exclusiveMinimum",
                            "minLength",   "maxLength",
                            "pattern",     "minItems",
                            "uniqueItems", "anyOf",
                            "oneOf",       "allOf",
                            "not",         "$ref",
                            "$defs"};
  std::function<Json(int)> schema = [&](int depth) -> Json {
    if (depth > 4 || pick(6) == 0) return pick(3) == 0 ? Json(pick(2) == 1) : value(depth);
    Json s = Json::object();
    for (int i = pick(4); i > 0; --i) {
      std::string k = keywords[pick(std::size(keywords))];
      if (k == "properties" || k == "$defs") {
        Json m = Json::object();
        for (int j = pick(3); j > 0; --j) m["d" + std::to_string(pick(3))] = schema(depth + 1);
        s[k] = m;
      } else if (k == "anyOf" || k == "oneOf" || k == "allOf") {
        s[k] = Json::array({schema(depth + 1), schema(depth + 1)});
      } else if (k == "not" || k == "items" || k == "additionalProperties") {
        s[k] = schema(depth + 1);
      } else if (k == "type") {
        const char* types[] = {"string", "integer", "object", "array", "null", "bogus"};
        s[k] = types[pick(6)];
      } else if (k == "pattern") {
        const char* patterns[] = {"a+", "(", "^b*$", "(a)\\1", "[a-c]{2}"};
        s[k] = patterns[pick(5)];
      } else {
        s[k] = value(depth + 1);
      }
    }
    return s;
  };
  for (int i = 0; i < 3000; ++i) {
    Json s = schema(0);
    Json v = value(0);
    EXPECT_NO_THROW({
      CheckSchema(s).IgnoreError();
      ValidateAgainstSchema(s, v).IgnoreError();
    }) << s.dump()
       << " / " << v.dump();
  }
}

}  // namespace
}  // namespace agentd::tools
