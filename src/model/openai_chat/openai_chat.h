// The "openai-chat" model provider: OpenAI Chat Completions and every server that speaks
// it (vLLM, llama.cpp, Ollama, LiteLLM, ...).
//
// Each call makes exactly one streaming POST to `base_url + "/chat/completions"` and
// decodes the Server-Sent Events as they arrive (a plain JSON answer from a server that
// ignores "stream" is accepted too). Failures are classified for the engine's retry loop:
//   429, 408, 5xx, refused/dropped connections, timeouts, malformed or truncated streams
//     -> retryable (429/5xx carry the server's Retry-After);
//   other 4xx, bad URL, bad conversation items, oversized responses -> not retryable;
//   should_abort -> Cancelled, not retryable.
// Error messages quote the server's error.message (truncated) and never contain the API key.
// Stateless and thread-safe: one instance serves every session.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "common/json.h"
#include "common/status.h"
#include "model/model.h"

namespace agentd::model::openai_chat {

struct OpenAIChatOptions {
  size_t max_response_bytes = 16u << 20;          // larger responses fail, not retryable
  std::chrono::milliseconds connect_timeout{5000};  // TCP/TLS connect limit per attempt
  size_t max_error_message_bytes = 500;           // server error text kept in messages
};

class OpenAIChatProvider final : public ModelProvider {
 public:
  explicit OpenAIChatProvider(OpenAIChatOptions options = {});

  // EncodeChatRequestBody below.
  using ModelProvider::EncodeBody;
  Result<std::string> EncodeBody(const ModelRequest& request, const Json& items,
                                 std::unique_ptr<EncodeCache>* cache) const override;
  // One attempt; see the file comment for how failures are classified. Blocking.
  ModelAttempt CallEncodedBlocking(const ModelRequest& request, std::string body) override;

 private:
  const OpenAIChatOptions options_;
};

// The Chat Completions request body (JSON text) for `request` with `items` as its
// conversation: instructions become a leading system message, consecutive function_call
// items one assistant message with tool_calls (merged into an assistant text message right
// before them), function_call_output items `tool` messages; always streaming with usage.
// Items of other types are skipped (they have no Chat Completions form). Written directly
// as text in one pass, usually into one allocation; invalid UTF-8 becomes U+FFFD. InvalidArgument
// names the first malformed item.
Result<std::string> EncodeChatRequestBody(const ModelRequest& request, const Json& items);
// The same body, written from *cache when it was built for the same instructions, model,
// tools and conversation (the items array at the same address, grown by appending): only
// the items added since the last call are encoded. A cache that does not fit is rebuilt; a
// null `cache` encodes from scratch.
Result<std::string> EncodeChatRequestBody(const ModelRequest& request, const Json& items,
                                          std::unique_ptr<EncodeCache>* cache);

}  // namespace agentd::model::openai_chat
