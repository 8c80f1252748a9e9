// The Chat Completions request body, written as JSON text in one pass over the items.
//
// The output is byte for byte what serialising the equivalent nlohmann DOM with DumpJson
// gives (keys in sorted order, the same escapes, U+FFFD for invalid UTF-8), so switching
// from the DOM builder changed no request; tests/unit/model/openai_chat_request_test.cc
// keeps that builder as the reference.
#include <fmt/format.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "model/openai_chat/json_text.h"
#include "model/openai_chat/openai_chat.h"

namespace agentd::model::openai_chat {
namespace {

Status NotAString(size_t index, std::string_view key) {
  return InvalidArgument(fmt::format("'items[{}].{}' must be a string", index, key));
}

// Appends a JSON value given as a string, or as other JSON to be sent as its text.
void AppendStringOrText(std::string* out, const Json& v) {
  if (v.is_string()) {
    AppendJsonString(out, v.get_ref<const std::string&>());
  } else {
    AppendJsonString(out, DumpJson(v));
  }
}

// The "messages" array written item by item. The text stays open at the end: the last
// assistant message may still take tool calls from the next function_call item, so its
// closing is written only by Finish, on a copy.
class MessagesWriter {
 public:
  explicit MessagesWriter(const std::string& instructions) {
    out_ = R"({"messages":[)";
    if (!instructions.empty()) {
      BeginMessage();
      out_ += R"({"content":)";
      AppendJsonString(&out_, instructions);
      out_ += R"(,"role":"system"})";
    }
  }

  // Appends items[index]. Every check comes before the first byte is written, so on error
  // nothing is, and a writer that is kept stays valid.
  Status Add(const Json& items, size_t index) {
    const Json& item = items[index];
    if (!item.is_object()) {
      return InvalidArgument(fmt::format("items[{}] must be an object", index));
    }
    const std::string* type = FindString(item, "type");
    if (type == nullptr) return NotAString(index, "type");
    if (*type == "message") {
      const std::string* role = FindString(item, "role");
      if (role == nullptr) return NotAString(index, "role");
      auto content = item.find("content");
      if (content == item.end() || !(content->is_string() || content->is_array())) {
        return NotAString(index, "content");
      }
      CloseOpen();
      BeginMessage();
      out_ += R"({"content":)";
      if (content->is_string()) {
        AppendJsonString(&out_, content->get_ref<const std::string&>());
      } else {
        out_ += DumpJson(*content);  // content parts: small
      }
      out_ += R"(,"role":)";
      AppendJsonString(&out_, *role);
      if (*role == "assistant") {
        open_ = Open::kAssistant;
      } else {
        out_ += "}";
      }
    } else if (*type == "function_call") {
      const std::string* call_id = FindString(item, "call_id");
      if (call_id == nullptr) return NotAString(index, "call_id");
      const std::string* name = FindString(item, "name");
      if (name == nullptr) return NotAString(index, "name");
      if (open_ == Open::kNone) {
        BeginMessage();
        out_ += R"({"content":null,"role":"assistant","tool_calls":[)";
      } else if (open_ == Open::kAssistant) {
        out_ += R"(,"tool_calls":[)";
      } else {
        out_ += ",";
      }
      open_ = Open::kToolCalls;
      out_ += R"({"function":{"arguments":)";
      if (auto a = item.find("arguments"); a != item.end() && !a->is_null()) {
        AppendStringOrText(&out_, *a);
      } else {
        out_ += R"("{}")";
      }
      out_ += R"(,"name":)";
      AppendJsonString(&out_, *name);
      out_ += R"(},"id":)";
      AppendJsonString(&out_, *call_id);
      out_ += R"(,"type":"function"})";
    } else if (*type == "function_call_output") {
      const std::string* call_id = FindString(item, "call_id");
      if (call_id == nullptr) return NotAString(index, "call_id");
      CloseOpen();
      BeginMessage();
      out_ += R"({"content":)";
      if (auto o = item.find("output"); o != item.end() && !o->is_null()) {
        AppendStringOrText(&out_, *o);
      } else {
        out_ += R"("")";
      }
      out_ += R"(,"role":"tool","tool_call_id":)";
      AppendJsonString(&out_, *call_id);
      out_ += "}";
    }
    // Other item types (reasoning, ...) have no Chat Completions form and are left out;
    // they do not end an open assistant message.
    return Status::OK();
  }

  // The whole body: the messages so far, closed, then `tail` (from EncodeTail).
  std::string Finish(std::string_view tail) const& {
    std::string body;
    body.reserve(out_.size() + 2 + tail.size());
    body += out_;
    Close(open_, &body);
    body += tail;
    return body;
  }
  // The same, reusing this writer's text (for a writer that is not kept).
  std::string Finish(std::string_view tail) && {
    CloseOpen();
    out_ += tail;
    return std::move(out_);
  }

 private:
  // The last message is an assistant message that function_call items right here join:
  // kAssistant with its closing brace still to write, kToolCalls inside its tool_calls.
  enum class Open { kNone, kAssistant, kToolCalls };

  void BeginMessage() {
    if (!first_message_) out_.push_back(',');
    first_message_ = false;
  }
  static void Close(Open open, std::string* out) {
    if (open == Open::kAssistant) *out += "}";
    if (open == Open::kToolCalls) *out += "]}";
  }
  // A new message closes the open one.
  void CloseOpen() {
    Close(open_, &out_);
    open_ = Open::kNone;
  }

  std::string out_;
  bool first_message_ = true;
  Open open_ = Open::kNone;
};

// Everything after the messages: `],"model":...,"stream":true,...,"tools":[...]}`.
std::string EncodeTail(const ModelRequest& request) {
  std::string out = R"(],"model":)";
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

bool SameTools(const std::vector<ToolSpec>& a, const std::vector<ToolSpec>& b) {
  return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                    [](const ToolSpec& x, const ToolSpec& y) {
                      return x.name == y.name && x.description == y.description &&
                             x.parameters == y.parameters;
                    });
}

// What one conversation's cache holds: the messages written so far and the tail, with what
// they were written from, so that a request that no longer fits them rebuilds them.
struct ChatEncodeCache final : EncodeCache {
  bool FitsPrefix(const ModelRequest& request, const Json& conversation) const {
    return writer && items == &conversation && instructions == request.instructions &&
           done <= conversation.size() && (done == 0 || conversation[done - 1] == last);
  }
  bool FitsTail(const ModelRequest& request) const {
    return tail && model == request.model && SameTools(tools, request.tools);
  }

  std::optional<MessagesWriter> writer;  // items[0, done) written
  const Json* items = nullptr;
  std::string instructions;
  size_t done = 0;
  Json last;  // a copy of items[done - 1], to notice a conversation that was replaced
  std::optional<std::string> tail;
  std::string model;
  std::vector<ToolSpec> tools;
};

}  // namespace

Result<std::string> EncodeChatRequestBody(const ModelRequest& request, const Json& items) {
  if (request.model.empty()) return InvalidArgument("model name is empty");
  if (!items.is_array()) return InvalidArgument("conversation items must be an array");
  MessagesWriter w(request.instructions);
  for (size_t i = 0; i < items.size(); ++i) RETURN_IF_ERROR(w.Add(items, i));
  return std::move(w).Finish(EncodeTail(request));
}

Result<std::string> EncodeChatRequestBody(const ModelRequest& request, const Json& items,
                                          std::unique_ptr<EncodeCache>* cache) {
  if (cache == nullptr) return EncodeChatRequestBody(request, items);
  if (request.model.empty()) return InvalidArgument("model name is empty");
  if (!items.is_array()) return InvalidArgument("conversation items must be an array");
  auto* c = dynamic_cast<ChatEncodeCache*>(cache->get());
  if (c == nullptr) {
    *cache = std::make_unique<ChatEncodeCache>();
    c = static_cast<ChatEncodeCache*>(cache->get());
  }
  if (!c->FitsPrefix(request, items)) {
    c->writer.emplace(request.instructions);
    c->items = &items;
    c->instructions = request.instructions;
    c->done = 0;
  }
  const size_t before = c->done;
  Status added = Status::OK();
  while (added.ok() && c->done < items.size()) {
    added = c->writer->Add(items, c->done);
    if (added.ok()) ++c->done;
  }
  if (c->done > before) c->last = items[c->done - 1];
  RETURN_IF_ERROR(added);
  if (!c->FitsTail(request)) {
    c->tail = EncodeTail(request);
    c->model = request.model;
    c->tools = request.tools;
  }
  return c->writer->Finish(*c->tail);
}

}  // namespace agentd::model::openai_chat
