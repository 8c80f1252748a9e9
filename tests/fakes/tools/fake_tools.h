// A tool server for tests and benchmarks: the destination of `http` tools.
//
// A real HTTP server (agentd::http::Server) with tools whose side effects can be counted,
// so tests can prove "applied exactly once" across retries and crashes, and that can fail
// on demand. Cheap: a request costs a map lookup under one mutex (no sleeping, no I/O)
// unless a fault, /slow or the state file asks for it.
//
// Tool endpoints (any method; bodies are JSON as sent by agentd's http tool invoker)
//   POST /echo          200, the request body echoed back verbatim.
//   POST /effect        an idempotent effect keyed by the Idempotency-Key header. The first
//                       request with a key applies it (effects_applied += 1, effect_no = that
//                       count) and stores the answer; later requests with the key apply
//                       nothing and get the stored answer with "applied": false.
//                       200 {"applied":true|false,"key":K,"effect_no":n,"args":BODY}.
//                       No key -> 400; body not JSON -> 400 (nothing applied).
//   POST /unsafe        a non-idempotent effect: every request applies (unsafe_applied += 1),
//                       counted per key too (key "" when absent). 200 {"effect_no":n}.
//   POST /status/CODE   answers CODE (200..599) with {"status":CODE} (no body for 204 and
//                       304); ?retry_after=V adds a Retry-After: V header.
//   POST /slow?ms=N     waits N ms (at most 600000; cut short when the server stops), then
//                       200 {"slept_ms":N}.
//   POST /garbage       200, Content-Type application/json, a body that is not JSON.
//   POST /big?bytes=N   200 with a JSON string of N bytes in total (at most 64 MiB).
//   POST /headers       200 with the request's headers as a JSON object (lower-cased names).
//   Anything else       404.
//
// Control endpoints (not counted in total_requests)
//   POST   /_fake/faults {"faults":[FAULT, ...]}  appends to a FIFO queue; 200 {"pending":n}
//   DELETE /_fake/faults                          clears the queue
//   GET    /_fake/stats  {"total_requests":n, "effects_applied":n, "unsafe_applied":n,
//                         "faults_pending":n,
//                         "per_key":{"KEY":{"requests":r,"applied":a}},        (/effect)
//                         "unsafe_per_key":{"KEY":{"requests":r,"applied":a}}} (/unsafe)
//   POST   /_fake/reset  clears counters, stored answers, faults and the state file
//
// FAULT objects: each request to /effect, /unsafe or /echo pops one (after it is counted in
// total_requests and per_key.requests) and is answered by it instead of the tool:
//   {"hang_ms":N}       first wait N ms (cut short when the server stops); alone: then 504
//   {"status":503, "retry_after":"1", "body":JSON}
//                       answer that status, optional Retry-After header and body
//                       (default {"error":"injected fault","status":503})
//   {"close":true}      drop the connection mid-response. The server API cannot close a
//                       connection without answering, so this sends a 200 chunked header and
//                       a partial chunk, then closes without the final chunk: clients see a
//                       truncated response (curl: "transfer closed with outstanding data").
//   {"apply":true}      combined with the above: the tool's effect IS applied (as a normal
//                       request would) before the fault answers - "processed, but the answer
//                       was lost". By default a faulted request applies nothing.
//
// State file (FakeToolOptions::state_file): every applied effect is appended as one JSON
// line {"tool":"effect"|"unsafe","key":K,"effect_no":n,"args":BODY} and fsync'd before the
// answer; on start the file is read back (a torn last line is ignored), so a restarted
// server keeps effects_applied, per_key.applied and the stored answers. Request counts are
// per process.
//
// Thread-safe; requests run concurrently on the HTTP server's handler pool.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/json.h"
#include "common/status.h"

namespace agentd::fakes {

struct FakeToolOptions {
  std::string host = "127.0.0.1";  // listen address
  uint16_t port = 0;               // 0 picks a free port
  std::string state_file;          // when set, applied effects are persisted here
  int io_threads = 2;              // HTTP event-loop threads
};

class FakeToolServer {
 public:
  virtual ~FakeToolServer() = default;

  virtual uint16_t port() const = 0;
  // "http://HOST:PORT" + path.
  virtual std::string Url(const std::string& path) const = 0;

  // The same operations as the /_fake/ endpoints, for in-process tests.
  // Appends faults (the array under "faults"); fails with InvalidArgument naming the bad one.
  virtual Status AddFaults(const Json& faults) = 0;
  virtual void ClearFaults() = 0;
  virtual Status Reset() = 0;
  virtual Json Stats() const = 0;

  // Interrupts waits, finishes running requests and closes the listener. Idempotent; the
  // destructor calls it.
  virtual void Stop() = 0;
};

// Loads the state file (if any), binds and starts serving. Fails when the address cannot be
// bound or the state file cannot be opened.
Result<std::unique_ptr<FakeToolServer>> StartFakeTools(FakeToolOptions options);

}  // namespace agentd::fakes
