// JSON Schema checks for tool definitions: the subset of draft 2020-12 that function-calling
// APIs (OpenAI, Anthropic, MCP) use for a tool's `parameters`.
//
// Supported keywords: type, properties, required, additionalProperties, items, enum, const,
// minimum, maximum, exclusiveMinimum, exclusiveMaximum, minLength, maxLength, pattern,
// minItems, maxItems, uniqueItems, anyOf, oneOf, allOf, not, $defs / definitions and local
// $ref ("#", "#/$defs/name", any "#/json/pointer" into the same document), plus the
// annotations description, title, default, examples, format (not asserted), $comment,
// $schema and $id. Boolean schemas (true / false) are accepted below the root.
//
// Limits, so that a hostile definition cannot hurt the daemon: schema nesting depth
// kMaxSchemaDepth, kMaxSchemaNodes subschemas, patterns up to kMaxPatternBytes, no
// back-references in patterns (matching runs libstdc++'s polynomial-time executor, whose
// stack use does not grow with the subject), strings longer than kMaxPatternSubjectBytes
// are refused by `pattern`, and a $ref cycle that does not descend into the value
// ({"$ref": "#"} at the root, or through allOf/anyOf/oneOf/not) is rejected.
//
// Stateless functions; thread-safe (compiled patterns are cached behind a mutex).
#pragma once

#include <cstddef>
#include <string_view>

#include "common/json.h"
#include "common/status.h"

namespace agentd::tools {

inline constexpr int kMaxSchemaDepth = 32;
inline constexpr size_t kMaxSchemaNodes = 10000;
inline constexpr size_t kMaxPatternBytes = 512;
inline constexpr size_t kMaxPatternSubjectBytes = 2048;

// Checks a tool's `parameters` schema when an agent is created: the root must be an object
// schema ("type": "object"), every keyword must be supported and well-typed, patterns must
// compile, $refs must resolve. Fails with InvalidArgument naming the schema location,
// e.g. "parameters/properties/x: unsupported keyword 'foo'". `where` names the root.
Status CheckSchema(const Json& schema, std::string_view where = "parameters");

// Validates `value` against `schema`. Fails with InvalidArgument naming the JSON pointer of
// the first violation in the value, e.g. "/a: expected integer, got string",
// "/: missing required property 'city'", "/x: additional property not allowed".
// Never throws. A schema that CheckSchema would reject may still be passed: a malformed
// keyword fails with "invalid schema at <location>: ..." and unknown keywords are ignored.
Status ValidateAgainstSchema(const Json& schema, const Json& value);

}  // namespace agentd::tools
