// Pieces of the MCP client shared by both transports: SSE framing, answers to server
// requests, tool-name namespacing.
#include <fmt/format.h>

#include "tools/mcp/connection.h"
#include "tools/mcp/mcp_client.h"

namespace agentd::tools::mcp {
namespace internal {

Json AnswerServerRequest(const Json& request) {
  Json id = request.contains("id") ? request["id"] : Json();
  const std::string* method = FindString(request, "method");
  if (method != nullptr && *method == "ping") {
    return Json{{"jsonrpc", "2.0"}, {"id", id}, {"result", Json::object()}};
  }
  return Json{{"jsonrpc", "2.0"},
              {"id", id},
              {"error",
               {{"code", kMethodNotFound},
                {"message", fmt::format("Method not found: {}",
                                        method != nullptr ? *method : std::string("?"))}}}};
}

Status SseParser::Feed(std::string_view bytes, const std::function<void(std::string)>& on_event) {
  for (char c : bytes) {
    if (skip_lf_) {
      skip_lf_ = false;
      if (c == '\n') continue;
    }
    if (c != '\r' && c != '\n') {
      if (line_.size() >= max_event_bytes_) {
        return ResourceExhausted(
            fmt::format("server-sent event line longer than {} bytes", max_event_bytes_));
      }
      line_.push_back(c);
      continue;
    }
    skip_lf_ = c == '\r';
    if (line_.empty()) {  // blank line: dispatch
      if (has_data_) on_event(std::move(data_));
      data_.clear();
      has_data_ = false;
      continue;
    }
    std::string_view line = line_;
    if (line.front() != ':') {
      auto colon = line.find(':');
      std::string_view field = line.substr(0, colon);
      std::string_view value;
      if (colon != std::string_view::npos) {
        value = line.substr(colon + 1);
        if (!value.empty() && value.front() == ' ') value.remove_prefix(1);
      }
      if (field == "data") {
        if (data_.size() + value.size() + 1 > max_event_bytes_) {
          return ResourceExhausted(
              fmt::format("server-sent event larger than {} bytes", max_event_bytes_));
        }
        if (has_data_) data_.push_back('\n');
        data_.append(value);
        has_data_ = true;
      }
    }
    line_.clear();
  }
  return Status::OK();
}

std::string Excerpt(std::string_view s, size_t max) {
  if (s.size() <= max) return std::string(s);
  size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return std::string(s.substr(0, cut)) + "...";
}

}  // namespace internal

namespace {

bool IsNameChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '-';
}

}  // namespace

bool IsValidFunctionName(std::string_view name) {
  if (name.empty() || name.size() > kMaxFunctionNameLength) return false;
  for (char c : name) {
    if (!IsNameChar(c)) return false;
  }
  return true;
}

Result<std::string> NamespacedToolName(std::string_view server, std::string_view tool) {
  if (server.empty()) return InvalidArgument("MCP server name is empty");
  if (!IsValidFunctionName(server) || server.find("__") != std::string_view::npos) {
    return InvalidArgument(fmt::format(
        "MCP server name '{}' must be made of [a-zA-Z0-9_-] and must not contain \"__\"",
        internal::Excerpt(server, 80)));
  }
  if (tool.empty()) {
    return InvalidArgument(fmt::format("MCP server '{}' lists a tool with an empty name", server));
  }
  for (char c : tool) {
    if (!IsNameChar(c)) {
      return InvalidArgument(fmt::format(
          "MCP server '{}' tool '{}' cannot be offered to the model: its name has a character "
          "outside [a-zA-Z0-9_-]",
          server, internal::Excerpt(tool, 80)));
    }
  }
  std::string full = fmt::format("{}__{}", server, tool);
  if (full.size() > kMaxFunctionNameLength) {
    return InvalidArgument(fmt::format(
        "MCP server '{}' tool '{}' cannot be offered to the model: '{}' is longer than {} "
        "characters",
        server, internal::Excerpt(tool, 80), internal::Excerpt(full, 80), kMaxFunctionNameLength));
  }
  return full;
}

bool SplitNamespacedToolName(std::string_view name, std::string* server, std::string* tool) {
  auto sep = name.find("__");
  if (sep == std::string_view::npos || sep == 0 || sep + 2 >= name.size()) return false;
  *server = std::string(name.substr(0, sep));
  *tool = std::string(name.substr(sep + 2));
  return true;
}

}  // namespace agentd::tools::mcp
