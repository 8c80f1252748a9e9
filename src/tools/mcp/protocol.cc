// Pieces of the MCP client shared by both transports: SSE framing, answers to server
// requests, tool-name namespacing.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cctype>
#include <set>

#include "common/base64.h"
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
      } else if (field == "id" && value.find('\0') == std::string_view::npos) {
        last_event_id_ = std::string(value);
      } else if (field == "retry" && !value.empty() && value.size() < 10 &&
                 value.find_first_not_of("0123456789") == std::string_view::npos) {
        retry_ms_ = std::stoll(std::string(value));
      }
    }
    line_.clear();
  }
  return Status::OK();
}

// A header value as the 2026-07-28 Streamable HTTP binding wants it ("Value Encoding").
std::string HeaderValue(std::string_view v) {
  bool plain =
      !v.empty() && v.front() != ' ' && v.front() != '\t' && v.back() != ' ' && v.back() != '\t';
  for (char c : v) {
    auto u = static_cast<unsigned char>(c);
    if (!((u >= 0x20 && u <= 0x7E) || u == '\t')) plain = false;
  }
  bool sentinel = v.size() >= 11 && v.substr(0, 9) == "=?base64?" && v.substr(v.size() - 2) == "?=";
  if (plain && !sentinel) return std::string(v);
  return "=?base64?" + Base64Encode(v) + "?=";
}

namespace {

bool IsTchar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

std::string Lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// Walks a schema; `reachable` says whether `node` is reached from the root through
// `properties` keys alone, `path` is that chain.
Status Walk(const Json& node, std::vector<std::string>* path, bool reachable,
            std::set<std::string>* seen, std::vector<HeaderParam>* out) {
  if (node.is_array()) {
    for (const auto& item : node) RETURN_IF_ERROR(Walk(item, path, false, seen, out));
    return Status::OK();
  }
  if (!node.is_object()) return Status::OK();
  if (node.contains("x-mcp-header")) {
    const Json& h = node["x-mcp-header"];
    std::string where =
        path->empty() ? std::string("the schema root") : fmt::format("'{}'", fmt::join(*path, "."));
    if (!reachable || path->empty()) {
      return InvalidArgument(fmt::format(
          "x-mcp-header on {}, which is not reachable from the root through properties alone",
          where));
    }
    if (!h.is_string() || h.get<std::string>().empty()) {
      return InvalidArgument(fmt::format("x-mcp-header of {} is not a non-empty string", where));
    }
    std::string name = h.get<std::string>();
    for (char c : name) {
      if (!IsTchar(c)) {
        return InvalidArgument(fmt::format(
            "x-mcp-header '{}' of {} is not an HTTP field-name token", Excerpt(name, 60), where));
      }
    }
    std::string type =
        node.contains("type") && node["type"].is_string() ? node["type"].get<std::string>() : "";
    if (type != "string" && type != "integer" && type != "boolean") {
      return InvalidArgument(fmt::format(
          "x-mcp-header '{}' is on {} of type '{}'; only string, integer and boolean may be", name,
          where, type));
    }
    if (!seen->insert(Lower(name)).second) {
      return InvalidArgument(fmt::format("x-mcp-header '{}' appears twice", name));
    }
    out->push_back(HeaderParam{*path, name});
  }
  for (const auto& [key, value] : node.items()) {
    if (key == "properties" && value.is_object()) {
      for (const auto& [prop, schema] : value.items()) {
        path->push_back(prop);
        Status st = Walk(schema, path, reachable, seen, out);
        path->pop_back();
        RETURN_IF_ERROR(st);
      }
    } else if (value.is_object() || value.is_array()) {
      RETURN_IF_ERROR(Walk(value, path, false, seen, out));
    }
  }
  return Status::OK();
}

}  // namespace

Result<std::vector<HeaderParam>> CollectHeaderParams(const Json& input_schema) {
  std::vector<HeaderParam> out;
  std::vector<std::string> path;
  std::set<std::string> seen;
  RETURN_IF_ERROR(Walk(input_schema, &path, true, &seen, &out));
  return out;
}

std::vector<std::pair<std::string, std::string>> HeaderParamHeaders(
    const std::vector<HeaderParam>& params, const Json& arguments) {
  std::vector<std::pair<std::string, std::string>> headers;
  for (const auto& p : params) {
    const Json* v = &arguments;
    for (const auto& key : p.path) {
      if (!v->is_object() || !v->contains(key)) {
        v = nullptr;
        break;
      }
      v = &(*v)[key];
    }
    if (v == nullptr || v->is_null()) continue;
    std::string value;
    if (v->is_string()) {
      value = HeaderValue(v->get<std::string>());
    } else if (v->is_boolean()) {
      value = v->get<bool>() ? "true" : "false";
    } else if (v->is_number_integer()) {
      value = std::to_string(v->get<int64_t>());
    } else if (v->is_number_float() &&
               v->get<double>() == static_cast<double>(static_cast<int64_t>(v->get<double>()))) {
      value = std::to_string(static_cast<int64_t>(v->get<double>()));
    } else {
      continue;  // not a primitive the schema allows; the server will say so
    }
    headers.emplace_back("Mcp-Param-" + p.name, value);
  }
  return headers;
}

void SseParser::EndStream() {
  line_.clear();
  data_.clear();
  has_data_ = false;
  skip_lf_ = false;
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
