// ApiClient: agentctl's side of agentd's HTTP API (docs/api/). It adds the base URL, the
// bearer token and the JSON headers to each request, and turns a text/event-stream body into
// SseEvents as it arrives. Everything here blocks the calling thread; one ApiClient is used by
// one thread (the libcurl handle underneath is per thread).
//
// The API key is only ever put in the Authorization header: it is never printed, logged or
// included in an error message.
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cli/sse_parser.h"
#include "common/json.h"
#include "common/status.h"

namespace agentd::cli {

struct ClientOptions {
  std::string server = "http://127.0.0.1:8080";  // base URL; a trailing '/' is ignored
  std::string api_key;                           // sent as "Bearer <key>" when non-empty
  std::chrono::milliseconds timeout{60000};      // whole-request limit, except for streams
  std::chrono::milliseconds connect_timeout{5000};
};

using Headers = std::vector<std::pair<std::string, std::string>>;

struct ApiResponse {
  int http_status = 0;
  std::string content_type;  // lower-cased media type without parameters
  // The body. For a stream it holds only the start of the body (enough for a problem+json
  // error), since the events were passed to the handler instead.
  std::string body;

  bool ok() const { return http_status >= 200 && http_status < 300; }
};

// What the server said went wrong, from an application/problem+json body
// {type,title,status,detail} or, failing that, from the status line and raw body.
struct ApiProblem {
  int http_status = 0;
  std::string title;
  std::string detail;
};

ApiProblem ProblemFromResponse(const ApiResponse& response);

// "<detail> (HTTP <status>)", the text printed after "error: ".
std::string FormatProblem(const ApiProblem& problem);

// Percent-encodes everything but RFC 3986 unreserved characters, for a path segment or a
// query value.
std::string UrlEncode(std::string_view s);

// Builds "?k1=v1&k2=v2" from the pairs whose value is non-empty ("" when none are).
std::string QueryString(const std::vector<std::pair<std::string, std::string>>& params);

// Parses a response body as JSON; an empty body is null. Fails with Internal naming `what`.
Result<Json> ParseResponseJson(const ApiResponse& response, std::string_view what);

class ApiClient {
 public:
  explicit ApiClient(ClientOptions options);

  // Sends one request. `path` starts with '/' and may carry a query; `body` (when not null)
  // is sent as application/json. Any HTTP status is a successful call: the caller checks
  // ok(). Fails only when no response arrived (Unavailable, DeadlineExceeded, or
  // InvalidArgument for a malformed server URL).
  Result<ApiResponse> CallBlocking(std::string_view method, std::string_view path, const Json* body,
                                   const Headers& extra_headers = {});

  // Sends `body` as is, labelled `content_type` (no body when empty), and answers the raw
  // response, up to `max_response_bytes`. For files: an export downloaded, one uploaded.
  Result<ApiResponse> TransferBlocking(std::string_view method, std::string_view path,
                                       std::string body, std::string_view content_type,
                                       size_t max_response_bytes);

  // Like CallBlocking, but asks for text/event-stream and passes each event to `on_event`
  // as it arrives, with no overall time limit. Returns when the server ends the body or
  // `on_event` returns false (both are successes). A non-2xx answer is returned with its body
  // and no events. Fails like CallBlocking, and when the connection drops mid-stream
  // (Unavailable) or the stream is malformed (ResourceExhausted).
  Result<ApiResponse> StreamBlocking(std::string_view method, std::string_view path,
                                     const Json* body, const Headers& extra_headers,
                                     const SseParser::Handler& on_event);

  const ClientOptions& options() const { return options_; }

 private:
  Headers BaseHeaders(const Json* body) const;

  ClientOptions options_;
};

}  // namespace agentd::cli
