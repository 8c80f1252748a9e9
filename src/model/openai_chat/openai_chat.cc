#include "model/openai_chat/openai_chat.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <functional>
#include <string>
#include <string_view>
#include <utility>

#include "common/http_client.h"
#include "model/openai_chat/chat_stream.h"

namespace agentd::model::openai_chat {
namespace {

using std::string_view;

// Bytes of a streamed body kept to quote in an error when the stream turns out to be bad.
constexpr size_t kKeptStreamPrefix = 2048;

// `s` cut to at most `max_bytes` at a UTF-8 boundary, control characters made spaces.
std::string Clip(string_view s, size_t max_bytes) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  bool clipped = false;
  if (s.size() > max_bytes) {
    size_t end = max_bytes;
    while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
    s = s.substr(0, end);
    clipped = true;
  }
  std::string out(s);
  for (char& c : out) {
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
  }
  if (clipped) out += "...";
  return out;
}

// The human-readable part of an error body: OpenAI's error.message, else a few other
// common shapes, else the text itself.
std::string ErrorDetail(string_view body, size_t max_bytes) {
  Json j = Json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_discarded() && j.is_object()) {
    auto err = j.find("error");
    if (err != j.end()) {
      if (err->is_string()) return Clip(err->get_ref<const std::string&>(), max_bytes);
      if (err->is_object()) {
        if (const std::string* m = FindString(*err, "message")) return Clip(*m, max_bytes);
      }
    }
    for (const char* key : {"message", "detail"}) {
      if (const std::string* m = FindString(j, key)) return Clip(*m, max_bytes);
    }
  }
  return Clip(body, max_bytes);
}

// Replaces every occurrence of the API key: servers sometimes echo it in error messages.
std::string Redact(std::string message, const std::string& api_key) {
  if (api_key.empty()) return message;
  for (size_t pos = message.find(api_key); pos != std::string::npos;
       pos = message.find(api_key, pos)) {
    message.replace(pos, api_key.size(), "[redacted]");
    pos += 10;
  }
  return message;
}

std::string ChatUrl(string_view base_url) {
  while (!base_url.empty() && base_url.back() == '/') base_url.remove_suffix(1);
  return std::string(base_url) + "/chat/completions";
}

// Receives the response body as it arrives and routes it: a streamed body through the SSE
// parser into the decoder, a JSON body into a buffer decoded at the end.
class BodySink {
 public:
  BodySink(size_t max_bytes, std::function<void(string_view)> on_text_delta,
           std::function<bool()> should_abort)
      : max_bytes_(max_bytes),
        should_abort_(std::move(should_abort)),
        decoder_(std::move(on_text_delta)),
        on_data_([this](string_view data) { return decoder_.OnData(data); }) {}

  // The HttpRequest::on_body callback: false stops the transfer.
  bool Consume(string_view bytes) {
    if (should_abort_ && should_abort_()) {
      cancelled_ = true;
      return false;
    }
    received_ += bytes.size();
    if (received_ > max_bytes_) {
      too_big_ = true;
      return false;
    }
    if (mode_ == Mode::kUnknown) {
      size_t first = bytes.find_first_not_of(" \t\r\n");
      if (first == string_view::npos) return true;  // leading blank lines mean nothing
      mode_ = bytes[first] == '{' ? Mode::kJson : Mode::kStream;
    }
    if (mode_ == Mode::kJson) {
      body_.append(bytes);
      return true;
    }
    if (body_.size() < kKeptStreamPrefix) {
      body_.append(bytes.substr(0, kKeptStreamPrefix - body_.size()));
    }
    // After a malformed event the rest is read but not decoded, so that the HTTP status
    // and the connection stay intact.
    if (stream_error_.ok()) stream_error_ = parser_.Feed(bytes, on_data_);
    return true;
  }

  // End of a complete body.
  void Finish() {
    if (mode_ == Mode::kStream && stream_error_.ok()) stream_error_ = parser_.Finish(on_data_);
    if (mode_ == Mode::kJson) stream_error_ = decoder_.OnCompletion(body_);
  }

  bool is_json() const { return mode_ == Mode::kJson; }
  bool empty() const { return mode_ == Mode::kUnknown; }
  bool cancelled() const { return cancelled_; }
  bool too_big() const { return too_big_; }
  const Status& stream_error() const { return stream_error_; }
  const std::string& body() const { return body_; }  // JSON body, or a stream's first bytes
  ChatStreamDecoder& decoder() { return decoder_; }

 private:
  enum class Mode { kUnknown, kJson, kStream };

  const size_t max_bytes_;
  std::function<bool()> should_abort_;
  ChatStreamDecoder decoder_;
  SseParser parser_;
  SseParser::DataFn on_data_;
  Mode mode_ = Mode::kUnknown;
  std::string body_;
  size_t received_ = 0;
  bool cancelled_ = false;
  bool too_big_ = false;
  Status stream_error_;
};

StatusCode CodeForHttpStatus(int status) {
  switch (status) {
    case 400: case 413: case 422: return StatusCode::kInvalidArgument;
    case 401: return StatusCode::kUnauthenticated;
    case 403: return StatusCode::kPermissionDenied;
    case 404: return StatusCode::kNotFound;
    case 408: return StatusCode::kDeadlineExceeded;
    case 429: return StatusCode::kResourceExhausted;
    default: return status >= 500 ? StatusCode::kUnavailable : StatusCode::kFailedPrecondition;
  }
}

Status Malformed(string_view what) {
  return Unavailable(fmt::format("model server sent a malformed response: {}", what));
}

}  // namespace

OpenAIChatProvider::OpenAIChatProvider(OpenAIChatOptions options) : options_(options) {}

Result<std::string> OpenAIChatProvider::EncodeBody(const ModelRequest& request,
                                                   const Json& items,
                                                   std::unique_ptr<EncodeCache>* cache) const {
  return EncodeChatRequestBody(request, items, cache);
}

ModelAttempt OpenAIChatProvider::CallEncodedBlocking(const ModelRequest& request,
                                                     std::string body) {
  ModelAttempt attempt;
  auto fail = [&](const Status& st, bool retryable) {
    attempt.error = Status(st.code(), Redact(st.message(), request.api_key));
    attempt.retryable = retryable;
    return std::move(attempt);
  };
  if (request.should_abort && request.should_abort()) {
    return fail(Cancelled("model call cancelled"), false);
  }

  HttpRequest http;
  http.method = "POST";
  http.url = ChatUrl(request.base_url);
  http.headers = {{"Content-Type", "application/json"}, {"Accept", "text/event-stream"}};
  if (!request.api_key.empty()) http.headers.emplace_back("Authorization", "Bearer " + request.api_key);
  http.body = std::move(body);
  http.timeout = request.timeout;
  http.connect_timeout = options_.connect_timeout;
  http.max_response_bytes = options_.max_response_bytes;
  http.should_abort = request.should_abort;
  BodySink sink(options_.max_response_bytes, request.on_text_delta, request.should_abort);
  http.on_body = [&sink](string_view bytes) { return sink.Consume(bytes); };

  auto result = HttpDoBlocking(http);
  if (!result.ok()) {
    const Status& st = result.status();
    if (sink.too_big()) {
      return fail(ResourceExhausted(fmt::format("model response larger than {} bytes",
                                                options_.max_response_bytes)),
                  false);
    }
    if (sink.cancelled() || st.code() == StatusCode::kCancelled) {
      return fail(Cancelled("model call cancelled"), false);
    }
    bool retryable =
        st.code() == StatusCode::kUnavailable || st.code() == StatusCode::kAborted ||
        st.code() == StatusCode::kDeadlineExceeded;
    return fail(Status(st.code(), "model server request failed: " + st.message()), retryable);
  }

  const HttpResponse& resp = *result;
  attempt.http_status = resp.status;
  if (resp.status < 200 || resp.status > 299) {
    bool retryable = resp.status == 429 || resp.status == 408 || resp.status >= 500;
    if (retryable) attempt.retry_after = ParseRetryAfter(resp.Header("retry-after"));
    std::string detail = ErrorDetail(sink.body(), options_.max_error_message_bytes);
    std::string message =
        detail.empty() ? fmt::format("model server returned HTTP {}", resp.status)
                       : fmt::format("model server returned HTTP {}: {}", resp.status, detail);
    return fail(Status(CodeForHttpStatus(resp.status), std::move(message)), retryable);
  }

  sink.Finish();
  if (!sink.stream_error().ok()) return fail(Malformed(sink.stream_error().message()), true);
  ChatStreamDecoder& decoder = sink.decoder();
  if (decoder.server_error()) {
    return fail(Unavailable(fmt::format(
                    "model server reported an error: {}",
                    Clip(*decoder.server_error(), options_.max_error_message_bytes))),
                true);
  }
  if (sink.empty()) return fail(Malformed("the body is empty"), true);
  if (!sink.is_json() && !decoder.finished() && !decoder.done()) {
    if (decoder.events() == 0) {
      return fail(Malformed(fmt::format("expected an event stream or JSON, got: {}",
                                        Clip(sink.body(), 200))),
                  true);
    }
    return fail(Malformed("the stream ended before a finish_reason or [DONE]"), true);
  }
  attempt.response = decoder.TakeResponse();
  return attempt;
}

}  // namespace agentd::model::openai_chat
