#include "identity/policy.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <set>
#include <unordered_map>

#include "common/clock.h"

namespace agentd::identity {
namespace {

constexpr std::string_view kIfExists = "IfExists";

constexpr std::array<std::string_view, 12> kConditionOpNames = {
    "StringEquals",
    "StringNotEquals",
    "StringLike",
    "StringNotLike",
    "NumericEquals",
    "NumericLessThan",
    "NumericLessThanEquals",
    "NumericGreaterThan",
    "NumericGreaterThanEquals",
    "Bool",
    "DateLessThan",
    "DateGreaterThan",
};

enum class OpFamily { kString, kNumeric, kBool, kDate };

OpFamily FamilyOf(ConditionOp op) {
  switch (op) {
    case ConditionOp::kStringEquals:
    case ConditionOp::kStringNotEquals:
    case ConditionOp::kStringLike:
    case ConditionOp::kStringNotLike:
      return OpFamily::kString;
    case ConditionOp::kBool:
      return OpFamily::kBool;
    case ConditionOp::kDateLessThan:
    case ConditionOp::kDateGreaterThan:
      return OpFamily::kDate;
    default:
      return OpFamily::kNumeric;
  }
}

bool IsNegated(ConditionOp op) {
  return op == ConditionOp::kStringNotEquals || op == ConditionOp::kStringNotLike;
}

int ActionIndex(std::string_view action) {
  for (size_t i = 0; i < kKnownActions.size(); ++i) {
    if (kKnownActions[i] == action) return static_cast<int>(i);
  }
  return -1;
}

// A decimal number written as a string ("12.5"): the whole string must be one.
std::optional<double> ParseNumber(std::string_view s) {
  double v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

std::string JoinNames(const auto& names) {
  std::string out;
  for (std::string_view n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}

// ---- parsing ----------------------------------------------------------------------------

Status FieldError(std::string_view path, std::string_view message) {
  return InvalidArgument(fmt::format("'{}': {}", path, message));
}

// nlohmann keeps the last of two equal keys; in a policy that would let a repeated field
// silently override the one a reviewer read.
Status CheckNoDuplicateKeys(std::string_view text) {
  std::vector<std::set<std::string>> open;
  std::string duplicate;
  Json::parser_callback_t note = [&](int, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) {
      open.emplace_back();
    } else if (event == Json::parse_event_t::object_end) {
      if (!open.empty()) open.pop_back();
    } else if (event == Json::parse_event_t::key && duplicate.empty() && !open.empty() &&
               !open.back().insert(parsed.get<std::string>()).second) {
      duplicate = parsed.get<std::string>();
    }
    return true;
  };
  try {
    Json parsed_again = Json::parse(text.begin(), text.end(), note);
  } catch (const std::exception&) {
    return InvalidArgument("policy document is not valid JSON");
  }
  if (!duplicate.empty()) {
    return InvalidArgument(
        fmt::format("policy document has the field '{}' twice in one object", duplicate));
  }
  return Status::OK();
}

Status CheckResourcePattern(const Pattern& p, std::string_view path) {
  std::string_view text = p.text();
  if (text == "*") return Status::OK();
  constexpr std::string_view kScheme = "agentd:";
  if (!text.starts_with(kScheme)) {
    return FieldError(path, fmt::format("'{}' must be '*' or start with 'agentd:'", text));
  }
  std::string_view rest = text.substr(kScheme.size());
  size_t colon = rest.find(':');
  if (colon == std::string_view::npos) return Status::OK();  // "agentd:<tenant pattern>"
  std::string_view after = rest.substr(colon + 1);
  size_t k = after.find_first_of("/*?$");
  if (k != std::string_view::npos && after[k] == '/') {
    std::string_view type = after.substr(0, k);
    if (std::find(kResourceTypes.begin(), kResourceTypes.end(), type) != kResourceTypes.end()) {
      return Status::OK();
    }
    return FieldError(path, fmt::format("unknown resource type '{}' in '{}' (known: {})", type,
                                        text, JoinNames(kResourceTypes)));
  }
  if (k == std::string_view::npos) {
    return FieldError(path, fmt::format("'{}' names no resource: expected "
                                        "'agentd:<tenant>:<type>/<id>'",
                                        text));
  }
  // The type is cut by a wildcard ("agentd:t:sess*"): what is written must begin one.
  std::string_view start = after.substr(0, k);
  for (std::string_view type : kResourceTypes) {
    if (type.starts_with(start)) return Status::OK();
  }
  return FieldError(path, fmt::format("'{}' can match no resource type (known: {})", text,
                                      JoinNames(kResourceTypes)));
}

enum class ListKind { kActions, kResources };

Status ParsePatternList(const Json* v, const std::string& path, ListKind kind,
                        std::vector<Pattern>* out) {
  std::string_view what = kind == ListKind::kActions ? "action" : "resource";
  if (v == nullptr) return InvalidArgument(fmt::format("'{}' is required", path));
  if (!v->is_array()) return FieldError(path, "must be an array of strings");
  if (v->empty()) return FieldError(path, fmt::format("must list at least one {}", what));
  if (v->size() > kMaxEntriesPerList) {
    return FieldError(path, fmt::format("has {} entries, more than the limit of {}", v->size(),
                                        kMaxEntriesPerList));
  }
  for (size_t i = 0; i < v->size(); ++i) {
    std::string item_path = fmt::format("{}[{}]", path, i);
    const Json& item = (*v)[i];
    if (!item.is_string()) return FieldError(item_path, "must be a string");
    const std::string& text = item.get_ref<const std::string&>();
    if (text.empty()) return FieldError(item_path, "must not be empty");
    if (text.size() > kMaxPatternLength) {
      return FieldError(
          item_path, fmt::format("is longer than the limit of {} characters", kMaxPatternLength));
    }
    Result<Pattern> p = Pattern::Compile(text, kind == ListKind::kResources);
    if (!p.ok()) return FieldError(item_path, p.status().message());
    if (kind == ListKind::kActions) {
      bool any = std::any_of(kKnownActions.begin(), kKnownActions.end(),
                             [&](std::string_view a) { return p->Matches(a); });
      if (!any) return FieldError(item_path, fmt::format("'{}' matches no known action", text));
    } else {
      RETURN_IF_ERROR(CheckResourcePattern(*p, item_path));
    }
    out->push_back(std::move(p).value());
  }
  return Status::OK();
}

Result<ConditionKey> ParseConditionKey(std::string_view text, std::string_view path) {
  using K = ConditionKey::Kind;
  static constexpr std::pair<std::string_view, K> kExact[] = {
      {"principal.id", K::kPrincipalId},
      {"principal.tenant", K::kPrincipalTenant},
      {"principal.kind", K::kPrincipalKind},
      {"principal.groups", K::kPrincipalGroups},
      {"agent.id", K::kAgentId},
      {"tool.name", K::kToolName},
      {"request.time", K::kRequestTime},
  };
  static constexpr std::pair<std::string_view, K> kPrefixed[] = {
      {"principal.attributes.", K::kPrincipalAttribute},
      {"session.metadata.", K::kSessionMetadata},
      {"tool.arguments.", K::kToolArgument},
  };
  ConditionKey key{K::kPrincipalId, std::string(text), {}};
  for (const auto& [name, kind] : kExact) {
    if (text == name) {
      key.kind = kind;
      return key;
    }
  }
  for (const auto& [prefix, kind] : kPrefixed) {
    if (!text.starts_with(prefix)) continue;
    key.kind = kind;
    std::string_view rest = text.substr(prefix.size());
    while (true) {
      size_t dot = rest.find('.');
      std::string_view segment = rest.substr(0, dot);
      if (segment.empty()) {
        return FieldError(path, fmt::format("condition key '{}' has an empty name part", text));
      }
      key.path.emplace_back(segment);
      if (dot == std::string_view::npos) break;
      rest = rest.substr(dot + 1);
    }
    return key;
  }
  return FieldError(path, fmt::format("unknown condition key '{}'", text));
}

// Keys with a fixed type take only the operators that can compare it; a Numeric or Date
// operator on a name would otherwise never match, silently.
Status CheckOperatorFits(OpFamily family, const ConditionKey& key, std::string_view op_name,
                         std::string_view path) {
  using K = ConditionKey::Kind;
  switch (key.kind) {
    case K::kPrincipalAttribute:
    case K::kSessionMetadata:
    case K::kToolArgument:
      return Status::OK();
    case K::kRequestTime:
      if (family == OpFamily::kDate) return Status::OK();
      return FieldError(path, fmt::format("{} does not apply to '{}' (a time: use DateLessThan "
                                          "or DateGreaterThan)",
                                          op_name, key.text));
    default:
      if (family == OpFamily::kString) return Status::OK();
      return FieldError(path, fmt::format("{} does not apply to '{}' (a string: use a String "
                                          "operator)",
                                          op_name, key.text));
  }
}

Status ParseConditionValue(const Json& v, const std::string& path, Condition* c) {
  switch (FamilyOf(c->op)) {
    case OpFamily::kString: {
      if (!v.is_string()) return FieldError(path, "must be a string");
      const std::string& s = v.get_ref<const std::string&>();
      if (s.size() > kMaxPatternLength) {
        return FieldError(
            path, fmt::format("is longer than the limit of {} characters", kMaxPatternLength));
      }
      if (c->op == ConditionOp::kStringLike || c->op == ConditionOp::kStringNotLike) {
        Result<Pattern> p = Pattern::Compile(s, /*allow_variables=*/true);
        if (!p.ok()) return FieldError(path, p.status().message());
        c->patterns.push_back(std::move(p).value());
      } else {
        c->strings.push_back(s);
      }
      return Status::OK();
    }
    case OpFamily::kNumeric: {
      std::optional<double> x;
      if (v.is_number()) x = v.get<double>();
      if (v.is_string()) x = ParseNumber(v.get_ref<const std::string&>());
      if (!x) return FieldError(path, "must be a number");
      c->numbers.push_back(*x);
      return Status::OK();
    }
    case OpFamily::kBool: {
      if (v.is_boolean()) {
        c->booleans.push_back(v.get<bool>());
      } else if (v == "true" || v == "false") {
        c->booleans.push_back(v == "true");
      } else {
        return FieldError(path, "must be true or false");
      }
      return Status::OK();
    }
    case OpFamily::kDate: {
      std::optional<int64_t> t;
      if (v.is_string()) t = ParseRfc3339(v.get_ref<const std::string&>());
      if (!t) {
        return FieldError(path, fmt::format("{} is not an RFC 3339 date-time "
                                            "(like 2026-11-01T00:00:00Z)",
                                            DumpJson(v).substr(0, 80)));
      }
      c->dates.push_back(*t);
      return Status::OK();
    }
  }
  return Status::OK();
}

Status ParseConditions(const Json& v, const std::string& path, std::vector<Condition>* out) {
  if (!v.is_object()) return FieldError(path, "must be an object of condition operators");
  for (const auto& [op_name, body] : v.items()) {
    std::string op_path = path + "." + op_name;
    std::string_view base = op_name;
    bool if_exists = base.ends_with(kIfExists);
    if (if_exists) base.remove_suffix(kIfExists.size());
    auto it = std::find(kConditionOpNames.begin(), kConditionOpNames.end(), base);
    if (it == kConditionOpNames.end()) {
      return FieldError(op_path, fmt::format("unknown condition operator '{}'", op_name));
    }
    auto op = static_cast<ConditionOp>(it - kConditionOpNames.begin());
    if (!body.is_object()) return FieldError(op_path, "must be an object of condition keys");
    if (body.empty()) return FieldError(op_path, "must name at least one condition key");
    if (body.size() > kMaxEntriesPerList) {
      return FieldError(op_path, fmt::format("has {} keys, more than the limit of {}", body.size(),
                                             kMaxEntriesPerList));
    }
    for (const auto& [key_text, values] : body.items()) {
      std::string key_path = op_path + "." + key_text;
      if (key_text.size() > kMaxPatternLength) {
        return FieldError(op_path, fmt::format("a condition key is longer than the limit of {} "
                                               "characters",
                                               kMaxPatternLength));
      }
      ASSIGN_OR_RETURN(ConditionKey key, ParseConditionKey(key_text, key_path));
      RETURN_IF_ERROR(CheckOperatorFits(FamilyOf(op), key, op_name, key_path));
      Condition c{op, if_exists, std::move(key), {}, {}, {}, {}, {}};
      if (values.is_array()) {
        if (values.empty()) return FieldError(key_path, "must list at least one value");
        if (values.size() > kMaxEntriesPerList) {
          return FieldError(key_path, fmt::format("has {} values, more than the limit of {}",
                                                  values.size(), kMaxEntriesPerList));
        }
        for (size_t i = 0; i < values.size(); ++i) {
          RETURN_IF_ERROR(ParseConditionValue(values[i], fmt::format("{}[{}]", key_path, i), &c));
        }
      } else {
        RETURN_IF_ERROR(ParseConditionValue(values, key_path, &c));
      }
      out->push_back(std::move(c));
    }
  }
  return Status::OK();
}

Status ParseStatement(const Json& v, const std::string& path, Statement* st) {
  if (!v.is_object()) return FieldError(path, "must be an object");
  // Every field is looked up before any is checked, so that a misspelt field is reported as
  // unknown rather than the field it was meant to be as missing.
  FieldReader r(v, path);
  const Json *sid, *effect, *actions, *resources, *conditions, *approval;
  RETURN_IF_ERROR(r.Value("sid", &sid, false));
  RETURN_IF_ERROR(r.Value("effect", &effect, false));
  RETURN_IF_ERROR(r.Value("actions", &actions, false));
  RETURN_IF_ERROR(r.Value("resources", &resources, false));
  RETURN_IF_ERROR(r.Value("conditions", &conditions, false));
  RETURN_IF_ERROR(r.Value("approval", &approval, false));
  RETURN_IF_ERROR(r.NoUnknownKeys());
  if (sid != nullptr) {
    if (!sid->is_string()) return FieldError(r.PathOf("sid"), "must be a string");
    st->sid = sid->get<std::string>();
    if (st->sid.size() > kMaxPatternLength) {
      return FieldError(r.PathOf("sid"), fmt::format("is longer than the limit of {} characters",
                                                     kMaxPatternLength));
    }
  }
  if (effect == nullptr)
    return InvalidArgument(fmt::format("'{}' is required", r.PathOf("effect")));
  if (*effect == "allow") {
    st->effect = Effect::kAllow;
  } else if (*effect == "deny") {
    st->effect = Effect::kDeny;
  } else {
    return FieldError(r.PathOf("effect"),
                      fmt::format("must be \"allow\" or \"deny\", not {}", DumpJson(*effect)));
  }
  RETURN_IF_ERROR(ParsePatternList(actions, r.PathOf("actions"), ListKind::kActions, &st->actions));
  RETURN_IF_ERROR(
      ParsePatternList(resources, r.PathOf("resources"), ListKind::kResources, &st->resources));
  if (conditions != nullptr) {
    RETURN_IF_ERROR(ParseConditions(*conditions, r.PathOf("conditions"), &st->conditions));
  }
  if (approval != nullptr) {
    if (*approval != "required") {
      return FieldError(r.PathOf("approval"),
                        fmt::format("must be \"required\", not {}", DumpJson(*approval)));
    }
    if (st->effect != Effect::kAllow) {
      return FieldError(r.PathOf("approval"), "is only for statements that allow");
    }
    st->requires_approval = true;
  }
  return Status::OK();
}

// ---- evaluation -------------------------------------------------------------------------

// The value a condition key has in a request.
struct Resolved {
  enum class Kind { kMissing, kString, kList, kJson, kTime } kind = Kind::kMissing;
  std::string_view string;
  const std::vector<std::string>* list = nullptr;
  const Json* json = nullptr;
  int64_t time = 0;
};

Resolved OfString(std::string_view s) {
  Resolved r;
  if (!s.empty()) {
    r.kind = Resolved::Kind::kString;
    r.string = s;
  }
  return r;
}

// Follows a dotted path through objects (and arrays, by decimal index). JSON null counts
// as missing, as it does for fields everywhere else.
Resolved OfJsonPath(const Json& root, const std::vector<std::string>& path) {
  const Json* cur = &root;
  for (const std::string& segment : path) {
    if (cur->is_object()) {
      auto it = cur->find(segment);
      if (it == cur->end()) return {};
      cur = &*it;
    } else if (cur->is_array()) {
      size_t index = 0;
      auto [end, ec] = std::from_chars(segment.data(), segment.data() + segment.size(), index);
      if (ec != std::errc() || end != segment.data() + segment.size() || index >= cur->size()) {
        return {};
      }
      cur = &(*cur)[index];
    } else {
      return {};
    }
  }
  Resolved r;
  if (!cur->is_null()) {
    r.kind = Resolved::Kind::kJson;
    r.json = cur;
  }
  return r;
}

Resolved Resolve(const ConditionKey& key, const Request& req) {
  using K = ConditionKey::Kind;
  switch (key.kind) {
    case K::kPrincipalId:
      return OfString(req.principal.id);
    case K::kPrincipalTenant:
      return OfString(req.principal.tenant);
    case K::kPrincipalKind:
      return OfString(req.principal.kind);
    case K::kPrincipalGroups: {
      // An empty list is present: a Not operator on it holds, a positive one fails.
      Resolved r;
      r.kind = Resolved::Kind::kList;
      r.list = &req.principal.groups;
      return r;
    }
    case K::kPrincipalAttribute:
      return OfJsonPath(req.principal.attributes, key.path);
    case K::kSessionMetadata:
      return OfJsonPath(req.session_metadata, key.path);
    case K::kAgentId:
      return req.agent_id ? OfString(*req.agent_id) : Resolved{};
    case K::kToolName:
      return req.tool_name ? OfString(*req.tool_name) : Resolved{};
    case K::kToolArgument:
      return OfJsonPath(req.tool_arguments, key.path);
    case K::kRequestTime: {
      Resolved r;
      r.kind = Resolved::Kind::kTime;
      r.time = req.time_millis;
      return r;
    }
  }
  return {};
}

bool StringMatches(const Condition& c, std::string_view v, const PatternVariables& vars) {
  if (c.op == ConditionOp::kStringLike || c.op == ConditionOp::kStringNotLike) {
    return std::any_of(c.patterns.begin(), c.patterns.end(),
                       [&](const Pattern& p) { return p.Matches(v, vars); });
  }
  return std::find(c.strings.begin(), c.strings.end(), v) != c.strings.end();
}

bool NumberMatches(const Condition& c, double x) {
  return std::any_of(c.numbers.begin(), c.numbers.end(), [&](double limit) {
    switch (c.op) {
      case ConditionOp::kNumericEquals:
        return x == limit;
      case ConditionOp::kNumericLessThan:
        return x < limit;
      case ConditionOp::kNumericLessThanEquals:
        return x <= limit;
      case ConditionOp::kNumericGreaterThan:
        return x > limit;
      case ConditionOp::kNumericGreaterThanEquals:
        return x >= limit;
      default:
        return false;
    }
  });
}

bool DateMatches(const Condition& c, int64_t t) {
  return std::any_of(c.dates.begin(), c.dates.end(), [&](int64_t limit) {
    return c.op == ConditionOp::kDateLessThan ? t < limit : t > limit;
  });
}

// One JSON value against the condition's values. A value of a type the operator cannot
// compare does not match (so a Not operator holds for it).
bool JsonMatches(const Condition& c, const Json& v, const PatternVariables& vars) {
  switch (FamilyOf(c.op)) {
    case OpFamily::kString:
      if (v.is_string()) return StringMatches(c, v.get_ref<const std::string&>(), vars);
      if (v.is_number() || v.is_boolean()) return StringMatches(c, v.dump(), vars);
      return false;
    case OpFamily::kNumeric: {
      std::optional<double> x;
      if (v.is_number()) x = v.get<double>();
      if (v.is_string()) x = ParseNumber(v.get_ref<const std::string&>());
      return x && NumberMatches(c, *x);
    }
    case OpFamily::kBool: {
      std::optional<bool> b;
      if (v.is_boolean()) b = v.get<bool>();
      if (v == "true" || v == "false") b = v == "true";
      return b && std::find(c.booleans.begin(), c.booleans.end(), *b) != c.booleans.end();
    }
    case OpFamily::kDate: {
      std::optional<int64_t> t;
      if (v.is_string()) t = ParseRfc3339(v.get_ref<const std::string&>());
      return t && DateMatches(c, *t);
    }
  }
  return false;
}

bool ConditionHolds(const Condition& c, const Request& req, const PatternVariables& vars) {
  Resolved r = Resolve(c.key, req);
  bool matched = false;
  switch (r.kind) {
    case Resolved::Kind::kMissing:
      return c.if_exists;
    case Resolved::Kind::kString:
      matched = StringMatches(c, r.string, vars);
      break;
    case Resolved::Kind::kList:
      matched = std::any_of(r.list->begin(), r.list->end(),
                            [&](const std::string& s) { return StringMatches(c, s, vars); });
      break;
    case Resolved::Kind::kJson:
      if (r.json->is_array()) {
        matched = std::any_of(r.json->begin(), r.json->end(),
                              [&](const Json& e) { return JsonMatches(c, e, vars); });
      } else {
        matched = JsonMatches(c, *r.json, vars);
      }
      break;
    case Resolved::Kind::kTime:
      matched = DateMatches(c, r.time);
      break;
  }
  return IsNegated(c.op) ? !matched : matched;
}

}  // namespace

// ---- Pattern ----------------------------------------------------------------------------

Result<Pattern> Pattern::Compile(std::string_view text, bool allow_variables) {
  Pattern p;
  p.text_ = std::string(text);
  auto add_literal = [&p](std::string_view s) {
    if (!p.tokens_.empty() && p.tokens_.back().kind == Token::Kind::kLiteral) {
      p.tokens_.back().size += static_cast<uint32_t>(s.size());
    } else {
      p.tokens_.push_back({Token::Kind::kLiteral, static_cast<uint32_t>(p.literals_.size()),
                           static_cast<uint32_t>(s.size())});
    }
    p.literals_ += s;
    p.min_length_ += s.size();
  };
  size_t i = 0;
  while (i < text.size()) {
    char c = text[i];
    if (c == '*') {
      // "**" means what "*" means; one token keeps backtracking simple.
      if (p.tokens_.empty() || p.tokens_.back().kind != Token::Kind::kStar) {
        p.tokens_.push_back({Token::Kind::kStar});
      }
      p.has_star_ = true;
      ++i;
    } else if (c == '?') {
      p.tokens_.push_back({Token::Kind::kOne});
      ++p.min_length_;
      ++i;
    } else if (c == '$' && i + 1 < text.size() && text[i + 1] == '{') {
      size_t close = text.find('}', i + 2);
      if (close == std::string_view::npos) {
        return InvalidArgument(fmt::format("'${{' without a closing '}}' in '{}'", text));
      }
      std::string_view name = text.substr(i + 2, close - i - 2);
      if (name == "*" || name == "?" || name == "$") {
        add_literal(name);
      } else if (name == "principal.id" || name == "principal.tenant") {
        if (!allow_variables) {
          return InvalidArgument(fmt::format("policy variables are not allowed here ('{}')", text));
        }
        p.tokens_.push_back(
            {name == "principal.id" ? Token::Kind::kPrincipalId : Token::Kind::kPrincipalTenant});
        p.has_variables_ = true;
      } else {
        return InvalidArgument(
            fmt::format("unknown policy variable '${{{}}}' (known: ${{principal.id}}, "
                        "${{principal.tenant}}, and ${{*}}, ${{?}}, ${{$}} for those characters)",
                        name));
      }
      i = close + 1;
    } else {
      size_t end = i + 1;
      while (end < text.size() && text[end] != '*' && text[end] != '?' && text[end] != '$') {
        ++end;
      }
      add_literal(text.substr(i, end - i));
      i = end;
    }
  }
  return p;
}

std::string_view Pattern::TokenText(const Token& t, const PatternVariables& vars) const {
  switch (t.kind) {
    case Token::Kind::kLiteral:
      return std::string_view(literals_).substr(t.offset, t.size);
    case Token::Kind::kPrincipalId:
      return vars.principal_id;
    case Token::Kind::kPrincipalTenant:
      return vars.principal_tenant;
    default:
      return {};
  }
}

Pattern::Anchor Pattern::anchor() const {
  Anchor a;
  size_t i = 0;
  auto literal_at = [&](size_t k) {
    return k < tokens_.size() && tokens_[k].kind == Token::Kind::kLiteral;
  };
  if (literal_at(i)) a.key = TokenText(tokens_[i++], {});
  if (i >= tokens_.size()) return a;
  Token::Kind kind = tokens_[i].kind;
  std::string_view next = literal_at(i + 1) ? TokenText(tokens_[i + 1], {}) : std::string_view();
  if (kind == Token::Kind::kPrincipalId || kind == Token::Kind::kPrincipalTenant) {
    a.gap = kind == Token::Kind::kPrincipalId ? Gap::kPrincipalId : Gap::kPrincipalTenant;
  } else if (kind == Token::Kind::kStar && next.starts_with(':')) {
    a.gap = Gap::kAnyToColon;
  } else {
    return a;
  }
  a.lead = a.key;
  a.key = next;
  return a;
}

bool Pattern::Matches(std::string_view text, const PatternVariables& vars) const {
  if (text.size() < min_length_) return false;
  if (!has_star_ && !has_variables_ && text.size() != min_length_) return false;
  const size_t n = tokens_.size();
  if (has_star_ && n > 0 && tokens_[n - 1].kind == Token::Kind::kLiteral &&
      !text.ends_with(TokenText(tokens_[n - 1], vars))) {
    return false;
  }
  // Greedy left to right; on a mismatch only the last `*` seen takes one more character.
  // Earlier stars never need to: whatever they could give up, the last one can absorb.
  constexpr size_t kNone = static_cast<size_t>(-1);
  size_t ti = 0, pos = 0;
  size_t star_ti = kNone, star_pos = 0;
  while (true) {
    if (ti < n) {
      const Token& t = tokens_[ti];
      if (t.kind == Token::Kind::kStar) {
        if (ti + 1 == n) return true;  // a trailing `*` takes the rest
        star_ti = ti;
        star_pos = pos;
        ++ti;
        continue;
      }
      if (t.kind == Token::Kind::kOne) {
        if (pos < text.size()) {
          ++pos;
          ++ti;
          continue;
        }
      } else {
        std::string_view lit = TokenText(t, vars);
        if (lit.empty()) return false;  // a variable the request has no value for
        if (text.substr(pos).starts_with(lit)) {
          pos += lit.size();
          ++ti;
          continue;
        }
      }
    } else if (pos == text.size()) {
      return true;
    }
    if (star_ti == kNone || star_pos >= text.size()) return false;
    ++star_pos;
    // When a literal follows the star, only the places where it occurs are worth trying.
    const Token& next = tokens_[star_ti + 1];
    if (next.kind != Token::Kind::kStar && next.kind != Token::Kind::kOne) {
      std::string_view lit = TokenText(next, vars);
      if (lit.empty()) return false;
      size_t found = text.find(lit, star_pos);
      if (found == std::string_view::npos) return false;
      star_pos = found;
    }
    pos = star_pos;
    ti = star_ti + 1;
  }
}

// ---- names ------------------------------------------------------------------------------

std::string_view EffectName(Effect e) { return e == Effect::kAllow ? "allow" : "deny"; }

std::string_view ConditionOpName(ConditionOp op) {
  return kConditionOpNames[static_cast<size_t>(op)];
}

std::string_view DecisionReasonName(DecisionReason r) {
  static constexpr std::string_view kNames[] = {"explicit_deny", "allow", "default_deny"};
  return kNames[static_cast<size_t>(r)];
}

std::string_view DeniedByName(DeniedBy d) {
  static constexpr std::string_view kNames[] = {"none", "agent", "principal", "both"};
  return kNames[static_cast<size_t>(d)];
}

// ---- the index --------------------------------------------------------------------------

namespace {

static_assert(kKnownActions.size() <= 64, "action masks are 64 bits");

struct IndexEntry {
  uint32_t statement;
  uint32_t resource;  // which of the statement's resource patterns
};

struct TransparentHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

// Entries filed under literal keys; a text reaches those whose key it starts with.
struct PrefixTable {
  std::unordered_map<std::string, std::vector<IndexEntry>, TransparentHash, std::equal_to<>> by_key;
  std::vector<size_t> key_lengths;  // distinct, ascending

  void Add(std::string_view key, IndexEntry e) {
    by_key[std::string(key)].push_back(e);
    auto at = std::lower_bound(key_lengths.begin(), key_lengths.end(), key.size());
    if (at == key_lengths.end() || *at != key.size()) key_lengths.insert(at, key.size());
  }

  template <typename F>
  void ForEachCandidate(std::string_view text, F&& f) const {
    for (size_t len : key_lengths) {
      if (len > text.size()) break;
      auto it = by_key.find(text.substr(0, len));
      if (it == by_key.end()) continue;
      for (const IndexEntry& e : it->second) f(e);
    }
  }
};

// Patterns that start with `lead` and then the same gap: filed by what follows the gap.
struct GapGroup {
  std::string lead;
  Pattern::Gap gap;
  PrefixTable table;
};

// The statements of one effect.
struct IndexSide {
  PrefixTable plain;
  std::vector<GapGroup> groups;

  void Add(const Pattern& p, IndexEntry e) {
    Pattern::Anchor a = p.anchor();
    if (a.gap == Pattern::Gap::kNone) return plain.Add(a.key, e);
    auto g = std::find_if(groups.begin(), groups.end(),
                          [&](const GapGroup& g) { return g.lead == a.lead && g.gap == a.gap; });
    if (g == groups.end()) {
      groups.push_back({std::string(a.lead), a.gap, {}});
      g = groups.end() - 1;
    }
    g->table.Add(a.key, e);
  }

  // Calls f for every entry whose pattern `resource` may match (and some it will not).
  template <typename F>
  void ForEachCandidate(std::string_view resource, const PatternVariables& vars, F&& f) const {
    plain.ForEachCandidate(resource, f);
    for (const GapGroup& g : groups) {
      if (!resource.starts_with(g.lead)) continue;
      std::string_view rest = resource.substr(g.lead.size());
      if (g.gap == Pattern::Gap::kAnyToColon) {
        // The `*` may end before any ':' (it may span some: "a:b" is a tenant it matches).
        for (size_t colon = rest.find(':'); colon != std::string_view::npos;
             colon = rest.find(':', colon + 1)) {
          g.table.ForEachCandidate(rest.substr(colon), f);
        }
        continue;
      }
      std::string_view value =
          g.gap == Pattern::Gap::kPrincipalId ? vars.principal_id : vars.principal_tenant;
      if (value.empty() || !rest.starts_with(value)) continue;
      g.table.ForEachCandidate(rest.substr(value.size()), f);
    }
  }
};

}  // namespace

struct Policy::Index {
  IndexSide deny;
  IndexSide allow;
  std::vector<uint64_t> action_masks;  // per statement: bit a for kKnownActions[a]
  bool has_approval = false;           // some statement says `approval: required`
};

// ---- ParsePolicy, Decide ----------------------------------------------------------------

Result<Policy> ParsePolicy(std::string_view json_text) {
  if (json_text.size() > kMaxPolicyBytes) {
    return InvalidArgument(fmt::format("policy document is {} bytes, more than the limit of {}",
                                       json_text.size(), kMaxPolicyBytes));
  }
  ASSIGN_OR_RETURN(Json doc, ParseJson(json_text, "policy document"));
  RETURN_IF_ERROR(CheckNoDuplicateKeys(json_text));
  if (!doc.is_object()) return InvalidArgument("policy document must be a JSON object");
  FieldReader r(doc, "");
  const Json *version, *statements;
  RETURN_IF_ERROR(r.Value("version", &version, false));
  RETURN_IF_ERROR(r.Value("statements", &statements, false));
  RETURN_IF_ERROR(r.NoUnknownKeys());
  if (version == nullptr) return InvalidArgument("'version' is required");
  if (*version != kPolicyVersion) {
    return FieldError("version", fmt::format("unknown version {} (this agentd reads \"{}\")",
                                             DumpJson(*version).substr(0, 80), kPolicyVersion));
  }
  if (statements == nullptr) return InvalidArgument("'statements' is required");
  if (!statements->is_array()) return FieldError("statements", "must be an array");
  if (statements->size() > kMaxStatements) {
    return FieldError("statements", fmt::format("has {} statements, more than the limit of {}",
                                                statements->size(), kMaxStatements));
  }
  Policy policy;
  policy.statements_.resize(statements->size());
  for (size_t i = 0; i < statements->size(); ++i) {
    RETURN_IF_ERROR(
        ParseStatement((*statements)[i], fmt::format("statements[{}]", i), &policy.statements_[i]));
  }
  auto index = std::make_shared<Policy::Index>();
  for (size_t i = 0; i < policy.statements_.size(); ++i) {
    const Statement& st = policy.statements_[i];
    uint64_t mask = 0;
    for (size_t a = 0; a < kKnownActions.size(); ++a) {
      bool named = std::any_of(st.actions.begin(), st.actions.end(),
                               [&](const Pattern& p) { return p.Matches(kKnownActions[a]); });
      if (named) mask |= uint64_t{1} << a;
    }
    index->action_masks.push_back(mask);
    index->has_approval = index->has_approval || st.requires_approval;
    IndexSide& side = st.effect == Effect::kDeny ? index->deny : index->allow;
    for (size_t r = 0; r < st.resources.size(); ++r) {
      side.Add(st.resources[r], {static_cast<uint32_t>(i), static_cast<uint32_t>(r)});
    }
  }
  policy.index_ = std::move(index);
  return policy;
}

Decision Decide(const std::vector<const Policy*>& policies, const Request& req) {
  Decision d;
  int action = ActionIndex(req.action);
  if (action < 0) return d;
  const uint64_t action_bit = uint64_t{1} << action;
  const PatternVariables vars{req.principal.id, req.principal.tenant};
  // The first statement of `side` that applies, in statement order, or -1. Candidates come
  // in index order, not statement order: keep the lowest that applies.
  auto first_applying = [&](const Policy& policy, const IndexSide& side) {
    int64_t best = -1;
    side.ForEachCandidate(req.resource, vars, [&](const IndexEntry& e) {
      if (best >= 0 && e.statement >= best) return;
      if ((policy.index_->action_masks[e.statement] & action_bit) == 0) return;
      const Statement& st = policy.statements_[e.statement];
      if (!st.resources[e.resource].Matches(req.resource, vars)) return;
      for (const Condition& c : st.conditions) {
        if (!ConditionHolds(c, req, vars)) return;
      }
      best = e.statement;
    });
    return best;
  };
  auto decide = [&](bool deny, Effect effect, DecisionReason reason) {
    for (size_t p = 0; p < policies.size(); ++p) {
      const Policy* policy = policies[p];
      if (policy == nullptr || policy->index_ == nullptr) continue;
      int64_t s = first_applying(*policy, deny ? policy->index_->deny : policy->index_->allow);
      if (s < 0) continue;
      d.effect = effect;
      d.reason = reason;
      d.policy_index = static_cast<int>(p);
      d.statement_index = static_cast<int>(s);
      d.sid = policy->statements_[s].sid;
      return true;
    }
    return false;
  };
  if (decide(true, Effect::kDeny, DecisionReason::kExplicitDeny)) return d;
  if (!decide(false, Effect::kAllow, DecisionReason::kAllow)) return d;
  // Allowed: on approval when any applying allow statement, not only the first, asks for it.
  for (const Policy* policy : policies) {
    if (policy == nullptr || policy->index_ == nullptr || !policy->index_->has_approval) continue;
    policy->index_->allow.ForEachCandidate(req.resource, vars, [&](const IndexEntry& e) {
      if (d.requires_approval) return;
      const Statement& st = policy->statements_[e.statement];
      if (!st.requires_approval) return;
      if ((policy->index_->action_masks[e.statement] & action_bit) == 0) return;
      if (!st.resources[e.resource].Matches(req.resource, vars)) return;
      for (const Condition& c : st.conditions) {
        if (!ConditionHolds(c, req, vars)) return;
      }
      d.requires_approval = true;
    });
  }
  return d;
}

IntersectionDecision DecideIntersection(const std::vector<const Policy*>& agent_policies,
                                        const std::vector<const Policy*>& principal_policies,
                                        const Request& req) {
  IntersectionDecision out;
  out.agent = Decide(agent_policies, req);
  out.principal = Decide(principal_policies, req);
  bool agent = out.agent.allowed(), principal = out.principal.allowed();
  out.effect = agent && principal ? Effect::kAllow : Effect::kDeny;
  out.requires_approval =
      out.allowed() && (out.agent.requires_approval || out.principal.requires_approval);
  out.denied_by = agent && principal     ? DeniedBy::kNone
                  : !agent && !principal ? DeniedBy::kBoth
                  : !agent               ? DeniedBy::kAgent
                                         : DeniedBy::kPrincipal;
  return out;
}

}  // namespace agentd::identity
