// agentd: the daemon. Wires the store, model providers, engine and API together, resumes
// unfinished work, serves until SIGTERM/SIGINT, then drains and exits 0.
#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <filesystem>

#include "api/api.h"
#include "api/http/server.h"
#include "daemon/config.h"
#include "engine/engine.h"
#include "audit/audit.h"
#include "common/stop_signals.h"
#include "identity/directory.h"
#include "identity/signing_key.h"
#include "model/openai_chat/openai_chat.h"
#include "sandbox/bwrap/bwrap_driver.h"
#include "sandbox/deferred_driver.h"
#include "sandbox/gvisor/gvisor_driver.h"
#include "store/sqlite/sqlite_store.h"

using namespace agentd;

namespace {

int Fail(const std::string& msg) {
  std::fprintf(stderr, "agentd: %s\n", msg.c_str());
  return 2;
}


}  // namespace

namespace {

Json CapabilitiesJson(const agentd::sandbox::Capabilities& c) {
  Json j = {{"available", c.available}, {"enforced", c.enforced}, {"not_enforced", c.not_enforced}};
  if (!c.available) j["reason"] = c.unavailable_reason;
  return j;
}

void LogCapabilities(const std::string& name, const agentd::sandbox::Capabilities& c) {
  if (!c.available) {
    spdlog::warn("sandbox driver {}: not available: {}", name, c.unavailable_reason);
    return;
  }
  spdlog::info("sandbox driver {}: enforces {}", name, fmt::join(c.enforced, ", "));
  for (const auto& [what, why] : c.not_enforced) {
    spdlog::warn("sandbox driver {}: does not enforce {}: {}", name, what, why);
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"agentd: a stateful runtime for AI agents"};
  std::string config_path, listen, data_dir, log_level;
  bool no_sync = false;
  app.add_option("--config", config_path, "YAML configuration file (optional)");
  app.add_option("--listen", listen, "HOST:PORT to serve the API on (default 127.0.0.1:8080)");
  app.add_option("--data-dir", data_dir, "directory for the database (default ./var)");
  app.add_option("--log-level", log_level, "trace|debug|info|warn|error (default info)");
  app.add_flag("--unsafe-no-fsync", no_sync,
               "SQLite synchronous=NORMAL: faster, NOT durable on power loss (experiments only)");
  CLI11_PARSE(app, argc, argv);

  daemon::Config cfg;
  if (!config_path.empty()) {
    if (Status st = daemon::LoadConfigFile(config_path, &cfg); !st.ok()) return Fail(st.message());
  }
  if (!listen.empty()) cfg.listen = listen;
  if (!data_dir.empty()) cfg.data_dir = data_dir;
  if (!log_level.empty()) cfg.log_level = log_level;
  if (no_sync) cfg.sync_full = false;

  auto logger = spdlog::stderr_color_mt("agentd");
  spdlog::set_default_logger(logger);
  spdlog::set_level(spdlog::level::from_str(cfg.log_level));
  spdlog::set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ %v");

  std::string host;
  uint16_t port = 0;
  if (Status st = daemon::ParseListen(cfg.listen, &host, &port); !st.ok()) return Fail(st.message());

  std::error_code ec;
  std::filesystem::create_directories(cfg.data_dir, ec);
  if (ec) return Fail("cannot create data directory '" + cfg.data_dir + "': " + ec.message());
  // Only agentd lists or reads the data directory. When agentd is root, sandboxes run as
  // other uids that must pass through it (not list it) to reach their own workspace.
  chmod(cfg.data_dir.c_str(), geteuid() == 0 ? 0711 : 0700);
  std::string lock_path = cfg.data_dir + "/agentd.lock";
  int lock_fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
    return Fail("another agentd is using data directory '" + cfg.data_dir + "'");
  }

  // Signals are taken by sigwait in this thread only.
  StopSignals stop_signals;

  store::sqlite::SqliteOptions so;
  so.path = cfg.data_dir + "/agentd.db";
  so.synchronous_full = cfg.sync_full;
  so.audit_chain = audit::ChainFunction();
  auto store = store::sqlite::OpenSqliteStore(so);
  if (!store.ok()) return Fail(store.status().message());

  // Who may call: every request but the health checks needs an API key, or a JWT from the
  // identity provider when `auth.jwt` is configured. The first start creates the admin's
  // key, in <data-dir>/admin.key.
  identity::DirectoryOptions dopts;
  dopts.data_dir = cfg.data_dir;
  dopts.jwt = cfg.auth_jwt;
  dopts.operator_tenant = cfg.operator_tenant;
  auto directory = identity::Directory::Open(store->get(), SystemClock::Default(), dopts);
  if (!directory.ok()) return Fail(directory.status().message());
  if (Status st = (*directory)->Bootstrap(); !st.ok()) return Fail(st.message());
  if (cfg.auth_jwt) {
    spdlog::info("authentication: API keys; JWTs from issuer '{}' for audience '{}' (keys from {})",
                 cfg.auth_jwt->issuer, cfg.auth_jwt->audience, cfg.auth_jwt->jwks);
  } else {
    spdlog::info("authentication: API keys only (no auth.jwt in the config)");
  }
  // agentd's Ed25519 key: signs the tokens tools get and the audit log's checkpoints.
  auto signing_key = identity::SigningKey::LoadOrCreate(cfg.data_dir + "/signing.key");
  if (!signing_key.ok()) return Fail(signing_key.status().message());
  audit::AuditLog audit_log(**store, audit::Signer{signing_key->kid(), [&](std::string_view m) -> Result<std::string> {
                              return signing_key->Sign(m);
                            }});
  // One audit entry per API request, in its tenant's chain.
  auto audit_request = [&](const api::RequestRecord& r) {
    audit::AuditEntry e;
    e.tenant_id = r.tenant_id;
    e.time_ms = SystemClock::Default()->NowMillis();
    e.principal = r.principal_id;
    e.action = r.action;
    e.resource = r.resource;
    e.decision = r.decision;
    e.result = r.status == 0 ? "started" : std::to_string(r.status);
    e.data = DumpJson(Json{{"method", r.method},
                           {"path", r.path},
                           {"reason", r.reason},
                           {"request_id", r.request_id}});
    if (Status st = audit_log.AppendBlocking(std::move(e)); !st.ok()) {
      spdlog::error("audit append failed: {}", st.ToString());
    }
  };

  // Model providers, registered by name: the only place that knows the implementations.
  model::openai_chat::OpenAIChatProvider openai_chat;
  engine::ModelProviders providers = {{"openai-chat", &openai_chat}};

  // Sandbox drivers, registered by name like the providers. Each probes the host when it
  // opens; gvisor's probe takes seconds, so it runs when first needed (or in the background
  // from start-up, when the config says so).
  sandbox::BwrapOptions bo;
  bo.state_dir = cfg.data_dir + "/sandbox";
  bo.uid_base = static_cast<uid_t>(cfg.sandbox_uid_base);
  bo.spares = static_cast<int>(cfg.sandbox_spares);
  bo.read_only_paths = cfg.sandbox_read_only_paths;
  std::unique_ptr<sandbox::BwrapDriver> bwrap = sandbox::BwrapDriver::Open(bo);
  sandbox::DeferredDriver gvisor([&cfg] {
    sandbox::GvisorOptions go;
    go.state_dir = cfg.data_dir + "/sandbox-gvisor";
    auto d = sandbox::GvisorDriver::Open(go);
    LogCapabilities("gvisor", d->capabilities());
    return d;
  });
  if (cfg.sandbox_probe_gvisor_at_start) gvisor.Start();
  engine::SandboxDrivers drivers = {{"bwrap", bwrap.get()}, {"gvisor", &gvisor}};
  LogCapabilities("bwrap", bwrap->capabilities());
  auto sandbox_report = [&] {
    Json report = Json::object();
    report["bwrap"] = CapabilitiesJson(bwrap->capabilities());
    report["gvisor"] = gvisor.ready()
                           ? CapabilitiesJson(gvisor.capabilities())
                           : Json{{"available", false},
                                  {"reason", "not probed yet: it is probed when an agent first "
                                             "asks for it, or at start-up with "
                                             "sandbox.probe_gvisor_at_start"},
                                  {"enforced", Json::array()},
                                  {"not_enforced", Json::object()}};
    return report;
  };

  engine::EngineOptions eo;
  eo.sandbox_root = cfg.data_dir + "/workspaces";
  eo.sandbox_defaults = cfg.sandbox_defaults;
  eo.sandbox_max = cfg.sandbox_max;
  eo.sandbox_read_only_paths = cfg.sandbox_read_only_paths;
  eo.snapshot_every = static_cast<int>(cfg.snapshot_every);
  eo.max_workers = static_cast<size_t>(cfg.max_workers);
  eo.resident_idle_sessions = static_cast<size_t>(cfg.resident_idle_sessions);
  eo.drain_timeout = std::chrono::milliseconds(cfg.drain_timeout_ms);
  eo.budget_defaults = cfg.budget_defaults;
  eo.prices = cfg.prices;
  eo.directory = directory->get();
  eo.signing_key = &*signing_key;
  eo.audit = &audit_log;
  // The tenants' secrets, sealed under a master key kept outside the database.
  auto vault = identity::Vault::Load(
      store->get(), SystemClock::Default(),
      {cfg.secrets_master_key_file.empty() ? cfg.data_dir + "/secrets.key"
                                           : cfg.secrets_master_key_file});
  if (!vault.ok()) return Fail(vault.status().message());
  eo.vault = vault->get();
  engine::Engine engine(eo, store->get(), providers, SystemClock::Default(), drivers);

  std::atomic<bool> ready{false};
  std::atomic<size_t> resumed{0};
  api::ApiOptions api_options;
  api_options.vault = vault->get();
  api::Api api(api_options, &engine, directory->get(), &audit_log, &*signing_key, [&] {
    return Json{{"ready", ready.load()},
                {"store", "sqlite"},
                {"resumed_sessions", resumed.load()},
                {"resident_sessions", engine.ResidentSessions()},
                {"sandbox_drivers", sandbox_report()}};
  }, audit_request);
  http::ServerOptions ho;
  ho.host = host;
  ho.port = port;
  ho.io_threads = static_cast<int>(cfg.io_threads);
  ho.max_body_bytes = static_cast<size_t>(cfg.max_body_bytes);
  ho.body_limit_for = [&cfg](std::string_view method, std::string_view target) {
    return api::IsImportRequest(method, target) ? static_cast<size_t>(cfg.max_import_bytes)
                                                : static_cast<size_t>(cfg.max_body_bytes);
  };
  http::Server server(ho, [&](const http::Request& r, http::Exchange& ex) { api.Handle(r, ex); });
  if (Status st = server.Start(); !st.ok()) return Fail(st.message());

  auto recovered = engine.Recover();
  if (!recovered.ok()) return Fail("recovery failed: " + recovered.status().message());
  resumed = *recovered;
  ready = true;
  spdlog::info("agentd listening on http://{}:{} (data dir {}, sqlite synchronous={}); "
               "resuming {} session(s)",
               host, server.port(), cfg.data_dir, cfg.sync_full ? "FULL" : "NORMAL", *recovered);

  int sig = stop_signals.WaitBlocking();
  spdlog::info("received {}, draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
  server.StopAccepting();
  engine.DrainBlocking();
  server.Stop();
  audit_log.Close();
  (*store)->Close();
  spdlog::info("drained; bye");
  return 0;
}
