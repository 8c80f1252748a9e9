// Human-readable output for agentctl: tables, one-line event summaries, object descriptions.
// Pure functions of their arguments (no I/O), so they are unit-tested without a server.
//
// Everything shown comes from the server and, through it, from models and tools, so text is
// passed through Sanitize before it reaches a terminal: control characters (escape sequences
// included) never get printed raw.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "common/json.h"

namespace agentd::cli {

// How many characters of model or tool text a one-line summary shows.
inline constexpr size_t kSummaryChars = 200;

// Replaces control characters (C0, DEL, C1) and invalid UTF-8 with spaces or U+FFFD. With
// `keep_newlines`, '\n' and '\t' survive (for multi-line output such as a turn's answer).
std::string Sanitize(std::string_view s, bool keep_newlines);

// Number of characters (UTF-8 code points) in `s`, the unit of column widths.
size_t DisplayWidth(std::string_view s);

// Cuts `s` to at most `max_chars` characters, the last being "…" when something was cut.
// Never splits a UTF-8 sequence.
std::string Truncate(std::string_view s, size_t max_chars);

// Sanitize (one line) then Truncate.
std::string OneLine(std::string_view s, size_t max_chars = kSummaryChars);

std::string PrettyJson(const Json& j);   // indented, for --json
std::string CompactJson(const Json& j);  // one line, for JSONL and summaries

// A value as a table cell or summary fragment: strings as themselves, null or missing as "",
// everything else as compact JSON.
std::string ValueText(const Json& v);
// obj[key] as ValueText; "" when obj is not an object or has no such key.
std::string FieldText(const Json& obj, std::string_view key);

// Left-aligned columns separated by two spaces; empty cells show "-". Rows shorter than the
// header are padded. Ends with a newline.
std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows);

// Table layouts for the list commands (header and one row per object).
std::vector<std::string> AgentHeader();
std::vector<std::string> AgentRow(const Json& agent);
std::vector<std::string> SessionHeader();
std::vector<std::string> SessionRow(const Json& session);
std::vector<std::string> TurnHeader();
std::vector<std::string> TurnRow(const Json& turn);
std::vector<std::string> EventHeader();
std::vector<std::string> EventRow(const Json& event);

// One line describing an event {seq,type,turn_id,time,data}, as `agentctl turn` prints it:
//   · model call 1 …          → tool get_weather {"city":"Paris"}
//   ← tool get_weather: {...}  ! model call failed (attempt 2): timeout, retrying
// Unknown event types print as "<type> <data>". Model and tool text is cut to kSummaryChars.
std::string SummarizeEvent(const Json& event);

// One line for `events --follow`: "SEQ  TIME  TYPE  TURN  summary" in fixed-width columns
// (the widths of a table cannot be known before the events arrive), and its header line.
std::string FormatEventLine(const Json& event);
std::string EventLineHeader();

// True for the event types that end a turn.
bool IsTerminalEventType(std::string_view type);

// True for high-frequency events (text deltas) that the human stream view skips.
bool IsDeltaEventType(std::string_view type);

// "key: value" lines for an object: the keys in `first` (when present) in that order, then
// the others. Multi-line strings continue on indented lines.
std::string DescribeObject(const Json& obj, const std::vector<std::string>& first);

// The pending client tool calls of a requires_action turn and the command that answers them.
// `pending` is [{call_id,name,arguments}].
std::string FormatPendingCalls(std::string_view session_id, std::string_view turn_id,
                               const Json& pending);

// The function_call items of `output` that no function_call_output answers, as pending calls
// [{call_id,name,arguments}] (for a turn object that has no "pending" field).
Json PendingFromOutput(const Json& output);

}  // namespace agentd::cli
