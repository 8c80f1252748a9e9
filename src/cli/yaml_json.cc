#include "cli/yaml_json.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iostream>
#include <iterator>
#include <optional>
#include <regex>
#include <sstream>
#include <vector>

namespace agentd::cli {
namespace {

constexpr int kMaxDepth = 200;
constexpr std::string_view kTagPrefix = "tag:yaml.org,2002:";

std::string Where(std::string_view what, const YAML::Mark& mark) {
  if (mark.is_null()) return std::string(what);
  return fmt::format("{}: line {}, column {}", what, mark.line + 1, mark.column + 1);
}

std::string PathName(const std::string& path) { return path.empty() ? "(document)" : path; }

bool IsNull(std::string_view s) {
  return s.empty() || s == "~" || s == "null" || s == "Null" || s == "NULL";
}

std::optional<bool> AsBool(std::string_view s) {
  if (s == "true" || s == "True" || s == "TRUE") return true;
  if (s == "false" || s == "False" || s == "FALSE") return false;
  return std::nullopt;
}

// An integer in the core schema's forms, or nullopt. Integers too large for 64 bits become
// doubles, as JSON parsers do.
std::optional<Json> AsInt(std::string_view s) {
  static const std::regex kDecimal("[-+]?[0-9]+");
  static const std::regex kOctal("0o[0-7]+");
  static const std::regex kHex("0x[0-9a-fA-F]+");
  std::string str(s);
  int base = 10;
  std::string_view digits = s;
  if (std::regex_match(str, kOctal)) {
    base = 8;
    digits.remove_prefix(2);
  } else if (std::regex_match(str, kHex)) {
    base = 16;
    digits.remove_prefix(2);
  } else if (!std::regex_match(str, kDecimal)) {
    return std::nullopt;
  }
  bool negative = false;
  if (!digits.empty() && (digits.front() == '+' || digits.front() == '-')) {
    negative = digits.front() == '-';
    digits.remove_prefix(1);
  }
  uint64_t magnitude = 0;
  auto [ptr, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), magnitude, base);
  if (ec == std::errc() && ptr == digits.data() + digits.size()) {
    if (!negative) {
      if (magnitude <= static_cast<uint64_t>(INT64_MAX))
        return Json(static_cast<int64_t>(magnitude));
      return Json(magnitude);
    }
    if (magnitude <= static_cast<uint64_t>(INT64_MAX) + 1) {
      return Json(static_cast<int64_t>(0 - magnitude));
    }
  }
  // Out of range: keep the value as a double, as a JSON parser would.
  double d = 0;
  if (base == 10) {
    d = std::strtod(str.c_str(), nullptr);
  } else {
    for (char c : digits) d = d * base + (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    if (negative) d = -d;
  }
  return Json(d);
}

enum class FloatKind { kNotFloat, kFinite, kNotFinite };

FloatKind ClassifyFloat(std::string_view s, double* out) {
  static const std::regex kFloat("[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?");
  static const std::regex kInf("[-+]?\\.(inf|Inf|INF)");
  static const std::regex kNan("\\.(nan|NaN|NAN)");
  std::string str(s);
  if (std::regex_match(str, kInf) || std::regex_match(str, kNan)) return FloatKind::kNotFinite;
  if (!std::regex_match(str, kFloat)) return FloatKind::kNotFloat;
  errno = 0;
  double d = std::strtod(str.c_str(), nullptr);
  if (errno == ERANGE && (d > 1 || d < -1)) return FloatKind::kNotFinite;  // overflow to inf
  *out = d;
  return FloatKind::kFinite;
}

// yaml-cpp accepts a quoted scalar that runs to the end of the input without its closing
// quote; this finds that case. `pos` is where the scalar starts in `text`.
bool IsUnterminatedQuote(std::string_view text, int pos) {
  if (pos < 0 || static_cast<size_t>(pos) >= text.size()) return false;
  char quote = text[pos];
  if (quote != '"' && quote != '\'') return false;
  for (size_t i = pos + 1; i < text.size(); ++i) {
    if (quote == '"' && text[i] == '\\') {
      ++i;
    } else if (text[i] == quote) {
      if (quote == '\'' && i + 1 < text.size() && text[i + 1] == '\'') {
        ++i;  // '' is an escaped quote
      } else {
        return false;
      }
    }
  }
  return true;
}

class Converter {
 public:
  Converter(std::string_view text, std::string_view what) : text_(text), what_(what) {}

  Result<Json> Convert(const YAML::Node& node, const std::string& path, int depth) {
    if (depth > kMaxDepth) {
      return Error(node, fmt::format("nesting deeper than {} levels", kMaxDepth));
    }
    switch (node.Type()) {
      case YAML::NodeType::Undefined:
      case YAML::NodeType::Null:
        return Json(nullptr);
      case YAML::NodeType::Scalar:
        return Scalar(node, path);
      case YAML::NodeType::Sequence: {
        Json out = Json::array();
        size_t i = 0;
        for (const YAML::Node& item : node) {
          ASSIGN_OR_RETURN(Json v, Convert(item, fmt::format("{}[{}]", path, i), depth + 1));
          out.push_back(std::move(v));
          ++i;
        }
        return out;
      }
      case YAML::NodeType::Map: {
        Json out = Json::object();
        for (const auto& kv : node) {
          const YAML::Node& key = kv.first;
          if (!key.IsScalar()) {
            return Error(key, fmt::format("a key in '{}' is not a plain string; JSON object "
                                          "keys must be strings",
                                          PathName(path)));
          }
          const std::string& name = key.Scalar();
          std::string child = path.empty() ? name : path + "." + name;
          if (out.contains(name)) return Error(key, fmt::format("duplicate key '{}'", child));
          ASSIGN_OR_RETURN(Json v, Convert(kv.second, child, depth + 1));
          out[name] = std::move(v);
        }
        return out;
      }
    }
    return Error(node, "unknown YAML node type");
  }

 private:
  Status Error(const YAML::Node& node, std::string_view problem) const {
    return InvalidArgument(fmt::format("{}: {}", Where(what_, node.Mark()), problem));
  }

  Result<Json> Scalar(const YAML::Node& node, const std::string& path) {
    const std::string& s = node.Scalar();
    const std::string& tag = node.Tag();
    if (IsUnterminatedQuote(text_, node.Mark().pos)) {
      return Error(
          node, fmt::format("'{}' is a quoted string without its closing quote", PathName(path)));
    }
    if (tag == "!") return Json(s);  // quoted, or the non-specific tag: always a string
    std::string_view want;           // the type an explicit core tag demands
    if (tag != "?" && !tag.empty()) {
      if (tag.rfind(kTagPrefix, 0) != 0) {
        return Error(node, fmt::format("'{}' has tag '{}', which has no JSON equivalent",
                                       PathName(path), tag));
      }
      want = std::string_view(tag).substr(kTagPrefix.size());
      if (want == "str") return Json(s);
      if (want != "int" && want != "float" && want != "bool" && want != "null") {
        return Error(node, fmt::format("'{}' has tag '!!{}', which has no JSON equivalent",
                                       PathName(path), want));
      }
    }
    auto mismatch = [&]() {
      return Error(node,
                   fmt::format("'{}' is tagged !!{} but '{}' is not one", PathName(path), want, s));
    };
    if (IsNull(s)) {
      if (!want.empty() && want != "null") return mismatch();
      return Json(nullptr);
    }
    if (auto b = AsBool(s)) {
      if (!want.empty() && want != "bool") return mismatch();
      return Json(*b);
    }
    if (auto i = AsInt(s)) {
      if (want == "float") return Json(i->get<double>());
      if (!want.empty() && want != "int") return mismatch();
      return *i;
    }
    double d = 0;
    switch (ClassifyFloat(s, &d)) {
      case FloatKind::kFinite:
        if (!want.empty() && want != "float") return mismatch();
        return Json(d);
      case FloatKind::kNotFinite:
        return Error(node, fmt::format("'{}' is {}, which JSON cannot represent; quote it to "
                                       "make it a string",
                                       PathName(path), s));
      case FloatKind::kNotFloat:
        break;
    }
    if (!want.empty()) return mismatch();
    return Json(s);
  }

  std::string_view text_;
  std::string_view what_;
};

// Parses JSON, naming the line and column of a syntax error.
Result<Json> StrictJson(std::string_view text, std::string_view what) {
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::parse_error& e) {
    size_t byte = std::min<size_t>(e.byte == 0 ? 0 : e.byte - 1, text.size());
    std::string_view before = text.substr(0, byte);
    size_t line = 1 + static_cast<size_t>(std::count(before.begin(), before.end(), '\n'));
    size_t nl = before.rfind('\n');
    size_t column = nl == std::string_view::npos ? byte + 1 : byte - nl;
    std::string msg = e.what();
    // nlohmann's message is "[json.exception.parse_error.101] parse error at line …: <why>".
    size_t colon = msg.find(": ");
    std::string why = colon == std::string::npos ? msg : msg.substr(colon + 2);
    return InvalidArgument(fmt::format("{}: line {}, column {}: {}", what, line, column, why));
  } catch (const std::exception& e) {
    return InvalidArgument(fmt::format("{}: not valid JSON: {}", what, e.what()));
  }
}

}  // namespace

Result<Json> YamlToJson(std::string_view text, std::string_view what) {
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(std::string(text));
  } catch (const YAML::Exception& e) {
    return InvalidArgument(fmt::format("{}: {}", Where(what, e.mark), e.msg));
  } catch (const std::exception& e) {
    return InvalidArgument(fmt::format("{}: {}", what, e.what()));
  }
  if (docs.empty()) return InvalidArgument(fmt::format("{} is empty", what));
  if (docs.size() > 1) {
    return InvalidArgument(
        fmt::format("{}: expected one document, found {} (the second starts "
                    "at line {})",
                    what, docs.size(), docs[1].Mark().line + 1));
  }
  try {
    return Converter(text, what).Convert(docs[0], "", 0);
  } catch (const YAML::Exception& e) {
    return InvalidArgument(fmt::format("{}: {}", Where(what, e.mark), e.msg));
  }
}

Result<Json> LoadDocumentFileBlocking(const std::string& path) {
  std::string text;
  if (path == "-") {
    text.assign(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  } else {
    std::ifstream in(path, std::ios::binary);
    if (!in) {
      return InvalidArgument(fmt::format("cannot read {}: {}", path, std::strerror(errno)));
    }
    std::ostringstream buf;
    buf << in.rdbuf();
    if (in.bad()) return InvalidArgument(fmt::format("cannot read {}", path));
    text = std::move(buf).str();
  }
  std::string what = path == "-" ? "stdin" : path;
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
    return InvalidArgument(fmt::format("{} is empty", what));
  }
  bool json = path.size() > 5 && path.compare(path.size() - 5, 5, ".json") == 0;
  Result<Json> doc = json ? StrictJson(text, what) : YamlToJson(text, what);
  if (doc.ok() && doc->is_null()) return InvalidArgument(fmt::format("{} is empty", what));
  return doc;
}

}  // namespace agentd::cli
