#include "identity/grant.h"

#include <fmt/format.h>

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <utility>

namespace agentd::identity {
namespace {

// One unit of a pattern once variables are substituted: a character, `*` or `?`.
struct Tok {
  enum class Kind : uint8_t { kChar, kStar, kOne };
  Kind kind;
  char c = 0;
};
using Toks = std::vector<Tok>;
using TokSpan = std::span<const Tok>;

// What a variable without a value stands for.
enum class Unknown : uint8_t {
  kNothing,   // the pattern matches nothing (Pattern::Matches)
  kAnything,  // a value not known yet: read as `*`
};

// The tokens of a pattern text, read as Pattern::Compile reads it. nullopt when the pattern
// matches nothing (a variable without a value, under Unknown::kNothing) or, which a compiled
// pattern's text never is, when a `${...}` is unknown or unclosed.
std::optional<Toks> Tokenize(std::string_view text, const PatternVariables& vars, Unknown unknown) {
  Toks out;
  out.reserve(text.size());
  auto add_text = [&out](std::string_view s) {
    for (char c : s) out.push_back({Tok::Kind::kChar, c});
  };
  size_t i = 0;
  while (i < text.size()) {
    char c = text[i];
    if (c == '*') {
      out.push_back({Tok::Kind::kStar});
      ++i;
    } else if (c == '?') {
      out.push_back({Tok::Kind::kOne});
      ++i;
    } else if (c == '$' && i + 1 < text.size() && text[i + 1] == '{') {
      size_t close = text.find('}', i + 2);
      if (close == std::string_view::npos) return std::nullopt;
      std::string_view name = text.substr(i + 2, close - i - 2);
      if (name == "*" || name == "?" || name == "$") {
        add_text(name);
      } else if (name == "principal.id" || name == "principal.tenant") {
        std::string_view value = name == "principal.id" ? vars.principal_id : vars.principal_tenant;
        if (!value.empty()) {
          add_text(value);
        } else if (unknown == Unknown::kAnything) {
          out.push_back({Tok::Kind::kStar});
        } else {
          return std::nullopt;
        }
      } else {
        return std::nullopt;
      }
      i = close + 1;
    } else {
      out.push_back({Tok::Kind::kChar, c});
      ++i;
    }
  }
  return out;
}

bool IsChar(TokSpan t, size_t i) { return i < t.size() && t[i].kind == Tok::Kind::kChar; }

// Table cells and states: some tenths of a second on a 2-core VM. 1,000 granted statements
// against 1,000 of the holder's, with ordinary patterns, use a few percent of it.
constexpr uint64_t kWorkBudget = 30'000'000;

// How much comparing CheckGrantHeld may still do, in table cells and states visited. A
// granted document is at most kMaxPolicyBytes, but its patterns against the holder's could
// still cost seconds; past the budget the comparisons answer conservatively and the check
// refuses. Null: unlimited (one pair of patterns costs O(|a| * |b|) at most).
struct Work {
  uint64_t left = 0;
  bool exhausted = false;
  // False, and from then on exhausted, when `units` more are more than are left.
  static bool Charge(Work* w, uint64_t units) {
    if (w == nullptr) return true;
    if (w->exhausted || units > w->left) {
      w->exhausted = true;
      w->left = 0;
      return false;
    }
    w->left -= units;
    return true;
  }
};

// The alignment of the header's PatternCovers. covered[i][j]: outer[i..] covers inner[j..],
// kept as two rows. Answers false when `work` runs out.
bool CoversTokens(TokSpan outer, TokSpan inner, Work* work) {
  const size_t n = outer.size(), m = inner.size();
  // An outer literal matches only the same inner literal, so the literal start and end of
  // `outer` must be those of `inner`: most pairs of unrelated patterns stop here.
  for (size_t k = 0; IsChar(outer, k); ++k) {
    if (!IsChar(inner, k) || inner[k].c != outer[k].c) return false;
  }
  for (size_t k = 1; k <= n && outer[n - k].kind == Tok::Kind::kChar; ++k) {
    if (k > m || inner[m - k].kind != Tok::Kind::kChar || inner[m - k].c != outer[n - k].c) {
      return false;
    }
  }
  if (!Work::Charge(work, (n + 1) * (m + 1))) return false;
  std::vector<char> next(m + 1, 0), cur(m + 1, 0);
  next[m] = 1;  // an empty outer covers only an empty inner
  for (size_t i = n; i-- > 0;) {
    const Tok& o = outer[i];
    for (size_t j = m + 1; j-- > 0;) {
      bool v = false;
      switch (o.kind) {
        case Tok::Kind::kStar:
          // Matches nothing here, or takes inner[j] and stays.
          v = next[j] || (j < m && cur[j + 1]);
          break;
        case Tok::Kind::kChar:
          v = j < m && inner[j].kind == Tok::Kind::kChar && inner[j].c == o.c && next[j + 1];
          break;
        case Tok::Kind::kOne:
          // One character: an inner literal or `?`, never an inner `*`.
          v = j < m && inner[j].kind != Tok::Kind::kStar && next[j + 1];
          break;
      }
      cur[j] = v;
    }
    std::swap(next, cur);
  }
  return next[0] != 0;
}

// Where `t` writes out a ':' (the first three), and how many it does (up to three).
struct Colons {
  std::array<size_t, 3> at{};
  size_t count = 0;
};
Colons ColonsOf(TokSpan t) {
  Colons out;
  for (size_t i = 0; i < t.size() && out.count < 3; ++i) {
    if (t[i].kind == Tok::Kind::kChar && t[i].c == ':') out.at[out.count++] = i;
  }
  return out;
}

// False when no text can match both because their literal starts or ends differ.
bool EndsAgree(TokSpan a, TokSpan b) {
  const size_t n = a.size(), m = b.size();
  for (size_t k = 0; IsChar(a, k) && IsChar(b, k); ++k) {
    if (a[k].c != b[k].c) return false;
  }
  for (size_t k = 1;
       k <= n && k <= m && a[n - k].kind == Tok::Kind::kChar && b[m - k].kind == Tok::Kind::kChar;
       ++k) {
    if (a[n - k].c != b[m - k].c) return false;
  }
  return true;
}

// Whether some text (with exactly two ':' among resource names) matches both: a walk of
// the two patterns' automata in step, from the start, visiting each state (a position in
// each and the ':' written so far) once. Unrelated patterns conflict on a literal within a
// few steps, so the walk seldom visits more than a line of states. Exact: when both sides
// loop on a `*` for the same character, the text without it matches both too, so only a ':'
// (which counts) is worth taking that way. Answers true when `work` runs out.
bool OverlapTokens(TokSpan a, TokSpan b, OverlapAmong among, Work* work) {
  const size_t n = a.size(), m = b.size();
  if (!EndsAgree(a, b)) return false;
  const bool counted = among == OverlapAmong::kResourceNames;
  if (counted) {
    // A resource name has two ':'. When each pattern writes out two, those are the name's,
    // so no `*` or `?` can stand for one, and the patterns overlap just when their three
    // parts between the ':' do (among texts without ':', which for parts without a ':' is
    // among all texts). Unrelated parts, such as "session/*" and "secret/prod-*", then
    // differ at once in their literal start or end.
    const Colons ac = ColonsOf(a), bc = ColonsOf(b);
    if (ac.count > 2 || bc.count > 2) return false;
    if (ac.count == 2 && bc.count == 2) {
      std::array<std::pair<TokSpan, TokSpan>, 3> parts = {{
          {a.first(ac.at[0]), b.first(bc.at[0])},
          {a.subspan(ac.at[0] + 1, ac.at[1] - ac.at[0] - 1),
           b.subspan(bc.at[0] + 1, bc.at[1] - bc.at[0] - 1)},
          {a.subspan(ac.at[1] + 1), b.subspan(bc.at[1] + 1)},
      }};
      for (const auto& [x, y] : parts) {
        if (!EndsAgree(x, y)) return false;
      }
      for (const auto& [x, y] : parts) {
        if (!OverlapTokens(x, y, OverlapAmong::kAllTexts, work)) return false;
      }
      return true;
    }
  }
  const size_t want = counted ? 2 : 0, w = want + 1;
  const size_t states = (n + 1) * (m + 1) * w;
  if (!Work::Charge(work, states / 64 + 1)) return true;
  std::vector<uint64_t> seen(states / 64 + 1, 0);
  std::vector<size_t> stack;
  auto push = [&](size_t i, size_t j, size_t c) {
    size_t k = (i * (m + 1) + j) * w + c;
    if (seen[k / 64] & (uint64_t{1} << (k % 64))) return;
    seen[k / 64] |= uint64_t{1} << (k % 64);
    stack.push_back(k);
  };
  push(0, 0, 0);
  while (!stack.empty()) {
    if (!Work::Charge(work, 1)) return true;
    size_t k = stack.back();
    stack.pop_back();
    const size_t c = k % w, j = (k / w) % (m + 1), i = k / w / (m + 1);
    if (i == n && j == m && c == want) return true;
    // Writes one character that `x` (a literal or `?`, and `y` too if given) matches, and
    // goes on to (i2, j2): a literal decides the count; `?` may write ':' or not.
    auto write = [&](const Tok& x, const Tok* y, size_t i2, size_t j2) {
      const Tok* lit = x.kind == Tok::Kind::kChar ? &x : y;
      if (lit != nullptr && lit->kind == Tok::Kind::kChar) {
        size_t c2 = c + (counted && lit->c == ':' ? 1 : 0);
        if (c2 <= want) push(i2, j2, c2);
        return;
      }
      push(i2, j2, c);
      if (counted && c < want) push(i2, j2, c + 1);
    };
    const bool a_star = i < n && a[i].kind == Tok::Kind::kStar;
    const bool b_star = j < m && b[j].kind == Tok::Kind::kStar;
    if (a_star) {
      push(i + 1, j, c);  // a's `*` matches nothing more
      if (j < m && !b_star) write(b[j], nullptr, i, j + 1);
    }
    if (b_star) {
      push(i, j + 1, c);
      if (i < n && !a_star) write(a[i], nullptr, i + 1, j);
    }
    if (a_star && b_star && counted && c < want) push(i, j, c + 1);
    if (i < n && j < m && !a_star && !b_star &&
        (a[i].kind == Tok::Kind::kOne || b[j].kind == Tok::Kind::kOne || a[i].c == b[j].c)) {
      write(a[i], &b[j], i + 1, j + 1);
    }
  }
  return false;
}

// ---- conditions -------------------------------------------------------------------------

bool SameCondition(const Condition& x, const Condition& y) {
  if (x.op != y.op || x.if_exists != y.if_exists || x.key.text != y.key.text ||
      x.strings != y.strings || x.numbers != y.numbers || x.booleans != y.booleans ||
      x.dates != y.dates || x.patterns.size() != y.patterns.size()) {
    return false;
  }
  for (size_t i = 0; i < x.patterns.size(); ++i) {
    if (x.patterns[i].text() != y.patterns[i].text()) return false;
  }
  return true;
}

// A condition that reads the principal holds or fails for the holder and for the target's
// members independently: equal texts say nothing about when both hold.
bool ReadsPrincipal(const Condition& c) {
  using K = ConditionKey::Kind;
  switch (c.key.kind) {
    case K::kPrincipalId:
    case K::kPrincipalTenant:
    case K::kPrincipalKind:
    case K::kPrincipalGroups:
    case K::kPrincipalAttribute:
      return true;
    default:
      break;
  }
  for (const Pattern& p : c.patterns) {
    if (p.has_variables()) return true;
  }
  return false;
}

// Whether all of `weaker` hold wherever all of `stronger` do, as far as texts can show: each
// of `weaker` is one of `stronger` and, the two being evaluated for different principals,
// reads nothing of the principal. The other keys (session, agent, tool, time) are those of
// the request, the same whoever makes it.
bool ImpliedBy(const std::vector<Condition>& weaker, const std::vector<Condition>& stronger) {
  for (const Condition& w : weaker) {
    if (ReadsPrincipal(w)) return false;
    bool found = false;
    for (const Condition& s : stronger) {
      if (SameCondition(w, s)) {
        found = true;
        break;
      }
    }
    if (!found) return false;
  }
  return true;
}

// ---- the clamp --------------------------------------------------------------------------

// `s` as pattern text that matches exactly `s`.
std::string Escaped(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (c == '*') {
      out += "${*}";
    } else if (c == '?') {
      out += "${?}";
    } else if (c == '$') {
      out += "${$}";
    } else {
      out += c;
    }
  }
  return out;
}

// What the resource pattern `text` reaches within `tenant` (see the header, step 1), as a
// pattern text; nullopt when nothing. `tenant_variable_is_target`: ${principal.tenant} will be
// `tenant` (a granted pattern), not some other principal's tenant (a holder's).
std::optional<std::string> ClampText(std::string_view text, std::string_view tenant,
                                     bool tenant_variable_is_target) {
  constexpr std::string_view kScheme = "agentd:";
  if (text == "*") return fmt::format("agentd:{}:*", Escaped(tenant));
  if (!text.starts_with(kScheme)) return std::string(text);
  std::string_view rest = text.substr(kScheme.size());
  size_t colon = rest.find(':');
  if (colon == std::string_view::npos) return std::string(text);
  std::string_view segment = rest.substr(0, colon);
  std::string_view after = rest.substr(colon + 1);
  if (segment == "*" || (tenant_variable_is_target && segment == "${principal.tenant}")) {
    return fmt::format("agentd:{}:{}", Escaped(tenant), after);
  }
  if (segment.find_first_of("*?$") == std::string_view::npos && segment != tenant) {
    return std::nullopt;  // names another tenant, which the wall keeps out
  }
  return std::string(text);
}

// ---- the check --------------------------------------------------------------------------

static_assert(kKnownActions.size() <= 64, "action masks are 64 bits");

// A holder statement's resource pattern, tokenized the ways the check reads it.
struct HolderResource {
  std::optional<Toks> as_outer;  // nullopt: covers nothing
  Toks as_overlap;               // unknown variables read as `*`
  // Deny statements: the part a granted deny must cover (under the clamp, its part within
  // the target's tenant; nullopt when none), and the actions for which one does.
  std::optional<Toks> to_cover;
  uint64_t cut = 0;
};

struct HolderStatement {
  const Statement* st;
  uint64_t actions;
  std::vector<HolderResource> resources;
};

// The holder's statements as the check reads them.
struct Holdings {
  std::vector<HolderStatement> allows, denies;
};

// Bits of kKnownActions: what a statement's action patterns match.
uint64_t ActionMask(const std::vector<Pattern>& actions) {
  uint64_t mask = 0;
  for (size_t a = 0; a < kKnownActions.size(); ++a) {
    for (const Pattern& p : actions) {
      if (p.Matches(kKnownActions[a])) {
        mask |= uint64_t{1} << a;
        break;
      }
    }
  }
  return mask;
}

HolderStatement ReadHolderStatement(const Statement& st, const PatternVariables& holder_vars,
                                    const GrantTarget& target) {
  HolderStatement h{&st, ActionMask(st.actions), {}};
  for (const Pattern& p : st.resources) {
    HolderResource r;
    r.as_outer = Tokenize(p.text(), holder_vars, Unknown::kNothing);
    std::optional<Toks> overlap = Tokenize(p.text(), holder_vars, Unknown::kAnything);
    // A compiled pattern's text always tokenizes; were it not to, `*` is the reading that
    // refuses most.
    r.as_overlap = overlap ? std::move(*overlap) : Toks{{Tok::Kind::kStar}};
    if (st.effect == Effect::kDeny) {
      std::optional<std::string> part =
          target.clamped ? ClampText(p.text(), target.tenant, false) : p.text();
      if (part) {
        r.to_cover = Tokenize(*part, holder_vars, Unknown::kAnything);
        if (!r.to_cover) r.to_cover = Toks{{Tok::Kind::kStar}};
      }
    }
    h.resources.push_back(std::move(r));
  }
  return h;
}

// Fills in, for each resource of each holder deny statement, the actions for which some
// granted deny statement applies wherever it does and covers it (step 5 of the header).
// Granted denies are read with the target's variables.
void MarkCut(const std::vector<GrantedPolicy>& granted, const PatternVariables& target_vars,
             Holdings* h, Work* work) {
  for (const GrantedPolicy& doc : granted) {
    if (doc.policy == nullptr) continue;
    for (const Statement& g : doc.policy->statements()) {
      if (g.effect != Effect::kDeny) continue;
      const uint64_t actions = ActionMask(g.actions);
      std::vector<std::optional<Toks>> outers;
      for (const Pattern& p : g.resources) {
        outers.push_back(Tokenize(p.text(), target_vars, Unknown::kNothing));
      }
      for (HolderStatement& d : h->denies) {
        if ((d.actions & actions) == 0 || !ImpliedBy(g.conditions, d.st->conditions)) continue;
        for (HolderResource& r : d.resources) {
          if (!r.to_cover || (actions & ~r.cut) == 0) continue;
          for (const std::optional<Toks>& o : outers) {
            if (o && CoversTokens(*o, *r.to_cover, work)) {
              r.cut |= actions;
              break;
            }
          }
        }
      }
    }
  }
}

// For one granted allow statement `st` (actions `mask`) and one of its resources (`inner`,
// as checked): the actions for which it exceeds the holder, by the step that fails first.
struct Excess {
  uint64_t uncovered = 0;  // step 3
  uint64_t approval = 0;   // step 4
  uint64_t denied = 0;     // step 5
};

Excess ExcessOf(const Holdings& h, const Statement& st, uint64_t mask, const Toks& inner,
                Work* work) {
  uint64_t covered = 0;
  for (const HolderStatement& allow : h.allows) {
    if ((allow.actions & mask & ~covered) == 0) continue;
    if (allow.st->requires_approval && !st.requires_approval) continue;
    if (!ImpliedBy(allow.st->conditions, st.conditions)) continue;
    for (const HolderResource& r : allow.resources) {
      if (r.as_outer && CoversTokens(*r.as_outer, inner, work)) {
        covered |= allow.actions;
        break;
      }
    }
  }
  Excess e;
  e.uncovered = mask & ~covered;
  if (!st.requires_approval) {
    for (const HolderStatement& allow : h.allows) {
      if (!allow.st->requires_approval || (allow.actions & mask & ~e.approval) == 0) continue;
      for (const HolderResource& r : allow.resources) {
        if (OverlapTokens(r.as_overlap, inner, OverlapAmong::kResourceNames, work)) {
          e.approval |= allow.actions & mask;
          break;
        }
      }
    }
  }
  for (const HolderStatement& deny : h.denies) {
    for (const HolderResource& r : deny.resources) {
      uint64_t open = deny.actions & mask & ~r.cut & ~e.denied;
      if (open != 0 && r.to_cover &&
          OverlapTokens(r.as_overlap, inner, OverlapAmong::kResourceNames, work)) {
        e.denied |= open;
      }
    }
  }
  return e;
}

std::string StatementName(const GrantedPolicy& doc, size_t index, const Statement& st) {
  std::string out = fmt::format("'{}' statements[{}]", doc.name, index);
  if (!st.sid.empty()) out += fmt::format(" (sid '{}')", st.sid);
  return out;
}

// Step 1 and 2 of the header, for each resource of `st`: the text checked (nullopt: the
// clamp leaves it nothing) and the actions for which it exceeds the holder.
struct CheckedResource {
  std::optional<std::string> text;
  Excess excess;
};

}  // namespace

bool PatternCovers(const Pattern& outer, const PatternVariables& outer_vars, const Pattern& inner,
                   const PatternVariables& inner_vars) {
  std::optional<Toks> o = Tokenize(outer.text(), outer_vars, Unknown::kNothing);
  std::optional<Toks> i = Tokenize(inner.text(), inner_vars, Unknown::kAnything);
  return o && i && CoversTokens(*o, *i, nullptr);
}

bool PatternsMayOverlap(const Pattern& a, const PatternVariables& a_vars, const Pattern& b,
                        const PatternVariables& b_vars, OverlapAmong among) {
  std::optional<Toks> ta = Tokenize(a.text(), a_vars, Unknown::kAnything);
  std::optional<Toks> tb = Tokenize(b.text(), b_vars, Unknown::kAnything);
  return !ta || !tb || OverlapTokens(*ta, *tb, among, nullptr);
}

Status CheckGrantHeld(const std::vector<const Policy*>& holder, const PatternVariables& holder_vars,
                      const std::vector<GrantedPolicy>& granted, const GrantTarget& target) {
  if (target.clamped && target.tenant.empty()) {
    return InvalidArgument("a grant clamped to a tenant must name the tenant");
  }
  const PatternVariables target_vars{target.principal_id, target.tenant};
  Holdings h;
  for (const Policy* policy : holder) {
    if (policy == nullptr) continue;
    for (const Statement& st : policy->statements()) {
      (st.effect == Effect::kAllow ? h.allows : h.denies)
          .push_back(ReadHolderStatement(st, holder_vars, target));
    }
  }
  Work work{kWorkBudget};
  MarkCut(granted, target_vars, &h, &work);

  // Each resource is compared once for all the statement's actions; the error then names
  // the first failing action, in kKnownActions order, and for it the first resource.
  std::vector<CheckedResource> checked;
  for (const GrantedPolicy& doc : granted) {
    if (doc.policy == nullptr) continue;
    const std::vector<Statement>& statements = doc.policy->statements();
    for (size_t s = 0; s < statements.size(); ++s) {
      const Statement& st = statements[s];
      if (st.effect != Effect::kAllow) continue;  // a deny only narrows
      const uint64_t mask = ActionMask(st.actions);
      checked.clear();
      uint64_t failing = 0;
      for (const Pattern& resource : st.resources) {
        CheckedResource c;
        c.text = target.clamped ? ClampText(resource.text(), target.tenant, true)
                                : std::optional<std::string>(resource.text());
        if (c.text) {
          std::optional<Toks> inner = Tokenize(*c.text, target_vars, Unknown::kAnything);
          if (inner) {
            c.excess = ExcessOf(h, st, mask, *inner, &work);
          } else {
            c.excess.uncovered = mask;
          }
        }
        if (work.exhausted) {
          return ResourceExhausted(
              "the policies granted are too large to compare with the caller's: grant fewer "
              "or shorter patterns");
        }
        failing |= c.excess.uncovered | c.excess.approval | c.excess.denied;
        checked.push_back(std::move(c));
      }
      if (failing == 0) continue;
      for (size_t a = 0; a < kKnownActions.size(); ++a) {
        const uint64_t action = uint64_t{1} << a;
        if ((failing & action) == 0) continue;
        for (const CheckedResource& c : checked) {
          std::string_view why;
          if ((c.excess.uncovered & action) != 0) {
            why = ", which the caller may not do";
          } else if ((c.excess.approval & action) != 0) {
            why = " without approval, which the caller may do only once approved";
          } else if ((c.excess.denied & action) != 0) {
            why = ", which the caller may not do: its policies deny some of it";
          } else {
            continue;
          }
          return PermissionDenied(fmt::format("{} allows {} on '{}'{}", StatementName(doc, s, st),
                                              kKnownActions[a], *c.text, why));
        }
      }
    }
  }
  return Status::OK();
}

}  // namespace agentd::identity
