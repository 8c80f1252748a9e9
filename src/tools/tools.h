// The tools layer: how a tool call is carried out, one attempt at a time.
//
// As with models, the engine owns retries and journaling; an invoker makes one attempt and
// classifies the outcome. Thread-safe.
#pragma once

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/json.h"
#include "common/status.h"

namespace agentd::tools {

// An `http` tool from an agent definition.
struct HttpToolSpec {
  std::string name;
  std::string url;
  int64_t timeout_ms = 30000;
  bool idempotent = false;
  // Sent with every request of the call (Authorization with agentd's token for the call).
  std::vector<std::pair<std::string, std::string>> headers;
};

struct ToolOutcome {
  enum class Kind {
    kOk,         // 2xx: `output` is the body, given to the model
    kToolError,  // 4xx or a refusal: `output` is the error text, given to the model, no retry
    kRetryable,  // 5xx, timeout, refused or dropped connection: `output` describes it
  };
  Kind kind = Kind::kOk;
  std::string output;
  std::optional<std::chrono::milliseconds> retry_after;
  int http_status = 0;
  // True when no connection was made, so the tool cannot have seen the request.
  bool not_sent = false;
};

// POSTs `arguments_json` to the tool's URL with the given Idempotency-Key. Blocking.
// `should_abort` (optional) is polled; when it returns true the call is abandoned and the
// outcome is kRetryable with output "cancelled".
ToolOutcome CallHttpToolBlocking(const HttpToolSpec& spec, std::string_view arguments_json,
                                 std::string_view idempotency_key,
                                 const std::function<bool()>& should_abort);

}  // namespace agentd::tools
