#include "common/json.h"

#include <fmt/format.h>

namespace agentd {

Result<Json> ParseJson(std::string_view text, std::string_view what) {
  if (text.empty()) return InvalidArgument(fmt::format("{} is empty; expected JSON", what));
  try {
    return Json::parse(text.begin(), text.end());
  } catch (const Json::parse_error& e) {
    return InvalidArgument(fmt::format("{} is not valid JSON (at byte {})", what, e.byte));
  } catch (const std::exception& e) {
    return InvalidArgument(fmt::format("{} is not valid JSON", what));
  }
}

std::string DumpJson(const Json& j) {
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

const std::string* FindString(const Json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? &it->get_ref<const std::string&>() : nullptr;
}

FieldReader::FieldReader(const Json& obj, std::string path) : obj_(obj), path_(std::move(path)) {}

std::string FieldReader::PathOf(std::string_view key) const {
  if (path_.empty()) return std::string(key);
  return path_ + "." + std::string(key);
}

Status FieldReader::CheckObject() const {
  if (!obj_.is_object()) {
    return InvalidArgument(path_.empty() ? "body must be a JSON object"
                                         : fmt::format("'{}' must be an object", path_));
  }
  return Status::OK();
}

const Json* FieldReader::Find(std::string_view key) {
  seen_.emplace(key);
  if (!obj_.is_object()) return nullptr;
  auto it = obj_.find(std::string(key));
  if (it == obj_.end() || it->is_null()) return nullptr;
  return &*it;
}

Status FieldReader::String(std::string_view key, std::string* out, bool required,
                           size_t max_len) {
  const Json* v = Find(key);
  if (v == nullptr) {
    return required ? InvalidArgument(fmt::format("'{}' is required", PathOf(key)))
                    : Status::OK();
  }
  if (!v->is_string()) return InvalidArgument(fmt::format("'{}' must be a string", PathOf(key)));
  const auto& s = v->get_ref<const std::string&>();
  if (s.size() > max_len) {
    return InvalidArgument(fmt::format("'{}' is longer than {} bytes", PathOf(key), max_len));
  }
  *out = s;
  return Status::OK();
}

Status FieldReader::Int(std::string_view key, int64_t* out, bool required, int64_t min,
                        int64_t max) {
  const Json* v = Find(key);
  if (v == nullptr) {
    return required ? InvalidArgument(fmt::format("'{}' is required", PathOf(key)))
                    : Status::OK();
  }
  if (!v->is_number_integer()) {
    return InvalidArgument(fmt::format("'{}' must be an integer", PathOf(key)));
  }
  int64_t x = v->is_number_unsigned() && v->get<uint64_t>() > INT64_MAX ? INT64_MAX
                                                                       : v->get<int64_t>();
  if (x < min || x > max) {
    return InvalidArgument(fmt::format("'{}' must be between {} and {}", PathOf(key), min, max));
  }
  *out = x;
  return Status::OK();
}

Status FieldReader::Double(std::string_view key, double* out, bool required, double min,
                           double max) {
  const Json* v = Find(key);
  if (v == nullptr) {
    return required ? InvalidArgument(fmt::format("'{}' is required", PathOf(key)))
                    : Status::OK();
  }
  if (!v->is_number()) return InvalidArgument(fmt::format("'{}' must be a number", PathOf(key)));
  double x = v->get<double>();
  if (!(x >= min && x <= max)) {
    return InvalidArgument(fmt::format("'{}' must be between {} and {}", PathOf(key), min, max));
  }
  *out = x;
  return Status::OK();
}

Status FieldReader::Bool(std::string_view key, bool* out, bool required) {
  const Json* v = Find(key);
  if (v == nullptr) {
    return required ? InvalidArgument(fmt::format("'{}' is required", PathOf(key)))
                    : Status::OK();
  }
  if (!v->is_boolean()) return InvalidArgument(fmt::format("'{}' must be a boolean", PathOf(key)));
  *out = v->get<bool>();
  return Status::OK();
}

Status FieldReader::Value(std::string_view key, const Json** out, bool required) {
  const Json* v = Find(key);
  if (v == nullptr && required) {
    return InvalidArgument(fmt::format("'{}' is required", PathOf(key)));
  }
  *out = v;
  return Status::OK();
}

Status FieldReader::NoUnknownKeys() const {
  if (!obj_.is_object()) return Status::OK();
  for (const auto& [k, v] : obj_.items()) {
    if (seen_.find(k) == seen_.end()) {
      return InvalidArgument(fmt::format("unknown field '{}'", PathOf(k)));
    }
  }
  return Status::OK();
}

}  // namespace agentd
