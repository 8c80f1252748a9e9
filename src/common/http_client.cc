#include "common/http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <memory>
#include <mutex>

#include <fmt/format.h>

namespace agentd {
namespace {

struct CurlGlobal {
  CurlGlobal() { curl_global_init(CURL_GLOBAL_DEFAULT); }
};

struct HandleDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};

CURL* ThreadHandle() {
  static CurlGlobal global;
  thread_local std::unique_ptr<CURL, HandleDeleter> handle(curl_easy_init());
  curl_easy_reset(handle.get());
  return handle.get();
}

struct Transfer {
  const HttpRequest* req;
  HttpResponse* resp;
  bool too_big = false;
  bool aborted = false;
};

size_t OnWrite(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  if (t->req->on_body) {
    if (!t->req->on_body(std::string_view(data, len))) {
      t->aborted = true;
      return 0;
    }
    return len;
  }
  if (t->resp->body.size() + len > t->req->max_response_bytes) {
    t->too_big = true;
    return 0;
  }
  t->resp->body.append(data, len);
  return len;
}

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  std::string_view line(data, len);
  if (line.rfind("HTTP/", 0) == 0) {
    t->resp->headers.clear();  // a new response (after 100-continue or a redirect)
    return len;
  }
  auto colon = line.find(':');
  if (colon == std::string_view::npos) return len;
  std::string key(line.substr(0, colon));
  std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) {
    return static_cast<char>(std::tolower(c));
  });
  std::string_view value = line.substr(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' ')) {
    value.remove_suffix(1);
  }
  t->resp->headers[key] = std::string(value);
  return len;
}

int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  if (t->req->should_abort && t->req->should_abort()) {
    t->aborted = true;
    return 1;
  }
  return 0;
}

}  // namespace

void SetHeader(std::vector<std::pair<std::string, std::string>>& headers, const std::string& name,
               std::string value) {
  std::erase_if(headers, [&](const auto& h) {
    return h.first.size() == name.size() &&
           std::equal(name.begin(), name.end(), h.first.begin(), [](char a, char b) {
             return std::tolower(static_cast<unsigned char>(a)) ==
                    std::tolower(static_cast<unsigned char>(b));
           });
  });
  headers.emplace_back(name, std::move(value));
}

Result<HttpResponse> HttpDoBlocking(const HttpRequest& req) {
  CURL* c = ThreadHandle();
  if (c == nullptr) return Internal("curl_easy_init failed");
  HttpResponse resp;
  Transfer t{&req, &resp};

  curl_easy_setopt(c, CURLOPT_URL, req.url.c_str());
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, static_cast<long>(req.timeout.count()));
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(req.connect_timeout.count()));
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, OnWrite);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
  if (req.should_abort) {
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, OnProgress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, &t);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  }
  if (req.method == "GET") {
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, req.body.data());
    curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, static_cast<long>(req.body.size()));
  }
  struct curl_slist* headers = nullptr;
  // Disable "Expect: 100-continue": it costs a round trip on every larger POST.
  headers = curl_slist_append(headers, "Expect:");
  for (const auto& [k, v] : req.headers) {
    std::string line = k + ": " + v;
    headers = curl_slist_append(headers, line.c_str());
  }
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  struct curl_slist* connect_to = nullptr;
  if (!req.connect_address.empty()) {
    // "HOST:PORT:CONNECT-TO-HOST:CONNECT-TO-PORT" with empty HOST and PORT: whatever the URL
    // names, connect to this address on the URL's port.
    std::string addr = req.connect_address.find(':') != std::string::npos
                           ? "[" + req.connect_address + "]"
                           : req.connect_address;
    connect_to = curl_slist_append(connect_to, ("::" + addr + ":").c_str());
    curl_easy_setopt(c, CURLOPT_CONNECT_TO, connect_to);
  }

  CURLcode rc = curl_easy_perform(c);
  curl_slist_free_all(headers);
  curl_slist_free_all(connect_to);

  if (t.too_big) {
    return ResourceExhausted(
        fmt::format("response body larger than {} bytes", req.max_response_bytes));
  }
  if (t.aborted) return Cancelled("request aborted");
  switch (rc) {
    case CURLE_OK:
      break;
    case CURLE_OPERATION_TIMEDOUT:
      return DeadlineExceeded(fmt::format("no complete response within {} ms",
                                          req.timeout.count()));
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
      // Nothing was sent: safe to retry even for calls that are not idempotent.
      return Unavailable(fmt::format("could not connect: {}", curl_easy_strerror(rc)));
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
      // The request may have reached the server: its effect is unknown.
      return Aborted(fmt::format("connection broke: {}", curl_easy_strerror(rc)));
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
      return InvalidArgument(fmt::format("bad url: {}", curl_easy_strerror(rc)));
    default:
      return Unavailable(fmt::format("http error: {}", curl_easy_strerror(rc)));
  }
  long code = 0;
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
  resp.status = static_cast<int>(code);
  return resp;
}

std::optional<std::chrono::milliseconds> ParseRetryAfter(std::string_view value) {
  while (!value.empty() && value.front() == ' ') value.remove_prefix(1);
  if (value.empty()) return std::nullopt;
  if (std::all_of(value.begin(), value.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
    if (value.size() > 9) return std::chrono::milliseconds(86400000);
    return std::chrono::milliseconds(std::stoll(std::string(value)) * 1000);
  }
  // HTTP-date, e.g. "Wed, 21 Oct 2015 07:28:00 GMT".
  struct tm tm = {};
  std::string s(value);
  if (strptime(s.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm) == nullptr) return std::nullopt;
  time_t when = timegm(&tm);
  time_t now = time(nullptr);
  if (when <= now) return std::chrono::milliseconds(0);
  return std::chrono::milliseconds((when - now) * 1000);
}

}  // namespace agentd
