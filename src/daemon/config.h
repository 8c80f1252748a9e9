// agentd's configuration: defaults, the optional YAML file (--config) and flags, validated
// as a whole at start-up. Unknown keys and bad values are errors that name the key.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "engine/agent_spec.h"
#include "identity/directory.h"
#include "sandbox/sandbox.h"

namespace agentd::daemon {

struct Config {
  std::string listen = "127.0.0.1:8080";  // HOST:PORT of the API; loopback by default
  std::string data_dir = "./var";         // SQLite database and lock file live here
  std::string log_level = "info";         // trace|debug|info|warn|error
  int64_t max_body_bytes = 1 << 20;       // larger request bodies get 413
  int64_t max_import_bytes = int64_t{256} << 20;  // the same for a session export file
  int64_t io_threads = 2;                 // HTTP event-loop threads
  int64_t snapshot_every = 100;           // journal events between session snapshots
  int64_t max_workers = 512;              // sessions driven at the same time
  int64_t resident_idle_sessions = 64;    // idle sessions kept in memory for their next turn
  int64_t drain_timeout_ms = 30000;       // SIGTERM: how long in-flight steps may finish
  bool sync_full = true;                  // SQLite synchronous=FULL (false only for tests)
  // `sandbox:` {defaults: {...}, max: {...}, uid_base}: limits of session sandboxes for
  // agents that leave them out, the most an agent may ask for, and the first host uid of
  // sandbox users (when agentd runs as root).
  sandbox::Limits sandbox_defaults{512, 1.0, 256, 256, 60000};
  sandbox::Limits sandbox_max{8192, 4.0, 4096, 10240, 3600000};
  int64_t sandbox_uid_base = 1000000000;
  // bwrap spare launchers kept ready so a sandbox's start skips joining its cgroups.
  int64_t sandbox_spares = 1;
  // Probe the gvisor driver at start-up (in the background) rather than when first used.
  bool sandbox_probe_gvisor_at_start = false;
  // Host folders every sandbox sees read-only at the same path (MCP servers from npm).
  std::vector<std::string> sandbox_read_only_paths;
  // `secrets: {master_key_file}`: the key the secrets vault seals with, kept outside the
  // database; "" is <data_dir>/secrets.key, created (0600) on first start.
  std::string secrets_master_key_file;
  // `budget: {defaults: {...}}`: turn limits for agents that leave them out (the fields of
  // an agent's `budget`).
  engine::Budget budget_defaults;
  // `prices: {"<model>" or "<provider>/<model>": {input_per_million_usd,
  // output_per_million_usd}}`: what model calls cost, for budget.max_cost_usd.
  std::map<std::string, engine::ModelPrice> prices;
  // `auth: {jwt: {issuer, audience, jwks_file | jwks_url, tenant_claim | tenant,
  // tenants, principal_claim, groups_claim, leeway_seconds}}`: sign-in with an identity provider's
  // JWTs besides API keys; unset, API keys only.
  std::optional<identity::JwtSignIn> auth_jwt;
  // `auth: {operator_tenant: ten_...}`: the tenant whose principals alone may act on other
  // tenants; "" (the default) is the bootstrap tenant `default`.
  std::string operator_tenant;
};

// Reads a YAML file into `cfg` (keys override defaults).
Status LoadConfigFile(const std::string& path, Config* cfg);
// Splits "HOST:PORT" ("[v6]:PORT" too).
Status ParseListen(const std::string& listen, std::string* host, uint16_t* port);

}  // namespace agentd::daemon
