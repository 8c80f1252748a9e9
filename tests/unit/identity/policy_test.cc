// The policy language: wildcard patterns, parsing and its errors, conditions, decisions
// across documents and the intersection of two policy sets.
#include "identity/policy.h"

#include <gtest/gtest.h>

#include <random>

#include "common/clock.h"

namespace agentd::identity {
namespace {

// ---- helpers ------------------------------------------------------------------------------

bool Glob(std::string_view pattern, std::string_view text) {
  Result<Pattern> p = Pattern::Compile(pattern, /*allow_variables=*/false);
  EXPECT_TRUE(p.ok()) << pattern << ": " << p.status().ToString();
  return p.ok() && p->Matches(text);
}

struct GlobCase {
  const char* pattern;
  const char* text;
  bool matches;
};

void ExpectGlobs(const std::vector<GlobCase>& cases) {
  for (const GlobCase& c : cases) {
    EXPECT_EQ(Glob(c.pattern, c.text), c.matches) << "'" << c.pattern << "' on '" << c.text << "'";
  }
}

// A document of the given statements (a JSON array's contents).
std::string Doc(const std::string& statements) {
  return R"({"version": "2026-11-01", "statements": [)" + statements + "]}";
}

Policy MustParse(const std::string& text) {
  Result<Policy> p = ParsePolicy(text);
  EXPECT_TRUE(p.ok()) << p.status().ToString() << "\n" << text;
  return p.ok() ? std::move(p).value() : Policy();
}

std::string ParseError(const std::string& text) {
  Result<Policy> p = ParsePolicy(text);
  EXPECT_FALSE(p.ok()) << text;
  EXPECT_EQ(p.status().code(), StatusCode::kInvalidArgument);
  return p.status().message();
}

Request SessionRequest(std::string action = "sessions:Invoke",
                       std::string resource = "agentd:acme:session/s-1") {
  Request r;
  r.action = std::move(action);
  r.resource = std::move(resource);
  r.principal.id = "u-alice";
  r.principal.tenant = "acme";
  r.principal.kind = "user";
  r.principal.groups = {"dev", "oncall"};
  r.principal.attributes = {
      {"dept", "eng"}, {"level", 3}, {"manager", true}, {"team", {{"name", "core"}}}};
  r.session_metadata = {{"project", "apollo"}, {"tags", {"red", "blue"}}};
  r.agent_id = "a-helper";
  r.tool_name = "write_file";
  r.tool_arguments = {
      {"path", "/workspace/notes.md"},  {"amount", 250},
      {"amount_text", "250"},           {"recursive", false},
      {"when", "2026-12-01T00:00:00Z"}, {"nested", {{"items", {{{"id", "x1"}}, {{"id", "x2"}}}}}}};
  r.time_millis = *ParseRfc3339("2026-11-15T12:00:00Z");
  return r;
}

// One allow statement on sessions:Invoke for everything, with `conditions` (a JSON object).
Policy AllowWhen(const std::string& conditions) {
  return MustParse(Doc(R"({"effect": "allow", "actions": ["sessions:Invoke"],
                           "resources": ["*"], "conditions": )" +
                       conditions + "}"));
}

bool Allowed(const Policy& p, const Request& r) { return Decide({&p}, r).allowed(); }

// ---- wildcard patterns ---------------------------------------------------------------------

TEST(PolicyPattern, EmptyPatternMatchesOnlyEmptyText) {
  ExpectGlobs({
      {"", "", true},
      {"", "a", false},
      {"*", "", true},
      {"?", "", false},
  });
}

TEST(PolicyPattern, LiteralsMatchWholeTextCaseSensitively) {
  ExpectGlobs({
      {"sessions:Read", "sessions:Read", true},
      {"sessions:Read", "sessions:read", false},
      {"sessions:Read", "sessions:ReadX", false},
      {"sessions:Read", "xsessions:Read", false},
      {"sessions:Read", "sessions:Rea", false},
  });
}

TEST(PolicyPattern, StarAtEitherEndAndInTheMiddle) {
  ExpectGlobs({
      {"sessions:*", "sessions:", true},
      {"sessions:*", "sessions:Invoke", true},
      {"sessions:*", "session:Invoke", false},
      {"*:Read", "audit:Read", true},
      {"*:Read", "audit:ReadAll", false},
      {"*Read*", "Read", true},
      {"a*b", "ab", true},
      {"a*b", "axxxb", true},
      {"a*b", "axxxbc", false},
      {"a*b*c", "abbbcbc", true},  // the last 'c' must end the text
      {"a*b*c", "acb", false},
      // The star must give back characters the literal after it needs.
      {"*aab", "aaab", true},
      {"x*abab", "xabababab", true},
  });
}

TEST(PolicyPattern, ConsecutiveStarsMeanOneStar) {
  ExpectGlobs({
      {"**", "", true},
      {"a***b", "ab", true},
      {"a**b", "a-b", true},
      {"a**b", "a-c", false},
  });
}

TEST(PolicyPattern, QuestionMarkIsExactlyOneCharacter) {
  ExpectGlobs({
      {"s-?", "s-1", true},
      {"s-?", "s-", false},
      {"s-?", "s-12", false},
      {"??", "ab", true},
      {"*?", "a", true},
      {"*?", "", false},
      {"?*?", "ab", true},
      {"a*?c", "abbc", true},
      {"a*?c", "ac", false},
  });
}

TEST(PolicyPattern, EscapesMatchTheCharactersThemselves) {
  ExpectGlobs({
      {"a${*}b", "a*b", true},
      {"a${*}b", "axb", false},
      {"${?}", "?", true},
      {"${?}", "x", false},
      {"${$}{x}", "${x}", true},
      {"cost$5", "cost$5", true},  // a '$' not opening "${" is itself
  });
}

TEST(PolicyPattern, LongInputsFinishWithoutExponentialBacktracking) {
  // These would take exponential time in a recursive matcher that retries every star. They
  // are correct by construction (only the last star backtracks); no timing is asserted.
  std::string text(100000, 'a');
  EXPECT_FALSE(Glob("*a*a*a*a*a*a*a*a*a*a*a*a*b", text));
  EXPECT_TRUE(Glob("*a*a*a*a*a*a*a*a*a*a*a*a*a", text));
  EXPECT_FALSE(Glob("*?*?*?*?*?*?*?*?*?*?*?*?b", text));
  std::string with_end = text + "b";
  EXPECT_TRUE(Glob("*a*a*a*a*a*a*a*a*a*a*a*a*b", with_end));
  std::string pattern;
  for (int i = 0; i < 100; ++i) pattern += "*aa";
  EXPECT_FALSE(Glob(pattern + "*c", text));
  EXPECT_TRUE(Glob(pattern + "*", text));
}

TEST(PolicyPattern, VariablesAreSubstitutedAsLiteralText) {
  Result<Pattern> p = Pattern::Compile("agentd:${principal.tenant}:session/${principal.id}-*",
                                       /*allow_variables=*/true);
  ASSERT_TRUE(p.ok()) << p.status().ToString();
  EXPECT_TRUE(p->has_variables());
  PatternVariables alice{"u-alice", "acme"};
  EXPECT_TRUE(p->Matches("agentd:acme:session/u-alice-1", alice));
  EXPECT_FALSE(p->Matches("agentd:other:session/u-alice-1", alice));
  EXPECT_FALSE(p->Matches("agentd:acme:session/u-bob-1", alice));
  // A value with wildcard characters in it does not act as a wildcard.
  PatternVariables star{"*", "*"};
  EXPECT_FALSE(p->Matches("agentd:acme:session/u-alice-1", star));
  EXPECT_TRUE(p->Matches("agentd:*:session/*-1", star));
  // A variable the request has no value for matches nothing, not the empty string.
  EXPECT_FALSE(p->Matches("agentd::session/-1", PatternVariables{}));
  Result<Pattern> tail = Pattern::Compile("*/${principal.id}", true);
  ASSERT_TRUE(tail.ok());
  EXPECT_TRUE(tail->Matches("a/b/u-alice", alice));
  EXPECT_FALSE(tail->Matches("a/b/", PatternVariables{}));
}

TEST(PolicyPattern, CompileErrors) {
  EXPECT_FALSE(Pattern::Compile("a${principal.id", true).ok());
  Result<Pattern> unknown = Pattern::Compile("${principal.name}", true);
  ASSERT_FALSE(unknown.ok());
  EXPECT_NE(unknown.status().message().find("unknown policy variable '${principal.name}'"),
            std::string::npos)
      << unknown.status().message();
  Result<Pattern> not_here = Pattern::Compile("${principal.id}", false);
  ASSERT_FALSE(not_here.ok());
  EXPECT_NE(not_here.status().message().find("not allowed here"), std::string::npos);
}

// ---- parsing -------------------------------------------------------------------------------

TEST(PolicyParse, ReadsEveryField) {
  Policy p = MustParse(Doc(R"(
    {"sid": "s0", "effect": "allow", "actions": ["sessions:*", "agents:Read"],
     "resources": ["agentd:${principal.tenant}:session/*", "agentd:acme:agent/a-1"],
     "conditions": {"StringEqualsIfExists": {"principal.kind": ["user", "service"]},
                    "NumericLessThan": {"tool.arguments.amount": 100}}},
    {"effect": "deny", "actions": ["*"], "resources": ["*"]})"));
  ASSERT_EQ(p.statements().size(), 2u);
  const Statement& s0 = p.statements()[0];
  EXPECT_EQ(s0.sid, "s0");
  EXPECT_EQ(s0.effect, Effect::kAllow);
  ASSERT_EQ(s0.actions.size(), 2u);
  EXPECT_EQ(s0.actions[0].text(), "sessions:*");
  ASSERT_EQ(s0.resources.size(), 2u);
  EXPECT_TRUE(s0.resources[0].has_variables());
  ASSERT_EQ(s0.conditions.size(), 2u);
  // Operators are read in name order (JSON objects are unordered).
  EXPECT_EQ(s0.conditions[0].op, ConditionOp::kNumericLessThan);
  EXPECT_EQ(s0.conditions[0].numbers, std::vector<double>{100});
  EXPECT_EQ(s0.conditions[0].key.kind, ConditionKey::Kind::kToolArgument);
  EXPECT_EQ(s0.conditions[0].key.path, std::vector<std::string>{"amount"});
  EXPECT_EQ(s0.conditions[1].op, ConditionOp::kStringEquals);
  EXPECT_TRUE(s0.conditions[1].if_exists);
  EXPECT_EQ(s0.conditions[1].strings, (std::vector<std::string>{"user", "service"}));
  EXPECT_EQ(p.statements()[1].sid, "");
  EXPECT_EQ(p.statements()[1].effect, Effect::kDeny);
}

TEST(PolicyParse, EmptyStatementListIsAPolicyThatAllowsNothing) {
  Policy p = MustParse(Doc(""));
  EXPECT_TRUE(p.statements().empty());
  Decision d = Decide({&p}, SessionRequest());
  EXPECT_EQ(d.reason, DecisionReason::kDefaultDeny);
}

TEST(PolicyParse, MalformedJsonNamesTheByteOffset) {
  // The offset counts from 1: the stray '}' is the 42nd byte.
  EXPECT_EQ(ParseError(R"({"version": "2026-11-01", "statements": [}])"),
            "policy document is not valid JSON (at byte 42)");
  EXPECT_NE(ParseError("").find("policy document is empty"), std::string::npos);
  EXPECT_EQ(ParseError("[]"), "policy document must be a JSON object");
}

TEST(PolicyParse, VersionIsRequiredAndMustBeKnown) {
  EXPECT_EQ(ParseError(R"({"statements": []})"), "'version' is required");
  EXPECT_EQ(ParseError(R"({"version": "2012-10-17", "statements": []})"),
            "'version': unknown version \"2012-10-17\" (this agentd reads \"2026-11-01\")");
  EXPECT_NE(ParseError(R"({"version": 2026, "statements": []})").find("unknown version 2026"),
            std::string::npos);
  EXPECT_EQ(ParseError(R"({"version": "2026-11-01"})"), "'statements' is required");
}

TEST(PolicyParse, WrongTypesNameTheField) {
  struct Case {
    std::string statements;
    std::string error;
  };
  const std::vector<Case> cases = {
      {R"("x")", "'statements[0]': must be an object"},
      {R"({"effect": "allow", "actions": "sessions:Read", "resources": ["*"]})",
       "'statements[0].actions': must be an array of strings"},
      {R"({"effect": "allow", "actions": ["sessions:Read", 7], "resources": ["*"]})",
       "'statements[0].actions[1]': must be a string"},
      {R"({"effect": "allow", "actions": [], "resources": ["*"]})",
       "'statements[0].actions': must list at least one action"},
      {R"({"effect": "allow", "actions": ["sessions:Read"]})",
       "'statements[0].resources' is required"},
      {R"({"effect": "allow", "actions": ["sessions:Read"], "resources": [""]})",
       "'statements[0].resources[0]': must not be empty"},
      {R"({"effect": "Allow", "actions": ["sessions:Read"], "resources": ["*"]})",
       "'statements[0].effect': must be \"allow\" or \"deny\", not \"Allow\""},
      {R"({"actions": ["sessions:Read"], "resources": ["*"]})",
       "'statements[0].effect' is required"},
      {R"({"sid": 5, "effect": "allow", "actions": ["sessions:Read"], "resources": ["*"]})",
       "'statements[0].sid': must be a string"},
      {R"({"effect": "allow", "actions": ["sessions:Read"], "resources": ["*"],
           "conditions": []})",
       "'statements[0].conditions': must be an object of condition operators"},
      {R"({"effect": "allow", "actions": ["sessions:Read"], "resources": ["*"],
           "conditions": {"StringEquals": "x"}})",
       "'statements[0].conditions.StringEquals': must be an object of condition keys"},
      {R"({"effect": "allow", "actions": ["sessions:Read"], "resources": ["*"],
           "conditions": {"StringEquals": {"tool.name": 5}}})",
       "'statements[0].conditions.StringEquals.tool.name': must be a string"},
      {R"({"effect": "allow", "actions": ["sessions:Read"], "resources": ["*"],
           "conditions": {"StringEquals": {"tool.name": []}}})",
       "'statements[0].conditions.StringEquals.tool.name': must list at least one value"},
      {R"({"effect": "allow", "actions": ["sessions:Read"], "resources": ["*"],
           "conditions": {"NumericLessThan": {"tool.arguments.n": ["1", "lots"]}}})",
       "'statements[0].conditions.NumericLessThan.tool.arguments.n[1]': must be a number"},
      {R"({"effect": "allow", "actions": ["sessions:Read"], "resources": ["*"],
           "conditions": {"Bool": {"principal.attributes.admin": "yes"}}})",
       "'statements[0].conditions.Bool.principal.attributes.admin': must be true or false"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(ParseError(Doc(c.statements)), c.error) << c.statements;
  }
  EXPECT_EQ(ParseError(R"({"version": "2026-11-01", "statements": {}})"),
            "'statements': must be an array");
}

TEST(PolicyParse, UnknownFieldsAreErrors) {
  EXPECT_EQ(ParseError(R"({"version": "2026-11-01", "statements": [], "Statement": []})"),
            "unknown field 'Statement'");
  // A misspelt field is reported as unknown, not its intended field as missing.
  EXPECT_EQ(ParseError(Doc(R"({"effect": "allow", "action": ["sessions:Read"],
                               "resources": ["*"]})")),
            "unknown field 'statements[0].action'");
  EXPECT_EQ(ParseError(Doc(R"({"effect": "allow", "actions": ["sessions:Read"],
                               "resources": ["*"]},
                              {"effect": "deny", "actions": ["sessions:Read"],
                               "resources": ["*"], "condition": {}})")),
            "unknown field 'statements[1].condition'");
}

TEST(PolicyParse, RepeatedFieldIsAnError) {
  EXPECT_EQ(ParseError(Doc(R"({"effect": "deny", "effect": "allow",
                               "actions": ["sessions:Read"], "resources": ["*"]})")),
            "policy document has the field 'effect' twice in one object");
}

TEST(PolicyParse, ActionPatternsMustMatchAKnownAction) {
  for (const char* ok : {"*", "sessions:*", "*:Read", "sessions:?nvoke", "tools:Call",
                         "policies:Simulate", "*s:Create"}) {
    MustParse(Doc(R"({"effect": "allow", "actions": [")" + std::string(ok) +
                  R"("], "resources": ["*"]})"));
  }
  EXPECT_EQ(ParseError(Doc(R"({"effect": "allow", "actions": ["sessions:Read", "sesions:Read"],
                               "resources": ["*"]})")),
            "'statements[0].actions[1]': 'sesions:Read' matches no known action");
  EXPECT_EQ(ParseError(Doc(R"({"effect": "allow", "actions": ["sessions:read"],
                               "resources": ["*"]})")),
            "'statements[0].actions[0]': 'sessions:read' matches no known action");
  EXPECT_EQ(ParseError(Doc(R"({"effect": "allow", "actions": ["sessions:Invoke?"],
                               "resources": ["*"]})")),
            "'statements[0].actions[0]': 'sessions:Invoke?' matches no known action");
  EXPECT_NE(ParseError(Doc(R"({"effect": "allow", "actions": ["${principal.id}:Read"],
                               "resources": ["*"]})"))
                .find("'statements[0].actions[0]': policy variables are not allowed here"),
            std::string::npos);
}

TEST(PolicyParse, ResourcePatternsMustNameAgentdResources) {
  for (const char* ok :
       {"*", "agentd:*", "agentd:acme:*", "agentd:acme:session/*", "agentd:*:tool/a-1/exec",
        "agentd:${principal.tenant}:secret/db", "agentd:acme:sess*", "agentd:acme:?gent/a"}) {
    MustParse(Doc(R"({"effect": "allow", "actions": ["*"], "resources": [")" + std::string(ok) +
                  R"("]})"));
  }
  EXPECT_EQ(ParseError(Doc(R"({"effect": "allow", "actions": ["*"],
                               "resources": ["arn:aws:s3:::bucket"]})")),
            "'statements[0].resources[0]': 'arn:aws:s3:::bucket' must be '*' or start with "
            "'agentd:'");
  EXPECT_NE(ParseError(Doc(R"({"effect": "allow", "actions": ["*"],
                               "resources": ["agentd:acme:sesion/*"]})"))
                .find("'statements[0].resources[0]': unknown resource type 'sesion'"),
            std::string::npos);
  EXPECT_NE(ParseError(Doc(R"({"effect": "allow", "actions": ["*"],
                               "resources": ["agentd:acme:x*"]})"))
                .find("can match no resource type"),
            std::string::npos);
  EXPECT_NE(ParseError(Doc(R"({"effect": "allow", "actions": ["*"],
                               "resources": ["agentd:acme:${principal.name}/*"]})"))
                .find("'statements[0].resources[0]': unknown policy variable"),
            std::string::npos);
}

TEST(PolicyParse, UnknownConditionOperatorIsNamed) {
  EXPECT_EQ(ParseError(Doc(R"({"effect": "allow", "actions": ["*"], "resources": ["*"],
                               "conditions": {"StringEqual": {"tool.name": "x"}}})")),
            "'statements[0].conditions.StringEqual': unknown condition operator "
            "'StringEqual'");
  EXPECT_EQ(ParseError(Doc(R"({"effect": "allow", "actions": ["*"], "resources": ["*"],
                               "conditions": {"IpAddress": {"tool.name": "x"}}})")),
            "'statements[0].conditions.IpAddress': unknown condition operator 'IpAddress'");
  EXPECT_EQ(ParseError(Doc(R"({"effect": "allow", "actions": ["*"], "resources": ["*"],
                               "conditions": {"IfExists": {"tool.name": "x"}}})")),
            "'statements[0].conditions.IfExists': unknown condition operator 'IfExists'");
}

TEST(PolicyParse, UnknownConditionKeyIsNamed) {
  EXPECT_EQ(ParseError(Doc(R"({"effect": "allow", "actions": ["*"], "resources": ["*"]},
                        {"effect": "allow", "actions": ["*"], "resources": ["*"]},
                        {"effect": "allow", "actions": ["*"], "resources": ["*"],
                         "conditions": {"StringLike": {"tool.nam": "x"}}})")),
            "'statements[2].conditions.StringLike.tool.nam': unknown condition key 'tool.nam'");
  EXPECT_EQ(ParseError(Doc(R"({"effect": "allow", "actions": ["*"], "resources": ["*"],
                               "conditions": {"StringEquals": {"aws:username": "x"}}})")),
            "'statements[0].conditions.StringEquals.aws:username': unknown condition key "
            "'aws:username'");
  EXPECT_EQ(ParseError(Doc(R"({"effect": "allow", "actions": ["*"], "resources": ["*"],
                               "conditions": {"StringEquals": {"tool.arguments.": "x"}}})")),
            "'statements[0].conditions.StringEquals.tool.arguments.': condition key "
            "'tool.arguments.' has an empty name part");
  EXPECT_NE(ParseError(Doc(R"({"effect": "allow", "actions": ["*"], "resources": ["*"],
                               "conditions": {"StringEquals": {"principal.attributes": "x"}}})"))
                .find("unknown condition key 'principal.attributes'"),
            std::string::npos);
}

TEST(PolicyParse, OperatorsMustFitTheKeyType) {
  EXPECT_EQ(ParseError(Doc(R"({"effect": "allow", "actions": ["*"], "resources": ["*"],
                               "conditions": {"NumericLessThan": {"principal.id": 5}}})")),
            "'statements[0].conditions.NumericLessThan.principal.id': NumericLessThan does "
            "not apply to 'principal.id' (a string: use a String operator)");
  EXPECT_NE(ParseError(Doc(R"({"effect": "allow", "actions": ["*"], "resources": ["*"],
                               "conditions": {"StringEquals": {"request.time": "x"}}})"))
                .find("StringEquals does not apply to 'request.time' (a time"),
            std::string::npos);
}

TEST(PolicyParse, BadDatesAreNamed) {
  EXPECT_EQ(ParseError(Doc(R"({"effect": "allow", "actions": ["*"], "resources": ["*"],
                               "conditions": {"DateLessThan":
                                 {"request.time": ["2026-11-01T00:00:00Z", "2026-13-01"]}}})")),
            "'statements[0].conditions.DateLessThan.request.time[1]': \"2026-13-01\" is not "
            "an RFC 3339 date-time (like 2026-11-01T00:00:00Z)");
  EXPECT_NE(ParseError(Doc(R"({"effect": "allow", "actions": ["*"], "resources": ["*"],
                               "conditions": {"DateGreaterThan": {"request.time": 1700000000}}})"))
                .find("1700000000 is not an RFC 3339 date-time"),
            std::string::npos);
  EXPECT_NE(ParseError(Doc(R"({"effect": "allow", "actions": ["*"], "resources": ["*"],
                               "conditions": {"DateGreaterThan":
                                 {"request.time": "2026-02-30T00:00:00Z"}}})"))
                .find("is not an RFC 3339 date-time"),
            std::string::npos);
}

std::string Repeat(const std::string& item, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) out += (i ? "," : "") + item;
  return out;
}

TEST(PolicyParse, LimitsAreEnforcedAndNamed) {
  const std::string st = R"({"effect":"allow","actions":["*"],"resources":["*"]})";
  EXPECT_EQ(MustParse(Doc(Repeat(st, kMaxStatements))).statements().size(), kMaxStatements);
  EXPECT_EQ(ParseError(Doc(Repeat(st, kMaxStatements + 1))),
            "'statements': has 1001 statements, more than the limit of 1000");

  const std::string action = R"("sessions:Read")";
  MustParse(Doc(R"({"effect":"allow","resources":["*"],"actions":[)" +
                Repeat(action, kMaxEntriesPerList) + "]}"));
  EXPECT_EQ(ParseError(Doc(R"({"effect":"allow","resources":["*"],"actions":[)" +
                           Repeat(action, kMaxEntriesPerList + 1) + "]}")),
            "'statements[0].actions': has 101 entries, more than the limit of 100");
  EXPECT_EQ(ParseError(Doc(R"({"effect":"allow","actions":["*"],"resources":[)" +
                           Repeat(R"("*")", kMaxEntriesPerList + 1) + "]}")),
            "'statements[0].resources': has 101 entries, more than the limit of 100");
  EXPECT_EQ(ParseError(Doc(R"({"effect":"allow","actions":["*"],"resources":["*"],
                               "conditions":{"StringEquals":{"tool.name":[)" +
                           Repeat(R"("x")", kMaxEntriesPerList + 1) + "]}}}")),
            "'statements[0].conditions.StringEquals.tool.name': has 101 values, more than "
            "the limit of 100");

  std::string long_resource = "agentd:acme:session/" + std::string(kMaxPatternLength, 'x');
  long_resource.resize(kMaxPatternLength);
  MustParse(Doc(R"({"effect":"allow","actions":["*"],"resources":[")" + long_resource + R"("]})"));
  EXPECT_EQ(ParseError(Doc(R"({"effect":"allow","actions":["*"],"resources":[")" + long_resource +
                           R"(x"]})")),
            "'statements[0].resources[0]': is longer than the limit of 512 characters");

  // Documents over 256 KiB are refused before they are parsed.
  std::string big = Doc(st);
  big.insert(big.size() - 1, std::string(kMaxPolicyBytes, ' '));
  EXPECT_EQ(ParseError(big), "policy document is " + std::to_string(big.size()) +
                                 " bytes, more than the limit of 262144");
}

// ---- decisions -----------------------------------------------------------------------------

TEST(PolicyDecide, DefaultDenyWhenNothingMatches) {
  Policy p = MustParse(Doc(R"({"effect": "allow", "actions": ["sessions:Read"],
                               "resources": ["agentd:acme:session/*"]})"));
  Decision d = Decide({&p}, SessionRequest("sessions:Invoke"));
  EXPECT_FALSE(d.allowed());
  EXPECT_EQ(d.reason, DecisionReason::kDefaultDeny);
  EXPECT_EQ(d.policy_index, -1);
  EXPECT_EQ(d.statement_index, -1);
  EXPECT_EQ(Decide({}, SessionRequest()).reason, DecisionReason::kDefaultDeny);
  EXPECT_EQ(Decide({nullptr}, SessionRequest()).reason, DecisionReason::kDefaultDeny);
  EXPECT_FALSE(Decide({&p}, SessionRequest("sessions:Read", "agentd:other:session/s-1")).allowed());
}

TEST(PolicyDecide, AllowNamesTheStatement) {
  Policy p = MustParse(Doc(R"({"sid": "reads", "effect": "allow", "actions": ["sessions:Read"],
                               "resources": ["*"]},
                              {"sid": "invokes", "effect": "allow",
                               "actions": ["sessions:Invoke"],
                               "resources": ["agentd:acme:session/*"]})"));
  Decision d = Decide({nullptr, &p}, SessionRequest());
  EXPECT_TRUE(d.allowed());
  EXPECT_EQ(d.reason, DecisionReason::kAllow);
  EXPECT_EQ(d.policy_index, 1);
  EXPECT_EQ(d.statement_index, 1);
  EXPECT_EQ(d.sid, "invokes");
  EXPECT_EQ(DecisionReasonName(d.reason), "allow");
}

TEST(PolicyDecide, UnknownActionIsDeniedByDefault) {
  Policy p = MustParse(Doc(R"({"effect": "allow", "actions": ["*"], "resources": ["*"]})"));
  EXPECT_TRUE(Decide({&p}, SessionRequest("sessions:Read")).allowed());
  Decision d = Decide({&p}, SessionRequest("sessions:Destroy"));
  EXPECT_FALSE(d.allowed());
  EXPECT_EQ(d.reason, DecisionReason::kDefaultDeny);
}

TEST(PolicyDecide, DenyBeatsAllowAcrossDocuments) {
  Policy allow = MustParse(Doc(R"({"sid": "all", "effect": "allow", "actions": ["*"],
                                   "resources": ["*"]})"));
  Policy other = MustParse(Doc(R"({"sid": "reads", "effect": "allow",
                                   "actions": ["*:Read"], "resources": ["*"]})"));
  Policy deny = MustParse(Doc(R"({"sid": "unrelated", "effect": "deny",
                                  "actions": ["secrets:Write"], "resources": ["*"]},
                                 {"sid": "no-invoke", "effect": "deny",
                                  "actions": ["sessions:Invoke"],
                                  "resources": ["agentd:acme:session/s-*"]})"));
  for (const auto& order : std::vector<std::vector<const Policy*>>{
           {&allow, &other, &deny}, {&deny, &allow, &other}, {&allow, &deny}}) {
    Decision d = Decide(order, SessionRequest());
    EXPECT_FALSE(d.allowed());
    EXPECT_EQ(d.reason, DecisionReason::kExplicitDeny);
    EXPECT_EQ(order[d.policy_index], &deny);
    EXPECT_EQ(d.statement_index, 1);
    EXPECT_EQ(d.sid, "no-invoke");
  }
  // The deny does not reach other resources or actions.
  EXPECT_TRUE(Decide({&allow, &deny}, SessionRequest("sessions:Invoke", "agentd:acme:session/x"))
                  .allowed());
  EXPECT_TRUE(Decide({&allow, &deny}, SessionRequest("sessions:Read")).allowed());
}

TEST(PolicyDecide, DenyLaterInTheSameDocumentStillWins) {
  Policy p = MustParse(Doc(R"({"effect": "allow", "actions": ["sessions:*"], "resources": ["*"]},
                              {"effect": "deny", "actions": ["sessions:Delete"],
                               "resources": ["*"]})"));
  EXPECT_TRUE(Decide({&p}, SessionRequest("sessions:Read")).allowed());
  Decision d = Decide({&p}, SessionRequest("sessions:Delete"));
  EXPECT_EQ(d.reason, DecisionReason::kExplicitDeny);
  EXPECT_EQ(d.statement_index, 1);
}

TEST(PolicyDecide, VariablesScopeResourcesToTheCaller) {
  Policy p = MustParse(Doc(R"({"effect": "allow", "actions": ["sessions:*"],
                               "resources": ["agentd:${principal.tenant}:session/*"]},
                              {"effect": "allow", "actions": ["secrets:Write"],
                               "resources": ["agentd:${principal.tenant}:secret/${principal.id}/*"]})"));
  EXPECT_TRUE(Allowed(p, SessionRequest("sessions:Read", "agentd:acme:session/s-9")));
  EXPECT_FALSE(Allowed(p, SessionRequest("sessions:Read", "agentd:globex:session/s-9")));
  EXPECT_TRUE(Allowed(p, SessionRequest("secrets:Write", "agentd:acme:secret/u-alice/db")));
  EXPECT_FALSE(Allowed(p, SessionRequest("secrets:Write", "agentd:acme:secret/u-bob/db")));
  Request no_tenant = SessionRequest("sessions:Read", "agentd::session/s-9");
  no_tenant.principal.tenant.clear();
  EXPECT_FALSE(Allowed(p, no_tenant));
  // A tenant named like a wildcard is only itself.
  Request star = SessionRequest("sessions:Read", "agentd:acme:session/s-9");
  star.principal.tenant = "*";
  EXPECT_FALSE(Allowed(p, star));
}

// ---- conditions ------------------------------------------------------------------------------

TEST(PolicyConditions, StringEqualsAndNotEquals) {
  Request r = SessionRequest();
  EXPECT_TRUE(Allowed(AllowWhen(R"({"StringEquals": {"principal.id": "u-alice"}})"), r));
  EXPECT_FALSE(Allowed(AllowWhen(R"({"StringEquals": {"principal.id": "u-Alice"}})"), r));
  EXPECT_TRUE(
      Allowed(AllowWhen(R"({"StringEquals": {"principal.kind": ["service", "user"]}})"), r));
  EXPECT_TRUE(Allowed(AllowWhen(R"({"StringEquals": {"principal.tenant": "acme",
                                                     "agent.id": "a-helper"}})"),
                      r));
  EXPECT_FALSE(Allowed(AllowWhen(R"({"StringEquals": {"principal.tenant": "acme",
                                                      "agent.id": "a-other"}})"),
                       r));
  EXPECT_TRUE(Allowed(AllowWhen(R"({"StringNotEquals": {"tool.name": ["exec", "delete"]}})"), r));
  EXPECT_FALSE(
      Allowed(AllowWhen(R"({"StringNotEquals": {"tool.name": ["exec", "write_file"]}})"), r));
  // Numbers and booleans in the request compare by their JSON text.
  EXPECT_TRUE(Allowed(AllowWhen(R"({"StringEquals": {"tool.arguments.amount": "250"}})"), r));
  EXPECT_TRUE(
      Allowed(AllowWhen(R"({"StringEquals": {"principal.attributes.manager": "true"}})"), r));
}

TEST(PolicyConditions, StringLikeAndNotLike) {
  Request r = SessionRequest();
  EXPECT_TRUE(Allowed(AllowWhen(R"({"StringLike": {"tool.arguments.path": "/workspace/*"}})"), r));
  EXPECT_FALSE(Allowed(AllowWhen(R"({"StringLike": {"tool.arguments.path": "/etc/*"}})"), r));
  EXPECT_TRUE(Allowed(AllowWhen(R"({"StringLike": {"tool.name": ["exec", "*_file"]}})"), r));
  EXPECT_TRUE(Allowed(AllowWhen(R"({"StringNotLike": {"tool.arguments.path": "*/.git/*"}})"), r));
  EXPECT_FALSE(Allowed(AllowWhen(R"({"StringNotLike": {"tool.arguments.path": "*.md"}})"), r));
  // Variables work in StringLike values.
  r.session_metadata["owner"] = "u-alice";
  EXPECT_TRUE(
      Allowed(AllowWhen(R"({"StringLike": {"session.metadata.owner": "${principal.id}"}})"), r));
  r.session_metadata["owner"] = "u-bob";
  EXPECT_FALSE(
      Allowed(AllowWhen(R"({"StringLike": {"session.metadata.owner": "${principal.id}"}})"), r));
}

TEST(PolicyConditions, MissingKeysFailUnlessIfExists) {
  Request r = SessionRequest();
  r.tool_name.reset();
  r.agent_id.reset();
  r.principal.kind.clear();
  for (const char* op : {"StringEquals", "StringNotEquals", "StringLike", "StringNotLike"}) {
    std::string base(op);
    for (const char* key : {"tool.name", "agent.id", "principal.kind", "tool.arguments.nope",
                            "session.metadata.nope", "principal.attributes.nope"}) {
      std::string k(key);
      EXPECT_FALSE(Allowed(AllowWhen(R"({")" + base + R"(": {")" + k + R"(": "x"}})"), r))
          << op << " " << key;
      EXPECT_TRUE(Allowed(AllowWhen(R"({")" + base + R"(IfExists": {")" + k + R"(": "x"}})"), r))
          << op << "IfExists " << key;
    }
  }
  for (const char* cond :
       {R"("NumericLessThan": {"tool.arguments.nope": 5})",
        R"("Bool": {"principal.attributes.nope": true})",
        R"("DateLessThan": {"session.metadata.nope": "2030-01-01T00:00:00Z"})"}) {
    std::string c(cond);
    EXPECT_FALSE(Allowed(AllowWhen("{" + c + "}"), r)) << c;
    size_t colon = c.find("\":");
    std::string if_exists = c.substr(0, colon) + "IfExists" + c.substr(colon);
    EXPECT_TRUE(Allowed(AllowWhen("{" + if_exists + "}"), r)) << if_exists;
  }
  // A present key under IfExists is still checked.
  EXPECT_FALSE(Allowed(AllowWhen(R"({"StringEqualsIfExists": {"principal.id": "u-bob"}})"), r));
  // JSON null counts as missing.
  r.tool_arguments["maybe"] = nullptr;
  EXPECT_FALSE(Allowed(AllowWhen(R"({"StringNotEquals": {"tool.arguments.maybe": "x"}})"), r));
  EXPECT_TRUE(
      Allowed(AllowWhen(R"({"StringNotEqualsIfExists": {"tool.arguments.maybe": "x"}})"), r));
}

TEST(PolicyConditions, ListKeysMatchWhenAnyElementMatches) {
  Request r = SessionRequest();  // groups: dev, oncall; tags: red, blue
  EXPECT_TRUE(Allowed(AllowWhen(R"({"StringEquals": {"principal.groups": "oncall"}})"), r));
  EXPECT_TRUE(
      Allowed(AllowWhen(R"({"StringEquals": {"principal.groups": ["admins", "dev"]}})"), r));
  EXPECT_FALSE(Allowed(AllowWhen(R"({"StringEquals": {"principal.groups": "admins"}})"), r));
  EXPECT_TRUE(Allowed(AllowWhen(R"({"StringLike": {"principal.groups": "on*"}})"), r));
  // Not operators hold when no element matches any value.
  EXPECT_TRUE(Allowed(AllowWhen(R"({"StringNotEquals": {"principal.groups": "admins"}})"), r));
  EXPECT_FALSE(Allowed(AllowWhen(R"({"StringNotEquals": {"principal.groups": "dev"}})"), r));
  EXPECT_FALSE(Allowed(AllowWhen(R"({"StringNotLike": {"principal.groups": "*call"}})"), r));
  EXPECT_TRUE(Allowed(AllowWhen(R"({"StringEquals": {"session.metadata.tags": "blue"}})"), r));
  EXPECT_FALSE(Allowed(AllowWhen(R"({"StringEquals": {"session.metadata.tags": "green"}})"), r));
  // An empty list is present, with nothing in it.
  r.principal.groups.clear();
  EXPECT_FALSE(Allowed(AllowWhen(R"({"StringEquals": {"principal.groups": "dev"}})"), r));
  EXPECT_TRUE(Allowed(AllowWhen(R"({"StringNotEquals": {"principal.groups": "admins"}})"), r));
  EXPECT_FALSE(Allowed(AllowWhen(R"({"StringEqualsIfExists": {"principal.groups": "dev"}})"), r));
}

TEST(PolicyConditions, NestedPathsFollowObjectsAndArrayIndexes) {
  Request r = SessionRequest();
  EXPECT_TRUE(
      Allowed(AllowWhen(R"({"StringEquals": {"principal.attributes.team.name": "core"}})"), r));
  EXPECT_TRUE(
      Allowed(AllowWhen(R"({"StringEquals": {"tool.arguments.nested.items.1.id": "x2"}})"), r));
  EXPECT_FALSE(
      Allowed(AllowWhen(R"({"StringEquals": {"tool.arguments.nested.items.2.id": "x2"}})"), r));
  EXPECT_FALSE(Allowed(AllowWhen(R"({"StringEquals": {"tool.arguments.path.deeper": "x"}})"), r));
}

TEST(PolicyConditions, NumericOperators) {
  Request r = SessionRequest();  // amount 250, amount_text "250", level 3
  struct Case {
    const char* op;
    const char* value;
    bool expect;
  };
  const std::vector<Case> cases = {
      {"NumericEquals", "250", true},
      {"NumericEquals", "250.5", false},
      {"NumericLessThan", "251", true},
      {"NumericLessThan", "250", false},
      {"NumericLessThanEquals", "250", true},
      {"NumericLessThanEquals", "249", false},
      {"NumericGreaterThan", "249", true},
      {"NumericGreaterThan", "250", false},
      {"NumericGreaterThanEquals", "250", true},
      {"NumericGreaterThanEquals", "251", false},
      {"NumericEquals", "\"250\"", true},
      {"NumericLessThan", "[10, 1000]", true},
      {"NumericGreaterThan", "[1000, 2000]", false},
  };
  for (const Case& c : cases) {
    for (const char* key : {"tool.arguments.amount", "tool.arguments.amount_text"}) {
      std::string cond = std::string(R"({")") + c.op + R"(": {")" + key + R"(": )" + c.value + "}}";
      EXPECT_EQ(Allowed(AllowWhen(cond), r), c.expect) << cond;
    }
  }
  EXPECT_TRUE(
      Allowed(AllowWhen(R"({"NumericGreaterThanEquals": {"principal.attributes.level": 3}})"), r));
  // A value that is not a number does not match.
  EXPECT_FALSE(Allowed(AllowWhen(R"({"NumericLessThan": {"tool.arguments.path": 5}})"), r));
}

TEST(PolicyConditions, BoolOperator) {
  Request r = SessionRequest();  // manager: true, recursive: false
  EXPECT_TRUE(Allowed(AllowWhen(R"({"Bool": {"principal.attributes.manager": true}})"), r));
  EXPECT_FALSE(Allowed(AllowWhen(R"({"Bool": {"principal.attributes.manager": false}})"), r));
  EXPECT_TRUE(Allowed(AllowWhen(R"({"Bool": {"tool.arguments.recursive": "false"}})"), r));
  r.tool_arguments["recursive"] = "true";  // a boolean written as a string counts
  EXPECT_TRUE(Allowed(AllowWhen(R"({"Bool": {"tool.arguments.recursive": true}})"), r));
  EXPECT_FALSE(Allowed(AllowWhen(R"({"Bool": {"tool.arguments.path": true}})"), r));
}

TEST(PolicyConditions, DateOperators) {
  Request r = SessionRequest();  // request.time 2026-11-15T12:00:00Z, when 2026-12-01
  EXPECT_TRUE(
      Allowed(AllowWhen(R"({"DateLessThan": {"request.time": "2026-11-15T12:00:00.001Z"}})"), r));
  EXPECT_FALSE(
      Allowed(AllowWhen(R"({"DateLessThan": {"request.time": "2026-11-15T12:00:00Z"}})"), r));
  EXPECT_TRUE(Allowed(
      AllowWhen(R"({"DateGreaterThan": {"request.time": "2026-11-15T13:00:00+02:00"}})"), r));
  EXPECT_FALSE(
      Allowed(AllowWhen(R"({"DateGreaterThan": {"request.time": "2026-11-15T12:00:00Z"}})"), r));
  // A window: both must hold.
  Policy window = AllowWhen(R"({"DateGreaterThan": {"request.time": "2026-11-01T00:00:00Z"},
                                "DateLessThan": {"request.time": "2026-12-01T00:00:00Z"}})");
  EXPECT_TRUE(Allowed(window, r));
  r.time_millis = *ParseRfc3339("2026-12-01T00:00:01Z");
  EXPECT_FALSE(Allowed(window, r));
  // Dates in the request context.
  EXPECT_TRUE(Allowed(
      AllowWhen(R"({"DateGreaterThan": {"tool.arguments.when": "2026-11-30T00:00:00Z"}})"), r));
  EXPECT_FALSE(Allowed(
      AllowWhen(R"({"DateLessThan": {"tool.arguments.path": "2030-01-01T00:00:00Z"}})"), r));
}

TEST(PolicyConditions, AllOperatorsMustHold) {
  Request r = SessionRequest();
  Policy p = AllowWhen(R"({"StringEquals": {"principal.kind": "user"},
                           "NumericLessThanEquals": {"tool.arguments.amount": 500},
                           "StringLike": {"tool.arguments.path": "/workspace/*"}})");
  EXPECT_TRUE(Allowed(p, r));
  r.tool_arguments["amount"] = 501;
  EXPECT_FALSE(Allowed(p, r));
}

TEST(PolicyConditions, DenyWithConditionOnlyDeniesWhenItHolds) {
  Policy allow = MustParse(Doc(R"({"effect": "allow", "actions": ["tools:Call"],
                                   "resources": ["agentd:acme:tool/*"]})"));
  Policy deny = MustParse(Doc(R"({"sid": "big-payments", "effect": "deny",
                                  "actions": ["tools:Call"], "resources": ["*"],
                                  "conditions": {"NumericGreaterThan":
                                                   {"tool.arguments.amount": 1000}}})"));
  Request r = SessionRequest("tools:Call", "agentd:acme:tool/a-helper/pay");
  r.tool_arguments = {{"amount", 50}};
  EXPECT_TRUE(Decide({&allow, &deny}, r).allowed());
  r.tool_arguments = {{"amount", 5000}};
  Decision d = Decide({&allow, &deny}, r);
  EXPECT_EQ(d.reason, DecisionReason::kExplicitDeny);
  EXPECT_EQ(d.sid, "big-payments");
}

// ---- the index against a plain scan --------------------------------------------------------

// What Decide must answer, found the slow way: every statement of every policy in order.
Decision DecideByScan(const std::vector<const Policy*>& policies, const Request& req) {
  const PatternVariables vars{req.principal.id, req.principal.tenant};
  for (Effect effect : {Effect::kDeny, Effect::kAllow}) {
    for (size_t p = 0; p < policies.size(); ++p) {
      const auto& statements = policies[p]->statements();
      for (size_t s = 0; s < statements.size(); ++s) {
        const Statement& st = statements[s];
        if (st.effect != effect) continue;
        bool action = std::any_of(st.actions.begin(), st.actions.end(),
                                  [&](const Pattern& a) { return a.Matches(req.action); });
        bool resource =
            std::any_of(st.resources.begin(), st.resources.end(),
                        [&](const Pattern& r) { return r.Matches(req.resource, vars); });
        if (!action || !resource) continue;
        Decision d;
        d.effect = effect;
        d.reason = effect == Effect::kDeny ? DecisionReason::kExplicitDeny : DecisionReason::kAllow;
        d.policy_index = static_cast<int>(p);
        d.statement_index = static_cast<int>(s);
        return d;
      }
    }
  }
  return Decision();
}

TEST(PolicyIndex, AgreesWithAPlainScanOnRandomPolicies) {
  std::mt19937 rng(20261101);
  auto pick = [&](const std::vector<std::string>& from) {
    return from[std::uniform_int_distribution<size_t>(0, from.size() - 1)(rng)];
  };
  const std::vector<std::string> tenants = {
      "acme", "a", "*", "${principal.tenant}", "ac*", "?cme", "${principal.id}", "globex"};
  const std::vector<std::string> types = {"session", "agent", "sess*", "tool", "*"};
  const std::vector<std::string> pieces = {
      "s-1", "*", "?", "${principal.id}", "x", "-", "/", "${principal.tenant}", "s"};
  const std::vector<std::string> actions = {
      "*", "sessions:*", "*:Read", "sessions:Invoke", "tools:Call", "sessions:?ead", "agents:*"};
  auto random_resource_pattern = [&] {
    if (rng() % 10 == 0) return std::string("*");
    std::string type = pick(types);
    std::string p = "agentd:" + pick(tenants) + ":" + type;
    if (type.find('*') == std::string::npos || rng() % 2) p += "/";
    for (unsigned n = rng() % 4; n > 0; --n) p += pick(pieces);
    return p;
  };
  const std::vector<std::string> principal_values = {"acme", "a:b", "*", "", "u-1", "s"};
  const std::vector<std::string> ids = {"s-1", "s-1x", "x", "u-1", "acme", "s-1/u-1", "s", ""};
  int allowed = 0, denied = 0;
  for (int round = 0; round < 300; ++round) {
    std::vector<Policy> owned;
    for (unsigned n = 1 + rng() % 3; n > 0; --n) {
      std::string statements;
      for (unsigned s = rng() % 12; s > 0; --s) {
        if (!statements.empty()) statements += ",";
        Json st = {{"effect", rng() % 4 == 0 ? "deny" : "allow"},
                   {"actions", {pick(actions), pick(actions)}},
                   {"resources", Json::array()}};
        for (unsigned r = 1 + rng() % 3; r > 0; --r)
          st["resources"].push_back(random_resource_pattern());
        statements += st.dump();
      }
      owned.push_back(MustParse(Doc(statements)));
    }
    std::vector<const Policy*> policies;
    for (const Policy& p : owned) policies.push_back(&p);
    for (int q = 0; q < 40; ++q) {
      Request r;
      r.action = std::string(kKnownActions[rng() % kKnownActions.size()]);
      r.principal.tenant = pick(principal_values);
      r.principal.id = pick(principal_values);
      r.resource = "agentd:" + pick({"acme", "a:b", "globex", "", "*"}) + ":" +
                   pick({"session", "agent", "tool"}) + "/" + pick(ids) + pick({"", "/u-1", "s"});
      Decision want = DecideByScan(policies, r);
      Decision got = Decide(policies, r);
      ASSERT_EQ(got.reason, want.reason) << r.action << " " << r.resource << " round " << round;
      ASSERT_EQ(got.policy_index, want.policy_index) << r.resource << " round " << round;
      ASSERT_EQ(got.statement_index, want.statement_index) << r.resource << " round " << round;
      (got.allowed() ? allowed : denied)++;
    }
  }
  // The random policies are neither all-allow nor all-deny.
  EXPECT_GT(allowed, 1000);
  EXPECT_GT(denied, 1000);
}

TEST(PolicyIndex, ReportsTheFirstApplyingStatementWhateverItsKey) {
  // Statement 0's key ("agentd:") is shorter than statement 1's, so the index finds them in
  // the other order; the answer must still be statement 0.
  Policy p = MustParse(Doc(R"({"sid": "broad", "effect": "allow", "actions": ["*"],
                               "resources": ["agentd:*"]},
                              {"sid": "narrow", "effect": "allow", "actions": ["*"],
                               "resources": ["agentd:acme:session/s-1"]})"));
  Decision d = Decide({&p}, SessionRequest("sessions:Read", "agentd:acme:session/s-1"));
  EXPECT_EQ(d.statement_index, 0);
  EXPECT_EQ(d.sid, "broad");
}

// ---- intersection ----------------------------------------------------------------------------

TEST(PolicyIntersection, BothSidesMustAllow) {
  Policy agent = MustParse(Doc(R"({"sid": "agent-tools", "effect": "allow",
                                   "actions": ["tools:Call"], "resources": ["*"]})"));
  Policy principal = MustParse(Doc(R"({"sid": "user-all", "effect": "allow",
                                       "actions": ["*"], "resources": ["*"]},
                                      {"sid": "no-exec", "effect": "deny",
                                       "actions": ["tools:Call"],
                                       "resources": ["agentd:*:tool/*/exec"]})"));
  Request call = SessionRequest("tools:Call", "agentd:acme:tool/a-helper/read_file");
  IntersectionDecision both = DecideIntersection({&agent}, {&principal}, call);
  EXPECT_TRUE(both.allowed());
  EXPECT_EQ(both.denied_by, DeniedBy::kNone);
  EXPECT_EQ(both.agent.sid, "agent-tools");
  EXPECT_EQ(both.principal.sid, "user-all");

  // The agent allows, the principal denies.
  Request exec = SessionRequest("tools:Call", "agentd:acme:tool/a-helper/exec");
  IntersectionDecision d = DecideIntersection({&agent}, {&principal}, exec);
  EXPECT_FALSE(d.allowed());
  EXPECT_EQ(d.denied_by, DeniedBy::kPrincipal);
  EXPECT_EQ(DeniedByName(d.denied_by), "principal");
  EXPECT_TRUE(d.agent.allowed());
  EXPECT_EQ(d.principal.reason, DecisionReason::kExplicitDeny);
  EXPECT_EQ(d.principal.sid, "no-exec");

  // The principal allows, the agent does not (default deny on its side).
  Request read = SessionRequest("sessions:Read");
  d = DecideIntersection({&agent}, {&principal}, read);
  EXPECT_FALSE(d.allowed());
  EXPECT_EQ(d.denied_by, DeniedBy::kAgent);
  EXPECT_EQ(d.agent.reason, DecisionReason::kDefaultDeny);
  EXPECT_TRUE(d.principal.allowed());

  // Neither allows.
  d = DecideIntersection({&agent}, {}, read);
  EXPECT_EQ(d.denied_by, DeniedBy::kBoth);
  EXPECT_FALSE(d.allowed());
}

}  // namespace
}  // namespace agentd::identity

namespace agentd::identity {
namespace {

TEST(PolicyApproval, AnyApplyingAllowThatAsksForApprovalHoldsTheRequest) {
  Request r = SessionRequest("tools:Call", "agentd:acme:tool/a-helper/pay");
  Policy plain = MustParse(Doc(R"({"sid": "all-tools", "effect": "allow",
                                   "actions": ["tools:Call"], "resources": ["*"]})"));
  // The asking statement comes second: it still holds the call.
  Policy asking = MustParse(Doc(R"({"sid": "all-tools", "effect": "allow",
                                    "actions": ["tools:Call"], "resources": ["*"]},
                                   {"sid": "pay", "effect": "allow", "actions": ["tools:Call"],
                                    "resources": ["agentd:acme:tool/*/pay"],
                                    "approval": "required"})"));
  Decision d = Decide({&plain}, r);
  EXPECT_TRUE(d.allowed());
  EXPECT_FALSE(d.requires_approval);
  d = Decide({&asking}, r);
  EXPECT_TRUE(d.allowed());
  EXPECT_TRUE(d.requires_approval);
  EXPECT_EQ(d.sid, "all-tools");
  // Another tool is not held; a condition that does not hold does not hold it either.
  EXPECT_FALSE(Decide({&asking}, SessionRequest("tools:Call", "agentd:acme:tool/a/read")).requires_approval);
  Policy conditional = MustParse(Doc(R"({"effect": "allow", "actions": ["tools:Call"],
                                         "resources": ["*"]},
                                        {"effect": "allow", "actions": ["tools:Call"],
                                         "resources": ["*"], "approval": "required",
                                         "conditions": {"NumericGreaterThan":
                                                        {"tool.arguments.amount": 1000}}})"));
  EXPECT_FALSE(Decide({&conditional}, r).requires_approval);  // amount is 250
  // Either side of an intersection may ask; a denial is never "held".
  IntersectionDecision both = DecideIntersection({&plain}, {&asking}, r);
  EXPECT_TRUE(both.allowed());
  EXPECT_TRUE(both.requires_approval);
  Policy none;
  IntersectionDecision denied = DecideIntersection({&none}, {&asking}, r);
  EXPECT_FALSE(denied.allowed());
  EXPECT_FALSE(denied.requires_approval);
}

TEST(PolicyApproval, OnlyAllowStatementsMayAskAndOnlyWithRequired) {
  EXPECT_EQ(ParseError(Doc(R"({"effect": "deny", "actions": ["tools:Call"], "resources": ["*"],
                               "approval": "required"})")),
            "'statements[0].approval': is only for statements that allow");
  EXPECT_NE(ParseError(Doc(R"({"effect": "allow", "actions": ["tools:Call"], "resources": ["*"],
                               "approval": true})"))
                .find("must be \"required\""),
            std::string::npos);
}

}  // namespace
}  // namespace agentd::identity
