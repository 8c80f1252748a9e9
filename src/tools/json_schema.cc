#include "tools/json_schema.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
// GCC 12 reports a false -Wmaybe-uninitialized inside libstdc++'s regex automaton when
// building with sanitizers; the pragma only covers the header.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <regex>
#pragma GCC diagnostic pop
#include <set>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace agentd::tools {
namespace {

// Validation limits beyond those in the header: nested validation calls (value depth plus
// $ref hops), and (schema node, value) visits per validation, which bounds the exponential
// blow-up of anyOf/oneOf over shared $refs.
constexpr int kMaxValidationDepth = 256;
constexpr size_t kMaxValidationSteps = 1000000;
// The longest chain of in-place references (allOf/anyOf/oneOf/not/$ref without descending
// into the value) that CheckSchema accepts.
constexpr int kMaxInPlaceChain = 64;
constexpr size_t kMaxQuotedBytes = 200;

constexpr std::string_view kTypeNames[] = {"object",  "array",   "string", "number",
                                           "integer", "boolean", "null"};

bool IsTypeName(std::string_view s) {
  return std::find(std::begin(kTypeNames), std::end(kTypeNames), s) != std::end(kTypeNames);
}

// One JSON-pointer reference token: '~' -> "~0", '/' -> "~1".
std::string EscapeToken(std::string_view key) {
  std::string out;
  out.reserve(key.size());
  for (char c : key) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out.push_back(c);
    }
  }
  return out;
}

bool IsIntegral(const Json& v) {
  if (v.is_number_integer()) return true;
  if (!v.is_number_float()) return false;
  double d = v.get<double>();
  return std::isfinite(d) && d == std::floor(d);
}

// long double holds every int64 and uint64 exactly on x86-64, so mixed comparisons are exact
// for integers and as good as double otherwise.
long double AsNumber(const Json& v) {
  if (v.is_number_unsigned()) return static_cast<long double>(v.get<uint64_t>());
  if (v.is_number_integer()) return static_cast<long double>(v.get<int64_t>());
  return static_cast<long double>(v.get<double>());
}

std::string FormatNumber(const Json& v) { return DumpJson(v); }

std::string TypeOf(const Json& v) {
  switch (v.type()) {
    case Json::value_t::object:
      return "object";
    case Json::value_t::array:
      return "array";
    case Json::value_t::string:
      return "string";
    case Json::value_t::boolean:
      return "boolean";
    case Json::value_t::null:
      return "null";
    case Json::value_t::number_integer:
    case Json::value_t::number_unsigned:
      return "integer";
    case Json::value_t::number_float:
      return IsIntegral(v) ? "integer" : "number";
    default:
      return "invalid value";
  }
}

bool HasType(const Json& v, std::string_view type) {
  if (type == "object") return v.is_object();
  if (type == "array") return v.is_array();
  if (type == "string") return v.is_string();
  if (type == "number") return v.is_number();
  if (type == "integer") return IsIntegral(v);
  if (type == "boolean") return v.is_boolean();
  if (type == "null") return v.is_null();
  return false;
}

// Counts Unicode code points, as minLength/maxLength require: every byte that is not a
// UTF-8 continuation byte starts one.
size_t CodePoints(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) {
    if ((c & 0xC0) != 0x80) ++n;
  }
  return n;
}

// Dumps a value for an error message, cut to a readable length.
std::string Quote(const Json& v) {
  std::string s = DumpJson(v);
  if (s.size() > kMaxQuotedBytes) {
    size_t cut = kMaxQuotedBytes;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
    s.resize(cut);
    s += "...";
  }
  return s;
}

// Cuts a nested error message so that messages do not grow with schema depth.
std::string Cut(const std::string& msg) {
  if (msg.size() <= kMaxQuotedBytes) return msg;
  size_t cut = kMaxQuotedBytes;
  while (cut > 0 && (static_cast<unsigned char>(msg[cut]) & 0xC0) == 0x80) --cut;
  return msg.substr(0, cut) + "...";
}

bool IsNonNegativeInt(const Json& v) { return IsIntegral(v) && AsNumber(v) >= 0; }

// ---------------------------------------------------------------------------------------
// Compiled patterns, shared by all threads. std::regex objects are only read after
// construction, which the standard library allows from several threads at once.

class PatternCache {
 public:
  Result<std::shared_ptr<const std::regex>> Get(const std::string& pattern) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = cache_.find(pattern);
      if (it != cache_.end()) return it->second;
    }
    if (pattern.size() > kMaxPatternBytes) {
      return InvalidArgument(fmt::format("pattern is longer than {} bytes", kMaxPatternBytes));
    }
    std::shared_ptr<const std::regex> re;
    try {
      // __polynomial selects libstdc++'s Thompson-NFA executor: its recursion is bounded by
      // the pattern, not the subject (the default backtracking executor overflows the stack
      // on subjects of a few ten thousand characters), and it refuses back-references.
      re = std::make_shared<const std::regex>(
          pattern, std::regex::ECMAScript | std::regex_constants::__polynomial);
    } catch (const std::regex_error& e) {
      if (e.code() == std::regex_constants::error_complexity) {
        return InvalidArgument(
            fmt::format("pattern '{}' uses back-references, which are not supported", pattern));
      }
      return InvalidArgument(fmt::format(
          "pattern '{}' is not a valid ECMAScript regular expression: {}", pattern, e.what()));
    } catch (const std::exception& e) {
      return InvalidArgument(fmt::format("pattern '{}' cannot be compiled: {}", pattern, e.what()));
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (cache_.size() >= kMaxEntries) cache_.clear();  // crude, but bounded
    cache_.emplace(pattern, re);
    return re;
  }

 private:
  static constexpr size_t kMaxEntries = 1024;
  std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<const std::regex>> cache_;  // guarded by mu_
};

PatternCache& Patterns() {
  static PatternCache* cache = new PatternCache();  // never destroyed: used until exit
  return *cache;
}

// ---------------------------------------------------------------------------------------
// Local $ref resolution: "#" or "#/json/pointer", percent-decoded as a URI fragment.

bool PercentDecodeFragment(std::string_view in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out->push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) return false;
    auto hex = [](char h) -> int {
      if (h >= '0' && h <= '9') return h - '0';
      if (h >= 'a' && h <= 'f') return h - 'a' + 10;
      if (h >= 'A' && h <= 'F') return h - 'A' + 10;
      return -1;
    };
    int hi = hex(in[i + 1]);
    int lo = hex(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return true;
}

Result<const Json*> ResolveRef(const Json& root, std::string_view ref) {
  if (ref.empty() || ref.front() != '#') {
    return InvalidArgument(fmt::format(
        "$ref '{}' is not supported: only local references ('#', '#/$defs/name') are", ref));
  }
  std::string pointer;
  if (!PercentDecodeFragment(ref.substr(1), &pointer)) {
    return InvalidArgument(fmt::format("$ref '{}' has a malformed percent-escape", ref));
  }
  const Json* node = &root;
  if (pointer.empty()) return node;
  if (pointer.front() != '/') {
    return InvalidArgument(fmt::format("$ref '{}' is not a JSON pointer ('#/...')", ref));
  }
  std::string_view rest(pointer);
  rest.remove_prefix(1);
  while (true) {
    size_t slash = rest.find('/');
    std::string_view raw = rest.substr(0, slash);
    std::string token;
    for (size_t i = 0; i < raw.size(); ++i) {
      if (raw[i] == '~' && i + 1 < raw.size() && (raw[i + 1] == '0' || raw[i + 1] == '1')) {
        token.push_back(raw[i + 1] == '0' ? '~' : '/');
        ++i;
      } else if (raw[i] == '~') {
        return InvalidArgument(fmt::format("$ref '{}' has a bad '~' escape", ref));
      } else {
        token.push_back(raw[i]);
      }
    }
    if (node->is_object()) {
      auto it = node->find(token);
      if (it == node->end()) {
        return InvalidArgument(fmt::format("$ref '{}' does not resolve", ref));
      }
      node = &*it;
    } else if (node->is_array()) {
      bool digits =
          !token.empty() && token.size() <= 9 &&
          std::all_of(token.begin(), token.end(), [](char c) { return c >= '0' && c <= '9'; }) &&
          (token.size() == 1 || token.front() != '0');
      if (!digits || std::stoul(token) >= node->size()) {
        return InvalidArgument(fmt::format("$ref '{}' does not resolve", ref));
      }
      node = &(*node)[std::stoul(token)];
    } else {
      return InvalidArgument(fmt::format("$ref '{}' does not resolve", ref));
    }
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  return node;
}

// ---------------------------------------------------------------------------------------
// CheckSchema

class Checker {
 public:
  Checker(const Json& root, std::string_view where) : root_(root), where_(where) {}

  Status Run() {
    if (!root_.is_object()) return Fail(where_, "schema must be a JSON object");
    auto type = root_.find("type");
    if (type == root_.end() || !type->is_string() || type->get<std::string>() != "object") {
      return Fail(where_, "schema must have \"type\": \"object\"");
    }
    RETURN_IF_ERROR(Node(root_, where_, 0));
    // A $ref target that the walk did not reach (say "#/examples/0") is checked as a schema
    // of its own; targets already checked (an ancestor, a $defs entry) are skipped.
    while (!refs_.empty()) {
      auto [target, ref] = std::move(refs_.back());
      refs_.pop_back();
      RETURN_IF_ERROR(Node(*target, where_ + ref.substr(1), 0));
    }
    return CheckInPlaceCycles();
  }

 private:
  static Status Fail(const std::string& loc, std::string_view what) {
    return InvalidArgument(fmt::format("{}: {}", loc, what));
  }

  Status SubSchema(const Json& s, const std::string& loc, int depth) {
    return Node(s, loc, depth + 1);
  }

  Status Node(const Json& s, const std::string& loc, int depth) {
    if (depth > kMaxSchemaDepth) {
      return Fail(loc, fmt::format("schema nested deeper than {} levels", kMaxSchemaDepth));
    }
    if (!checked_.insert(&s).second) return Status::OK();
    if (checked_.size() > kMaxSchemaNodes) {
      return Fail(loc, fmt::format("schema has more than {} subschemas", kMaxSchemaNodes));
    }
    if (s.is_boolean()) return Status::OK();
    if (!s.is_object()) return Fail(loc, "a schema must be an object or a boolean");
    nodes_.push_back(&s);
    for (const auto& [key, val] : s.items()) {
      std::string kloc = loc + "/" + EscapeToken(key);
      RETURN_IF_ERROR(Keyword(key, val, loc, kloc, depth));
    }
    return Status::OK();
  }

  Status Keyword(const std::string& key, const Json& val, const std::string& loc,
                 const std::string& kloc, int depth) {
    if (key == "type") {
      if (val.is_string()) {
        if (!IsTypeName(val.get<std::string>())) {
          return Fail(kloc, fmt::format("unknown type {}", Quote(val)));
        }
        return Status::OK();
      }
      if (!val.is_array() || val.empty()) {
        return Fail(kloc, "must be a type name or a non-empty array of type names");
      }
      std::set<std::string> seen;
      for (const auto& t : val) {
        if (!t.is_string() || !IsTypeName(t.get<std::string>())) {
          return Fail(kloc, fmt::format("unknown type {}", Quote(t)));
        }
        if (!seen.insert(t.get<std::string>()).second) {
          return Fail(kloc, fmt::format("type {} is listed twice", Quote(t)));
        }
      }
      return Status::OK();
    }
    if (key == "properties" || key == "$defs" || key == "definitions") {
      if (!val.is_object()) return Fail(kloc, "must be an object of schemas");
      for (const auto& [name, sub] : val.items()) {
        RETURN_IF_ERROR(SubSchema(sub, kloc + "/" + EscapeToken(name), depth));
      }
      return Status::OK();
    }
    if (key == "required") {
      if (!val.is_array()) return Fail(kloc, "must be an array of property names");
      std::set<std::string> seen;
      for (const auto& n : val) {
        if (!n.is_string()) return Fail(kloc, "must be an array of property names");
        if (!seen.insert(n.get<std::string>()).second) {
          return Fail(kloc, fmt::format("property {} is listed twice", Quote(n)));
        }
      }
      return Status::OK();
    }
    if (key == "items") {
      if (val.is_array()) {
        return Fail(kloc, "must be a schema (the array form of 'items' is not supported)");
      }
      return SubSchema(val, kloc, depth);
    }
    if (key == "additionalProperties" || key == "not") return SubSchema(val, kloc, depth);
    if (key == "anyOf" || key == "oneOf" || key == "allOf") {
      if (!val.is_array() || val.empty()) return Fail(kloc, "must be a non-empty array of schemas");
      for (size_t i = 0; i < val.size(); ++i) {
        RETURN_IF_ERROR(SubSchema(val[i], fmt::format("{}/{}", kloc, i), depth));
      }
      return Status::OK();
    }
    if (key == "enum") {
      if (!val.is_array() || val.empty()) return Fail(kloc, "must be a non-empty array");
      return Status::OK();
    }
    if (key == "const" || key == "default") return Status::OK();
    if (key == "examples") {
      if (!val.is_array()) return Fail(kloc, "must be an array");
      return Status::OK();
    }
    if (key == "minimum" || key == "maximum" || key == "exclusiveMinimum" ||
        key == "exclusiveMaximum") {
      if (!val.is_number()) return Fail(kloc, "must be a number");
      return Status::OK();
    }
    if (key == "minLength" || key == "maxLength" || key == "minItems" || key == "maxItems") {
      if (!IsNonNegativeInt(val)) return Fail(kloc, "must be a non-negative integer");
      return Status::OK();
    }
    if (key == "uniqueItems") {
      if (!val.is_boolean()) return Fail(kloc, "must be a boolean");
      return Status::OK();
    }
    if (key == "pattern") {
      if (!val.is_string()) return Fail(kloc, "must be a string");
      auto re = Patterns().Get(val.get<std::string>());
      if (!re.ok()) return Fail(kloc, re.status().message());
      return Status::OK();
    }
    if (key == "description" || key == "title" || key == "format" || key == "$comment" ||
        key == "$schema" || key == "$id") {
      if (!val.is_string()) return Fail(kloc, "must be a string");
      return Status::OK();
    }
    if (key == "$ref") {
      if (!val.is_string()) return Fail(kloc, "must be a string");
      auto target = ResolveRef(root_, val.get<std::string>());
      if (!target.ok()) return Fail(kloc, target.status().message());
      if (!checked_.count(*target)) refs_.emplace_back(*target, val.get<std::string>());
      return Status::OK();
    }
    return Fail(loc, fmt::format("unsupported keyword '{}'", key));
  }

  // Edges that stay on the same value: evaluating the node evaluates these on that value too.
  void InPlaceEdges(const Json& s, std::vector<const Json*>* out) const {
    out->clear();
    if (!s.is_object()) return;
    for (const char* k : {"allOf", "anyOf", "oneOf"}) {
      auto it = s.find(k);
      if (it != s.end() && it->is_array()) {
        for (const auto& sub : *it) out->push_back(&sub);
      }
    }
    auto n = s.find("not");
    if (n != s.end()) out->push_back(&*n);
    auto r = s.find("$ref");
    if (r != s.end() && r->is_string()) {
      auto target = ResolveRef(root_, r->get<std::string>());
      if (target.ok()) out->push_back(*target);
    }
  }

  // A cycle of in-place edges would make validation loop without consuming the value.
  Status CheckInPlaceCycles() {
    std::unordered_map<const Json*, int> color;  // 1 = on the DFS stack, 2 = done
    for (const Json* start : nodes_) {
      if (color[start] == 2) continue;
      RETURN_IF_ERROR(Dfs(start, 0, &color));
    }
    return Status::OK();
  }

  Status Dfs(const Json* node, int depth, std::unordered_map<const Json*, int>* color) {
    if (depth > kMaxInPlaceChain) {
      return InvalidArgument(
          fmt::format("{}: $ref / allOf / anyOf / oneOf / not chains deeper than {} levels", where_,
                      kMaxInPlaceChain));
    }
    (*color)[node] = 1;
    std::vector<const Json*> edges;
    InPlaceEdges(*node, &edges);
    for (const Json* next : edges) {
      int c = (*color)[next];
      if (c == 1) {
        return InvalidArgument(fmt::format(
            "{}: $ref cycle: a schema refers back to itself without descending into the value",
            where_));
      }
      if (c == 0) RETURN_IF_ERROR(Dfs(next, depth + 1, color));
    }
    (*color)[node] = 2;
    return Status::OK();
  }

  const Json& root_;
  const std::string where_;
  std::unordered_set<const Json*> checked_;
  std::vector<const Json*> nodes_;                         // object schemas, in walk order
  std::vector<std::pair<const Json*, std::string>> refs_;  // $ref targets to check
};

// ---------------------------------------------------------------------------------------
// ValidateAgainstSchema

class Validator {
 public:
  explicit Validator(const Json& root) : root_(root) {}

  Status Run(const Json& value) {
    try {
      return Validate(root_, value, 0);
    } catch (const std::exception& e) {
      // Our own accesses are type-checked first; this is a last line of defence.
      return InvalidArgument(fmt::format("schema validation failed: {}", e.what()));
    }
  }

 private:
  std::string Here() const { return ptr_.empty() ? "/" : ptr_; }

  Status Violation(std::string_view what) const {
    return InvalidArgument(fmt::format("{}: {}", Here(), what));
  }

  Status BadSchema(std::string_view keyword, std::string_view what) {
    fatal_ = true;
    return InvalidArgument(
        fmt::format("invalid schema: '{}' {} (while validating {})", keyword, what, Here()));
  }

  // Appends a pointer token for the duration of a nested validation.
  class Push {
   public:
    Push(std::string* ptr, std::string_view token) : ptr_(ptr), size_(ptr->size()) {
      ptr_->push_back('/');
      *ptr_ += EscapeToken(token);
    }
    ~Push() { ptr_->resize(size_); }
    Push(const Push&) = delete;
    Push& operator=(const Push&) = delete;

   private:
    std::string* ptr_;
    size_t size_;
  };

  Status Validate(const Json& s, const Json& v, int depth) {
    if (++steps_ > kMaxValidationSteps) {
      fatal_ = true;
      return InvalidArgument("schema too complex to evaluate for this value");
    }
    if (depth > kMaxValidationDepth) {
      fatal_ = true;
      return Violation("value or schema nested too deeply to validate");
    }
    if (s.is_boolean()) {
      if (s.get<bool>()) return Status::OK();
      return Violation("no value is allowed here");
    }
    if (!s.is_object()) return BadSchema("(schema)", "must be an object or a boolean");

    if (auto it = s.find("$ref"); it != s.end()) RETURN_IF_ERROR(Ref(*it, v, depth));
    if (auto it = s.find("type"); it != s.end()) RETURN_IF_ERROR(Type(*it, v));
    if (auto it = s.find("enum"); it != s.end()) {
      if (!it->is_array()) return BadSchema("enum", "must be an array");
      bool found = std::any_of(it->begin(), it->end(), [&](const Json& e) { return e == v; });
      if (!found) return Violation(fmt::format("value must be one of {}", Quote(*it)));
    }
    if (auto it = s.find("const"); it != s.end() && *it != v) {
      return Violation(fmt::format("value must be {}", Quote(*it)));
    }
    if (v.is_number()) RETURN_IF_ERROR(Numeric(s, v));
    if (v.is_string()) RETURN_IF_ERROR(String(s, v.get_ref<const std::string&>()));
    if (v.is_array()) RETURN_IF_ERROR(Array(s, v, depth));
    if (v.is_object()) RETURN_IF_ERROR(Object(s, v, depth));
    return Combinators(s, v, depth);
  }

  Status Ref(const Json& ref, const Json& v, int depth) {
    if (!ref.is_string()) return BadSchema("$ref", "must be a string");
    auto target = ResolveRef(root_, ref.get_ref<const std::string&>());
    if (!target.ok()) return BadSchema("$ref", target.status().message());
    auto frame = std::make_pair(*target, &v);
    if (std::find(ref_stack_.begin(), ref_stack_.end(), frame) != ref_stack_.end()) {
      return BadSchema("$ref",
                       fmt::format("'{}' is a reference cycle", ref.get_ref<const std::string&>()));
    }
    ref_stack_.push_back(frame);
    Status st = Validate(**target, v, depth + 1);
    ref_stack_.pop_back();
    return st;
  }

  Status Type(const Json& type, const Json& v) {
    if (type.is_string()) {
      const auto& t = type.get_ref<const std::string&>();
      if (!IsTypeName(t)) return BadSchema("type", fmt::format("names unknown type '{}'", t));
      if (HasType(v, t)) return Status::OK();
      return Violation(fmt::format("expected {}, got {}", t, TypeOf(v)));
    }
    if (!type.is_array()) return BadSchema("type", "must be a string or an array");
    std::string names;
    for (const auto& t : type) {
      if (!t.is_string() || !IsTypeName(t.get_ref<const std::string&>())) {
        return BadSchema("type", fmt::format("names unknown type {}", Quote(t)));
      }
      if (HasType(v, t.get_ref<const std::string&>())) return Status::OK();
      if (!names.empty()) names += " or ";
      names += t.get_ref<const std::string&>();
    }
    return Violation(
        fmt::format("expected {}, got {}", names.empty() ? "nothing" : names, TypeOf(v)));
  }

  Status Numeric(const Json& s, const Json& v) {
    long double x = AsNumber(v);
    struct Bound {
      const char* key;
      bool (*ok)(long double x, long double b);
      const char* op;
    };
    static constexpr Bound kBounds[] = {
        {"minimum", [](long double x, long double b) { return x >= b; }, ">="},
        {"maximum", [](long double x, long double b) { return x <= b; }, "<="},
        {"exclusiveMinimum", [](long double x, long double b) { return x > b; }, ">"},
        {"exclusiveMaximum", [](long double x, long double b) { return x < b; }, "<"},
    };
    for (const auto& b : kBounds) {
      auto it = s.find(b.key);
      if (it == s.end()) continue;
      if (!it->is_number()) return BadSchema(b.key, "must be a number");
      if (!b.ok(x, AsNumber(*it))) {
        return Violation(
            fmt::format("must be {} {}, got {}", b.op, FormatNumber(*it), FormatNumber(v)));
      }
    }
    return Status::OK();
  }

  // Reads an optional non-negative integer keyword into *out.
  Status Count(const Json& s, const char* key, std::optional<uint64_t>* out) {
    out->reset();
    auto it = s.find(key);
    if (it == s.end()) return Status::OK();
    if (!IsNonNegativeInt(*it)) return BadSchema(key, "must be a non-negative integer");
    long double n = AsNumber(*it);
    *out = n > 1e18L ? uint64_t{1000000000000000000ULL} : static_cast<uint64_t>(n);
    return Status::OK();
  }

  Status String(const Json& s, const std::string& str) {
    std::optional<uint64_t> min_len, max_len;
    RETURN_IF_ERROR(Count(s, "minLength", &min_len));
    RETURN_IF_ERROR(Count(s, "maxLength", &max_len));
    if (min_len || max_len) {
      size_t n = CodePoints(str);
      if (min_len && n < *min_len) {
        return Violation(
            fmt::format("string must be at least {} characters long, got {}", *min_len, n));
      }
      if (max_len && n > *max_len) {
        return Violation(
            fmt::format("string must be at most {} characters long, got {}", *max_len, n));
      }
    }
    auto it = s.find("pattern");
    if (it == s.end()) return Status::OK();
    if (!it->is_string()) return BadSchema("pattern", "must be a string");
    const auto& pattern = it->get_ref<const std::string&>();
    auto re = Patterns().Get(pattern);
    if (!re.ok()) return BadSchema("pattern", re.status().message());
    if (str.size() > kMaxPatternSubjectBytes) {
      return Violation(
          fmt::format("string longer than {} bytes cannot be checked against "
                      "pattern '{}'",
                      kMaxPatternSubjectBytes, pattern));
    }
    bool matched = false;
    try {
      matched = std::regex_search(str, **re);
    } catch (const std::exception& e) {
      return Violation(
          fmt::format("string cannot be checked against pattern '{}': {}", pattern, e.what()));
    }
    if (!matched) return Violation(fmt::format("string does not match pattern '{}'", pattern));
    return Status::OK();
  }

  Status Array(const Json& s, const Json& v, int depth) {
    std::optional<uint64_t> min_items, max_items;
    RETURN_IF_ERROR(Count(s, "minItems", &min_items));
    RETURN_IF_ERROR(Count(s, "maxItems", &max_items));
    if (min_items && v.size() < *min_items) {
      return Violation(
          fmt::format("array must have at least {} items, got {}", *min_items, v.size()));
    }
    if (max_items && v.size() > *max_items) {
      return Violation(
          fmt::format("array must have at most {} items, got {}", *max_items, v.size()));
    }
    if (auto it = s.find("uniqueItems"); it != s.end()) {
      if (!it->is_boolean()) return BadSchema("uniqueItems", "must be a boolean");
      if (it->get<bool>()) {
        // nlohmann's ordering treats 1 and 1.0 as equal, as JSON Schema equality does.
        std::set<Json> seen;
        for (size_t i = 0; i < v.size(); ++i) {
          if (!seen.insert(v[i]).second) {
            return Violation(
                fmt::format("array items must be unique; item {} repeats an earlier item", i));
          }
        }
      }
    }
    if (auto it = s.find("items"); it != s.end()) {
      if (!it->is_object() && !it->is_boolean()) return BadSchema("items", "must be a schema");
      for (size_t i = 0; i < v.size(); ++i) {
        Push p(&ptr_, std::to_string(i));
        RETURN_IF_ERROR(Validate(*it, v[i], depth + 1));
      }
    }
    return Status::OK();
  }

  Status Object(const Json& s, const Json& v, int depth) {
    if (auto it = s.find("required"); it != s.end()) {
      if (!it->is_array()) return BadSchema("required", "must be an array");
      for (const auto& name : *it) {
        if (!name.is_string()) return BadSchema("required", "must list strings");
        if (!v.contains(name.get_ref<const std::string&>())) {
          return Violation(
              fmt::format("missing required property '{}'", name.get_ref<const std::string&>()));
        }
      }
    }
    const Json* props = nullptr;
    if (auto it = s.find("properties"); it != s.end()) {
      if (!it->is_object()) return BadSchema("properties", "must be an object");
      props = &*it;
      // Walk the value's keys (usually fewer than the schema's) in their sorted order.
      for (const auto& [key, val] : v.items()) {
        auto sub = props->find(key);
        if (sub == props->end()) continue;
        Push p(&ptr_, key);
        RETURN_IF_ERROR(Validate(*sub, val, depth + 1));
      }
    }
    if (auto it = s.find("additionalProperties"); it != s.end()) {
      if (!it->is_object() && !it->is_boolean()) {
        return BadSchema("additionalProperties", "must be a schema");
      }
      for (const auto& [key, val] : v.items()) {
        if (props != nullptr && props->contains(key)) continue;
        Push p(&ptr_, key);
        if (it->is_boolean() && !it->get<bool>()) {
          return Violation("additional property not allowed");
        }
        RETURN_IF_ERROR(Validate(*it, val, depth + 1));
      }
    }
    return Status::OK();
  }

  Status Combinators(const Json& s, const Json& v, int depth) {
    if (auto it = s.find("allOf"); it != s.end()) {
      if (!it->is_array()) return BadSchema("allOf", "must be an array");
      for (const auto& sub : *it) RETURN_IF_ERROR(Validate(sub, v, depth + 1));
    }
    if (auto it = s.find("anyOf"); it != s.end()) {
      if (!it->is_array()) return BadSchema("anyOf", "must be an array");
      Status first;
      bool any = false;
      for (const auto& sub : *it) {
        Status st = Validate(sub, v, depth + 1);
        if (st.ok()) {
          any = true;
          break;
        }
        if (IsBudgetError(st)) return st;
        if (first.ok()) first = st;
      }
      if (!any) {
        return Violation(fmt::format("value matches none of the anyOf alternatives (first: {})",
                                     Cut(first.message())));
      }
    }
    if (auto it = s.find("oneOf"); it != s.end()) {
      if (!it->is_array()) return BadSchema("oneOf", "must be an array");
      size_t matches = 0;
      Status first;
      for (const auto& sub : *it) {
        Status st = Validate(sub, v, depth + 1);
        if (st.ok()) {
          ++matches;
        } else {
          if (IsBudgetError(st)) return st;
          if (first.ok()) first = st;
        }
      }
      if (matches == 0) {
        return Violation(fmt::format("value matches none of the oneOf alternatives (first: {})",
                                     Cut(first.message())));
      }
      if (matches > 1) {
        return Violation(fmt::format(
            "value matches {} of the oneOf alternatives; it must match exactly one", matches));
      }
    }
    if (auto it = s.find("not"); it != s.end()) {
      Status st = Validate(*it, v, depth + 1);
      if (IsBudgetError(st)) return st;
      if (st.ok()) return Violation("value must not match the 'not' schema");
    }
    return Status::OK();
  }

  // Failures that say nothing about the value: they must not be turned into a match by
  // `not` or skipped over by anyOf/oneOf.
  bool IsBudgetError(const Status&) const { return fatal_; }

  const Json& root_;
  std::string ptr_;  // JSON pointer of the value being validated ("" is the root)
  size_t steps_ = 0;
  bool fatal_ = false;  // a failure that is not about the value (see IsBudgetError)
  std::vector<std::pair<const Json*, const Json*>> ref_stack_;  // (target, value) in use
};

}  // namespace

Status CheckSchema(const Json& schema, std::string_view where) {
  try {
    return Checker(schema, where).Run();
  } catch (const std::exception& e) {
    return InvalidArgument(fmt::format("{}: schema cannot be checked: {}", where, e.what()));
  }
}

Status ValidateAgainstSchema(const Json& schema, const Json& value) {
  return Validator(schema).Run(value);
}

}  // namespace agentd::tools
