#include "engine/agent_spec.h"

#include <fmt/format.h>

#include <algorithm>
#include <regex>

#include "common/clock.h"
#include "identity/vault.h"
#include "tools/builtin/builtin_tools.h"
#include "tools/json_schema.h"

namespace agentd::engine {
namespace {

bool ValidToolName(const std::string& n) {
  static const std::regex re("^[A-Za-z0-9_-]{1,64}$");
  return std::regex_match(n, re);
}

bool ValidEnvName(const std::string& n) {
  static const std::regex re("^[A-Za-z_][A-Za-z0-9_]{0,127}$");
  return std::regex_match(n, re);
}

// Headers the HTTP client sets itself, which a secret may not replace.
bool ReservedHeader(std::string name) {
  for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return name == "host" || name == "content-type" || name == "content-length" ||
         name == "transfer-encoding" || name == "connection" || name == "idempotency-key" ||
         name == "accept" || name == "user-agent";
}

// `secret_headers` or `secret_env`: an object of header or variable names to "secret:NAME".
Status ParseSecretRefs(FieldReader& r, const std::string& path, const char* key, bool env,
                       std::map<std::string, std::string>* out) {
  const Json* m = nullptr;
  RETURN_IF_ERROR(r.Value(key, &m, false));
  if (m == nullptr) return Status::OK();
  if (!m->is_object() || m->size() > 32) {
    return InvalidArgument(fmt::format(
        "'{}.{}' must be an object of at most 32 entries of the form \"secret:NAME\"", path, key));
  }
  static const std::regex env_re("^[A-Z_][A-Z0-9_]{0,127}$");
  static const std::regex header_re("^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$");
  for (const auto& [k, v] : m->items()) {
    if (env && !std::regex_match(k, env_re)) {
      return InvalidArgument(fmt::format(
          "'{}.{}': \"{}\" is not an environment variable name (A-Z, 0-9 and '_', not "
          "starting with a digit)",
          path, key, k));
    }
    if (!env && !std::regex_match(k, header_re)) {
      return InvalidArgument(fmt::format("'{}.{}': \"{}\" is not a header name", path, key, k));
    }
    if (!env && ReservedHeader(k)) {
      return InvalidArgument(
          fmt::format("'{}.{}.{}': agentd sets this header itself", path, key, k));
    }
    const std::string* ref = v.is_string() ? &v.get_ref<const std::string&>() : nullptr;
    if (ref == nullptr || ref->rfind("secret:", 0) != 0 ||
        !identity::ValidSecretName(std::string_view(*ref).substr(7))) {
      return InvalidArgument(fmt::format(
          "'{}.{}.{}' must be \"secret:NAME\" with NAME 1 to 128 letters, digits, '_', '.' "
          "or '-'",
          path, key, k));
    }
    (*out)[k] = ref->substr(7);
  }
  return Status::OK();
}

// The agent object's form: name -> "secret:NAME".
Json SecretRefsJson(const std::map<std::string, std::string>& refs) {
  Json out = Json::object();
  for (const auto& [k, name] : refs) out[k] = "secret:" + name;
  return out;
}

bool ValidHttpUrl(const std::string& u) {
  static const std::regex re("^https?://[^\\s/?#]+([/?#][^\\s]*)?$", std::regex::icase);
  return u.size() <= 2048 && std::regex_match(u, re);
}

Status ParseModel(const Json& j, const std::set<std::string>& providers, ModelDef* m) {
  FieldReader r(j, "model");
  RETURN_IF_ERROR(r.CheckObject());
  RETURN_IF_ERROR(r.String("provider", &m->provider, true, 64));
  if (!providers.count(m->provider)) {
    std::string known;
    for (const auto& p : providers) known += (known.empty() ? "" : ", ") + p;
    return InvalidArgument(
        fmt::format("'model.provider' '{}' is not supported (known: {})", m->provider, known));
  }
  RETURN_IF_ERROR(r.String("name", &m->name, true, 256));
  if (m->name.empty()) return InvalidArgument("'model.name' must not be empty");
  RETURN_IF_ERROR(r.String("base_url", &m->base_url, true, 2048));
  if (!ValidHttpUrl(m->base_url)) {
    return InvalidArgument("'model.base_url' must be an http:// or https:// URL");
  }
  RETURN_IF_ERROR(r.String("api_key_env", &m->api_key_env, false, 128));
  if (!m->api_key_env.empty() && !ValidEnvName(m->api_key_env)) {
    return InvalidArgument("'model.api_key_env' must be an environment variable name");
  }
  RETURN_IF_ERROR(r.Int("timeout_ms", &m->timeout_ms, false, 100, 3600000));
  return r.NoUnknownKeys();
}

// A built-in tool: its parameters and idempotence are fixed; the description may be
// replaced. A `parameters` equal to the fixed schema is accepted, so a fetched agent can be
// PUT back.
Status ParseBuiltinTool(FieldReader& r, const std::string& path, ToolDef* t) {
  const tools::BuiltinTool* b = tools::FindBuiltinTool(t->name);
  if (b == nullptr) {
    std::string names;
    for (auto n : tools::BuiltinToolNames()) names += (names.empty() ? "" : ", ") + std::string(n);
    return InvalidArgument(
        fmt::format("'{}.name' \"{}\" is not a built-in tool (they are: {})", path, t->name, names));
  }
  RETURN_IF_ERROR(r.String("description", &t->description, false, 4096));
  if (t->description.empty()) t->description = std::string(b->description);
  t->parameters = Json::parse(b->parameters);
  t->idempotent = b->idempotent;
  const Json* params = nullptr;
  RETURN_IF_ERROR(r.Value("parameters", &params, false));
  if (params != nullptr && *params != t->parameters) {
    return InvalidArgument(fmt::format(
        "'{}.parameters': the parameters of built-in tool '{}' are fixed; leave them out", path,
        t->name));
  }
  if (t->name == "exec") {
    RETURN_IF_ERROR(ParseSecretRefs(r, path, "secret_env", true, &t->secret_env));
  }
  return r.NoUnknownKeys();
}

// An object of strings, such as an environment or request headers.
Status ParseStringMap(FieldReader& r, const std::string& path, const char* key,
                      std::map<std::string, std::string>* out) {
  const Json* m = nullptr;
  RETURN_IF_ERROR(r.Value(key, &m, false));
  if (m == nullptr) return Status::OK();
  if (!m->is_object() || m->size() > 64) {
    return InvalidArgument(fmt::format("'{}.{}' must be an object of at most 64 strings", path, key));
  }
  for (const auto& [k, v] : m->items()) {
    if (!v.is_string() || k.empty() || k.size() > 256 || v.get<std::string>().size() > 8192 ||
        k.find_first_of(std::string("\r\n\0=: ", 6)) != std::string::npos ||
        v.get<std::string>().find_first_of(std::string("\r\n\0", 3)) != std::string::npos) {
      return InvalidArgument(fmt::format("'{}.{}.{}' must be a string of one line", path, key, k));
    }
    (*out)[k] = v.get<std::string>();
  }
  return Status::OK();
}

// An MCP server: its tools reach the model as "<name>__<tool>".
Status ParseMcpServer(FieldReader& r, const std::string& path, ToolDef* t) {
  if (t->name.find("__") != std::string::npos || t->name.size() > 32) {
    return InvalidArgument(fmt::format(
        "'{}.name' of an mcp server must be at most 32 characters without \"__\" (its tools "
        "are named <name>__<tool>)",
        path));
  }
  const Json* command = nullptr;
  RETURN_IF_ERROR(r.Value("command", &command, false));
  RETURN_IF_ERROR(r.String("url", &t->url, false, 2048));
  {
    const Json* refs = nullptr;
    RETURN_IF_ERROR(r.Value("secret_env", &refs, false));
    if (refs != nullptr) {
      // A stdio server's process outlives one call, so it cannot be given a secret per call.
      return InvalidArgument(fmt::format(
          "'{}.secret_env': mcp servers take secrets as headers over Streamable HTTP "
          "(secret_headers); the environment of a stdio server cannot",
          path));
    }
  }
  if ((command != nullptr) == !t->url.empty()) {
    return InvalidArgument(fmt::format(
        "'{}' needs either 'command' (a stdio server) or 'url' (Streamable HTTP), not both", path));
  }
  if (command != nullptr) {
    if (!command->is_array() || command->empty() || command->size() > 256) {
      return InvalidArgument(fmt::format("'{}.command' must be a non-empty array of strings", path));
    }
    for (const auto& arg : *command) {
      if (!arg.is_string() || arg.get<std::string>().find('\0') != std::string::npos) {
        return InvalidArgument(fmt::format("'{}.command' must be a non-empty array of strings", path));
      }
      t->command.push_back(arg.get<std::string>());
    }
    RETURN_IF_ERROR(ParseStringMap(r, path, "env", &t->env));
  } else if (!ValidHttpUrl(t->url)) {
    return InvalidArgument(fmt::format("'{}.url' must be an http:// or https:// URL", path));
  } else {
    RETURN_IF_ERROR(ParseStringMap(r, path, "headers", &t->headers));
    RETURN_IF_ERROR(ParseSecretRefs(r, path, "secret_headers", false, &t->secret_headers));
  }
  t->timeout_ms = 60000;
  RETURN_IF_ERROR(r.Int("timeout_ms", &t->timeout_ms, false, 1, 3600000));
  RETURN_IF_ERROR(r.Bool("idempotent", &t->idempotent, false));
  t->parameters = Json::object();
  return r.NoUnknownKeys();
}

Status ParseSandbox(const Json& j, SandboxDef* d) {
  FieldReader r(j, "sandbox");
  RETURN_IF_ERROR(r.CheckObject());
  RETURN_IF_ERROR(r.String("driver", &d->driver, false, 32));
  if (d->driver.empty()) d->driver = "bwrap";
  RETURN_IF_ERROR(r.Int("memory_mb", &d->limits.memory_mb, false, 16, 1 << 20));
  RETURN_IF_ERROR(r.Double("cpus", &d->limits.cpus, false, 0.01, 1024));
  RETURN_IF_ERROR(r.Int("pids", &d->limits.pids, false, 8, 1 << 22));
  RETURN_IF_ERROR(r.Int("disk_mb", &d->limits.disk_mb, false, 1, 1 << 24));
  RETURN_IF_ERROR(r.Int("timeout_ms", &d->limits.timeout_ms, false, 100, 86400000));
  const Json* egress = nullptr;
  RETURN_IF_ERROR(r.Value("egress", &egress, false));
  if (egress != nullptr) {
    ASSIGN_OR_RETURN(d->egress, sandbox::egress::EgressPolicy::FromJson(*egress, "sandbox.egress"));
  }
  return r.NoUnknownKeys();
}

Status ParseTool(const Json& j, size_t index, ToolDef* t) {
  std::string path = fmt::format("tools[{}]", index);
  FieldReader r(j, path);
  RETURN_IF_ERROR(r.CheckObject());
  RETURN_IF_ERROR(r.String("type", &t->type, true, 32));
  if (t->type != "http" && t->type != "client" && t->type != "builtin" && t->type != "mcp") {
    return InvalidArgument(fmt::format(
        "'{}.type' must be \"http\", \"client\", \"builtin\" or \"mcp\" (got \"{}\")", path,
        t->type));
  }
  RETURN_IF_ERROR(r.String("name", &t->name, true, 64));
  if (!ValidToolName(t->name)) {
    return InvalidArgument(fmt::format(
        "'{}.name' must be 1-64 characters of letters, digits, '_' or '-'", path));
  }
  if (t->type == "builtin") return ParseBuiltinTool(r, path, t);
  if (t->type == "mcp") return ParseMcpServer(r, path, t);
  RETURN_IF_ERROR(r.String("description", &t->description, false, 4096));
  const Json* params = nullptr;
  RETURN_IF_ERROR(r.Value("parameters", &params, false));
  t->parameters = params ? *params : Json{{"type", "object"}, {"properties", Json::object()}};
  if (Status st = tools::CheckSchema(t->parameters); !st.ok()) {
    return InvalidArgument(fmt::format("'{}.parameters': {}", path, st.message()));
  }
  if (t->type == "http") {
    RETURN_IF_ERROR(r.String("url", &t->url, true, 2048));
    if (!ValidHttpUrl(t->url)) {
      return InvalidArgument(fmt::format("'{}.url' must be an http:// or https:// URL", path));
    }
    RETURN_IF_ERROR(r.Int("timeout_ms", &t->timeout_ms, false, 1, 3600000));
    RETURN_IF_ERROR(r.Bool("idempotent", &t->idempotent, false));
    RETURN_IF_ERROR(ParseSecretRefs(r, path, "secret_headers", false, &t->secret_headers));
  }
  return r.NoUnknownKeys();
}

Status ParseRetry(const Json& j, RetryPolicy* p) {
  FieldReader r(j, "retry");
  RETURN_IF_ERROR(r.CheckObject());
  int64_t attempts = p->max_attempts;
  RETURN_IF_ERROR(r.Int("max_attempts", &attempts, false, 1, 100));
  p->max_attempts = static_cast<int>(attempts);
  RETURN_IF_ERROR(r.Int("initial_backoff_ms", &p->initial_backoff_ms, false, 0, 3600000));
  RETURN_IF_ERROR(r.Double("backoff_multiplier", &p->backoff_multiplier, false, 1.0, 100.0));
  RETURN_IF_ERROR(r.Int("max_backoff_ms", &p->max_backoff_ms, false, 0, 3600000));
  return r.NoUnknownKeys();
}

// A limit of a budget: absent or null leaves it unset; otherwise a positive number of the
// right kind, at most `max`.
Status BudgetNumber(const Json& j, const std::string& path, const char* key, bool integer,
                    double max, double* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::OK();
  std::string field = path + "." + key;
  bool ok = integer ? it->is_number_integer() : it->is_number();
  double v = ok ? it->get<double>() : 0;
  if (!ok || !(v > 0) || v > max) {
    return InvalidArgument(fmt::format("'{}' must be a positive {} at most {}", field,
                                       integer ? "integer" : "number", max));
  }
  *out = v;
  return Status::OK();
}

}  // namespace

bool Budget::empty() const {
  return max_tokens == 0 && max_model_calls == 0 && max_tool_calls == 0 &&
         max_turn_seconds == 0 && max_cost_usd == 0 && max_repeated_tool_calls == 0;
}

Json Budget::ToJson() const {
  Json j = Json::object();
  if (max_tokens > 0) j["max_tokens"] = max_tokens;
  if (max_model_calls > 0) j["max_model_calls"] = max_model_calls;
  if (max_tool_calls > 0) j["max_tool_calls"] = max_tool_calls;
  if (max_turn_seconds > 0) j["max_turn_seconds"] = max_turn_seconds;
  if (max_cost_usd > 0) j["max_cost_usd"] = max_cost_usd;
  if (max_repeated_tool_calls > 0) j["max_repeated_tool_calls"] = max_repeated_tool_calls;
  return j;
}

namespace {
template <typename T>
T Smaller(T a, T b) {
  if (a <= 0) return b;
  if (b <= 0) return a;
  return std::min(a, b);
}
}  // namespace

Budget Budget::Tightened(const Budget& o) const {
  Budget b;
  b.max_tokens = Smaller(max_tokens, o.max_tokens);
  b.max_model_calls = Smaller(max_model_calls, o.max_model_calls);
  b.max_tool_calls = Smaller(max_tool_calls, o.max_tool_calls);
  b.max_turn_seconds = Smaller(max_turn_seconds, o.max_turn_seconds);
  b.max_cost_usd = Smaller(max_cost_usd, o.max_cost_usd);
  b.max_repeated_tool_calls = Smaller(max_repeated_tool_calls, o.max_repeated_tool_calls);
  return b;
}

Budget Budget::WithDefaults(const Budget& d) const {
  Budget b = *this;
  if (b.max_tokens <= 0) b.max_tokens = d.max_tokens;
  if (b.max_model_calls <= 0) b.max_model_calls = d.max_model_calls;
  if (b.max_tool_calls <= 0) b.max_tool_calls = d.max_tool_calls;
  if (b.max_turn_seconds <= 0) b.max_turn_seconds = d.max_turn_seconds;
  if (b.max_cost_usd <= 0) b.max_cost_usd = d.max_cost_usd;
  if (b.max_repeated_tool_calls <= 0) b.max_repeated_tool_calls = d.max_repeated_tool_calls;
  return b;
}

Result<Budget> ParseBudget(const Json& j, const std::string& path) {
  FieldReader r(j, path);
  RETURN_IF_ERROR(r.CheckObject());
  Budget b;
  double v = 0;
  auto integer = [&](const char* key, double max, int64_t* out) -> Status {
    const Json* ignored = nullptr;
    RETURN_IF_ERROR(r.Value(key, &ignored, false));  // marks the key as known
    v = 0;
    RETURN_IF_ERROR(BudgetNumber(j, path, key, true, max, &v));
    *out = static_cast<int64_t>(v);
    return Status::OK();
  };
  auto number = [&](const char* key, double max, double* out) -> Status {
    const Json* ignored = nullptr;
    RETURN_IF_ERROR(r.Value(key, &ignored, false));
    return BudgetNumber(j, path, key, false, max, out);
  };
  RETURN_IF_ERROR(integer("max_tokens", 1e12, &b.max_tokens));
  RETURN_IF_ERROR(integer("max_model_calls", 1e6, &b.max_model_calls));
  RETURN_IF_ERROR(integer("max_tool_calls", 1e6, &b.max_tool_calls));
  RETURN_IF_ERROR(number("max_turn_seconds", 30 * 86400.0, &b.max_turn_seconds));
  RETURN_IF_ERROR(number("max_cost_usd", 1e6, &b.max_cost_usd));
  RETURN_IF_ERROR(integer("max_repeated_tool_calls", 1000, &b.max_repeated_tool_calls));
  RETURN_IF_ERROR(r.NoUnknownKeys());
  return b;
}

bool AgentSpec::UsesSandbox() const {
  for (const auto& t : tools) {
    if (t.type == "builtin" || (t.type == "mcp" && !t.command.empty())) return true;
  }
  return false;
}

bool AgentSpec::UsesMcp() const {
  for (const auto& t : tools) {
    if (t.type == "mcp") return true;
  }
  return false;
}

const ToolDef* AgentSpec::FindTool(const std::string& n) const {
  for (const auto& t : tools) {
    if (t.name == n) return &t;
  }
  return nullptr;
}

Json AgentSpec::ToJson() const {
  Json tools_json = Json::array();
  for (const auto& t : tools) {
    Json tj = {{"type", t.type}, {"name", t.name}, {"description", t.description},
               {"parameters", t.parameters}};
    if (t.type == "http") {
      tj["url"] = t.url;
      tj["timeout_ms"] = t.timeout_ms;
      tj["idempotent"] = t.idempotent;
      if (!t.secret_headers.empty()) tj["secret_headers"] = SecretRefsJson(t.secret_headers);
    }
    if (!t.secret_env.empty()) tj["secret_env"] = SecretRefsJson(t.secret_env);
    if (t.type == "mcp") {
      tj = {{"type", t.type}, {"name", t.name}, {"timeout_ms", t.timeout_ms},
            {"idempotent", t.idempotent}};
      if (!t.command.empty()) {
        tj["command"] = t.command;
        tj["env"] = t.env;
      } else {
        tj["url"] = t.url;
        tj["headers"] = t.headers;
        if (!t.secret_headers.empty()) tj["secret_headers"] = SecretRefsJson(t.secret_headers);
      }
    }
    tools_json.push_back(std::move(tj));
  }
  Json sandbox_json = {{"driver", sandbox.driver}};
  auto limit = [&](const char* key, auto value) {
    if (value > 0) sandbox_json[key] = value;
  };
  limit("memory_mb", sandbox.limits.memory_mb);
  limit("cpus", sandbox.limits.cpus);
  limit("pids", sandbox.limits.pids);
  limit("disk_mb", sandbox.limits.disk_mb);
  limit("timeout_ms", sandbox.limits.timeout_ms);
  if (!sandbox.egress.empty()) sandbox_json["egress"] = sandbox.egress.ToStrings();
  Json model_json = {{"provider", model.provider},
                     {"name", model.name},
                     {"base_url", model.base_url},
                     {"timeout_ms", model.timeout_ms}};
  if (!model.api_key_env.empty()) model_json["api_key_env"] = model.api_key_env;
  Json j = {{"object", "agent"},
          {"id", id},
          {"version", version},
          {"name", name},
          {"instructions", instructions},
          {"model", model_json},
          {"tools", tools_json},
          {"sandbox", sandbox_json},
          {"retry",
           {{"max_attempts", retry.max_attempts},
            {"initial_backoff_ms", retry.initial_backoff_ms},
            {"backoff_multiplier", retry.backoff_multiplier},
            {"max_backoff_ms", retry.max_backoff_ms}}},
          {"turn_policy", turn_policy},
          {"created_at", FormatRfc3339(created_ms)}};
  // Absent rather than empty, so agents stored before budgets existed read back the same.
  if (!budget.empty()) j["budget"] = budget.ToJson();
  if (!policy_documents.empty()) j["policies"] = policy_documents;
  return j;
}

Result<AgentSpec> ParseAgentSpec(const Json& body, const std::set<std::string>& providers) {
  FieldReader r(body, "");
  RETURN_IF_ERROR(r.CheckObject());
  AgentSpec a;
  RETURN_IF_ERROR(r.String("name", &a.name, true, 256));
  if (a.name.empty()) return InvalidArgument("'name' must not be empty");
  RETURN_IF_ERROR(r.String("instructions", &a.instructions, false, 256 * 1024));
  const Json* model = nullptr;
  RETURN_IF_ERROR(r.Value("model", &model, true));
  RETURN_IF_ERROR(ParseModel(*model, providers, &a.model));
  const Json* tools = nullptr;
  RETURN_IF_ERROR(r.Value("tools", &tools, false));
  if (tools) {
    if (!tools->is_array()) return InvalidArgument("'tools' must be an array");
    if (tools->size() > 128) return InvalidArgument("'tools' has more than 128 entries");
    std::set<std::string> names;
    for (size_t i = 0; i < tools->size(); ++i) {
      ToolDef t;
      RETURN_IF_ERROR(ParseTool((*tools)[i], i, &t));
      if (!names.insert(t.name).second) {
        return InvalidArgument(fmt::format("'tools[{}].name' '{}' is used twice", i, t.name));
      }
      a.tools.push_back(std::move(t));
    }
  }
  const Json* sandbox = nullptr;
  RETURN_IF_ERROR(r.Value("sandbox", &sandbox, false));
  if (sandbox) RETURN_IF_ERROR(ParseSandbox(*sandbox, &a.sandbox));
  const Json* retry = nullptr;
  RETURN_IF_ERROR(r.Value("retry", &retry, false));
  if (retry) RETURN_IF_ERROR(ParseRetry(*retry, &a.retry));
  RETURN_IF_ERROR(r.String("turn_policy", &a.turn_policy, false, 16));
  if (a.turn_policy != "enqueue" && a.turn_policy != "reject") {
    return InvalidArgument("'turn_policy' must be \"enqueue\" or \"reject\"");
  }
  const Json* budget = nullptr;
  RETURN_IF_ERROR(r.Value("budget", &budget, false));
  if (budget) {
    ASSIGN_OR_RETURN(a.budget, ParseBudget(*budget, "budget"));
  }
  const Json* policies = nullptr;
  RETURN_IF_ERROR(r.Value("policies", &policies, false));
  if (policies != nullptr) {
    if (!policies->is_array()) return InvalidArgument("'policies' must be an array of documents");
    if (policies->size() > 20) return InvalidArgument("'policies' has more than 20 documents");
    for (size_t i = 0; i < policies->size(); ++i) {
      auto p = identity::ParsePolicy(DumpJson((*policies)[i]));
      if (!p.ok()) {
        return InvalidArgument(fmt::format("'policies[{}]': {}", i, p.status().message()));
      }
      a.policies.push_back(std::move(p).value());
      a.policy_documents.push_back((*policies)[i]);
    }
  }
  // Fields the server sets are accepted on input (so a fetched agent can be PUT back) but
  // ignored.
  for (const char* k : {"object", "id", "version", "created_at", "tenant_id"}) {
    const Json* ignored = nullptr;
    RETURN_IF_ERROR(r.Value(k, &ignored, false));
  }
  RETURN_IF_ERROR(r.NoUnknownKeys());
  return a;
}

Result<AgentSpec> AgentFromJson(const Json& stored) {
  std::set<std::string> any = {stored.value("model", Json::object()).value("provider", "")};
  auto parsed = ParseAgentSpec(stored, any);
  if (!parsed.ok()) return Internal("stored agent is invalid: " + parsed.status().message());
  AgentSpec a = std::move(parsed).value();
  a.id = stored.value("id", "");
  a.version = stored.value("version", int64_t{0});
  return a;
}

// Turn input: a string, or an array of message items.
Result<Json> ParseTurnInput(const Json& input, size_t max_items) {
  if (input.is_string()) {
    if (input.get_ref<const std::string&>().empty()) {
      return InvalidArgument("'input' must not be empty");
    }
    return Json::array({{{"type", "message"}, {"role", "user"}, {"content", input}}});
  }
  if (!input.is_array()) return InvalidArgument("'input' must be a string or an array of items");
  if (input.empty()) return InvalidArgument("'input' must not be empty");
  if (input.size() > max_items) {
    return InvalidArgument(fmt::format("'input' has more than {} items", max_items));
  }
  Json out = Json::array();
  for (size_t i = 0; i < input.size(); ++i) {
    FieldReader r(input[i], fmt::format("input[{}]", i));
    RETURN_IF_ERROR(r.CheckObject());
    std::string type = "message", role, content;
    RETURN_IF_ERROR(r.String("type", &type, false, 32));
    if (type != "message") {
      return InvalidArgument(fmt::format("'input[{}].type' must be \"message\"", i));
    }
    RETURN_IF_ERROR(r.String("role", &role, true, 32));
    if (role != "user" && role != "assistant" && role != "system" && role != "developer") {
      return InvalidArgument(fmt::format(
          "'input[{}].role' must be one of user, assistant, system, developer", i));
    }
    RETURN_IF_ERROR(r.String("content", &content, true));
    RETURN_IF_ERROR(r.NoUnknownKeys());
    out.push_back({{"type", "message"}, {"role", role}, {"content", content}});
  }
  return out;
}

Status CheckSessionMetadata(const Json& meta) {
  if (!meta.is_object()) return InvalidArgument("'metadata' must be an object");
  if (meta.size() > 64) return InvalidArgument("'metadata' has more than 64 keys");
  for (const auto& [k, v] : meta.items()) {
    if (k.size() > 64) return InvalidArgument("'metadata' keys must be at most 64 characters");
    if (!v.is_string() || v.get_ref<const std::string&>().size() > 512) {
      return InvalidArgument(
          fmt::format("'metadata.{}' must be a string of at most 512 characters", k));
    }
  }
  return Status::OK();
}

}  // namespace agentd::engine
