// Access policies: IAM-style JSON documents that allow or deny actions on resources, and the
// evaluator that decides a request against a set of them. The language is documented in
// docs/security.md ("Policy language"); in short:
//
//   {"version": "2026-11-01",
//    "statements": [{"sid": "own-sessions", "effect": "allow",
//                    "actions": ["sessions:*"],
//                    "resources": ["agentd:${principal.tenant}:session/*"],
//                    "conditions": {"StringEquals": {"principal.kind": "user"}}}]}
//
// Decide(): an explicit deny in any matching statement beats any allow, which beats the
// default deny. DecideIntersection() decides for two sets that must both allow (an agent's
// permissions and its caller's).
//
// Parsing is strict: unknown fields, unknown actions, operators and condition keys are
// errors that name their JSON path, so that a typo can neither widen nor narrow a policy.
// Patterns are compiled at parse time and statements indexed by the literal start of their
// resource patterns (after `${...}` variables), so a decision visits only the statements
// whose resources can match and allocates nothing to find them.
//
// A Policy is immutable after parsing and safe to share between threads.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"
#include "common/status.h"

namespace agentd::identity {

// The one version of the language; documents naming another are refused.
inline constexpr std::string_view kPolicyVersion = "2026-11-01";

// Every action a request can name. An action pattern must match at least one of these.
inline constexpr std::array<std::string_view, 33> kKnownActions = {
    "agents:Create",     "agents:Read",         "agents:Update",
    "sessions:Create",   "sessions:Invoke",     "sessions:Read",
    "sessions:Delete",   "sessions:Cancel",     "sessions:Export",
    "sessions:Import",   "tools:Call",          "tools:Approve",
    "memory:Write",      "audit:Read",          "secrets:Write",
    "secrets:Read",      "secrets:Use",
    "principals:Create", "principals:Read",     "principals:CreateApiKey",
    "principals:RevokeApiKey", "principals:Update", "tenants:Create",
    "tenants:Read",      "policies:Simulate",
    "groups:Create",     "groups:Read",         "groups:Update",       "groups:Delete",
    "roles:Create",      "roles:Read",          "roles:Update",        "roles:Delete",
};

// The resource types of `agentd:<tenant>:<type>/<id>` names. A resource pattern whose type
// part is written out must name one of these.
inline constexpr std::array<std::string_view, 11> kResourceTypes = {
    "agent", "session", "tool", "secret", "principal", "group", "role", "policy", "audit",
    "tenant", "api-key",
};

// Limits on one document; over any of them is a parse error naming it.
inline constexpr size_t kMaxPolicyBytes = 256 * 1024;
inline constexpr size_t kMaxStatements = 1000;
inline constexpr size_t kMaxEntriesPerList = 100;  // actions, resources, keys, values
inline constexpr size_t kMaxPatternLength = 512;   // also condition values and sids

// The values policy variables take in one request. An empty value means "unknown": a
// pattern that refers to it then matches nothing.
struct PatternVariables {
  std::string_view principal_id;
  std::string_view principal_tenant;
};

// A compiled wildcard pattern: `*`, `?`, the variables `${principal.id}` and
// `${principal.tenant}` (substituted as literal text: a `*` in a value matches only `*`), and
// the escapes `${*}`, `${?}`, `${$}` for those characters themselves. Otherwise each
// character matches itself, case-sensitively, and the pattern must match the whole text.
// Matching backtracks only to the last `*` seen, so it takes O(|pattern| * |text|) at worst.
class Pattern {
 public:
  // Fails with a message (without the field's path) when `text` has an unknown or unclosed
  // `${...}`, or a variable while `allow_variables` is false.
  static Result<Pattern> Compile(std::string_view text, bool allow_variables);

  bool Matches(std::string_view text, const PatternVariables& vars = {}) const;
  const std::string& text() const { return text_; }
  bool has_variables() const { return has_variables_; }
  // What every text the pattern matches starts with: `lead`, then what `gap` says, then
  // `key`. What an index files the pattern under.
  enum class Gap : uint8_t {
    kNone,             // `key` follows `lead` at once (and `lead` is empty)
    kPrincipalId,      // the value of ${principal.id}
    kPrincipalTenant,  // the value of ${principal.tenant}
    kAnyToColon,       // a `*`; `key` starts with ':' ("agentd:*:session/*")
  };
  struct Anchor {
    std::string_view lead;
    Gap gap = Gap::kNone;
    std::string_view key;
  };
  Anchor anchor() const;

 private:
  struct Token {
    enum class Kind : uint8_t { kLiteral, kStar, kOne, kPrincipalId, kPrincipalTenant };
    Kind kind;
    uint32_t offset = 0;  // kLiteral: the bytes literals_[offset, offset + size)
    uint32_t size = 0;
  };
  std::string_view TokenText(const Token& t, const PatternVariables& vars) const;

  std::string text_;
  std::string literals_;
  std::vector<Token> tokens_;
  size_t min_length_ = 0;  // a text shorter than this cannot match
  bool has_star_ = false;
  bool has_variables_ = false;
};

enum class Effect : uint8_t { kAllow, kDeny };
std::string_view EffectName(Effect e);  // "allow", "deny"

enum class ConditionOp : uint8_t {
  kStringEquals,
  kStringNotEquals,
  kStringLike,
  kStringNotLike,
  kNumericEquals,
  kNumericLessThan,
  kNumericLessThanEquals,
  kNumericGreaterThan,
  kNumericGreaterThanEquals,
  kBool,
  kDateLessThan,
  kDateGreaterThan,
};
std::string_view ConditionOpName(ConditionOp op);  // "StringEquals", ...

// A request-context value a condition names, e.g. `tool.arguments.path`.
struct ConditionKey {
  enum class Kind : uint8_t {
    kPrincipalId,
    kPrincipalTenant,
    kPrincipalKind,
    kPrincipalGroups,     // a list
    kPrincipalAttribute,  // principal.attributes.<path>
    kSessionMetadata,     // session.metadata.<path>
    kAgentId,
    kToolName,
    kToolArgument,  // tool.arguments.<path>
    kRequestTime,
  };
  Kind kind;
  std::string text;               // as written
  std::vector<std::string> path;  // the dotted path below attributes/metadata/arguments
};

// One operator applied to one key: holds when any listed value matches (for the Not
// operators: when none does). A missing key fails the condition unless `if_exists`.
struct Condition {
  ConditionOp op;
  bool if_exists = false;
  ConditionKey key;
  std::vector<std::string> strings;  // StringEquals, StringNotEquals
  std::vector<Pattern> patterns;     // StringLike, StringNotLike
  std::vector<double> numbers;       // Numeric*
  std::vector<bool> booleans;        // Bool
  std::vector<int64_t> dates;        // Date*: Unix milliseconds
};

struct Statement {
  std::string sid;  // empty when the statement has none
  Effect effect = Effect::kDeny;
  std::vector<Pattern> actions;
  std::vector<Pattern> resources;
  std::vector<Condition> conditions;  // all must hold
  // `"approval": "required"` (allow statements only): what it allows needs a person's
  // approval first (tool calls: the turn waits in requires_action).
  bool requires_approval = false;
};

struct Request;
struct Decision;

class Policy {
 public:
  const std::vector<Statement>& statements() const { return statements_; }

 private:
  friend Result<Policy> ParsePolicy(std::string_view json_text);
  friend Decision Decide(const std::vector<const Policy*>& policies, const Request& req);
  struct Index;  // policy.cc: which statements a request can reach, by action and resource

  std::vector<Statement> statements_;
  std::shared_ptr<const Index> index_;
};

// Parses and compiles a document (at most kMaxPolicyBytes). Errors are InvalidArgument and
// name the place: the byte offset for malformed JSON, the JSON path for a bad field
// ("'statements[2].conditions.StringLike.tool.name': ...").
Result<Policy> ParsePolicy(std::string_view json_text);

// What a request asks and who asks it: the values condition keys and variables read.
struct PrincipalContext {
  std::string id;
  std::string tenant;
  std::string kind;  // "user" or "service"
  std::vector<std::string> groups;
  Json attributes = Json::object();
};

struct Request {
  std::string action;    // one of kKnownActions; any other is denied by default
  std::string resource;  // "agentd:<tenant>:session/<id>", ...
  PrincipalContext principal;
  Json session_metadata = Json::object();
  std::optional<std::string> agent_id;
  std::optional<std::string> tool_name;
  Json tool_arguments;      // null unless the request is a tool call
  int64_t time_millis = 0;  // request.time: when the request is decided
};

enum class DecisionReason : uint8_t { kExplicitDeny, kAllow, kDefaultDeny };
std::string_view DecisionReasonName(DecisionReason r);  // "explicit_deny", "allow", ...

struct Decision {
  Effect effect = Effect::kDeny;
  DecisionReason reason = DecisionReason::kDefaultDeny;
  int policy_index = -1;     // into the policies decided against; -1 for the default deny
  int statement_index = -1;  // into that policy's statements
  std::string sid;           // of that statement
  // Allowed, but only once approved: some applying allow statement requires approval.
  bool requires_approval = false;
  bool allowed() const { return effect == Effect::kAllow; }
};

// Decides `req` against `policies` (null entries count as empty policies). The statement
// reported is the first deny that matches, else the first allow, in policy then statement
// order. Does not allocate unless the reported sid is long or a condition compares a
// non-string value as a string.
Decision Decide(const std::vector<const Policy*>& policies, const Request& req);

// Whose policies kept a request out, when two sets must both allow it.
enum class DeniedBy : uint8_t { kNone, kAgent, kPrincipal, kBoth };
std::string_view DeniedByName(DeniedBy d);  // "none", "agent", "principal", "both"

struct IntersectionDecision {
  Effect effect = Effect::kDeny;
  DeniedBy denied_by = DeniedBy::kBoth;
  Decision agent;
  Decision principal;
  bool requires_approval = false;  // allowed, once approved (either side asks)
  bool allowed() const { return effect == Effect::kAllow; }
};

// The agent's permissions ∩ the principal's: allowed only when both sets allow `req`.
IntersectionDecision DecideIntersection(const std::vector<const Policy*>& agent_policies,
                                        const std::vector<const Policy*>& principal_policies,
                                        const Request& req);

}  // namespace agentd::identity
