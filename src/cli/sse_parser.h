// Incremental parser for a text/event-stream body (Server-Sent Events, as the WHATWG HTML
// standard defines the format): the bytes may arrive split anywhere, lines end in LF, CRLF or
// CR, lines starting with ':' are comments, several `data:` lines join with '\n', and an
// event is dispatched at the blank line that ends it. agentd's streams are described in
// docs/api/ (one event per journal record: `id: <seq>`, `event: <type>`, `data: <JSON>`).
//
// Not thread-safe: one parser belongs to one transfer and is fed from its callback.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"

namespace agentd::cli {

struct SseEvent {
  std::string type = "message";  // the `event:` field; "message" when absent
  std::string data;              // `data:` lines joined with '\n'
  std::string id;                // the last `id:` seen on the stream so far (may be empty)
};

class SseParser {
 public:
  // Called once per complete event; returning false stops the parser (Feed then ignores the
  // rest of its input and stopped() becomes true).
  using Handler = std::function<bool(const SseEvent&)>;

  // `max_event_bytes` bounds one line and one event's data, so a server that never ends a
  // line cannot make the client buffer without limit.
  explicit SseParser(Handler handler, size_t max_event_bytes = 8u << 20);

  // Consumes the next piece of the stream. Fails with ResourceExhausted when a line or an
  // event exceeds the limit; after a failure or a stop further calls do nothing.
  Status Feed(std::string_view chunk);

  // True once the handler returned false.
  bool stopped() const { return stopped_; }
  // The last `id:` field seen, as a client sends it back in Last-Event-ID.
  const std::string& last_event_id() const { return last_event_id_; }
  // The last valid `retry:` field, in milliseconds.
  std::optional<int64_t> retry_ms() const { return retry_ms_; }

 private:
  // Handles one line without its terminator.
  void ProcessLine(std::string_view line);
  void Dispatch();

  Handler handler_;
  size_t max_event_bytes_;
  std::string line_;        // the current, not yet terminated line
  bool after_cr_ = false;   // the previous byte was a CR, so an LF now ends nothing
  bool first_line_ = true;  // a UTF-8 BOM may start the stream
  std::string type_;        // event type buffer
  std::string data_;        // data buffer, each line followed by '\n'
  bool has_data_ = false;
  std::string last_event_id_;
  std::optional<int64_t> retry_ms_;
  bool stopped_ = false;
  Status error_;
};

}  // namespace agentd::cli
