// The Chat Completions request body, written as JSON text in one pass over the items.
//
// The output is byte for byte what serialising the equivalent nlohmann DOM with DumpJson
// gives (keys in sorted order, the same escapes, U+FFFD for invalid UTF-8), so switching
// from the DOM builder changed no request; tests/unit/model/openai_chat_request_test.cc
// keeps that builder as the reference.
#include <fmt/format.h>

#include <string>
#include <string_view>

#include "model/openai_chat/json_text.h"
#include "model/openai_chat/openai_chat.h"

namespace agentd::model::openai_chat {
namespace {

Status NotAString(size_t index, std::string_view key) {
  return InvalidArgument(fmt::format("'items[{}].{}' must be a string", index, key));
}

// Bytes of JSON structure around each item and tool, beyond their strings.
constexpr size_t kItemOverhead = 80;
constexpr size_t kToolOverhead = 96;

// A little over the body's size for text without many escapes, so that the body is
// written without reallocating. One look at each item's values, no key lookups.
size_t EstimateSize(const ModelRequest& request, const Json& items) {
  size_t n = 128 + request.model.size() + request.instructions.size();
  for (const Json& item : items) {
    n += kItemOverhead;
    if (!item.is_object()) continue;
    for (const Json& v : item) {
      if (v.is_string()) n += v.get_ref<const std::string&>().size();
    }
  }
  for (const ToolSpec& t : request.tools) {
    n += kToolOverhead + t.name.size() + t.description.size();
    // Parameters are serialised separately; a schema is rarely larger than this.
    n += 512;
  }
  return n + n / 16;
}

// Appends a JSON value given as a string, or as other JSON to be sent as its text.
void AppendStringOrText(std::string* out, const Json& v) {
  if (v.is_string()) {
    AppendJsonString(out, v.get_ref<const std::string&>());
  } else {
    AppendJsonString(out, DumpJson(v));
  }
}

}  // namespace

Result<std::string> EncodeChatRequestBody(const ModelRequest& request, const Json& items) {
  if (request.model.empty()) return InvalidArgument("model name is empty");
  if (!items.is_array()) return InvalidArgument("conversation items must be an array");

  std::string out;
  out.reserve(EstimateSize(request, items));
  out += R"({"messages":[)";
  bool first_message = true;
  auto begin_message = [&] {
    if (!first_message) out.push_back(',');
    first_message = false;
  };
  if (!request.instructions.empty()) {
    begin_message();
    out += R"({"content":)";
    AppendJsonString(&out, request.instructions);
    out += R"(,"role":"system"})";
  }

  // The last message is an assistant message that function_call items right here join:
  // kAssistant with its closing brace still to write, kToolCalls inside its tool_calls.
  enum class Open { kNone, kAssistant, kToolCalls };
  Open open = Open::kNone;
  auto close_open = [&] {
    if (open == Open::kAssistant) out += "}";
    if (open == Open::kToolCalls) out += "]}";
    open = Open::kNone;
  };

  for (size_t i = 0; i < items.size(); ++i) {
    const Json& item = items[i];
    if (!item.is_object()) return InvalidArgument(fmt::format("items[{}] must be an object", i));
    const std::string* type = FindString(item, "type");
    if (type == nullptr) return NotAString(i, "type");
    if (*type == "message") {
      const std::string* role = FindString(item, "role");
      if (role == nullptr) return NotAString(i, "role");
      auto content = item.find("content");
      if (content == item.end() || !(content->is_string() || content->is_array())) {
        return NotAString(i, "content");
      }
      close_open();
      begin_message();
      out += R"({"content":)";
      if (content->is_string()) {
        AppendJsonString(&out, content->get_ref<const std::string&>());
      } else {
        out += DumpJson(*content);  // content parts: small
      }
      out += R"(,"role":)";
      AppendJsonString(&out, *role);
      if (*role == "assistant") {
        open = Open::kAssistant;
      } else {
        out += "}";
      }
    } else if (*type == "function_call") {
      const std::string* call_id = FindString(item, "call_id");
      if (call_id == nullptr) return NotAString(i, "call_id");
      const std::string* name = FindString(item, "name");
      if (name == nullptr) return NotAString(i, "name");
      if (open == Open::kNone) {
        begin_message();
        out += R"({"content":null,"role":"assistant","tool_calls":[)";
      } else if (open == Open::kAssistant) {
        out += R"(,"tool_calls":[)";
      } else {
        out += ",";
      }
      open = Open::kToolCalls;
      out += R"({"function":{"arguments":)";
      if (auto a = item.find("arguments"); a != item.end() && !a->is_null()) {
        AppendStringOrText(&out, *a);
      } else {
        out += R"("{}")";
      }
      out += R"(,"name":)";
      AppendJsonString(&out, *name);
      out += R"(},"id":)";
      AppendJsonString(&out, *call_id);
      out += R"(,"type":"function"})";
    } else if (*type == "function_call_output") {
      const std::string* call_id = FindString(item, "call_id");
      if (call_id == nullptr) return NotAString(i, "call_id");
      close_open();
      begin_message();
      out += R"({"content":)";
      if (auto o = item.find("output"); o != item.end() && !o->is_null()) {
        AppendStringOrText(&out, *o);
      } else {
        out += R"("")";
      }
      out += R"(,"role":"tool","tool_call_id":)";
      AppendJsonString(&out, *call_id);
      out += "}";
    }
    // Other item types (reasoning, ...) have no Chat Completions form and are left out;
    // they do not end an open assistant message.
  }
  close_open();

  out += R"(],"model":)";
  AppendJsonString(&out, request.model);
  out += R"(,"stream":true,"stream_options":{"include_usage":true})";
  if (!request.tools.empty()) {
    out += R"(,"tools":[)";
    for (size_t i = 0; i < request.tools.size(); ++i) {
      const ToolSpec& t = request.tools[i];
      if (i > 0) out += ",";
      out += R"({"function":{)";
      if (!t.description.empty()) {
        out += R"("description":)";
        AppendJsonString(&out, t.description);
        out += ",";
      }
      out += R"("name":)";
      AppendJsonString(&out, t.name);
      out += R"(,"parameters":)";
      out += t.parameters.is_object() ? DumpJson(t.parameters)
                                      : R"({"properties":{},"type":"object"})";
      out += R"(},"type":"function"})";
    }
    out += "]";
  }
  out += "}";
  return out;
}

}  // namespace agentd::model::openai_chat
