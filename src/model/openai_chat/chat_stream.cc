#include "model/openai_chat/chat_stream.h"

#include <fmt/format.h>

#include <utility>

namespace agentd::model::openai_chat {
namespace {

// The start of `s`, for error messages, cut at a UTF-8 boundary.
std::string Snippet(std::string_view s, size_t max_bytes) {
  if (s.size() <= max_bytes) return std::string(s);
  size_t end = max_bytes;
  while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
  return std::string(s.substr(0, end)) + "...";
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\n' ||
                        s.front() == '\r')) {
    s.remove_prefix(1);
  }
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\n' || s.back() == '\r')) {
    s.remove_suffix(1);
  }
  return s;
}

const Json* Member(const Json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

const std::string* StringMember(const Json& obj, const char* key) {
  const Json* v = Member(obj, key);
  return v != nullptr && v->is_string() ? &v->get_ref<const std::string&>() : nullptr;
}

int64_t IntMember(const Json& obj, const char* key) {
  const Json* v = Member(obj, key);
  return v != nullptr && v->is_number_integer() ? v->get<int64_t>() : 0;
}

// Arguments are a JSON string on the wire; a few servers send an object instead.
std::string ArgumentsText(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return std::string();
  return DumpJson(v);
}

std::string ErrorMessage(const Json& error) {
  if (error.is_string()) return error.get<std::string>();
  if (const std::string* m = StringMember(error, "message")) return *m;
  return DumpJson(error);
}

Result<Json> ParseObject(std::string_view text, std::string_view what) {
  Json j = Json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return InvalidArgument(fmt::format("{} is not a JSON object: {}", what, Snippet(text, 200)));
  }
  return j;
}

}  // namespace

Status SseParser::Feed(std::string_view bytes, const DataFn& on_data) {
  size_t pos = 0;
  if (skip_lf_ && !bytes.empty()) {
    if (bytes[0] == '\n') pos = 1;
    skip_lf_ = false;
  }
  while (pos < bytes.size()) {
    size_t eol = bytes.find_first_of("\r\n", pos);
    if (eol == std::string_view::npos) {
      partial_.append(bytes.substr(pos));
      break;
    }
    Status st;
    if (partial_.empty()) {
      st = Line(bytes.substr(pos, eol - pos), on_data);
    } else {
      partial_.append(bytes.substr(pos, eol - pos));
      st = Line(partial_, on_data);
      partial_.clear();
    }
    if (!st.ok()) return st;
    if (bytes[eol] == '\r') {
      if (eol + 1 < bytes.size()) {
        if (bytes[eol + 1] == '\n') ++eol;
      } else {
        skip_lf_ = true;
      }
    }
    pos = eol + 1;
  }
  return Status::OK();
}

Status SseParser::Finish(const DataFn& on_data) {
  if (!partial_.empty()) {
    std::string last = std::move(partial_);
    partial_.clear();
    RETURN_IF_ERROR(Line(last, on_data));
  }
  return Line(std::string_view(), on_data);
}

Status SseParser::Line(std::string_view line, const DataFn& on_data) {
  if (line.empty()) {
    if (!has_data_) return Status::OK();
    has_data_ = false;
    if (data_.empty()) return Status::OK();
    Status st = on_data(data_);
    data_.clear();
    return st;
  }
  if (line.front() == ':') return Status::OK();  // comment, e.g. a keep-alive ": ping"
  size_t colon = line.find(':');
  std::string_view field = line.substr(0, colon);
  if (field != "data") return Status::OK();
  std::string_view value = colon == std::string_view::npos ? std::string_view()
                                                            : line.substr(colon + 1);
  if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  if (has_data_) data_.push_back('\n');
  data_.append(value);
  has_data_ = true;
  return Status::OK();
}

ChatStreamDecoder::ChatStreamDecoder(std::function<void(std::string_view)> on_text_delta)
    : on_text_delta_(std::move(on_text_delta)) {}

Status ChatStreamDecoder::OnData(std::string_view data) {
  std::string_view t = Trim(data);
  if (t == "[DONE]") {
    done_ = true;
    return Status::OK();
  }
  auto chunk = ParseObject(t, "data line");
  if (!chunk.ok()) {
    // A server that puts each chunk on its own line without blank lines between them makes
    // one event of several data lines; take them one by one.
    if (t.find('\n') == std::string_view::npos) return chunk.status();
    size_t pos = 0;
    while (pos <= t.size()) {
      size_t nl = t.find('\n', pos);
      std::string_view line = Trim(t.substr(pos, nl == std::string_view::npos ? nl : nl - pos));
      if (!line.empty()) {
        if (line == "[DONE]") {
          done_ = true;
        } else {
          auto one = ParseObject(line, "data line");
          if (!one.ok()) return one.status();
          ++events_;
          RETURN_IF_ERROR(ApplyChunk(*one));
        }
      }
      if (nl == std::string_view::npos) break;
      pos = nl + 1;
    }
    return Status::OK();
  }
  ++events_;
  return ApplyChunk(*chunk);
}

Status ChatStreamDecoder::ApplyChunk(const Json& chunk) {
  if (const Json* error = Member(chunk, "error")) {
    server_error_ = ErrorMessage(*error);
    return Status::OK();
  }
  if (const Json* choices = Member(chunk, "choices"); choices != nullptr && choices->is_array()) {
    for (const Json& choice : *choices) {
      // Only the first choice is used: agentd never asks for n > 1.
      if (IntMember(choice, "index") != 0) continue;
      if (const Json* delta = Member(choice, "delta"); delta != nullptr && delta->is_object()) {
        if (const std::string* content = StringMember(*delta, "content")) AppendText(*content);
        if (const Json* calls = Member(*delta, "tool_calls"); calls != nullptr && calls->is_array()) {
          for (size_t i = 0; i < calls->size(); ++i) ApplyToolCallDelta((*calls)[i], i);
        }
      }
      if (const std::string* fr = StringMember(choice, "finish_reason"); fr && !fr->empty()) {
        finish_reason_ = *fr;
      }
    }
  }
  if (const Json* usage = Member(chunk, "usage")) ApplyUsage(*usage);
  return Status::OK();
}

void ChatStreamDecoder::ApplyToolCallDelta(const Json& delta, size_t position) {
  if (!delta.is_object()) return;
  const Json* index_json = Member(delta, "index");
  int64_t index = index_json != nullptr && index_json->is_number_integer()
                      ? index_json->get<int64_t>()
                      : static_cast<int64_t>(position);
  const std::string* id = StringMember(delta, "id");
  Slot* slot = nullptr;
  for (auto it = slots_.rbegin(); it != slots_.rend(); ++it) {
    if (it->index == index) {
      slot = &*it;
      break;
    }
  }
  // Some servers reuse index 0 for every call of a parallel batch and tell the calls apart
  // only by id: a new id at a known index starts a new call.
  if (slot != nullptr && id != nullptr && !id->empty() && !slot->call.call_id.empty() &&
      slot->call.call_id != *id) {
    slot = nullptr;
  }
  if (slot == nullptr) {
    slots_.push_back({index, {}});
    slot = &slots_.back();
  }
  if (id != nullptr && !id->empty() && slot->call.call_id.empty()) slot->call.call_id = *id;
  if (const Json* fn = Member(delta, "function"); fn != nullptr && fn->is_object()) {
    if (const std::string* name = StringMember(*fn, "name");
        name != nullptr && !name->empty() && slot->call.name.empty()) {
      slot->call.name = *name;
    }
    if (const Json* args = Member(*fn, "arguments")) slot->call.arguments += ArgumentsText(*args);
  }
}

void ChatStreamDecoder::ApplyUsage(const Json& usage) {
  if (!usage.is_object()) return;
  usage_.input_tokens = IntMember(usage, "prompt_tokens");
  usage_.output_tokens = IntMember(usage, "completion_tokens");
  usage_.total_tokens = IntMember(usage, "total_tokens");
  if (usage_.total_tokens == 0) usage_.total_tokens = usage_.input_tokens + usage_.output_tokens;
}

void ChatStreamDecoder::AppendText(std::string_view text) {
  if (text.empty()) return;
  text_.append(text);
  if (on_text_delta_) on_text_delta_(text);
}

Status ChatStreamDecoder::OnCompletion(std::string_view body) {
  ASSIGN_OR_RETURN(Json j, ParseObject(Trim(body), "response body"));
  ++events_;
  if (const Json* error = Member(j, "error")) {
    server_error_ = ErrorMessage(*error);
    return Status::OK();
  }
  const Json* choices = Member(j, "choices");
  if (choices == nullptr || !choices->is_array() || choices->empty()) {
    return InvalidArgument(
        fmt::format("response body has no choices: {}", Snippet(Trim(body), 200)));
  }
  const Json& choice = (*choices)[0];
  if (const Json* message = Member(choice, "message"); message != nullptr) {
    if (const Json* content = Member(*message, "content")) {
      if (content->is_string()) {
        AppendText(content->get_ref<const std::string&>());
      } else if (content->is_array()) {
        for (const Json& part : *content) {
          if (const std::string* t = StringMember(part, "text")) AppendText(*t);
        }
      }
    }
    if (const Json* calls = Member(*message, "tool_calls"); calls != nullptr && calls->is_array()) {
      for (size_t i = 0; i < calls->size(); ++i) {
        const Json& c = (*calls)[i];
        Slot slot{static_cast<int64_t>(i), {}};
        if (const std::string* id = StringMember(c, "id")) slot.call.call_id = *id;
        if (const Json* fn = Member(c, "function")) {
          if (const std::string* name = StringMember(*fn, "name")) slot.call.name = *name;
          if (const Json* args = Member(*fn, "arguments")) slot.call.arguments = ArgumentsText(*args);
        }
        slots_.push_back(std::move(slot));
      }
    }
  }
  if (const std::string* fr = StringMember(choice, "finish_reason"); fr && !fr->empty()) {
    finish_reason_ = *fr;
  }
  if (const Json* usage = Member(j, "usage")) ApplyUsage(*usage);
  return Status::OK();
}

ModelResponse ChatStreamDecoder::TakeResponse() {
  ModelResponse r;
  r.text = std::move(text_);
  r.tool_calls.reserve(slots_.size());
  for (auto& s : slots_) r.tool_calls.push_back(std::move(s.call));
  slots_.clear();
  r.finish_reason = finish_reason_.empty() ? (r.tool_calls.empty() ? "stop" : "tool_calls")
                                           : finish_reason_;
  r.usage = usage_;
  return r;
}

}  // namespace agentd::model::openai_chat
