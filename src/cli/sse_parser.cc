#include "cli/sse_parser.h"

#include <fmt/format.h>

#include <utility>

namespace agentd::cli {

SseParser::SseParser(Handler handler, size_t max_event_bytes)
    : handler_(std::move(handler)), max_event_bytes_(max_event_bytes) {}

Status SseParser::Feed(std::string_view chunk) {
  while (!chunk.empty() && !stopped_ && error_.ok()) {
    if (after_cr_) {
      after_cr_ = false;
      if (chunk.front() == '\n') {  // the LF of a CRLF split across two chunks
        chunk.remove_prefix(1);
        continue;
      }
    }
    size_t end = chunk.find_first_of("\r\n");
    if (end == std::string_view::npos) {
      if (line_.size() + chunk.size() > max_event_bytes_) {
        error_ = ResourceExhausted(
            fmt::format("event stream line longer than {} bytes", max_event_bytes_));
        break;
      }
      line_.append(chunk);
      break;
    }
    if (line_.size() + end > max_event_bytes_) {
      error_ = ResourceExhausted(
          fmt::format("event stream line longer than {} bytes", max_event_bytes_));
      break;
    }
    if (line_.empty()) {
      ProcessLine(chunk.substr(0, end));
    } else {
      line_.append(chunk.substr(0, end));
      std::string line = std::move(line_);
      line_.clear();
      ProcessLine(line);
    }
    if (chunk[end] == '\r') {
      if (end + 1 < chunk.size()) {
        chunk.remove_prefix(end + (chunk[end + 1] == '\n' ? 2 : 1));
      } else {
        after_cr_ = true;
        chunk.remove_prefix(end + 1);
      }
    } else {
      chunk.remove_prefix(end + 1);
    }
  }
  return error_;
}

void SseParser::ProcessLine(std::string_view line) {
  if (first_line_) {
    first_line_ = false;
    if (line.substr(0, 3) == "\xEF\xBB\xBF") line.remove_prefix(3);
  }
  if (line.empty()) {
    Dispatch();
    return;
  }
  if (line.front() == ':') return;  // comment, e.g. a keep-alive
  std::string_view field = line;
  std::string_view value;
  size_t colon = line.find(':');
  if (colon != std::string_view::npos) {
    field = line.substr(0, colon);
    value = line.substr(colon + 1);
    if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  }
  if (field == "data") {
    if (data_.size() + value.size() + 1 > max_event_bytes_) {
      error_ = ResourceExhausted(
          fmt::format("event stream event larger than {} bytes", max_event_bytes_));
      return;
    }
    data_.append(value);
    data_.push_back('\n');
    has_data_ = true;
  } else if (field == "event") {
    type_ = std::string(value);
  } else if (field == "id") {
    if (value.find('\0') == std::string_view::npos) last_event_id_ = std::string(value);
  } else if (field == "retry") {
    if (!value.empty() && value.size() <= 12 &&
        value.find_first_not_of("0123456789") == std::string_view::npos) {
      retry_ms_ = std::stoll(std::string(value));
    }
  }
  // Any other field is ignored, as the format requires.
}

void SseParser::Dispatch() {
  if (!has_data_) {  // an event without data is not dispatched
    type_.clear();
    return;
  }
  SseEvent event;
  event.data = std::move(data_);
  event.data.pop_back();  // the '\n' after the last data line
  if (!type_.empty()) event.type = std::move(type_);
  event.id = last_event_id_;
  data_.clear();
  type_.clear();
  has_data_ = false;
  if (!handler_(event)) stopped_ = true;
}

}  // namespace agentd::cli
