// JSON helpers around nlohmann::json. Parsing never throws: errors come back as Status with
// the byte offset. FieldReader reads an object strictly: wrong types, missing required fields
// and unknown keys are errors whose message names the field by its dotted path.
#pragma once

#include <cstdint>
#include <set>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace agentd {

using Json = nlohmann::json;

// Parses `text`; `what` names the document in the error ("request body").
Result<Json> ParseJson(std::string_view text, std::string_view what);

// Serialises without throwing on invalid UTF-8 (replaced by U+FFFD).
std::string DumpJson(const Json& j);

// The string at obj[key]; null when `obj` is not an object or has no string there.
const std::string* FindString(const Json& obj, std::string_view key);

class FieldReader {
 public:
  // `path` is the dotted location of `obj` ("" for the document root).
  FieldReader(const Json& obj, std::string path);

  // Fails unless the value is an object.
  Status CheckObject() const;

  Status String(std::string_view key, std::string* out, bool required,
                size_t max_len = 1 << 20);
  Status Int(std::string_view key, int64_t* out, bool required, int64_t min, int64_t max);
  Status Double(std::string_view key, double* out, bool required, double min, double max);
  Status Bool(std::string_view key, bool* out, bool required);
  // Any JSON value; `*out` is null when absent.
  Status Value(std::string_view key, const Json** out, bool required);
  // Fails naming the first key that no reader call asked for.
  Status NoUnknownKeys() const;

  std::string PathOf(std::string_view key) const;

 private:
  const Json* Find(std::string_view key);

  const Json& obj_;
  std::string path_;
  std::set<std::string, std::less<>> seen_;
};

}  // namespace agentd
