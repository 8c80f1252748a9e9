#include "cli/format.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <set>

namespace agentd::cli {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

// Length of the valid UTF-8 sequence starting at s[i], or 0 when it is invalid.
size_t Utf8Length(std::string_view s, size_t i, uint32_t* cp) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = byte(i);
  size_t n = 0;
  uint32_t v = 0;
  if (c < 0x80) {
    *cp = c;
    return 1;
  } else if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
    v = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    v = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    v = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    v = (v << 6) | (byte(i + k) & 0x3F);
  }
  if ((n == 3 && v < 0x800) || (n == 4 && (v < 0x10000 || v > 0x10FFFF)) ||
      (v >= 0xD800 && v <= 0xDFFF)) {
    return 0;  // overlong form or surrogate
  }
  *cp = v;
  return n;
}

const Json* Find(const Json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// The first of `keys` that `obj` has, as text ("" when none).
std::string FirstText(const Json& obj, std::initializer_list<std::string_view> keys) {
  for (std::string_view k : keys) {
    if (const Json* v = Find(obj, k)) {
      std::string t = ValueText(*v);
      if (!t.empty()) return t;
    }
  }
  return "";
}

// The first of `keys` that holds an integer.
std::optional<int64_t> FirstInt(const Json& obj, std::initializer_list<std::string_view> keys) {
  for (std::string_view k : keys) {
    const Json* v = Find(obj, k);
    if (v != nullptr && v->is_number_integer()) return v->get<int64_t>();
  }
  return std::nullopt;
}

bool IsTrue(const Json& obj, std::string_view key) {
  const Json* v = Find(obj, key);
  return v != nullptr && v->is_boolean() && v->get<bool>();
}

// An error description from data.error ({code,message} or a string) or data.message.
std::string ErrorText(const Json& data) {
  if (const Json* e = Find(data, "error")) {
    if (e->is_string()) return e->get<std::string>();
    std::string code = FieldText(*e, "code");
    std::string message = FieldText(*e, "message");
    if (!code.empty() && !message.empty()) return code + ": " + message;
    if (!message.empty()) return message;
    if (!code.empty()) return code;
    return CompactJson(*e);
  }
  return FirstText(data, {"message", "reason"});
}

std::string Tokens(const Json& data) {
  const Json* usage = Find(data, "usage");
  if (usage == nullptr) return "";
  std::optional<int64_t> total = FirstInt(*usage, {"total_tokens"});
  if (!total) return "";
  return fmt::format("{} tokens", *total);
}

std::string Pieces(const std::vector<std::string>& parts) {
  std::string out;
  for (const std::string& p : parts) {
    if (p.empty()) continue;
    if (!out.empty()) out += ", ";
    out += p;
  }
  return out;
}

// The kind of thing an event is about and what happened to it, from its type: both
// "model_call.failed" and "model.call.failed" give {"model", "failed"}.
struct EventKind {
  std::string subject;  // "model", "tool", "turn", "message", ... (first word of the type)
  std::string verb;     // the last dot-separated word
};

EventKind KindOf(std::string_view type) {
  EventKind k;
  size_t dot = type.rfind('.');
  k.verb = dot == std::string_view::npos ? std::string() : std::string(type.substr(dot + 1));
  std::string_view head = dot == std::string_view::npos ? type : type.substr(0, dot);
  k.subject = std::string(head.substr(0, head.find_first_of("._")));
  return k;
}

bool VerbIn(const std::string& verb, std::initializer_list<std::string_view> verbs) {
  return std::find(verbs.begin(), verbs.end(), verb) != verbs.end();
}

const std::initializer_list<std::string_view> kStartVerbs = {"started",   "start",   "requested",
                                                             "scheduled", "created", "begin"};
const std::initializer_list<std::string_view> kDoneVerbs = {
    "completed", "succeeded", "finished", "done", "result", "returned", "output"};
const std::initializer_list<std::string_view> kFailVerbs = {"failed", "error", "errored",
                                                            "retrying"};

std::string ModelSummary(const EventKind& k, const Json& data) {
  std::string label = "model call";
  if (auto n = FirstInt(data, {"index", "call_index", "model_call", "n", "step"})) {
    label += fmt::format(" {}", *n);
  }
  std::optional<int64_t> attempt = FirstInt(data, {"attempt"});
  std::string attempt_text = attempt && *attempt > 1 ? fmt::format(" (attempt {})", *attempt) : "";
  if (VerbIn(k.verb, kFailVerbs)) {
    bool retrying = k.verb == "retrying" || IsTrue(data, "retrying") ||
                    IsTrue(data, "will_retry") || Find(data, "retry_in_ms") != nullptr ||
                    Find(data, "retry_after_ms") != nullptr ||
                    Find(data, "next_attempt_at") != nullptr;
    if (const Json* final = Find(data, "final"); final != nullptr && final->is_boolean()) {
      retrying = !final->get<bool>();
    }
    return fmt::format("! {} failed{}: {}{}", label, attempt_text, OneLine(ErrorText(data)),
                       retrying ? ", retrying" : "");
  }
  if (VerbIn(k.verb, kDoneVerbs)) {
    std::string calls;
    if (const Json* tc = Find(data, "tool_calls"); tc != nullptr && tc->is_array()) {
      if (!tc->empty())
        calls = fmt::format("{} tool call{}", tc->size(), tc->size() == 1 ? "" : "s");
    }
    std::string text = FirstText(data, {"output_text", "text"});
    std::string line = fmt::format("· {} done", label);
    std::string extra = Pieces({calls, Tokens(data)});
    if (!extra.empty()) line += " (" + extra + ")";
    if (!text.empty()) line += ": " + OneLine(text);
    return line;
  }
  if (VerbIn(k.verb, kStartVerbs)) return fmt::format("· {}{} …", label, attempt_text);
  return "";
}

std::string ToolName(const Json& data) {
  std::string name = FirstText(data, {"name", "tool", "tool_name"});
  if (name.empty()) {
    if (const Json* call = Find(data, "call")) name = FieldText(*call, "name");
  }
  return name.empty() ? "?" : OneLine(name, 80);
}

std::string ToolSummary(const EventKind& k, const Json& data) {
  std::string name = ToolName(data);
  bool failed = VerbIn(k.verb, kFailVerbs) || IsTrue(data, "is_error");
  if (failed) {
    std::string why = ErrorText(data);
    if (why.empty()) why = FirstText(data, {"output", "result"});
    return fmt::format("! tool {} failed: {}", name, OneLine(why));
  }
  if (VerbIn(k.verb, kDoneVerbs)) {
    return fmt::format("← tool {}: {}", name,
                       OneLine(FirstText(data, {"output", "result", "content"})));
  }
  if (VerbIn(k.verb, kStartVerbs) || k.verb == "call" || k.verb == "called") {
    std::string args = FirstText(data, {"arguments", "args", "input"});
    if (args.empty()) {
      if (const Json* call = Find(data, "call")) args = FieldText(*call, "arguments");
    }
    return fmt::format("→ tool {} {}", name, OneLine(args));
  }
  return "";
}

std::string TurnSummary(const EventKind& k, const Json& data) {
  if (k.verb == "completed") {
    std::string tokens = Tokens(data);
    return tokens.empty() ? "✓ turn completed" : fmt::format("✓ turn completed ({})", tokens);
  }
  if (k.verb == "failed") return fmt::format("✗ turn failed: {}", OneLine(ErrorText(data)));
  if (k.verb == "cancelled" || k.verb == "canceled") {
    std::string why = ErrorText(data);
    return why.empty() ? "✗ turn cancelled" : fmt::format("✗ turn cancelled: {}", OneLine(why));
  }
  if (k.verb == "requires_action") {
    std::vector<std::string> names;
    size_t n = 0;
    if (const Json* pending = Find(data, "pending"); pending != nullptr && pending->is_array()) {
      n = pending->size();
      for (const Json& p : *pending) names.push_back(OneLine(FieldText(p, "name"), 80));
    }
    return fmt::format("? turn requires action: {} pending tool call{}{}{}", n, n == 1 ? "" : "s",
                       names.empty() ? "" : ": ", Pieces(names));
  }
  if (VerbIn(k.verb, {"started", "created", "queued"})) {
    std::string input = FieldText(data, "input");
    std::string line = fmt::format("▶ turn {}", k.verb);
    if (!input.empty()) line += ": " + OneLine(input);
    return line;
  }
  return "";
}

}  // namespace

std::string Sanitize(std::string_view s, bool keep_newlines) {
  std::string out;
  out.reserve(s.size());
  size_t i = 0;
  while (i < s.size()) {
    uint32_t cp = 0;
    size_t n = Utf8Length(s, i, &cp);
    if (n == 0) {
      out += kReplacement;
      ++i;
      continue;
    }
    if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F)) {
      out.push_back(keep_newlines && (cp == '\n' || cp == '\t') ? static_cast<char>(cp) : ' ');
    } else {
      out.append(s.substr(i, n));
    }
    i += n;
  }
  return out;
}

size_t DisplayWidth(std::string_view s) {
  return static_cast<size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; }));
}

std::string Truncate(std::string_view s, size_t max_chars) {
  if (DisplayWidth(s) <= max_chars) return std::string(s);
  if (max_chars == 0) return "";
  size_t keep = max_chars - 1, chars = 0, i = 0;
  while (i < s.size()) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) {
      if (chars == keep) break;
      ++chars;
    }
    ++i;
  }
  return std::string(s.substr(0, i)) + "…";
}

std::string OneLine(std::string_view s, size_t max_chars) {
  return Truncate(Sanitize(s, false), max_chars);
}

std::string PrettyJson(const Json& j) {
  return j.dump(2, ' ', false, Json::error_handler_t::replace);
}

std::string CompactJson(const Json& j) { return DumpJson(j); }

std::string ValueText(const Json& v) {
  if (v.is_null()) return "";
  if (v.is_string()) return v.get<std::string>();
  return CompactJson(v);
}

std::string FieldText(const Json& obj, std::string_view key) {
  const Json* v = Find(obj, key);
  return v == nullptr ? "" : ValueText(*v);
}

std::string FormatTable(const std::vector<std::string>& header,
                        const std::vector<std::vector<std::string>>& rows) {
  std::vector<std::vector<std::string>> cells;
  cells.reserve(rows.size() + 1);
  cells.push_back(header);
  for (const auto& row : rows) {
    std::vector<std::string> r;
    for (size_t c = 0; c < header.size(); ++c) {
      std::string v = c < row.size() ? OneLine(row[c], 1000) : "";
      r.push_back(v.empty() ? "-" : std::move(v));
    }
    cells.push_back(std::move(r));
  }
  std::vector<size_t> width(header.size(), 0);
  for (const auto& r : cells) {
    for (size_t c = 0; c < header.size() && c < r.size(); ++c) {
      width[c] = std::max(width[c], DisplayWidth(r[c]));
    }
  }
  std::string out;
  for (const auto& r : cells) {
    std::string line;
    for (size_t c = 0; c < header.size(); ++c) {
      const std::string& v = c < r.size() ? r[c] : std::string();
      line += v;
      if (c + 1 < header.size()) line += std::string(width[c] - DisplayWidth(v) + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

std::vector<std::string> AgentHeader() { return {"ID", "VERSION", "NAME", "MODEL", "CREATED"}; }

std::vector<std::string> AgentRow(const Json& agent) {
  std::string model;
  if (const Json* m = Find(agent, "model"))
    model = m->is_object() ? FieldText(*m, "name") : ValueText(*m);
  return {FieldText(agent, "id"), FieldText(agent, "version"),
          Truncate(FieldText(agent, "name"), 40), Truncate(model, 40),
          FieldText(agent, "created_at")};
}

std::vector<std::string> SessionHeader() {
  return {"ID", "AGENT", "STATUS", "LAST_SEQ", "UPDATED"};
}

std::vector<std::string> SessionRow(const Json& session) {
  std::string agent = FieldText(session, "agent_id");
  std::string version = FieldText(session, "agent_version");
  if (!agent.empty() && !version.empty()) agent += "@" + version;
  return {FieldText(session, "id"), agent, FieldText(session, "status"),
          FieldText(session, "last_seq"), FieldText(session, "updated_at")};
}

std::vector<std::string> TurnHeader() { return {"ID", "STATUS", "TOKENS", "CREATED", "OUTPUT"}; }

std::vector<std::string> TurnRow(const Json& turn) {
  std::string tokens;
  if (const Json* usage = Find(turn, "usage")) tokens = FieldText(*usage, "total_tokens");
  std::string output = FieldText(turn, "output_text");
  if (output.empty()) output = ErrorText(turn);
  return {FieldText(turn, "id"), FieldText(turn, "status"), tokens, FieldText(turn, "created_at"),
          OneLine(output, 60)};
}

std::vector<std::string> EventHeader() { return {"SEQ", "TIME", "TYPE", "TURN", "SUMMARY"}; }

std::vector<std::string> EventRow(const Json& event) {
  return {FieldText(event, "seq"), FieldText(event, "time"), FieldText(event, "type"),
          FieldText(event, "turn_id"), SummarizeEvent(event)};
}

std::string SummarizeEvent(const Json& event) {
  std::string type = FieldText(event, "type");
  const Json* data_ptr = Find(event, "data");
  const Json data = data_ptr != nullptr ? *data_ptr : Json::object();
  EventKind k = KindOf(type);
  std::string line;
  if (k.subject == "model") {
    line = ModelSummary(k, data);
  } else if (k.subject == "tool") {
    line = ToolSummary(k, data);
  } else if (k.subject == "turn") {
    line = TurnSummary(k, data);
  }
  if (!line.empty()) return line;
  // Anything else: a message with text, or the type and its data.
  std::string role = FieldText(data, "role");
  std::string content = FieldText(data, "content");
  if (!role.empty() && !content.empty())
    return fmt::format("“ {}: {}", OneLine(role, 40), OneLine(content));
  std::string body = data.is_object() && data.empty() ? "" : CompactJson(data);
  return body.empty() ? OneLine(type, 80) : OneLine(type, 80) + " " + OneLine(body);
}

namespace {
constexpr std::string_view kEventLineFormat = "{:>6}  {:<24}  {:<22}  {:<16}  {}";
}  // namespace

std::string FormatEventLine(const Json& event) {
  std::string turn = FieldText(event, "turn_id");
  return fmt::format(fmt::runtime(kEventLineFormat), FieldText(event, "seq"),
                     OneLine(FieldText(event, "time"), 40), OneLine(FieldText(event, "type"), 40),
                     turn.empty() ? "-" : OneLine(turn, 40), SummarizeEvent(event));
}

std::string EventLineHeader() {
  return fmt::format(fmt::runtime(kEventLineFormat), "SEQ", "TIME", "TYPE", "TURN", "SUMMARY");
}

bool IsTerminalEventType(std::string_view type) {
  return type == "turn.completed" || type == "turn.failed" || type == "turn.cancelled" ||
         type == "turn.requires_action";
}

bool IsDeltaEventType(std::string_view type) {
  return type.size() >= 6 && type.substr(type.size() - 6) == ".delta";
}

std::string DescribeObject(const Json& obj, const std::vector<std::string>& first) {
  if (!obj.is_object()) return Sanitize(ValueText(obj), true) + "\n";
  std::vector<std::string> keys;
  for (const std::string& k : first) {
    if (obj.contains(k)) keys.push_back(k);
  }
  for (const auto& [k, v] : obj.items()) {
    if (std::find(keys.begin(), keys.end(), k) == keys.end()) keys.push_back(k);
  }
  size_t width = 0;
  for (const std::string& k : keys) width = std::max(width, DisplayWidth(k));
  std::string out;
  for (const std::string& k : keys) {
    std::string label = Sanitize(k, false) + ":";
    std::string value = Sanitize(ValueText(obj[k]), true);
    if (value.empty()) value = "-";
    std::string pad(width + 2 - DisplayWidth(label) + 1, ' ');
    std::string indent(width + 3, ' ');
    size_t start = 0;
    bool first_line = true;
    while (start <= value.size()) {
      size_t nl = value.find('\n', start);
      std::string_view piece = std::string_view(value).substr(
          start, nl == std::string::npos ? std::string::npos : nl - start);
      out += first_line ? label + pad : indent;
      out += piece;
      out += "\n";
      first_line = false;
      if (nl == std::string::npos) break;
      start = nl + 1;
    }
  }
  return out;
}

std::string FormatPendingCalls(std::string_view session_id, std::string_view turn_id,
                               const Json& pending) {
  std::vector<std::vector<std::string>> rows;
  std::string answer =
      fmt::format("agentctl tool-outputs {} {}", OneLine(session_id, 80), OneLine(turn_id, 80));
  if (pending.is_array()) {
    for (const Json& p : pending) {
      std::string call_id = FieldText(p, "call_id");
      rows.push_back({call_id, FieldText(p, "name"), OneLine(FieldText(p, "arguments"))});
      answer += fmt::format(" --call-id {} --output '<result>'", OneLine(call_id, 80));
    }
  }
  size_t n = rows.size();
  return fmt::format("The turn needs the results of {} client tool call{}:\n{}Answer with:\n  {}\n",
                     n, n == 1 ? "" : "s", FormatTable({"CALL_ID", "NAME", "ARGUMENTS"}, rows),
                     answer);
}

Json PendingFromOutput(const Json& output) {
  Json pending = Json::array();
  if (!output.is_array()) return pending;
  std::set<std::string> answered;
  for (const Json& item : output) {
    if (FieldText(item, "type") == "function_call_output")
      answered.insert(FieldText(item, "call_id"));
  }
  for (const Json& item : output) {
    if (FieldText(item, "type") != "function_call") continue;
    std::string id = FieldText(item, "call_id");
    if (answered.count(id) != 0) continue;
    pending.push_back({{"call_id", id},
                       {"name", FieldText(item, "name")},
                       {"arguments", FieldText(item, "arguments")}});
  }
  return pending;
}

}  // namespace agentd::cli
