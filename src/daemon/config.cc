#include "daemon/config.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <regex>
#include <set>

#include "common/ids.h"

namespace agentd::daemon {
namespace {

Status ReadInt(const YAML::Node& n, const std::string& key, int64_t min, int64_t max,
               int64_t* out) {
  try {
    int64_t v = n.as<int64_t>();
    if (v < min || v > max) {
      return InvalidArgument(fmt::format("config key '{}' must be between {} and {}", key, min, max));
    }
    *out = v;
    return Status::OK();
  } catch (const std::exception&) {
    return InvalidArgument(fmt::format("config key '{}' must be an integer", key));
  }
}

Status ReadString(const YAML::Node& n, const std::string& key, std::string* out) {
  if (!n.IsScalar()) return InvalidArgument(fmt::format("config key '{}' must be a string", key));
  *out = n.as<std::string>();
  return Status::OK();
}

Status ReadDouble(const YAML::Node& n, const std::string& key, double min, double max,
                  double* out) {
  try {
    double v = n.as<double>();
    if (!(v >= min && v <= max)) {
      return InvalidArgument(fmt::format("config key '{}' must be between {} and {}", key, min, max));
    }
    *out = v;
    return Status::OK();
  } catch (const std::exception&) {
    return InvalidArgument(fmt::format("config key '{}' must be a number", key));
  }
}

Status ReadLimits(const YAML::Node& n, const std::string& path, sandbox::Limits* l) {
  if (!n.IsMap()) return InvalidArgument(fmt::format("config key '{}' must be a mapping", path));
  for (const auto& kv : n) {
    std::string key = kv.first.as<std::string>();
    std::string full = path + "." + key;
    const YAML::Node& v = kv.second;
    if (key == "memory_mb") {
      RETURN_IF_ERROR(ReadInt(v, full, 16, 1 << 20, &l->memory_mb));
    } else if (key == "cpus") {
      RETURN_IF_ERROR(ReadDouble(v, full, 0.01, 1024, &l->cpus));
    } else if (key == "pids") {
      RETURN_IF_ERROR(ReadInt(v, full, 8, 1 << 22, &l->pids));
    } else if (key == "disk_mb") {
      RETURN_IF_ERROR(ReadInt(v, full, 1, 1 << 24, &l->disk_mb));
    } else if (key == "timeout_ms") {
      RETURN_IF_ERROR(ReadInt(v, full, 100, 86400000, &l->timeout_ms));
    } else {
      return InvalidArgument(fmt::format("unknown config key '{}'", full));
    }
  }
  return Status::OK();
}

Status ReadSandbox(const YAML::Node& n, Config* cfg) {
  if (!n.IsMap()) return InvalidArgument("config key 'sandbox' must be a mapping");
  for (const auto& kv : n) {
    std::string key = kv.first.as<std::string>();
    if (key == "defaults") {
      RETURN_IF_ERROR(ReadLimits(kv.second, "sandbox.defaults", &cfg->sandbox_defaults));
    } else if (key == "max") {
      RETURN_IF_ERROR(ReadLimits(kv.second, "sandbox.max", &cfg->sandbox_max));
    } else if (key == "read_only_paths") {
      if (!kv.second.IsSequence()) {
        return InvalidArgument("config key 'sandbox.read_only_paths' must be a list of folders");
      }
      for (const auto& item : kv.second) {
        std::string path;
        RETURN_IF_ERROR(ReadString(item, "sandbox.read_only_paths[]", &path));
        if (path.empty() || path[0] != '/' || path.find("/../") != std::string::npos ||
            !std::filesystem::is_directory(path)) {
          return InvalidArgument(fmt::format(
              "config key 'sandbox.read_only_paths': '{}' is not an absolute path of a folder", path));
        }
        cfg->sandbox_read_only_paths.push_back(path);
      }
    } else if (key == "probe_gvisor_at_start") {
      try {
        cfg->sandbox_probe_gvisor_at_start = kv.second.as<bool>();
      } catch (const std::exception&) {
        return InvalidArgument("config key 'sandbox.probe_gvisor_at_start' must be true or false");
      }
    } else if (key == "spares") {
      RETURN_IF_ERROR(ReadInt(kv.second, "sandbox.spares", 0, 16, &cfg->sandbox_spares));
    } else if (key == "uid_base") {
      RETURN_IF_ERROR(ReadInt(kv.second, "sandbox.uid_base", 1000, 4000000000LL, &cfg->sandbox_uid_base));
    } else {
      return InvalidArgument(fmt::format("unknown config key 'sandbox.{}'", key));
    }
  }
  return Status::OK();
}

Status ReadSecrets(const YAML::Node& n, Config* cfg) {
  if (!n.IsMap()) return InvalidArgument("config key 'secrets' must be a mapping");
  for (const auto& kv : n) {
    std::string key = kv.first.as<std::string>();
    if (key != "master_key_file") {
      return InvalidArgument(fmt::format("unknown config key 'secrets.{}'", key));
    }
    RETURN_IF_ERROR(ReadString(kv.second, "secrets.master_key_file", &cfg->secrets_master_key_file));
    if (cfg->secrets_master_key_file.empty()) {
      return InvalidArgument("config key 'secrets.master_key_file' must not be empty");
    }
  }
  return Status::OK();
}

Status ReadBudget(const YAML::Node& n, Config* cfg) {
  if (!n.IsMap()) return InvalidArgument("config key 'budget' must be a mapping");
  for (const auto& kv : n) {
    std::string key = kv.first.as<std::string>();
    if (key != "defaults") return InvalidArgument(fmt::format("unknown config key 'budget.{}'", key));
    if (!kv.second.IsMap()) {
      return InvalidArgument("config key 'budget.defaults' must be a mapping");
    }
    engine::Budget& b = cfg->budget_defaults;
    for (const auto& f : kv.second) {
      std::string name = f.first.as<std::string>();
      std::string full = "budget.defaults." + name;
      const YAML::Node& v = f.second;
      if (name == "max_tokens") {
        RETURN_IF_ERROR(ReadInt(v, full, 1, 1000000000000LL, &b.max_tokens));
      } else if (name == "max_model_calls") {
        RETURN_IF_ERROR(ReadInt(v, full, 1, 1000000, &b.max_model_calls));
      } else if (name == "max_tool_calls") {
        RETURN_IF_ERROR(ReadInt(v, full, 1, 1000000, &b.max_tool_calls));
      } else if (name == "max_turn_seconds") {
        RETURN_IF_ERROR(ReadDouble(v, full, 0.001, 30 * 86400.0, &b.max_turn_seconds));
      } else if (name == "max_cost_usd") {
        RETURN_IF_ERROR(ReadDouble(v, full, 0.000001, 1e6, &b.max_cost_usd));
      } else if (name == "max_repeated_tool_calls") {
        RETURN_IF_ERROR(ReadInt(v, full, 1, 1000, &b.max_repeated_tool_calls));
      } else {
        return InvalidArgument(fmt::format("unknown config key '{}'", full));
      }
    }
  }
  return Status::OK();
}

Status ReadPrices(const YAML::Node& n, Config* cfg) {
  if (!n.IsMap()) {
    return InvalidArgument("config key 'prices' must be a mapping of model names to prices");
  }
  for (const auto& kv : n) {
    std::string model = kv.first.as<std::string>();
    std::string path = "prices." + model;
    if (model.empty() || !kv.second.IsMap()) {
      return InvalidArgument(fmt::format(
          "config key '{}' must be a mapping with input_per_million_usd and "
          "output_per_million_usd",
          path));
    }
    engine::ModelPrice price;
    bool input = false, output = false;
    for (const auto& f : kv.second) {
      std::string name = f.first.as<std::string>();
      if (name == "input_per_million_usd") {
        RETURN_IF_ERROR(ReadDouble(f.second, path + "." + name, 0, 1e6, &price.input_per_million_usd));
        input = true;
      } else if (name == "output_per_million_usd") {
        RETURN_IF_ERROR(ReadDouble(f.second, path + "." + name, 0, 1e6, &price.output_per_million_usd));
        output = true;
      } else {
        return InvalidArgument(fmt::format("unknown config key '{}.{}'", path, name));
      }
    }
    if (!input || !output) {
      return InvalidArgument(fmt::format("config key '{}' needs both input_per_million_usd and "
                                         "output_per_million_usd",
                                         path));
    }
    cfg->prices[model] = price;
  }
  return Status::OK();
}

Status ReadJwt(const YAML::Node& n, identity::JwtSignIn* jwt) {
  if (!n.IsMap()) return InvalidArgument("config key 'auth.jwt' must be a mapping");
  std::string jwks_file, jwks_url;
  bool tenant_claim_set = false;
  for (const auto& kv : n) {
    std::string key = kv.first.as<std::string>();
    std::string full = "auth.jwt." + key;
    const YAML::Node& v = kv.second;
    std::string* target = nullptr;
    if (key == "issuer") {
      target = &jwt->issuer;
    } else if (key == "audience") {
      target = &jwt->audience;
    } else if (key == "jwks_file") {
      target = &jwks_file;
    } else if (key == "jwks_url") {
      target = &jwks_url;
    } else if (key == "tenant_claim") {
      target = &jwt->tenant_claim;
      tenant_claim_set = true;
    } else if (key == "tenant") {
      target = &jwt->tenant;
    } else if (key == "principal_claim") {
      target = &jwt->principal_claim;
    } else if (key == "groups_claim") {
      target = &jwt->groups_claim;
    } else if (key == "leeway_seconds") {
      RETURN_IF_ERROR(ReadInt(v, full, 0, 3600, &jwt->leeway_seconds));
      continue;
    } else if (key == "tenants") {
      if (!v.IsMap() || v.size() == 0) {
        return InvalidArgument(fmt::format(
            "config key '{}' must be a mapping of claim values to tenant ids (ten_...)", full));
      }
      for (const auto& entry : v) {
        std::string claim = entry.first.as<std::string>(), tenant;
        RETURN_IF_ERROR(ReadString(entry.second, full + "." + claim, &tenant));
        if (claim.empty() || !IsValidId(tenant, "ten_")) {
          return InvalidArgument(fmt::format("config key '{}.{}' must be a tenant id (ten_...)",
                                             full, claim));
        }
        jwt->tenants[claim] = tenant;
      }
      continue;
    } else {
      return InvalidArgument(fmt::format("unknown config key '{}'", full));
    }
    RETURN_IF_ERROR(ReadString(v, full, target));
    if (target->empty()) {
      return InvalidArgument(fmt::format("config key '{}' must not be empty", full));
    }
  }
  for (const auto& [key, value] :
       {std::pair{"issuer", &jwt->issuer}, std::pair{"audience", &jwt->audience}}) {
    if (value->empty()) {
      return InvalidArgument(fmt::format("config key 'auth.jwt.{}' is required", key));
    }
  }
  if (jwks_file.empty() == jwks_url.empty()) {
    return InvalidArgument(
        "config key 'auth.jwt' needs exactly one of 'jwks_file' and 'jwks_url'");
  }
  if (!jwks_url.empty() && !jwks_url.starts_with("http://") && !jwks_url.starts_with("https://")) {
    return InvalidArgument("config key 'auth.jwt.jwks_url' must be an http:// or https:// URL");
  }
  jwt->jwks = jwks_file.empty() ? jwks_url : jwks_file;
  if (!jwt->tenant.empty() && tenant_claim_set) {
    return InvalidArgument(
        "config keys 'auth.jwt.tenant' and 'auth.jwt.tenant_claim' exclude each other: the "
        "tenant is fixed or read from a claim");
  }
  if (!jwt->tenant.empty() && !IsValidId(jwt->tenant, "ten_")) {
    return InvalidArgument("config key 'auth.jwt.tenant' must be a tenant id (ten_...)");
  }
  // A provider reaches only the tenants the operator maps it to: a claim names one of them.
  if (jwt->tenant.empty() && jwt->tenants.empty()) {
    return InvalidArgument(
        "config key 'auth.jwt' needs 'tenant' (one tenant for every token) or 'tenants' (the "
        "tenant each value of the tenant claim signs in to)");
  }
  if (!jwt->tenant.empty() && !jwt->tenants.empty()) {
    return InvalidArgument(
        "config keys 'auth.jwt.tenant' and 'auth.jwt.tenants' exclude each other: the tenant "
        "is fixed or mapped from a claim");
  }
  return Status::OK();
}

Status ReadAuth(const YAML::Node& n, Config* cfg) {
  if (!n.IsMap()) return InvalidArgument("config key 'auth' must be a mapping");
  for (const auto& kv : n) {
    std::string key = kv.first.as<std::string>();
    if (key == "operator_tenant") {
      RETURN_IF_ERROR(ReadString(kv.second, "auth.operator_tenant", &cfg->operator_tenant));
      if (!IsValidId(cfg->operator_tenant, "ten_")) {
        return InvalidArgument("config key 'auth.operator_tenant' must be a tenant id (ten_...)");
      }
      continue;
    }
    if (key != "jwt") return InvalidArgument(fmt::format("unknown config key 'auth.{}'", key));
    identity::JwtSignIn jwt;
    RETURN_IF_ERROR(ReadJwt(kv.second, &jwt));
    cfg->auth_jwt = std::move(jwt);
  }
  return Status::OK();
}

}  // namespace

Status ParseListen(const std::string& listen, std::string* host, uint16_t* port) {
  static const std::regex re(R"(^(\[[0-9a-fA-F:.]+\]|[0-9.]+|localhost):([0-9]{1,5})$)");
  std::smatch m;
  if (!std::regex_match(listen, m, re)) {
    return InvalidArgument(
        fmt::format("listen address '{}' must be HOST:PORT, e.g. 127.0.0.1:8080", listen));
  }
  std::string h = m[1].str();
  if (h == "localhost") h = "127.0.0.1";
  if (h.front() == '[') h = h.substr(1, h.size() - 2);
  int p = std::stoi(m[2].str());
  if (p > 65535) return InvalidArgument(fmt::format("port {} is out of range", p));
  *host = h;
  *port = static_cast<uint16_t>(p);
  return Status::OK();
}

Status LoadConfigFile(const std::string& path, Config* cfg) {
  YAML::Node root;
  try {
    root = YAML::LoadFile(path);
  } catch (const YAML::BadFile&) {
    return InvalidArgument(fmt::format("cannot read config file '{}'", path));
  } catch (const YAML::Exception& e) {
    return InvalidArgument(fmt::format("config file '{}' is not valid YAML: {}", path, e.what()));
  }
  if (root.IsNull()) return Status::OK();
  if (!root.IsMap()) return InvalidArgument(fmt::format("config file '{}' must be a mapping", path));
  for (const auto& kv : root) {
    std::string key = kv.first.as<std::string>();
    const YAML::Node& v = kv.second;
    if (key == "listen") {
      RETURN_IF_ERROR(ReadString(v, key, &cfg->listen));
    } else if (key == "data_dir") {
      RETURN_IF_ERROR(ReadString(v, key, &cfg->data_dir));
    } else if (key == "log_level") {
      RETURN_IF_ERROR(ReadString(v, key, &cfg->log_level));
    } else if (key == "max_body_bytes") {
      RETURN_IF_ERROR(ReadInt(v, key, 1024, 64 << 20, &cfg->max_body_bytes));
    } else if (key == "max_import_bytes") {
      RETURN_IF_ERROR(ReadInt(v, key, 1024, int64_t{4} << 30, &cfg->max_import_bytes));
    } else if (key == "io_threads") {
      RETURN_IF_ERROR(ReadInt(v, key, 1, 64, &cfg->io_threads));
    } else if (key == "snapshot_every") {
      RETURN_IF_ERROR(ReadInt(v, key, 1, 1000000, &cfg->snapshot_every));
    } else if (key == "max_workers") {
      RETURN_IF_ERROR(ReadInt(v, key, 1, 100000, &cfg->max_workers));
    } else if (key == "resident_idle_sessions") {
      RETURN_IF_ERROR(ReadInt(v, key, 0, 1000000, &cfg->resident_idle_sessions));
    } else if (key == "drain_timeout_ms") {
      RETURN_IF_ERROR(ReadInt(v, key, 0, 3600000, &cfg->drain_timeout_ms));
    } else if (key == "sandbox") {
      RETURN_IF_ERROR(ReadSandbox(v, cfg));
    } else if (key == "secrets") {
      RETURN_IF_ERROR(ReadSecrets(v, cfg));
    } else if (key == "budget") {
      RETURN_IF_ERROR(ReadBudget(v, cfg));
    } else if (key == "prices") {
      RETURN_IF_ERROR(ReadPrices(v, cfg));
    } else if (key == "auth") {
      RETURN_IF_ERROR(ReadAuth(v, cfg));
    } else {
      return InvalidArgument(fmt::format("unknown config key '{}' in '{}'", key, path));
    }
  }
  static const std::set<std::string> levels = {"trace", "debug", "info", "warn", "error"};
  if (!levels.count(cfg->log_level)) {
    return InvalidArgument("config key 'log_level' must be one of trace, debug, info, warn, error");
  }
  return Status::OK();
}

}  // namespace agentd::daemon
