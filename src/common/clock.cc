#include "common/clock.h"

#include <ctime>

#include <fmt/format.h>

namespace agentd {

int64_t SystemClock::NowMillis() const {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

SystemClock* SystemClock::Default() {
  static SystemClock clock;
  return &clock;
}

std::string FormatRfc3339(int64_t millis) {
  time_t secs = static_cast<time_t>(millis / 1000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  return fmt::format("{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}Z", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     static_cast<int>(millis % 1000));
}

std::optional<int64_t> ParseRfc3339(std::string_view t) {
  size_t i = 0;
  auto digits = [&](int n, int* out) {
    int v = 0;
    for (int k = 0; k < n; ++k, ++i) {
      if (i >= t.size() || t[i] < '0' || t[i] > '9') return false;
      v = v * 10 + (t[i] - '0');
    }
    *out = v;
    return true;
  };
  auto lit = [&](char c) {
    if (i >= t.size() || (t[i] != c && !(c == 'T' && t[i] == 't'))) return false;
    ++i;
    return true;
  };
  int y, mo, d, h, mi, s;
  if (!digits(4, &y) || !lit('-') || !digits(2, &mo) || !lit('-') || !digits(2, &d) ||
      !lit('T') || !digits(2, &h) || !lit(':') || !digits(2, &mi) || !lit(':') ||
      !digits(2, &s)) {
    return std::nullopt;
  }
  static constexpr int kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  if (mo < 1 || mo > 12 || d < 1 || d > kDays[mo - 1] || (mo == 2 && d == 29 && !leap) ||
      h > 23 || mi > 59 || s > 60) {
    return std::nullopt;
  }
  int64_t millis = 0;
  if (i < t.size() && t[i] == '.') {
    ++i;
    int n = 0;
    while (i < t.size() && t[i] >= '0' && t[i] <= '9') {
      if (n < 3) millis = millis * 10 + (t[i] - '0');
      ++n;
      ++i;
    }
    if (n == 0) return std::nullopt;
    for (; n < 3; ++n) millis *= 10;
  }
  int offset_min = 0;
  if (i < t.size() && (t[i] == 'Z' || t[i] == 'z')) {
    ++i;
  } else if (i < t.size() && (t[i] == '+' || t[i] == '-')) {
    int sign = t[i] == '-' ? -1 : 1;
    ++i;
    int oh, om;
    if (!digits(2, &oh) || !lit(':') || !digits(2, &om) || oh > 23 || om > 59) {
      return std::nullopt;
    }
    offset_min = sign * (oh * 60 + om);
  } else {
    return std::nullopt;
  }
  if (i != t.size()) return std::nullopt;
  struct tm tm = {};
  tm.tm_year = y - 1900;
  tm.tm_mon = mo - 1;
  tm.tm_mday = d;
  tm.tm_hour = h;
  tm.tm_min = mi;
  tm.tm_sec = s == 60 ? 59 : s;  // a leap second counts as the second before it
  int64_t secs = static_cast<int64_t>(timegm(&tm)) - int64_t{offset_min} * 60;
  return secs * 1000 + millis;
}

}  // namespace agentd
