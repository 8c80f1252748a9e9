// Reads the documents given to `agentctl ... -f FILE` (agents are written in YAML or JSON)
// and converts them to the JSON the API takes.
//
// YAML scalars are resolved with the YAML 1.2 core schema, the one JSON users expect:
// unquoted 42, -7, 0x1F, 0o17 become integers; 1.5, 2e3, .5 become floats; true/false (any
// case pattern the schema allows) become booleans; null, ~ and empty become null; anything
// quoted, and everything else (yes, no, on, 1.2.3, ...) stays a string. Explicit tags !!str,
// !!int, !!float, !!bool and !!null are honoured; other tags, .inf and .nan (JSON has no
// such numbers), non-scalar or duplicate mapping keys and multi-document streams are errors
// naming the line.
#pragma once

#include <string>
#include <string_view>

#include "common/json.h"
#include "common/status.h"

namespace agentd::cli {

// Converts one YAML document (JSON is YAML too). `what` names it in error messages, which
// read "<what>: line L, column C: <problem>". Fails with InvalidArgument.
Result<Json> YamlToJson(std::string_view text, std::string_view what);

// Reads `path` ("-" reads stdin) and converts it: a name ending in ".json" is parsed as
// strict JSON, anything else as YAML. Fails with InvalidArgument when the file cannot be
// read or parsed, or when the document is empty. Blocking file I/O.
Result<Json> LoadDocumentFileBlocking(const std::string& path);

}  // namespace agentd::cli
