#include "cli/yaml_json.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

namespace agentd::cli {
namespace {

Json Convert(const std::string& yaml) {
  Result<Json> j = YamlToJson(yaml, "agent.yaml");
  EXPECT_TRUE(j.ok()) << j.status().message();
  return j.ok() ? *j : Json();
}

std::string ErrorOf(const std::string& yaml) {
  Result<Json> j = YamlToJson(yaml, "agent.yaml");
  EXPECT_FALSE(j.ok());
  if (j.ok()) return "";
  EXPECT_EQ(j.status().code(), StatusCode::kInvalidArgument);
  return j.status().message();
}

TEST(YamlToJsonTest, PlainScalarsResolveToJsonTypes) {
  Json j = Convert(
      "i: 42\nneg: -7\nplus: +3\nhex: 0x1F\noct: 0o17\n"
      "f: 1.5\nexp: 2e3\ndot: .5\n"
      "t: true\nT: True\nf2: FALSE\n"
      "n: null\ntilde: ~\nempty:\n"
      "s: hello world\n");
  EXPECT_EQ(j["i"], 42);
  EXPECT_TRUE(j["i"].is_number_integer());
  EXPECT_EQ(j["neg"], -7);
  EXPECT_EQ(j["plus"], 3);
  EXPECT_EQ(j["hex"], 31);
  EXPECT_EQ(j["oct"], 15);
  EXPECT_TRUE(j["f"].is_number_float());
  EXPECT_DOUBLE_EQ(j["f"].get<double>(), 1.5);
  EXPECT_DOUBLE_EQ(j["exp"].get<double>(), 2000.0);
  EXPECT_DOUBLE_EQ(j["dot"].get<double>(), 0.5);
  EXPECT_EQ(j["t"], true);
  EXPECT_EQ(j["T"], true);
  EXPECT_EQ(j["f2"], false);
  EXPECT_TRUE(j["n"].is_null());
  EXPECT_TRUE(j["tilde"].is_null());
  EXPECT_TRUE(j["empty"].is_null());
  EXPECT_EQ(j["s"], "hello world");
}

TEST(YamlToJsonTest, QuotedScalarsStayStrings) {
  Json j = Convert("a: \"42\"\nb: '1.5'\nc: \"true\"\nd: 'null'\ne: \"\"\n");
  EXPECT_EQ(j["a"], "42");
  EXPECT_EQ(j["b"], "1.5");
  EXPECT_EQ(j["c"], "true");
  EXPECT_EQ(j["d"], "null");
  EXPECT_EQ(j["e"], "");
}

TEST(YamlToJsonTest, Yaml11BooleansAndOddNumbersStayStrings) {
  // The core schema (YAML 1.2) keeps these as strings; a model named "yes" stays "yes".
  Json j = Convert("a: yes\nb: no\nc: on\nd: 1.2.3\ne: 0b101\nf: 12:30\ng: 1_000\n");
  EXPECT_EQ(j["a"], "yes");
  EXPECT_EQ(j["b"], "no");
  EXPECT_EQ(j["c"], "on");
  EXPECT_EQ(j["d"], "1.2.3");
  EXPECT_EQ(j["e"], "0b101");
  EXPECT_EQ(j["f"], "12:30");
  EXPECT_EQ(j["g"], "1_000");
}

TEST(YamlToJsonTest, ExplicitTags) {
  Json j = Convert("a: !!str 42\nb: !!float 3\nc: !!int \"7\"\n");
  EXPECT_EQ(j["a"], "42");
  EXPECT_TRUE(j["b"].is_number_float());
  EXPECT_DOUBLE_EQ(j["b"].get<double>(), 3.0);
  EXPECT_EQ(j["c"], 7);
  EXPECT_NE(ErrorOf("a: !!int hello\n").find("tagged !!int"), std::string::npos);
  EXPECT_NE(ErrorOf("a: !custom x\n").find("no JSON equivalent"), std::string::npos);
}

TEST(YamlToJsonTest, IntegersBeyond64BitsBecomeDoubles) {
  Json j = Convert(
      "big: 18446744073709551615\nbigger: 123456789012345678901234567890\n"
      "min: -9223372036854775808\n");
  EXPECT_TRUE(j["big"].is_number_unsigned());
  EXPECT_EQ(j["big"].get<uint64_t>(), 18446744073709551615ull);
  EXPECT_TRUE(j["bigger"].is_number_float());
  EXPECT_EQ(j["min"].get<int64_t>(), INT64_MIN);
}

TEST(YamlToJsonTest, NestedAgentDefinition) {
  Json j = Convert(R"(name: weather
instructions: |
  You answer questions about the weather.
  Be brief.
model:
  provider: openai-chat
  name: gpt-4o-mini
  api_key_env: OPENAI_API_KEY
  temperature: 0.2
tools:
  - name: get_weather
    kind: client
    parameters:
      type: object
      properties:
        city: {type: string}
      required: [city]
retry:
  max_attempts: 3
turn_policy: enqueue
)");
  EXPECT_EQ(j["name"], "weather");
  EXPECT_EQ(j["instructions"], "You answer questions about the weather.\nBe brief.\n");
  EXPECT_EQ(j["model"]["provider"], "openai-chat");
  EXPECT_DOUBLE_EQ(j["model"]["temperature"].get<double>(), 0.2);
  ASSERT_TRUE(j["tools"].is_array());
  EXPECT_EQ(j["tools"][0]["parameters"]["properties"]["city"]["type"], "string");
  EXPECT_EQ(j["tools"][0]["parameters"]["required"], Json::array({"city"}));
  EXPECT_EQ(j["retry"]["max_attempts"], 3);
}

TEST(YamlToJsonTest, JsonIsAcceptedAsYaml) {
  Json j = Convert(R"({"a": 1, "b": "2", "c": [true, null, 1.5], "d": {"e": "\u00e9"}})");
  EXPECT_EQ(j["a"], 1);
  EXPECT_EQ(j["b"], "2");
  EXPECT_EQ(j["c"], Json::parse("[true, null, 1.5]"));
  EXPECT_EQ(j["d"]["e"], "\xC3\xA9");
}

TEST(YamlToJsonTest, AnchorsAndAliases) {
  Json j = Convert("base: &m {provider: openai-chat, name: m1}\nother: *m\n");
  EXPECT_EQ(j["other"], j["base"]);
}

TEST(YamlToJsonTest, EmptyMappingsAndSequences) {
  Json j = Convert("a: {}\nb: []\n");
  EXPECT_TRUE(j["a"].is_object());
  EXPECT_TRUE(j["b"].is_array());
}

TEST(YamlToJsonTest, BadYamlNamesTheLine) {
  std::string err = ErrorOf("name: x\nmodel:\n  name: a\n   bad: [1, 2\n");
  EXPECT_NE(err.find("agent.yaml: line "), std::string::npos) << err;
  err = ErrorOf("a: 1\nb: c: d\n");
  EXPECT_EQ(err, "agent.yaml: line 2, column 5: illegal map value");
}

TEST(YamlToJsonTest, UnterminatedQuoteIsAnError) {
  // yaml-cpp alone would read these as the strings "unterminated " and "x ".
  std::string err = ErrorOf("a: 1\nb: \"unterminated\n");
  EXPECT_NE(err.find("agent.yaml: line 2, column 4: 'b' is a quoted string without its "
                     "closing quote"),
            std::string::npos)
      << err;
  EXPECT_NE(ErrorOf("a: 1\nb: 'it''s\n").find("'b'"), std::string::npos);
  Json j = Convert("a: 'it''s'\nb: \"say \\\"hi\\\"\"\n");
  EXPECT_EQ(j["a"], "it's");
  EXPECT_EQ(j["b"], "say \"hi\"");
}

TEST(YamlToJsonTest, DuplicateKeyNamesKeyAndLine) {
  std::string err = ErrorOf("model:\n  name: a\n  name: b\n");
  EXPECT_NE(err.find("line 3"), std::string::npos) << err;
  EXPECT_NE(err.find("duplicate key 'model.name'"), std::string::npos) << err;
}

TEST(YamlToJsonTest, NonFiniteNumbersAreRejected) {
  std::string err = ErrorOf("x: 1\ntemperature: .inf\n");
  EXPECT_NE(err.find("line 2"), std::string::npos) << err;
  EXPECT_NE(err.find("'temperature' is .inf"), std::string::npos) << err;
  EXPECT_NE(ErrorOf("a: [.nan]\n").find("'a[0]' is .nan"), std::string::npos);
  EXPECT_EQ(Convert("a: '.inf'\n")["a"], ".inf");
}

TEST(YamlToJsonTest, ComplexKeyIsRejected) {
  std::string err = ErrorOf("? [a, b]\n: 1\n");
  EXPECT_NE(err.find("keys must be strings"), std::string::npos) << err;
}

TEST(YamlToJsonTest, MultipleDocumentsAreRejected) {
  std::string err = ErrorOf("a: 1\n---\nb: 2\n");
  EXPECT_NE(err.find("expected one document"), std::string::npos) << err;
}

TEST(YamlToJsonTest, EmptyDocumentIsRejected) {
  EXPECT_NE(ErrorOf("").find("empty"), std::string::npos);
}

class LoadDocumentFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/agentctl_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::system(("rm -rf '" + dir_ + "'").c_str()); }
  std::string Write(const std::string& name, const std::string& text) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }
  std::string dir_;
};

TEST_F(LoadDocumentFileTest, YamlFile) {
  Result<Json> j = LoadDocumentFileBlocking(Write("a.yaml", "name: x\nversion: 2\n"));
  ASSERT_TRUE(j.ok()) << j.status().message();
  EXPECT_EQ((*j)["version"], 2);
}

TEST_F(LoadDocumentFileTest, JsonFileIsStrictAndNamesTheLine) {
  Result<Json> j = LoadDocumentFileBlocking(Write("a.json", "{\"n\": 1.0, \"s\": \"1\"}"));
  ASSERT_TRUE(j.ok()) << j.status().message();
  EXPECT_TRUE((*j)["n"].is_number_float());
  Result<Json> bad = LoadDocumentFileBlocking(Write("b.json", "{\n  \"a\": 1,\n  \"b\": ,\n}"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("line 3"), std::string::npos) << bad.status().message();
}

TEST_F(LoadDocumentFileTest, MissingFile) {
  Result<Json> j = LoadDocumentFileBlocking(dir_ + "/nope.yaml");
  ASSERT_FALSE(j.ok());
  EXPECT_EQ(j.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(j.status().message().find("cannot read"), std::string::npos);
}

TEST_F(LoadDocumentFileTest, BlankFileIsEmpty) {
  Result<Json> j = LoadDocumentFileBlocking(Write("blank.yaml", "\n  \n# only a comment\n"));
  ASSERT_FALSE(j.ok());
  EXPECT_NE(j.status().message().find("is empty"), std::string::npos) << j.status().message();
}

}  // namespace
}  // namespace agentd::cli
