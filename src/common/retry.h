// Retry policy shared by model calls and tool calls: capped exponential backoff, and a
// server's Retry-After wins when it asks for a longer wait (capped by max_backoff_ms).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <optional>

namespace agentd {

struct RetryPolicy {
  int max_attempts = 3;              // total attempts, including the first
  int64_t initial_backoff_ms = 200;  // wait before the second attempt
  double backoff_multiplier = 2.0;   // growth per further attempt
  int64_t max_backoff_ms = 10000;    // cap on any single wait
};

// Wait before attempt number `next_attempt` (2 = the first retry).
inline std::chrono::milliseconds BackoffFor(const RetryPolicy& p, int next_attempt,
                                            std::optional<std::chrono::milliseconds> retry_after) {
  double ms = static_cast<double>(p.initial_backoff_ms) *
              std::pow(p.backoff_multiplier, std::max(0, next_attempt - 2));
  int64_t wait = static_cast<int64_t>(std::min<double>(ms, static_cast<double>(p.max_backoff_ms)));
  if (retry_after) wait = std::max<int64_t>(wait, retry_after->count());
  wait = std::min<int64_t>(wait, p.max_backoff_ms);
  return std::chrono::milliseconds(std::max<int64_t>(0, wait));
}

}  // namespace agentd
