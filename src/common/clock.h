// Injected time source so tests can control time. Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace agentd {

class Clock {
 public:
  virtual ~Clock() = default;
  // Wall-clock milliseconds since the Unix epoch.
  virtual int64_t NowMillis() const = 0;
  // Monotonic time for measuring durations.
  virtual std::chrono::steady_clock::time_point Steady() const = 0;
};

class SystemClock final : public Clock {
 public:
  int64_t NowMillis() const override;
  std::chrono::steady_clock::time_point Steady() const override {
    return std::chrono::steady_clock::now();
  }
  static SystemClock* Default();
};

// RFC 3339 with milliseconds in UTC, e.g. 2026-11-28T04:27:53.123Z.
std::string FormatRfc3339(int64_t millis);
// Unix milliseconds of an RFC 3339 date-time ("2026-11-28T04:27:53.123Z", any number of
// fraction digits, 'Z' or a numeric offset); nullopt when `text` is not one.
std::optional<int64_t> ParseRfc3339(std::string_view text);

}  // namespace agentd
