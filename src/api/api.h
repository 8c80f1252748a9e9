// The native REST API (v1): routing, request validation, problem+json errors (RFC 9457) and
// Server-Sent Events. Handlers run on the HTTP server's blocking pool (docs/threading.md).
// The contract is docs/api/openapi.yaml.
#pragma once

#include <functional>
#include <string>

#include "api/http/server.h"
#include "common/status.h"
#include "engine/engine.h"

namespace agentd::api {

struct ApiOptions {
  std::chrono::milliseconds wait_timeout{300000};  // longest `wait: true` before a 202
  std::chrono::milliseconds heartbeat{15000};      // SSE comment interval on a quiet stream
};

// Maps a canonical status code to its HTTP status: the one table for the whole API.
int HttpStatusFor(StatusCode code);
// A problem+json response for `status`.
http::Response ProblemResponse(const Status& status);
// True for POST /v1/sessions:import, whose body (an export file) has its own size limit.
bool IsImportRequest(std::string_view method, std::string_view target);

class Api {
 public:
  // `ready` tells /readyz whether start-up (recovery) is complete.
  Api(ApiOptions options, engine::Engine* engine, std::function<Json()> ready_info);
  void Handle(const http::Request& req, http::Exchange& ex);

 private:
  void HandleTurnsPost(const http::Request& req, http::Exchange& ex, const std::string& sid);
  void HandleEvents(const http::Request& req, http::Exchange& ex, const std::string& sid);
  void HandleExport(http::Exchange& ex, const std::string& sid);
  void HandleImport(const http::Request& req, http::Exchange& ex);
  // Streams the session's events from `after` until `until` returns true for an event.
  void StreamEvents(http::Exchange& ex, const std::string& sid, int64_t after,
                    const std::string& only_turn, bool stop_at_turn_end);

  ApiOptions options_;
  engine::Engine* engine_;
  std::function<Json()> ready_info_;
};

}  // namespace agentd::api
