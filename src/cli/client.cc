#include "cli/client.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

#include "common/http_client.h"

namespace agentd::cli {
namespace {

// How much of a streamed body is kept for an error report.
constexpr size_t kKeptStreamBody = 64u << 10;

std::string MediaType(const std::string& content_type) {
  std::string t = content_type.substr(0, content_type.find(';'));
  while (!t.empty() && t.back() == ' ') t.pop_back();
  std::transform(t.begin(), t.end(), t.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return t;
}

std::string_view ReasonPhrase(int status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 409:
      return "Conflict";
    case 412:
      return "Precondition Failed";
    case 413:
      return "Content Too Large";
    case 415:
      return "Unsupported Media Type";
    case 422:
      return "Unprocessable Content";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "HTTP error";
  }
}

}  // namespace

ApiProblem ProblemFromResponse(const ApiResponse& response) {
  ApiProblem p;
  p.http_status = response.http_status;
  Result<Json> body = ParseJson(response.body, "error body");
  if (body.ok() && body->is_object()) {
    const Json& j = *body;
    if (auto it = j.find("title"); it != j.end() && it->is_string()) p.title = *it;
    if (auto it = j.find("detail"); it != j.end() && it->is_string()) p.detail = *it;
    // Some servers nest the error: {"error":{"message":…}}.
    if (p.detail.empty()) {
      if (auto it = j.find("error"); it != j.end() && it->is_object()) {
        if (auto m = it->find("message"); m != it->end() && m->is_string()) p.detail = *m;
      }
    }
  }
  if (p.detail.empty()) p.detail = p.title;
  if (p.detail.empty()) {
    std::string raw = response.body.substr(0, 200);
    while (!raw.empty() && std::isspace(static_cast<unsigned char>(raw.back()))) raw.pop_back();
    bool printable = !raw.empty() && std::all_of(raw.begin(), raw.end(), [](unsigned char c) {
      return c >= 0x20 || c == '\n' || c == '\t';
    });
    p.detail = printable && response.content_type != "text/html"
                   ? raw
                   : std::string(ReasonPhrase(p.http_status));
  }
  return p;
}

std::string FormatProblem(const ApiProblem& problem) {
  return fmt::format("{} (HTTP {})", problem.detail, problem.http_status);
}

std::string UrlEncode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

std::string QueryString(const std::vector<std::pair<std::string, std::string>>& params) {
  std::string out;
  for (const auto& [k, v] : params) {
    if (v.empty()) continue;
    out += out.empty() ? '?' : '&';
    out += UrlEncode(k) + "=" + UrlEncode(v);
  }
  return out;
}

Result<Json> ParseResponseJson(const ApiResponse& response, std::string_view what) {
  if (response.body.find_first_not_of(" \t\r\n") == std::string::npos) return Json(nullptr);
  Result<Json> j = ParseJson(response.body, what);
  if (!j.ok()) return Internal(j.status().message());
  return j;
}

ApiClient::ApiClient(ClientOptions options) : options_(std::move(options)) {
  while (!options_.server.empty() && options_.server.back() == '/') options_.server.pop_back();
}

Headers ApiClient::BaseHeaders(const Json* body) const {
  Headers h;
  if (!options_.api_key.empty()) h.emplace_back("Authorization", "Bearer " + options_.api_key);
  if (body != nullptr) h.emplace_back("Content-Type", "application/json");
  h.emplace_back("User-Agent", "agentctl");
  return h;
}

Result<ApiResponse> ApiClient::CallBlocking(std::string_view method, std::string_view path,
                                            const Json* body, const Headers& extra_headers) {
  HttpRequest req;
  req.method = std::string(method);
  req.url = options_.server + std::string(path);
  req.headers = BaseHeaders(body);
  req.headers.emplace_back("Accept", "application/json");
  req.headers.insert(req.headers.end(), extra_headers.begin(), extra_headers.end());
  if (body != nullptr) req.body = DumpJson(*body);
  req.timeout = options_.timeout;
  req.connect_timeout = options_.connect_timeout;
  req.max_response_bytes = 256u << 20;
  ASSIGN_OR_RETURN(HttpResponse resp, HttpDoBlocking(req));
  ApiResponse out;
  out.http_status = resp.status;
  out.content_type = MediaType(resp.Header("content-type"));
  out.body = std::move(resp.body);
  return out;
}

Result<ApiResponse> ApiClient::TransferBlocking(std::string_view method, std::string_view path,
                                                std::string body, std::string_view content_type,
                                                size_t max_response_bytes) {
  HttpRequest req;
  req.method = std::string(method);
  req.url = options_.server + std::string(path);
  req.headers = BaseHeaders(nullptr);
  if (!body.empty()) req.headers.emplace_back("Content-Type", std::string(content_type));
  req.body = std::move(body);
  req.timeout = std::chrono::milliseconds(0);  // a large file takes as long as it takes
  req.connect_timeout = options_.connect_timeout;
  req.max_response_bytes = max_response_bytes;
  ASSIGN_OR_RETURN(HttpResponse resp, HttpDoBlocking(req));
  ApiResponse out;
  out.http_status = resp.status;
  out.content_type = MediaType(resp.Header("content-type"));
  out.body = std::move(resp.body);
  return out;
}

Result<ApiResponse> ApiClient::StreamBlocking(std::string_view method, std::string_view path,
                                              const Json* body, const Headers& extra_headers,
                                              const SseParser::Handler& on_event) {
  HttpRequest req;
  req.method = std::string(method);
  req.url = options_.server + std::string(path);
  req.headers = BaseHeaders(body);
  req.headers.emplace_back("Accept", "text/event-stream");
  req.headers.insert(req.headers.end(), extra_headers.begin(), extra_headers.end());
  if (body != nullptr) req.body = DumpJson(*body);
  req.timeout = std::chrono::milliseconds(0);  // libcurl: no limit; a stream lasts a turn
  req.connect_timeout = options_.connect_timeout;

  // The status code is not known while the body arrives, so every chunk goes both to the
  // parser and, up to a limit, to `kept`. An error body (problem+json) holds no blank-line-
  // terminated `data:` field, so the parser dispatches nothing from it.
  std::string kept;
  SseParser parser(on_event);
  Status parse_error;
  req.on_body = [&](std::string_view chunk) {
    if (kept.size() < kKeptStreamBody) {
      kept.append(chunk.substr(0, kKeptStreamBody - kept.size()));
    }
    parse_error = parser.Feed(chunk);
    return parse_error.ok() && !parser.stopped();
  };
  Result<HttpResponse> resp = HttpDoBlocking(req);
  if (!parse_error.ok()) return parse_error;
  if (!resp.ok()) {
    // Returning false from on_body aborts the transfer; that is how a handler stops a stream.
    if (parser.stopped() && resp.status().code() == StatusCode::kCancelled) {
      ApiResponse out;
      out.http_status = 200;
      out.content_type = "text/event-stream";
      return out;
    }
    return resp.status();
  }
  ApiResponse out;
  out.http_status = resp->status;
  out.content_type = MediaType(resp->Header("content-type"));
  out.body = std::move(kept);
  return out;
}

}  // namespace agentd::cli
