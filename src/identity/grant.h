// The rule that no one grants more than it holds, in the manner of IAM permission
// boundaries: before policies are attached to a principal, a group or a role, the caller
// (the holder) must itself be able to do everything their allow statements would allow
// there. Otherwise a tenant administrator who may write policies could mint a principal, a
// group or a role stronger than itself.
//
// The check is static: it compares policy texts, not requests, so it cannot be exact. It is
// conservative: it answers OK only when it can show that every request the granted allow
// statements allow at the target, the holder's own policies allow as freely; when it cannot
// show that, it refuses. Refusals may therefore be spurious in exotic cases (an allow covered
// only by the union of several of the holder's patterns, conditions written differently
// but meaning the same); the caller can then grant a narrower document.
//
// The language itself is documented in docs/security.md ("Policy language").
//
// Pure functions of immutable values; thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/status.h"
#include "identity/policy.h"

namespace agentd::identity {

// Whether every text `inner` can match is matched by `outer`. Sound: true only when that
// holds; it may answer false where it holds too (`?*` does cover `*?`), since it looks for a
// token-by-token alignment: an outer literal matches the same inner literal, an outer `?` an
// inner literal or `?`, an outer `*` any run of inner tokens.
//
// Variables: a variable with a value is that literal text (a `*` in a value is a literal
// `*`, as in Pattern::Matches). In `outer` a variable without a value (empty) matches
// nothing, as in Pattern::Matches, so such an `outer` covers nothing. In `inner` one without
// a value stands for values not known yet (`${principal.id}` of a group, whose members
// vary) and is read as `*`: it is covered only by an outer `*`.
//
// O(|outer| * |inner|) time, after variables are substituted.
bool PatternCovers(const Pattern& outer, const PatternVariables& outer_vars, const Pattern& inner,
                   const PatternVariables& inner_vars);

// What texts PatternsMayOverlap looks for one among.
enum class OverlapAmong : uint8_t {
  kAllTexts,
  // Resource names, `agentd:<tenant>:<type>/<id>`: texts with exactly two ':' (no tenant,
  // type or id has one). Among all texts, `agentd:*:secret/prod-*` overlaps
  // `agentd:acme:session/*` ("agentd:acme:session/x:secret/prod-y"); among names, not.
  kResourceNames,
};

// Whether some text (of those `among` says) could match both. Sound the other way round:
// false only when none matches both. A variable without a value is read as `*` on either
// side; otherwise exact. O(|a| * |b|) time.
bool PatternsMayOverlap(const Pattern& a, const PatternVariables& a_vars, const Pattern& b,
                        const PatternVariables& b_vars,
                        OverlapAmong among = OverlapAmong::kAllTexts);

// Where granted policies will apply.
struct GrantTarget {
  std::string tenant;        // the tenant of the principal, group or role that gets them
  std::string principal_id;  // the principal they attach to; empty for a group or a role
  // The target tenant is not the operator's: whatever the policies say, the tenant wall
  // (tenant_wall.h) clamps their reach to `tenant`.
  bool clamped = false;
};

// One granted document and what to call it in an error ("policies[1]", "group/admins").
// `policy` may be null (an empty document).
struct GrantedPolicy {
  const Policy* policy = nullptr;
  std::string name;
};

// OK when `holder` (the caller's policies, null entries counting as empty, read with
// `holder_vars`) lets the caller do everything the allow statements of `granted` allow at
// `target`. Deny statements of `granted` are not checked: they only narrow. The holder's
// own tenant wall is not modelled: a caller outside the operator's tenant reaches no
// unclamped target, so the caller of this function need not pass one.
//
// Each granted allow statement S is checked for each known action `a` its actions match and
// each of its resource patterns r:
//  1. Clamp. With `target.clamped` (T = target.tenant), r is rewritten to what it reaches
//     within T: `*` -> `agentd:T:*`, `agentd:*:REST` and `agentd:${principal.tenant}:REST`
//     -> `agentd:T:REST`; `agentd:<a literal tenant other than T>:...` reaches nothing and is
//     skipped; any other shape is checked as written, which is wider than its reach. The
//     rewrite of `agentd:*:REST` assumes a resource name has no ':' but the two around its
//     tenant (tenant ids, types and ids have none), as the overlaps below do.
//  2. r is read with the target's variables: ${principal.tenant} = T, ${principal.id} =
//     target.principal_id, which for a group or a role is unknown and read as `*`.
//  3. Covered: some holder allow statement H matches `a` and has a resource pattern that
//     covers r (PatternCovers), and H applies wherever S does: each of H's conditions is
//     also one of S's (equal field by field) and reads nothing of the principal (no
//     `principal.*` key, no variable in a StringLike value), since the holder's principal
//     is not the target's. An unconditional H always applies. If H requires approval, S
//     must too.
//  4. As freely: when S needs no approval, no holder allow statement that requires approval
//     may match `a` on a resource pattern that may overlap r (PatternsMayOverlap among
//     resource names, as all overlaps here): Decide() asks for approval when any applying
//     allow statement does, so the holder would need it there. Their conditions are taken
//     to hold.
//  5. Not cut off: for each holder deny statement D matching `a`, each of D's resource
//     patterns d that may overlap r must be covered by a deny statement G of `granted` (any
//     document) that matches `a` and applies wherever D does (each of G's conditions is one
//     of D's and reads nothing of the principal; an unconditional G always does). G is read
//     with the target's variables; under the clamp d is first rewritten as in 1 (its own
//     ${principal.tenant} keeping the holder's value), since only its part within T
//     matters. D's conditions are taken to hold.
//
// Fails with PermissionDenied naming the first (document, statement, action, resource) that
// exceeds the holder, in document, statement, kKnownActions and resource order, the
// resource as checked (after the clamp), and which step failed:
//   "'group/admins' statements[0] (sid 'all') allows sessions:Delete on 'agentd:ten_x:*',
//    which the caller may not do"  (step 3; "..., which the caller may not do: its policies
//    deny some of it" for step 5; "... without approval, which the caller may do only once
//    approved" for step 4).
// With InvalidArgument when `target.clamped` and `target.tenant` is empty. With
// ResourceExhausted when the pattern comparisons exceed a fixed budget (some tenths of a
// second on a 2-core VM), which only patterns built to be costly to compare reach: the
// largest ordinary documents use a few percent of it.
//
// Cost: each granted resource pattern is compared once for all its statement's actions,
// with the holder's patterns of statements that share an action; literal starts and ends
// (of each part between ':', for overlaps) are compared first, and most comparisons end
// there.
Status CheckGrantHeld(const std::vector<const Policy*>& holder, const PatternVariables& holder_vars,
                      const std::vector<GrantedPolicy>& granted, const GrantTarget& target);

}  // namespace agentd::identity
