// No one grants more than it holds: pattern covering and overlap, and CheckGrantHeld with
// the clamp, conditions, approval and deny statements.
#include "identity/grant.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace agentd::identity {
namespace {

// ---- helpers ------------------------------------------------------------------------------

Pattern Pat(std::string_view text) {
  Result<Pattern> p = Pattern::Compile(text, /*allow_variables=*/true);
  EXPECT_TRUE(p.ok()) << text << ": " << p.status().ToString();
  return p.ok() ? std::move(p).value() : *Pattern::Compile("", false);
}

bool Covers(std::string_view outer, std::string_view inner, PatternVariables outer_vars = {},
            PatternVariables inner_vars = {}) {
  return PatternCovers(Pat(outer), outer_vars, Pat(inner), inner_vars);
}

bool Overlap(std::string_view a, std::string_view b, PatternVariables a_vars = {},
             PatternVariables b_vars = {}) {
  return PatternsMayOverlap(Pat(a), a_vars, Pat(b), b_vars);
}

// A document of the given statements (a JSON array's contents).
std::string Doc(const std::string& statements) {
  return R"({"version": "2026-11-01", "statements": [)" + statements + "]}";
}

Policy MustParse(const std::string& statements) {
  Result<Policy> p = ParsePolicy(Doc(statements));
  EXPECT_TRUE(p.ok()) << p.status().ToString() << "\n" << statements;
  return p.ok() ? std::move(p).value() : Policy();
}

constexpr PatternVariables kAlice{"u-alice", "acme"};

// A holder (alice of acme) with `holder`, granting `granted` (named policies[i]) to `target`.
Status Check(const std::vector<std::string>& holder, const std::vector<std::string>& granted,
             const GrantTarget& target, PatternVariables holder_vars = kAlice) {
  std::vector<Policy> holder_docs, granted_docs;
  for (const std::string& h : holder) holder_docs.push_back(MustParse(h));
  for (const std::string& g : granted) granted_docs.push_back(MustParse(g));
  std::vector<const Policy*> holder_ptrs;
  for (const Policy& p : holder_docs) holder_ptrs.push_back(&p);
  std::vector<GrantedPolicy> granted_named;
  for (size_t i = 0; i < granted_docs.size(); ++i) {
    granted_named.push_back({&granted_docs[i], "policies[" + std::to_string(i) + "]"});
  }
  return CheckGrantHeld(holder_ptrs, holder_vars, granted_named, target);
}

const GrantTarget kAcmeGroup{"acme", "", /*clamped=*/true};
const GrantTarget kAcmeGroupUnclamped{"acme", "", /*clamped=*/false};

constexpr const char* kEverything = R"({"effect": "allow", "actions": ["*"], "resources": ["*"]})";
constexpr const char* kOwnTenant =
    R"({"effect": "allow", "actions": ["*"], "resources": ["agentd:${principal.tenant}:*"]})";

// ---- PatternCovers -------------------------------------------------------------------------

TEST(GrantTest, StarCoversEverythingIncludingStar) {
  EXPECT_TRUE(Covers("*", "*"));
  EXPECT_TRUE(Covers("*", "**"));
  EXPECT_TRUE(Covers("*", "?"));
  EXPECT_TRUE(Covers("*", ""));
  EXPECT_TRUE(Covers("*", "agentd:t:session/x"));
  EXPECT_TRUE(Covers("*", "agentd:${principal.tenant}:*"));
  EXPECT_TRUE(Covers("**", "a*b?c"));
}

TEST(GrantTest, TenantWildcardCoversItsResourcesButNotOtherTenantsNorStar) {
  EXPECT_TRUE(Covers("agentd:t:*", "agentd:t:session/*"));
  EXPECT_TRUE(Covers("agentd:t:*", "agentd:t:session/x"));
  EXPECT_TRUE(Covers("agentd:t:*", "agentd:t:"));
  EXPECT_FALSE(Covers("agentd:t:*", "agentd:*:session/x"));
  EXPECT_FALSE(Covers("agentd:t:*", "*"));
  EXPECT_FALSE(Covers("agentd:t:*", "agentd:tt:session/x"));
  EXPECT_FALSE(Covers("agentd:t:*", "agentd:t"));
}

TEST(GrantTest, QuestionMarkIsCoveredByStarButDoesNotCoverIt) {
  EXPECT_FALSE(Covers("agentd:t:session/?", "agentd:t:session/*"));
  EXPECT_TRUE(Covers("agentd:t:session/*", "agentd:t:session/?"));
  EXPECT_TRUE(Covers("agentd:t:session/?", "agentd:t:session/?"));
  EXPECT_TRUE(Covers("agentd:t:session/?", "agentd:t:session/x"));
  EXPECT_FALSE(Covers("agentd:t:session/?", "agentd:t:session/xy"));
  EXPECT_FALSE(Covers("agentd:t:session/?", "agentd:t:session/"));
  EXPECT_TRUE(Covers("a*b", "a?*b"));
  EXPECT_FALSE(Covers("a?*b", "a*b"));  // "ab" is not matched
}

TEST(GrantTest, EscapesAreTheirLiteralCharacters) {
  EXPECT_TRUE(Covers("agentd:t:secret/*", "agentd:t:secret/${*}"));
  EXPECT_TRUE(Covers("agentd:t:secret/${*}", "agentd:t:secret/${*}"));
  EXPECT_FALSE(Covers("agentd:t:secret/${*}", "agentd:t:secret/*"));
  EXPECT_FALSE(Covers("agentd:t:secret/${*}", "agentd:t:secret/x"));
  EXPECT_TRUE(Covers("a?", "a${?}"));
  EXPECT_FALSE(Covers("a${?}", "a?"));
  EXPECT_TRUE(Covers("a${$}", "a$"));
  EXPECT_TRUE(Covers("a$", "a${$}"));
}

TEST(GrantTest, VariablesAreSubstitutedOnBothSides) {
  const PatternVariables acme{"u-1", "acme"}, other{"u-2", "other"};
  EXPECT_TRUE(
      Covers("agentd:${principal.tenant}:*", "agentd:${principal.tenant}:session/*", acme, acme));
  EXPECT_FALSE(
      Covers("agentd:${principal.tenant}:*", "agentd:${principal.tenant}:session/*", acme, other));
  EXPECT_TRUE(Covers("agentd:${principal.tenant}:*", "agentd:acme:session/x", acme));
  EXPECT_TRUE(Covers("agentd:acme:session/${principal.id}-*", "agentd:acme:session/u-1-x", acme));
  EXPECT_TRUE(Covers("agentd:acme:*", "agentd:${principal.tenant}:x", {}, acme));
  // A value is literal text: a tenant named `*` is not a wildcard.
  const PatternVariables star_tenant{"u-1", "*"};
  EXPECT_FALSE(Covers("agentd:${principal.tenant}:*", "agentd:other:x", star_tenant));
  EXPECT_TRUE(Covers("agentd:${principal.tenant}:*", "agentd:${*}:x", star_tenant));
}

TEST(GrantTest, OuterVariableWithoutValueCoversNothing) {
  EXPECT_FALSE(Covers("agentd:${principal.tenant}:*", "agentd:acme:x"));
  EXPECT_FALSE(Covers("${principal.id}*", "${principal.id}*"));
}

TEST(GrantTest, InnerVariableWithoutValueIsReadAsStar) {
  const PatternVariables group{"", "acme"};
  EXPECT_TRUE(Covers("agentd:acme:session/*", "agentd:acme:session/${principal.id}", {}, group));
  EXPECT_FALSE(Covers("agentd:acme:session/${principal.id}", "agentd:acme:session/${principal.id}",
                      {"u-1", "acme"}, group));
  EXPECT_FALSE(Covers("agentd:acme:session/?", "agentd:acme:session/${principal.id}", {}, group));
  EXPECT_FALSE(Covers("agentd:acme:session/u*", "agentd:acme:session/${principal.id}", {}, group));
}

// Whether `pattern` (of 'a', 'b', '*', '?') matches `text`, by plain recursion.
bool Brute(std::string_view pattern, std::string_view text) {
  if (pattern.empty()) return text.empty();
  if (pattern[0] == '*') {
    for (size_t k = 0; k <= text.size(); ++k) {
      if (Brute(pattern.substr(1), text.substr(k))) return true;
    }
    return false;
  }
  if (text.empty()) return false;
  return (pattern[0] == '?' || pattern[0] == text[0]) && Brute(pattern.substr(1), text.substr(1));
}

std::vector<std::string> AllStrings(std::string_view alphabet, size_t max_length) {
  std::vector<std::string> out = {""};
  for (size_t begin = 0; begin < out.size(); ++begin) {
    if (out[begin].size() == max_length) continue;
    for (char c : alphabet) out.push_back(out[begin] + c);
  }
  return out;
}

// Every pair of small patterns, against every text up to length 7: covering is never claimed
// where some text defeats it, and overlap is exact, among all texts and among those with
// exactly two ':' (resource names).
TEST(GrantTest, CoveringIsSoundAndOverlapExactOnAllSmallPatterns) {
  const std::vector<std::string> patterns = AllStrings("a:*?", 3);
  const std::vector<std::string> texts = AllStrings("a:", 7);
  for (const std::string& outer : patterns) {
    for (const std::string& inner : patterns) {
      bool any_both = false, any_name_both = false, counterexample = false;
      for (const std::string& t : texts) {
        bool o = Brute(outer, t), i = Brute(inner, t);
        any_both = any_both || (o && i);
        any_name_both = any_name_both || (o && i && std::count(t.begin(), t.end(), ':') == 2);
        counterexample = counterexample || (i && !o);
      }
      if (Covers(outer, inner)) {
        EXPECT_FALSE(counterexample) << "'" << outer << "' covers '" << inner << "'";
      }
      EXPECT_EQ(Overlap(outer, inner), any_both) << "'" << outer << "' and '" << inner << "'";
      EXPECT_EQ(PatternsMayOverlap(Pat(outer), {}, Pat(inner), {}, OverlapAmong::kResourceNames),
                any_name_both)
          << "'" << outer << "' and '" << inner << "' among names";
    }
  }
  // Where there is no counterexample the alignment mostly finds the cover too.
  EXPECT_TRUE(Covers("a*", "ab*"));
  EXPECT_TRUE(Covers("*a*", "b*a?"));
}

// ---- PatternsMayOverlap --------------------------------------------------------------------

TEST(GrantTest, DisjointLiteralStartsOrEndsDoNotOverlap) {
  EXPECT_FALSE(Overlap("agentd:a:*", "agentd:b:*"));
  EXPECT_FALSE(Overlap("*.md", "*.txt"));
  EXPECT_FALSE(Overlap("agentd:t:session/?", "agentd:t:session/ab"));
  EXPECT_FALSE(Overlap("agentd:${principal.tenant}:*", "agentd:b:*", {"", "a"}));
}

TEST(GrantTest, WildcardsThatCanMeetOverlap) {
  EXPECT_TRUE(Overlap("agentd:a:*", "agentd:*:x"));
  EXPECT_TRUE(Overlap("*", "agentd:a:session/x"));
  EXPECT_TRUE(Overlap("agentd:a:session/?", "agentd:a:session/*"));
  EXPECT_TRUE(Overlap("a*c", "*b*"));
  EXPECT_TRUE(Overlap("agentd:${principal.tenant}:*", "agentd:a:x", {"", "a"}));
}

TEST(GrantTest, AmongResourceNamesAStarDoesNotSpanTheTenant) {
  EXPECT_TRUE(Overlap("agentd:*:secret/prod-*", "agentd:acme:session/*"));
  EXPECT_FALSE(PatternsMayOverlap(Pat("agentd:*:secret/prod-*"), {}, Pat("agentd:acme:session/*"),
                                  {}, OverlapAmong::kResourceNames));
  EXPECT_TRUE(PatternsMayOverlap(Pat("agentd:*:secret/prod-*"), {}, Pat("agentd:acme:*"), {},
                                 OverlapAmong::kResourceNames));
  EXPECT_TRUE(PatternsMayOverlap(Pat("*"), {}, Pat("*"), {}, OverlapAmong::kResourceNames));
  EXPECT_FALSE(
      PatternsMayOverlap(Pat("agentd:a:b:*"), {}, Pat("*"), {}, OverlapAmong::kResourceNames));
}

TEST(GrantTest, VariableWithoutValueMayOverlapAnything) {
  EXPECT_TRUE(Overlap("agentd:${principal.tenant}:*", "agentd:b:*"));
  EXPECT_TRUE(Overlap("agentd:b:x", "agentd:${principal.tenant}:x"));
  EXPECT_FALSE(Overlap("agentd:${principal.tenant}:x", "agentd:b:y"));
}

// ---- CheckGrantHeld: reach and the clamp ---------------------------------------------------

TEST(GrantTest, HolderOfEverythingGrantsAnything) {
  EXPECT_TRUE(Check({kEverything},
                    {kEverything,
                     R"({"effect": "allow", "actions": ["tools:Call"], "resources": ["*"],
                         "conditions": {"StringEquals": {"principal.kind": "user"}}},
                        {"effect": "allow", "actions": ["sessions:*"], "approval": "required",
                         "resources": ["agentd:${principal.tenant}:session/${principal.id}"]})"},
                    kAcmeGroupUnclamped)
                  .ok());
}

TEST(GrantTest, TenantHolderCannotGrantStarUnclampedAndTheErrorNamesStatementAndAction) {
  const std::string holder =
      R"({"effect": "allow", "actions": ["sessions:*"],
          "resources": ["agentd:${principal.tenant}:*"]})";
  Status s = Check({holder},
                   {R"({"sid": "all", "effect": "allow", "actions": ["*"], "resources": ["*"]})"},
                   kAcmeGroupUnclamped);
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(s.message(),
            "'policies[0]' statements[0] (sid 'all') allows agents:Create on '*', which the "
            "caller may not do");
  s = Check({holder}, {R"({"effect": "allow", "actions": ["sessions:Delete"],
                           "resources": ["*"]})"},
            kAcmeGroupUnclamped);
  EXPECT_EQ(s.message(),
            "'policies[0]' statements[0] allows sessions:Delete on '*', which the caller may "
            "not do");
  EXPECT_TRUE(Check({holder}, {R"({"effect": "allow", "actions": ["sessions:Delete"],
                                   "resources": ["agentd:acme:session/*"]})"},
                    kAcmeGroupUnclamped)
                  .ok());
}

TEST(GrantTest, ClampedToTheHoldersTenantStarAndAnyTenantPatternsAreHeld) {
  const std::vector<std::string> granted = {
      R"({"effect": "allow", "actions": ["*"], "resources": ["*"]},
         {"effect": "allow", "actions": ["sessions:*"], "resources": ["agentd:*:session/*"]},
         {"effect": "allow", "actions": ["agents:Read"],
          "resources": ["agentd:${principal.tenant}:agent/*"]})"};
  EXPECT_TRUE(Check({kOwnTenant}, granted, kAcmeGroup).ok());
  EXPECT_FALSE(Check({kOwnTenant}, granted, kAcmeGroupUnclamped).ok());
  // Clamped to another tenant, the holder's own-tenant policy does not reach it.
  EXPECT_FALSE(Check({kOwnTenant}, granted, {"other", "", true}).ok());
}

TEST(GrantTest, ClampedGrantNamingAnotherTenantReachesNothing) {
  const std::string holder =
      R"({"effect": "allow", "actions": ["sessions:Read"], "resources": ["agentd:acme:*"]})";
  const std::string granted =
      R"({"effect": "allow", "actions": ["*"], "resources": ["agentd:other:*"]})";
  EXPECT_TRUE(Check({holder}, {granted}, kAcmeGroup).ok());
  EXPECT_FALSE(Check({holder}, {granted}, kAcmeGroupUnclamped).ok());
  // A tenant pattern that is not literal is checked as written.
  EXPECT_FALSE(Check({holder}, {R"({"effect": "allow", "actions": ["sessions:Read"],
                          "resources": ["agentd:o*:*"]})"},
                     kAcmeGroup)
                   .ok());
}

TEST(GrantTest, ClampedErrorQuotesTheResourceAsChecked) {
  Status s = Check({R"({"effect": "allow", "actions": ["sessions:Read"],
                        "resources": ["agentd:acme:*"]})"},
                   {R"({"effect": "allow", "actions": ["sessions:Read", "sessions:Delete"],
                        "resources": ["*"]})"},
                   kAcmeGroup);
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(s.message(),
            "'policies[0]' statements[0] allows sessions:Delete on 'agentd:acme:*', which the "
            "caller may not do");
}

TEST(GrantTest, TheFirstExceedingDocumentIsNamed) {
  std::vector<Policy> docs;
  docs.push_back(MustParse(R"({"effect": "allow", "actions": ["sessions:Read"],
                               "resources": ["agentd:acme:*"]})"));
  docs.push_back(MustParse(R"({"effect": "deny", "actions": ["*"], "resources": ["*"]},
                              {"sid": "all", "effect": "allow", "actions": ["sessions:Delete"],
                               "resources": ["agentd:acme:*"]})"));
  Policy holder = MustParse(R"({"effect": "allow", "actions": ["sessions:Read"],
                                "resources": ["*"]})");
  Status s = CheckGrantHeld(
      {&holder, nullptr}, kAlice,
      {{&docs[0], "policies[0]"}, {nullptr, "empty"}, {&docs[1], "group/admins"}}, kAcmeGroup);
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(s.message(),
            "'group/admins' statements[1] (sid 'all') allows sessions:Delete on 'agentd:acme:*', "
            "which the caller may not do");
}

TEST(GrantTest, PrincipalIdInAGrantToAGroupIsCoveredOnlyByAStarThere) {
  const std::string granted =
      R"({"effect": "allow", "actions": ["sessions:Read"],
          "resources": ["agentd:acme:session/${principal.id}-*"]})";
  const std::string own =
      R"({"effect": "allow", "actions": ["sessions:Read"],
          "resources": ["agentd:acme:session/${principal.id}-*"]})";
  EXPECT_FALSE(Check({own}, {granted}, kAcmeGroup).ok());
  EXPECT_TRUE(Check({R"({"effect": "allow", "actions": ["sessions:Read"],
                         "resources": ["agentd:acme:session/*"]})"},
                    {granted}, kAcmeGroup)
                  .ok());
  // Granted to alice herself, her own ${principal.id} is the same text.
  EXPECT_TRUE(Check({own}, {granted}, {"acme", "u-alice", true}).ok());
  EXPECT_FALSE(Check({own}, {granted}, {"acme", "u-bob", true}).ok());
}

TEST(GrantTest, ClampedWithoutATenantIsInvalid) {
  EXPECT_EQ(Check({kEverything}, {kEverything}, {"", "", true}).code(),
            StatusCode::kInvalidArgument);
}

// ---- CheckGrantHeld: conditions and approval -----------------------------------------------

TEST(GrantTest, ConditionalHolderAllowCoversOnlyGrantsWithTheSameConditions) {
  const std::string holder =
      R"({"effect": "allow", "actions": ["tools:Call"], "resources": ["*"],
          "conditions": {"StringEquals": {"tool.name": "search"}}})";
  EXPECT_FALSE(Check({holder},
                     {R"({"effect": "allow", "actions": ["tools:Call"], "resources": ["*"]})"},
                     kAcmeGroupUnclamped)
                   .ok());
  EXPECT_TRUE(Check({holder}, {R"({"effect": "allow", "actions": ["tools:Call"],
                                   "resources": ["agentd:acme:tool/*"],
                                   "conditions": {"StringEquals": {"tool.name": "search"}}})"},
                    kAcmeGroupUnclamped)
                  .ok());
  // More conditions on the grant only narrow it.
  EXPECT_TRUE(Check({holder}, {R"({"effect": "allow", "actions": ["tools:Call"],
                                   "resources": ["*"],
                                   "conditions": {"StringEquals": {"tool.name": "search"},
                                                  "Bool": {"tool.arguments.safe": true}}})"},
                    kAcmeGroupUnclamped)
                  .ok());
  // Another value, another operator, or IfExists is another condition.
  for (const char* conditions : {R"({"StringEquals": {"tool.name": "shell"}})",
                                 R"({"StringEquals": {"tool.name": ["search", "shell"]}})",
                                 R"({"StringLike": {"tool.name": "search"}})",
                                 R"({"StringEqualsIfExists": {"tool.name": "search"}})"}) {
    EXPECT_FALSE(Check({holder},
                       {std::string(R"({"effect": "allow", "actions": ["tools:Call"],
                                                  "resources": ["*"], "conditions": )") +
                        conditions + "}"},
                       kAcmeGroupUnclamped)
                     .ok())
        << conditions;
  }
}

TEST(GrantTest, ConditionsOnThePrincipalNeverCoverAGrant) {
  for (const char* conditions :
       {R"({"StringEquals": {"principal.kind": "user"}})",
        R"({"StringEquals": {"principal.attributes.clearance": "top"}})",
        R"({"StringEquals": {"principal.groups": "ops"}})",
        R"({"StringLike": {"tool.arguments.path": "/home/${principal.id}/*"}})"}) {
    const std::string statement =
        std::string(R"({"effect": "allow", "actions": ["secrets:Read"], "resources": ["*"],
                        "conditions": )") +
        conditions + "}";
    EXPECT_FALSE(Check({statement}, {statement}, kAcmeGroupUnclamped).ok()) << conditions;
  }
}

TEST(GrantTest, ApprovalRequiredHolderAllowCoversOnlyApprovalRequiredGrants) {
  const std::string holder =
      R"({"effect": "allow", "actions": ["tools:Call"], "resources": ["*"],
          "approval": "required"})";
  EXPECT_FALSE(Check({holder},
                     {R"({"effect": "allow", "actions": ["tools:Call"], "resources": ["*"]})"},
                     kAcmeGroupUnclamped)
                   .ok());
  EXPECT_TRUE(Check({holder}, {R"({"effect": "allow", "actions": ["tools:Call"],
                                   "resources": ["agentd:acme:tool/*"],
                                   "approval": "required"})"},
                    kAcmeGroupUnclamped)
                  .ok());
  // An approval-required grant is covered by a holder allow without approval too.
  EXPECT_TRUE(Check({kEverything}, {R"({"effect": "allow", "actions": ["tools:Call"],
                                        "resources": ["*"], "approval": "required"})"},
                    kAcmeGroupUnclamped)
                  .ok());
}

TEST(GrantTest, HolderApprovalAnywhereInTheGrantsReachMakesTheGrantNeedApproval) {
  // Decide() asks for approval when any applying allow statement does: alice needs it for
  // payments, although she may call every tool.
  const std::string pay =
      R"({"effect": "allow", "actions": ["tools:Call"], "resources": ["agentd:*:tool/*/pay"],
          "approval": "required"})";
  Status s = Check({kEverything, pay}, {R"({"effect": "allow", "actions": ["tools:Call"],
                        "resources": ["agentd:acme:tool/*"]})"},
                   kAcmeGroupUnclamped);
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(s.message(),
            "'policies[0]' statements[0] allows tools:Call on 'agentd:acme:tool/*' without "
            "approval, which the caller may do only once approved");
  EXPECT_TRUE(Check({kEverything, pay}, {R"({"effect": "allow", "actions": ["tools:Call"],
                         "resources": ["agentd:acme:tool/*"], "approval": "required"})"},
                    kAcmeGroupUnclamped)
                  .ok());
  EXPECT_TRUE(Check({kEverything, pay},
                    {R"({"effect": "allow", "actions": ["tools:Call", "sessions:Read"],
                         "resources": ["agentd:acme:tool/a/search", "agentd:acme:session/*"]})"},
                    kAcmeGroupUnclamped)
                  .ok());
}

// ---- CheckGrantHeld: deny statements -------------------------------------------------------

TEST(GrantTest, HolderDenyBlocksAnOverlappingGrantUnlessTheGrantCarriesTheSameDeny) {
  const std::string no_prod =
      R"({"effect": "deny", "actions": ["secrets:Read"], "resources": ["agentd:*:secret/prod-*"]})";
  const std::string read_all =
      R"({"effect": "allow", "actions": ["secrets:*"], "resources": ["*"]})";
  Status s = Check({kEverything, no_prod}, {read_all}, kAcmeGroupUnclamped);
  EXPECT_EQ(s.code(), StatusCode::kPermissionDenied);
  EXPECT_EQ(s.message(),
            "'policies[0]' statements[0] allows secrets:Read on '*', which the caller may not "
            "do: its policies deny some of it");
  EXPECT_TRUE(Check({kEverything, no_prod}, {read_all + "," + no_prod}, kAcmeGroupUnclamped).ok());
  // The deny may come in another granted document, and be wider.
  EXPECT_TRUE(Check({kEverything, no_prod},
                    {read_all, R"({"effect": "deny", "actions": ["secrets:*"],
                                   "resources": ["agentd:*:secret/*"]})"},
                    kAcmeGroupUnclamped)
                  .ok());
  // Narrower, or for other actions, it leaves some of the holder's deny open.
  EXPECT_FALSE(Check({kEverything, no_prod},
                     {read_all, R"({"effect": "deny", "actions": ["secrets:Read"],
                                    "resources": ["agentd:acme:secret/prod-*"]})"},
                     kAcmeGroupUnclamped)
                   .ok());
  EXPECT_FALSE(Check({kEverything, no_prod},
                     {read_all, R"({"effect": "deny", "actions": ["secrets:Write"],
                                    "resources": ["agentd:*:secret/prod-*"]})"},
                     kAcmeGroupUnclamped)
                   .ok());
  // A grant the deny cannot reach needs no deny of its own.
  EXPECT_TRUE(Check({kEverything, no_prod}, {R"({"effect": "allow", "actions": ["secrets:Read"],
                         "resources": ["agentd:acme:secret/dev-*"]})"},
                    kAcmeGroupUnclamped)
                  .ok());
}

TEST(GrantTest, UnderTheClampAGrantedDenyNeedsToCoverOnlyTheTargetsTenant) {
  const std::string no_prod =
      R"({"effect": "deny", "actions": ["secrets:Read"], "resources": ["agentd:*:secret/prod-*"]})";
  const std::string granted =
      R"({"effect": "allow", "actions": ["secrets:Read"], "resources": ["*"]},
         {"effect": "deny", "actions": ["secrets:Read"],
          "resources": ["agentd:${principal.tenant}:secret/prod-*"]})";
  EXPECT_TRUE(Check({kEverything, no_prod}, {granted}, kAcmeGroup).ok());
  EXPECT_FALSE(Check({kEverything, no_prod}, {granted}, kAcmeGroupUnclamped).ok());
  // A holder deny on another tenant does not reach a clamped grant at all.
  EXPECT_TRUE(Check({kEverything, R"({"effect": "deny", "actions": ["*"],
                                      "resources": ["agentd:other:*"]})"},
                    {kEverything}, kAcmeGroup)
                  .ok());
}

TEST(GrantTest, ConditionalHolderDenyIsCutOnlyByADenyThatAppliesWheneverItDoes) {
  const std::string big_payments =
      R"({"effect": "deny", "actions": ["tools:Call"], "resources": ["agentd:*:tool/*/pay"],
          "conditions": {"NumericGreaterThan": {"tool.arguments.amount": 1000}}})";
  const std::string call_all =
      R"({"effect": "allow", "actions": ["tools:Call"], "resources": ["*"]})";
  EXPECT_FALSE(Check({kEverything, big_payments}, {call_all}, kAcmeGroupUnclamped).ok());
  EXPECT_TRUE(
      Check({kEverything, big_payments}, {call_all + "," + big_payments}, kAcmeGroupUnclamped)
          .ok());
  EXPECT_TRUE(Check({kEverything, big_payments},
                    {call_all + R"(, {"effect": "deny", "actions": ["tools:Call"],
                                     "resources": ["agentd:*:tool/*/pay"]})"},
                    kAcmeGroupUnclamped)
                  .ok());
  EXPECT_FALSE(Check({kEverything, big_payments},
                     {call_all + R"(, {"effect": "deny", "actions": ["tools:Call"],
                                      "resources": ["agentd:*:tool/*/pay"],
                                      "conditions": {"NumericGreaterThan":
                                                     {"tool.arguments.amount": 5000}}})"},
                     kAcmeGroupUnclamped)
                   .ok());
}

TEST(GrantTest, GrantedDenyStatementsAreNeverChecked) {
  const std::string holder =
      R"({"effect": "allow", "actions": ["sessions:Read"], "resources": ["agentd:acme:*"]})";
  EXPECT_TRUE(Check({holder}, {R"({"effect": "deny", "actions": ["*"], "resources": ["*"]},
                        {"effect": "allow", "actions": ["sessions:Read"],
                         "resources": ["agentd:acme:session/*"]})"},
                    kAcmeGroupUnclamped)
                  .ok());
  EXPECT_TRUE(Check({}, {R"({"effect": "deny", "actions": ["*"], "resources": ["*"]})"},
                    kAcmeGroupUnclamped)
                  .ok());
}

// Comparing is bounded: patterns built to make each comparison costly are refused, not
// compared for seconds.
TEST(GrantTest, PatternsTooCostlyToCompareAreRefused) {
  std::string odd = "agentd:acme:*", costly = "agentd:acme:*";
  for (int i = 0; i < 200; ++i) odd += "a?";
  for (int i = 0; i < 240; ++i) costly += "b?";
  odd += "*";
  costly += "*";
  std::string holder;
  for (int i = 0; i < 100; ++i) {
    holder +=
        R"({"effect": "allow", "actions": ["sessions:Read"], "resources": [")" + odd + R"("]},)";
  }
  holder += kEverything;
  const std::string one =
      R"({"effect": "allow", "actions": ["sessions:Read"], "resources": [")" + costly + R"("]})";
  EXPECT_TRUE(Check({holder}, {one}, kAcmeGroup).ok());
  std::string many = one;
  for (int i = 0; i < 20; ++i) many += "," + one;
  Status s = Check({holder}, {many}, kAcmeGroup);
  EXPECT_EQ(s.code(), StatusCode::kResourceExhausted) << s.ToString();
}

TEST(GrantTest, AHolderWithNoPoliciesGrantsNoAllow) {
  EXPECT_TRUE(Check({}, {}, kAcmeGroup).ok());
  EXPECT_FALSE(Check({}, {R"({"effect": "allow", "actions": ["sessions:Read"],
                              "resources": ["agentd:acme:session/x"]})"},
                     kAcmeGroup)
                   .ok());
}

}  // namespace
}  // namespace agentd::identity
