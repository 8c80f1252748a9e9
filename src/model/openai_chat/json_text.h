// Writing JSON text directly, for request bodies too large to build as a DOM first.
#pragma once

#include <string>
#include <string_view>

namespace agentd::model::openai_chat {

// Appends `s` to `out` as a quoted JSON string (RFC 8259), exactly as DumpJson would write
// it: `"` and `\` escaped, \b \t \n \f \r short-escaped, other bytes below 0x20 as \u00xx,
// valid UTF-8 (and DEL) copied as is, and each maximal ill-formed UTF-8 subsequence
// replaced by U+FFFD, so the output is valid UTF-8 and valid JSON whatever `s` holds.
void AppendJsonString(std::string* out, std::string_view s);

}  // namespace agentd::model::openai_chat
