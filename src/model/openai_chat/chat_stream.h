// Incremental decoding of a Chat Completions response body: the Server-Sent Events framing
// (SseParser) and the accumulation of `chat.completion.chunk` objects into one
// ModelResponse (ChatStreamDecoder). Neither does I/O; both are single-threaded objects
// owned by one call.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"
#include "model/model.h"

namespace agentd::model::openai_chat {

// Splits a text/event-stream into the data of each event. Bytes may arrive split anywhere;
// lines end in LF, CRLF or CR. `data:` takes an optional single space after the colon;
// comment lines (":...") and other fields (event, id, retry) are skipped.
class SseParser {
 public:
  using DataFn = std::function<Status(std::string_view data)>;

  // Calls `on_data` with each complete event's data (several data lines joined by '\n').
  // Returns the first error `on_data` returns; the parser must not be fed after that.
  Status Feed(std::string_view bytes, const DataFn& on_data);
  // End of input: dispatches a last event that was not followed by a blank line.
  Status Finish(const DataFn& on_data);

 private:
  Status Line(std::string_view line, const DataFn& on_data);

  std::string partial_;     // bytes of the current line not yet ended
  std::string data_;        // data of the event being read
  bool has_data_ = false;   // a data line was seen in the current event
  bool skip_lf_ = false;    // the previous byte was a CR ending a line
};

// Accumulates chat.completion.chunk objects (or one whole chat.completion) into a
// ModelResponse: content deltas are concatenated (and passed to `on_text_delta`), tool
// call deltas are merged by index, and finish_reason and usage are kept.
class ChatStreamDecoder {
 public:
  explicit ChatStreamDecoder(std::function<void(std::string_view)> on_text_delta = nullptr);

  // Applies one event's data: a chunk object or "[DONE]". Fails with InvalidArgument when
  // the data is not a JSON object; the message quotes the start of the data.
  Status OnData(std::string_view data);
  // Applies a whole non-streaming `chat.completion` body.
  Status OnCompletion(std::string_view body);

  bool done() const { return done_; }                     // "[DONE]" seen
  bool finished() const { return !finish_reason_.empty(); }  // a finish_reason seen
  int64_t events() const { return events_; }              // data events applied
  // The message of an {"error":{...}} object the server sent instead of a chunk.
  const std::optional<std::string>& server_error() const { return server_error_; }

  // The accumulated response; finish_reason is inferred when the server sent none.
  ModelResponse TakeResponse();

 private:
  struct Slot {
    int64_t index;  // the index the server gave the call
    ToolCall call;
  };
  Status ApplyChunk(const Json& chunk);
  void ApplyToolCallDelta(const Json& delta, size_t position);
  void ApplyUsage(const Json& usage);
  void AppendText(std::string_view text);

  std::function<void(std::string_view)> on_text_delta_;
  std::string text_;
  std::vector<Slot> slots_;
  std::string finish_reason_;
  Usage usage_;
  bool done_ = false;
  int64_t events_ = 0;
  std::optional<std::string> server_error_;
};

}  // namespace agentd::model::openai_chat
