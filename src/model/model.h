// The model layer: one interface for every model provider.
//
// A provider makes exactly one attempt per call and classifies its failure; the engine owns
// retries so that each attempt is journaled (model_call.failed) and can be cancelled.
// Conversation items use agentd's canonical item format (docs/state-format.md):
//   {"type":"message","role":"user"|"assistant","content":"text"}
//   {"type":"function_call","call_id":"...","name":"...","arguments":"<JSON text>"}
//   {"type":"function_call_output","call_id":"...","output":"<text>"}
// Implementations are thread-safe: many sessions call one provider concurrently.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/json.h"
#include "common/status.h"

namespace agentd::model {

struct ToolSpec {
  std::string name;
  std::string description;
  Json parameters;  // JSON Schema of the arguments object
};

struct ModelRequest {
  std::string model;     // provider's model name
  std::string base_url;  // e.g. https://api.openai.com/v1 ("/chat/completions" is appended)
  std::string api_key;   // may be empty (local servers); never logged or put in errors
  std::string instructions;  // system prompt; may be empty
  Json items = Json::array();  // the conversation, canonical items, oldest first
  std::vector<ToolSpec> tools;
  std::chrono::milliseconds timeout{120000};  // whole-call deadline
  // Polled during the call; true aborts it (result: Cancelled).
  std::function<bool()> should_abort;
  // Called with each text delta as it streams in (optional).
  std::function<void(std::string_view)> on_text_delta;
};

struct ToolCall {
  std::string call_id;
  std::string name;
  std::string arguments;  // JSON text as the model produced it; may be malformed
};

struct Usage {
  int64_t input_tokens = 0;
  int64_t output_tokens = 0;
  int64_t total_tokens = 0;
};

struct ModelResponse {
  std::string text;                 // assistant text (may be empty when only tools are called)
  std::vector<ToolCall> tool_calls;  // in the order the model gave them
  std::string finish_reason;
  Usage usage;
};

// The outcome of one attempt.
struct ModelAttempt {
  std::optional<ModelResponse> response;  // set on success
  Status error;                           // set on failure: message safe to journal
  bool retryable = false;                 // 429, 5xx, timeouts, refused/dropped connections
  std::optional<std::chrono::milliseconds> retry_after;  // from the Retry-After header
  int http_status = 0;                    // 0 when no HTTP response arrived
};

// What a provider keeps between the calls of one conversation so that each call encodes
// only the items added since the previous one. The caller owns it (one per conversation, used
// by one call at a time) and never looks inside; a cache that does not fit a request is
// rebuilt by the provider.
class EncodeCache {
 public:
  virtual ~EncodeCache() = default;
};

// A call is two phases, so that the caller can encode straight from the conversation it
// holds (under its own lock, with no copy) and make the slow HTTP attempt without it:
//   Result<std::string> body = provider.EncodeBody(request, live_items);  // lock held
//   ModelAttempt a = provider.CallEncodedBlocking(request, std::move(*body));  // unlocked
// CallBlocking does both with request.items.
class ModelProvider {
 public:
  virtual ~ModelProvider() = default;

  // The request body for `request` with `items` (canonical items, oldest first) as the
  // conversation; request.items is not read. Reads only its arguments, never blocks and
  // keeps no reference to them. InvalidArgument names the first malformed item. With a
  // `cache` (may be null) from earlier calls of the same conversation, the work is
  // proportional to the items added since.
  virtual Result<std::string> EncodeBody(const ModelRequest& request, const Json& items,
                                         std::unique_ptr<EncodeCache>* cache) const = 0;
  Result<std::string> EncodeBody(const ModelRequest& request, const Json& items) const {
    return EncodeBody(request, items, nullptr);
  }

  // One attempt sending `body` (from EncodeBody; request.items is ignored). Blocking; runs
  // on the caller's thread.
  virtual ModelAttempt CallEncodedBlocking(const ModelRequest& request, std::string body) = 0;

  // EncodeBody(request, request.items), then CallEncodedBlocking. A conversation that
  // cannot be encoded fails the attempt, not retryable. Blocking.
  ModelAttempt CallBlocking(const ModelRequest& request) {
    Result<std::string> body = EncodeBody(request, request.items);
    if (!body.ok()) {
      ModelAttempt attempt;
      attempt.error = body.status();
      return attempt;
    }
    return CallEncodedBlocking(request, std::move(body).value());
  }
};

}  // namespace agentd::model
