// The `http` tool kind: one POST of the model's arguments to the tool's URL.
//
// Outcome classes (the engine retries kRetryable under the agent's policy, with the same
// Idempotency-Key):
//   2xx                       -> kOk, the body ("{}" when empty)
//   408, 429, 5xx             -> kRetryable, honouring Retry-After
//   other 4xx, 1xx, 3xx       -> kToolError, "tool 'x' answered HTTP n: <body prefix>"
//   timeout, refused, dropped -> kRetryable
//   response over 1 MiB, bad URL -> kToolError
//   should_abort              -> kRetryable, "cancelled"
#include <fmt/format.h>

#include <algorithm>

#include "common/http_client.h"
#include "tools/tools.h"

namespace agentd::tools {
namespace {

constexpr size_t kMaxToolResponseBytes = 1u << 20;
constexpr size_t kMaxErrorBodyBytes = 1000;
constexpr int64_t kMaxConnectTimeoutMs = 5000;

// The first `max` bytes of `body`, not splitting a UTF-8 sequence.
std::string_view Prefix(std::string_view body, size_t max) {
  if (body.size() <= max) return body;
  size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(body[cut]) & 0xC0) == 0x80) --cut;
  return body.substr(0, cut);
}

ToolOutcome Outcome(ToolOutcome::Kind kind, std::string output, int http_status = 0) {
  ToolOutcome o;
  o.kind = kind;
  o.output = std::move(output);
  o.http_status = http_status;
  return o;
}

}  // namespace

ToolOutcome CallHttpToolBlocking(const HttpToolSpec& spec, std::string_view arguments_json,
                                 std::string_view idempotency_key,
                                 const std::function<bool()>& should_abort) {
  using Kind = ToolOutcome::Kind;
  if (should_abort && should_abort()) return Outcome(Kind::kRetryable, "cancelled");

  int64_t timeout_ms = std::max<int64_t>(1, spec.timeout_ms);
  HttpRequest req;
  req.method = "POST";
  req.url = spec.url;
  req.headers = {
      {"Content-Type", "application/json"},
      {"Accept", "application/json"},
      {"Idempotency-Key", std::string(idempotency_key)},
      {"User-Agent", "agentd/0.1"},
  };
  for (const auto& h : spec.headers) req.headers.push_back(h);
  req.body = std::string(arguments_json);
  req.timeout = std::chrono::milliseconds(timeout_ms);
  req.connect_timeout = std::chrono::milliseconds(std::min(timeout_ms, kMaxConnectTimeoutMs));
  req.max_response_bytes = kMaxToolResponseBytes;
  if (should_abort) req.should_abort = should_abort;

  Result<HttpResponse> res = HttpDoBlocking(req);
  if (!res.ok()) {
    const Status& st = res.status();
    switch (st.code()) {
      case StatusCode::kCancelled:
        return Outcome(Kind::kRetryable, "cancelled");
      case StatusCode::kDeadlineExceeded:
        return Outcome(Kind::kRetryable,
                       fmt::format("tool '{}' timed out after {} ms", spec.name, timeout_ms));
      case StatusCode::kResourceExhausted:
        return Outcome(Kind::kToolError, "tool response larger than 1 MiB");
      case StatusCode::kInvalidArgument:
        return Outcome(Kind::kToolError,
                       fmt::format("tool '{}' has an unusable url: {}", spec.name, st.message()));
      case StatusCode::kUnavailable: {
        ToolOutcome o = Outcome(Kind::kRetryable,
                                fmt::format("tool '{}' unreachable: {}", spec.name, st.message()));
        o.not_sent = true;
        return o;
      }
      default:
        return Outcome(Kind::kRetryable,
                       fmt::format("tool '{}' failed: {}", spec.name, st.message()));
    }
  }

  HttpResponse& resp = *res;
  int code = resp.status;
  if (code >= 200 && code < 300) {
    if (resp.body.empty()) resp.body = "{}";
    return Outcome(Kind::kOk, std::move(resp.body), code);
  }
  std::string text = fmt::format("tool '{}' answered HTTP {}: {}", spec.name, code,
                                 Prefix(resp.body, kMaxErrorBodyBytes));
  // 408 and 429 mean "not processed, try again later", like a 5xx.
  if (code >= 500 || code == 429 || code == 408) {
    ToolOutcome o = Outcome(Kind::kRetryable, std::move(text), code);
    o.retry_after = ParseRetryAfter(resp.Header("retry-after"));
    return o;
  }
  return Outcome(Kind::kToolError, std::move(text), code);
}

}  // namespace agentd::tools
