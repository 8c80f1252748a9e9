// Blocking HTTP/1.1 client on libcurl, used for model providers and http tools.
//
// Each calling thread keeps its own curl handle, so keep-alive connections are reused
// across calls from that thread. Transport failures map to Status codes: no connection
// made (refused, unresolvable; nothing was sent) -> Unavailable, connection broken after
// the request went out (the effect is unknown) -> Aborted, timeout -> DeadlineExceeded,
// body over the limit -> ResourceExhausted. An HTTP error status is not a Status error: callers read `status`.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace agentd {

struct HttpRequest {
  std::string method = "POST";
  std::string url;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
  std::chrono::milliseconds timeout{60000};
  std::chrono::milliseconds connect_timeout{5000};
  size_t max_response_bytes = 16u << 20;
  // When set, body bytes are passed here as they arrive instead of being collected;
  // returning false aborts the transfer (the call then fails with Cancelled).
  std::function<bool(std::string_view)> on_body;
  // Polled while the transfer runs; returning true aborts it with Cancelled.
  std::function<bool()> should_abort;
  // When set, the TCP connection goes to this address (an IP literal, checked by the
  // caller) instead of wherever the URL's host name resolves now: a name checked against a
  // policy cannot be re-pointed between the check and the connect. Host header and TLS
  // name stay the URL's.
  std::string connect_address;
};

struct HttpResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // keys lower-cased
  std::string body;

  std::string Header(const std::string& lower_name) const {
    auto it = headers.find(lower_name);
    return it == headers.end() ? std::string() : it->second;
  }
};

// Performs one request on the calling thread's connection cache. Blocking.
Result<HttpResponse> HttpDoBlocking(const HttpRequest& req);

// Sets header `name` to `value`, replacing any header of that name in any case.
void SetHeader(std::vector<std::pair<std::string, std::string>>& headers, const std::string& name,
               std::string value);

// Parses a Retry-After value (delta-seconds or an HTTP-date) into a delay.
std::optional<std::chrono::milliseconds> ParseRetryAfter(std::string_view value);

}  // namespace agentd
