// A fake OpenAI-compatible Chat Completions server for tests and benchmarks.
//
// It stands in for paid model APIs, so it speaks the real wire protocol (non-streaming
// `chat.completion` objects, `chat.completion.chunk` Server-Sent Events ending in
// `data: [DONE]`, OpenAI-style error bodies) and can fail on demand. Answers are a pure
// function of the conversation; nothing sleeps unless a `hang_ms` fault asks for it.
//
// Endpoints
//   POST /v1/chat/completions, POST /chat/completions
//     OpenAI request body (model, messages, tools, stream, stream_options.include_usage).
//     Bad JSON or missing/empty `messages` -> 400 {"error":{"message","type":
//     "invalid_request_error","param","code"}}. With `require_key`, a missing or wrong
//     `Authorization: Bearer KEY` -> 401 (code "invalid_api_key"; the key is never echoed).
//   POST   /_fake/faults  {"faults":[FAULT, ...]}  appends to a FIFO queue
//   DELETE /_fake/faults                           clears the queue
//   GET    /_fake/stats   {"requests":N,"faults_pending":n,"last_request":BODY|null}
//   POST   /_fake/reset                            clears stats and faults
//
// Script (U = content of the last user message, k = number of `tool` messages after it;
// directive lines may appear anywhere in U, one per line):
//   call TOOL ARGS       (one or more lines) k == 0: one assistant message with all the calls
//                        as parallel tool_calls; k > 0: the final answer.
//   repeat N TOOL ARGS   while k < N: one call of TOOL; k >= N: the final answer.
//   say TEXT             the final answer's text.
//   ARGS is the rest of the line, sent verbatim as `arguments` (valid JSON or not; "{}" when
//   absent). Final answer: `say` text if present, else "done: " + the last tool message's
//   content if there are tool results after U, else "echo: " + U.
//   Tool call ids are "call_" + a unique suffix; finish_reason is "tool_calls" or "stop".
//   usage: prompt_tokens = max(1, chars of all message contents / 4), completion_tokens =
//   max(1, chars of the answer text or of all arguments / 4), total_tokens = their sum.
//
// Streaming (`"stream": true`): first chunk's delta has role "assistant"; text comes in at
// least two content deltas; each tool call starts with a delta carrying index, id, type and
// function.name with arguments "", then at least two argument fragments; then a chunk with
// finish_reason; with stream_options.include_usage a chunk with `"choices":[]` and usage
// (earlier chunks then carry "usage":null); then `data: [DONE]`.
//
// FAULT objects: each authenticated chat request pops one and applies it before looking at
// the body; `{}` lets one request through; `hang_ms` combines with the others.
//   {"status":429,"retry_after":"1","message":"..."}  that status with an OpenAI error body
//                                                     and optional Retry-After header
//   {"hang_ms":N}        waits N ms (cut short when the server stops), then answers
//   {"malformed":true}   200 with a body that is not JSON; streams: a garbage data line
//   {"drop":true}        streams: a few chunks, then the stream ends without finish_reason
//                        or [DONE]; non-streams: a truncated JSON body
//
// Connections are kept alive across answers, faults included (HTTP/1.1; a complete chunked
// stream, or a Content-Length body), unless the client sends `Connection: close`. A chat
// request is read in one pass without building a DOM (json_scan.h): handling one costs a
// few microseconds of CPU for a short conversation, about 0.25 ms for 600 items (360 kB),
// beyond what the HTTP server and the kernel spend.
//
// Thread-safe; requests run concurrently on the HTTP server's handler pool.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/json.h"
#include "common/status.h"

namespace agentd::fakes {

struct FakeModelOptions {
  std::string host = "127.0.0.1";  // listen address
  uint16_t port = 0;               // 0 picks a free port
  std::string require_key;         // when set, chat requests need "Authorization: Bearer <key>"
  int io_threads = 2;              // HTTP event-loop threads
  bool ignore_stream = false;      // answer as non-streaming even when "stream" is true
  bool flush_each_event = false;   // one HTTP chunk per SSE event (default: one per answer)
};

class FakeModelServer {
 public:
  virtual ~FakeModelServer() = default;

  virtual uint16_t port() const = 0;
  // "http://HOST:PORT/v1", the base URL a provider appends "/chat/completions" to.
  virtual std::string base_url() const = 0;

  // The same operations as the /_fake/ endpoints, for in-process tests.
  // Appends faults (the array under "faults"); fails with InvalidArgument naming the bad one.
  virtual Status AddFaults(const Json& faults) = 0;
  virtual void ClearFaults() = 0;
  virtual void Reset() = 0;
  // {"requests":N,"faults_pending":n,"last_request":...}
  virtual Json Stats() const = 0;

  // Interrupts hangs, finishes running requests and closes the listener. Idempotent; the
  // destructor calls it.
  virtual void Stop() = 0;
};

// Binds and starts serving. Fails when the address cannot be bound.
Result<std::unique_ptr<FakeModelServer>> StartFakeModel(FakeModelOptions options);

}  // namespace agentd::fakes
