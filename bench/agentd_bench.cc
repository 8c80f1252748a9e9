// agentd's benchmark program (`make bench`). Starts the fake model and tool servers and a
// real agentd (SQLite, synchronous=FULL) as separate processes, drives them over loopback
// HTTP, and prints one JSON line per measurement. A step is one model call plus one http tool
// call, both journaled durably before the turn moves on.
#include <sqlite3.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <sstream>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "model/openai_chat/openai_chat.h"
#include "tests/support/process.h"

using namespace agentd;
using namespace agentd::testing;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = std::min(v.size() - 1, static_cast<size_t>(p * (v.size() - 1) + 0.5));
  return v[i];
}

double Median(std::vector<double> v) { return Percentile(std::move(v), 0.5); }

void Emit(const Json& j) {
  std::printf("%s\n", j.dump().c_str());
  std::fflush(stdout);
}

// CPU seconds (user + system) a process has used so far.
double CpuSeconds(pid_t pid) {
  std::ifstream f(fmt::format("/proc/{}/stat", pid));
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  auto rp = s.rfind(')');
  if (rp == std::string::npos) return 0;
  std::istringstream in(s.substr(rp + 2));
  std::string field;
  double utime = 0, stime = 0;
  for (int i = 3; i <= 15 && in >> field; ++i) {
    if (i == 14) utime = std::stod(field);
    if (i == 15) stime = std::stod(field);
  }
  return (utime + stime) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

int64_t RssKib(pid_t pid) {
  std::ifstream f(fmt::format("/proc/{}/status", pid));
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6));
  }
  return 0;
}

// The baseline: SQLite synchronous=FULL commits of one 512-byte row, as the peers' raw suite.
double SqliteFullCommitsPerSecond(const std::string& dir, int n) {
  std::string path = dir + "/raw.db";
  sqlite3* db = nullptr;
  sqlite3_open(path.c_str(), &db);
  sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
               "CREATE TABLE j(id INTEGER PRIMARY KEY, payload BLOB)",
               nullptr, nullptr, nullptr);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "INSERT INTO j(payload) VALUES(?1)", -1, &st, nullptr);
  std::string payload(512, 'x');
  auto start = Clock::now();
  for (int i = 0; i < n; ++i) {
    sqlite3_exec(db, "BEGIN", nullptr, nullptr, nullptr);
    sqlite3_bind_blob(st, 1, payload.data(), 512, SQLITE_STATIC);
    sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_exec(db, "COMMIT", nullptr, nullptr, nullptr);
  }
  double rate = n / Seconds(Clock::now() - start);
  sqlite3_finalize(st);
  sqlite3_close(db);
  std::filesystem::remove(path);
  return rate;
}

struct Env {
  std::string dir;
  FakeProcess model, tools;
  Agentd agentd;
  std::string agent;

  std::string Url(const std::string& p) const { return agentd.url + p; }
  void StartDaemon() {
    auto a = StartAgentd(dir + "/data", dir + "/agentd.log");
    if (!a.ok()) {
      std::fprintf(stderr, "%s\n", a.status().ToString().c_str());
      std::exit(1);
    }
    agentd = std::move(a).value();
  }
  void Restart(int sig) {
    agentd.proc->Signal(sig);
    agentd.proc->Wait();
    agentd.proc.reset();
    StartDaemon();
  }
  std::string Session() {
    return Call("POST", Url("/v1/sessions"), {{"agent_id", agent}}).body.value("id", "");
  }
  // Runs one turn to its end; returns false unless it completed.
  bool RunTurn(const std::string& sid, const std::string& input) {
    Reply r = Call("POST", Url("/v1/sessions/" + sid + "/turns"), {{"input", input}, {"wait", true}});
    return r.status == 200 && r.body.value("status", "") == "completed";
  }
};

Env Setup() {
  Env e;
  e.dir = TempDir("bench");
  auto m = StartFake("fake_model", e.dir);
  auto t = StartFake("fake_tools", e.dir);
  if (!m.ok() || !t.ok()) {
    std::fprintf(stderr, "cannot start fakes\n");
    std::exit(1);
  }
  e.model = std::move(m).value();
  e.tools = std::move(t).value();
  e.StartDaemon();
  Json body = {{"name", "bench"},
               {"model", {{"provider", "openai-chat"}, {"name", "fake"}, {"base_url", e.model.url + "/v1"}}},
               {"tools", {{{"type", "http"}, {"name", "echo"}, {"url", e.tools.url + "/echo"},
                           {"idempotent", true}, {"parameters", {{"type", "object"}}}}}}};
  e.agent = Call("POST", e.Url("/v1/agents"), body).body.value("id", "");
  return e;
}

// Sessions run turns of `steps` steps back to back; returns steps/s and agentd CPU per step.
Json Throughput(Env& env, int sessions, int turns_per_session, int steps) {
  std::vector<std::string> ids;
  for (int i = 0; i < sessions; ++i) ids.push_back(env.Session());
  std::string input = fmt::format("repeat {} echo {{}}", steps);
  std::atomic<int> failed{0};
  // CPU of everything else on the machine's cores in this run: the two fakes and this
  // client (its HTTP calls and waits), to show what is left for agentd.
  auto others = [&] {
    return CpuSeconds(env.model.proc->pid()) + CpuSeconds(env.tools.proc->pid()) +
           CpuSeconds(::getpid());
  };
  double cpu0 = CpuSeconds(env.agentd.proc->pid());
  double others0 = others();
  auto start = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < sessions; ++i) {
    threads.emplace_back([&, i] {
      for (int t = 0; t < turns_per_session; ++t) {
        if (!env.RunTurn(ids[i], input)) failed++;
      }
    });
  }
  for (auto& t : threads) t.join();
  double wall = Seconds(Clock::now() - start);
  double cpu = CpuSeconds(env.agentd.proc->pid()) - cpu0;
  double others_cpu = others() - others0;
  double total_steps = static_cast<double>(sessions) * turns_per_session * steps;
  if (failed > 0) std::fprintf(stderr, "warning: %d turns did not complete\n", failed.load());
  return {{"sessions", sessions},
          {"steps", total_steps},
          {"failed_turns", failed.load()},
          {"steps_per_s", total_steps / wall},
          {"agentd_cpu_us_per_step", cpu / total_steps * 1e6},
          {"fakes_and_client_cpu_us_per_step", others_cpu / total_steps * 1e6},
          {"wall_s", wall}};
}

// The floor of a step on this machine, measured without agentd: two SQLite FULL commits (the
// baseline of this run) plus one model and one tool round trip made as agentd makes them
// (agentd's libcurl client, keep-alive; the model request encoded by agentd's encoder from a
// 110-item conversation, the average in the single-session run), each after a 400 us pause,
// as when a step waits for a commit between its calls.
Json StepFloor(Env& env, double sqlite_full, int n) {
  HttpRequest tool;
  tool.url = env.tools.url + "/echo";
  tool.headers = {{"Content-Type", "application/json"}, {"Idempotency-Key", "floor"}};
  tool.body = "{}";
  auto echoed = HttpDoBlocking(tool);
  std::string output = echoed.ok() ? echoed->body : "{}";
  model::ModelRequest mr;
  mr.model = "fake";
  mr.tools.push_back({"echo", "", Json{{"type", "object"}}});
  Json items = Json::array();
  for (int turn = 0; items.size() < 110; ++turn) {
    items.push_back({{"type", "message"}, {"role", "user"}, {"content", "repeat 10 echo {}"}});
    for (int step = 0; step < 10 && items.size() < 110; ++step) {
      std::string id = fmt::format("call_{}_{}", turn, step);
      items.push_back({{"type", "function_call"}, {"call_id", id}, {"name", "echo"},
                       {"arguments", "{}"}});
      items.push_back({{"type", "function_call_output"}, {"call_id", id}, {"output", output}});
    }
  }
  HttpRequest model;
  model.url = env.model.url + "/v1/chat/completions";
  model.headers = {{"Content-Type", "application/json"}};
  model.body = model::openai_chat::EncodeChatRequestBody(mr, items).value();
  auto median_rt = [&](const HttpRequest& req) {
    std::vector<double> t;
    for (int i = 0; i < n; ++i) {
      std::this_thread::sleep_for(std::chrono::microseconds(400));
      auto start = Clock::now();
      auto r = HttpDoBlocking(req);
      if (r.ok() && r->status == 200) t.push_back(Seconds(Clock::now() - start) * 1e6);
    }
    return Median(t);
  };
  double model_us = median_rt(model);
  double tool_us = median_rt(tool);
  double commit_us = 1e6 / sqlite_full;
  double step_us = 2 * commit_us + model_us + tool_us;
  return {{"bench", "step_floor"},
          {"model_request_bytes", model.body.size()},
          {"model_round_trip_us", model_us},
          {"tool_round_trip_us", tool_us},
          {"commit_us", commit_us},
          {"floor_step_us", step_us},
          {"floor_steps_per_s", 1e6 / step_us},
          {"floor_fraction_of_sqlite_full_commit_rate", 1e6 / step_us / sqlite_full}};
}

// Per-step latency seen by a client following a turn's SSE stream: the time between
// consecutive tool_call.completed events. Turns of 10 steps on fresh sessions, as in the
// throughput runs, so that the conversation each model call carries stays short.
Json StepLatency(Env& env, int turns) {
  std::vector<double> gaps;
  for (int t = 0; t < turns; ++t) {
    std::string sid = env.Session();
    HttpRequest req;
    req.url = env.Url("/v1/sessions/" + sid + "/turns");
    req.body = Json{{"input", "repeat 10 echo {}"}, {"stream", true}}.dump();
    req.headers = {{"Content-Type", "application/json"},
                   {"Authorization", "Bearer " + AdminKeyFor(req.url)}};
    req.timeout = std::chrono::minutes(2);
    Clock::time_point last{};
    std::string buf;
    req.on_body = [&](std::string_view c) {
      auto now = Clock::now();
      buf.append(c);
      size_t pos;
      while ((pos = buf.find("\n\n")) != std::string::npos) {
        std::string frame = buf.substr(0, pos);
        buf.erase(0, pos + 2);
        if (frame.find("event: tool_call.completed") != std::string::npos) {
          if (last != Clock::time_point{}) gaps.push_back(Seconds(now - last) * 1e6);
          last = now;
        }
      }
      return true;
    };
    (void)HttpDoBlocking(req);
  }
  return {{"samples", gaps.size()},
          {"step_p50_us", Percentile(gaps, 0.5)},
          {"step_p99_us", Percentile(gaps, 0.99)}};
}

// Milliseconds from submitting a turn to its model_call.started event (agentd has loaded the
// session and assembled its context) and to its end.
std::pair<double, double> TimeTurn(Env& env, const std::string& sid, const std::string& input) {
  HttpRequest req;
  req.url = env.Url("/v1/sessions/" + sid + "/turns");
  req.body = Json{{"input", input}, {"stream", true}}.dump();
  req.headers = {{"Content-Type", "application/json"},
                 {"Authorization", "Bearer " + AdminKeyFor(req.url)}};
  req.timeout = std::chrono::minutes(5);
  auto start = Clock::now();
  double first_model_ms = -1;
  std::string buf;
  req.on_body = [&](std::string_view c) {
    buf.append(c);
    if (first_model_ms < 0 && buf.find("event: model_call.started") != std::string::npos) {
      first_model_ms = Seconds(Clock::now() - start) * 1e3;
    }
    return true;
  };
  (void)HttpDoBlocking(req);
  return {first_model_ms, Seconds(Clock::now() - start) * 1e3};
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"agentd benchmarks"};
  int runs = 3, seq_turns = 10, conc_turns = 4, resume_sessions = 1000, idle_sessions = 100000;
  int history_events = 10000;
  std::string only;
  app.add_option("--runs", runs, "repetitions of each throughput measurement (median reported)");
  app.add_option("--seq-turns", seq_turns, "turns of 10 steps in the single-session run");
  app.add_option("--conc-turns", conc_turns, "turns of 10 steps per session in the 64-session run");
  app.add_option("--resume-sessions", resume_sessions, "sessions in the resume benchmark");
  app.add_option("--idle-sessions", idle_sessions, "sessions in the idle-memory benchmark");
  app.add_option("--history-events", history_events, "journal events of the long session");
  app.add_option("--only", only, "run only: seq, conc, latency, resume, history, idle");
  CLI11_PARSE(app, argc, argv);
  auto want = [&](const std::string& name) { return only.empty() || only == name; };

  Env env = Setup();
  std::vector<double> base;
  for (int r = 0; r < runs; ++r) base.push_back(SqliteFullCommitsPerSecond(env.dir, 2000));
  double sqlite_full = Median(base);
  Emit({{"bench", "sqlite_full_commit"}, {"commits_per_s", sqlite_full}});

  // Runs of one throughput measurement: the median rate and CPU figures, and every rate.
  auto throughput = [&](int sessions, int turns) {
    std::vector<double> rates, cpu, others;
    for (int r = 0; r < runs; ++r) {
      Json j = Throughput(env, sessions, turns, 10);
      rates.push_back(j["steps_per_s"]);
      cpu.push_back(j["agentd_cpu_us_per_step"]);
      others.push_back(j["fakes_and_client_cpu_us_per_step"]);
    }
    return Json{{"steps_per_s", Median(rates)},
                {"runs", rates},
                {"agentd_cpu_us_per_step", Median(cpu)},
                {"fakes_and_client_cpu_us_per_step", Median(others)}};
  };
  if (want("seq")) {
    Emit(StepFloor(env, sqlite_full, 1000));
    Json j = throughput(1, seq_turns);
    j["bench"] = "single_session";
    j["fraction_of_sqlite_full_commit_rate"] = j["steps_per_s"].get<double>() / sqlite_full;
    Emit(j);
  }
  if (want("conc")) {
    Json j = throughput(64, conc_turns);
    j["bench"] = "concurrent_64";
    Emit(j);
  }
  if (want("latency")) {
    Json j = StepLatency(env, 50);
    j["bench"] = "step_latency";
    Emit(j);
  }
  if (want("resume")) {
    // Sessions with about 100 journal events each; then a 20-step turn is submitted to every
    // one of them and agentd is killed at once, so that most are in flight or queued.
    std::vector<std::string> ids(resume_sessions), turn_ids(resume_sessions);
    auto parallel = [&](auto fn) {
      std::atomic<int> next{0};
      std::vector<std::thread> threads;
      for (int w = 0; w < 32; ++w) {
        threads.emplace_back([&] {
          for (int i; (i = next++) < resume_sessions;) fn(i);
        });
      }
      for (auto& t : threads) t.join();
    };
    parallel([&](int i) {
      ids[i] = env.Session();
      env.RunTurn(ids[i], "repeat 23 echo {}");
    });
    parallel([&](int i) {
      turn_ids[i] = Call("POST", env.Url("/v1/sessions/" + ids[i] + "/turns"),
                         {{"input", "repeat 20 echo {}"}})
                        .body.value("id", "");
    });
    env.agentd.proc->Signal(SIGKILL);
    env.agentd.proc->Wait();
    auto start = Clock::now();
    env.StartDaemon();
    double ready_s = Seconds(Clock::now() - start);
    auto resumed_line =
        env.agentd.proc->WaitForLine("resuming ([0-9]+) session", std::chrono::seconds(1));
    std::string resumed = resumed_line.ok() ? *resumed_line : "?";
    int completed = 0;
    for (int i = 0; i < resume_sessions; ++i) {
      while (true) {
        Json t = Call("GET", env.Url("/v1/sessions/" + ids[i] + "/turns/" + turn_ids[i])).body;
        std::string st = t.value("status", "");
        if (st == "completed") ++completed;
        if (st != "queued" && st != "running") break;
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
    double all_done_s = Seconds(Clock::now() - start);
    if (completed != resume_sessions) {
      std::fprintf(stderr, "warning: %d of %d resumed turns completed\n", completed,
                   resume_sessions);
    }
    Emit({{"bench", "resume_after_kill9"}, {"sessions", resume_sessions},
          {"events_per_session_before", 100}, {"sessions_resumed", resumed},
          {"ready_s", ready_s}, {"turns_completed", completed},
          {"all_turns_finished_s", all_done_s}});
  }
  if (want("history")) {
    // First turn after a restart: a fresh session vs two with long journals. The first long
    // one is built from turns of many parallel tool calls (its conversation is long too: the
    // model call must carry it all); the second from failed model calls retried (its
    // journal is as long, its conversation short), which isolates the journal's length.
    std::string small = env.Session();
    std::string big = env.Session();
    std::string batch;
    for (int i = 0; i < 500; ++i) batch += "call echo {}\n";
    int64_t big_events = 0;
    while (big_events < history_events) {
      if (!env.RunTurn(big, batch)) {
        std::fprintf(stderr, "warning: a history turn did not complete\n");
        break;
      }
      big_events = Call("GET", env.Url("/v1/sessions/" + big)).body.value("last_seq", 0);
    }
    Json retrying = {{"name", "bench-retrying"},
                     {"model", {{"provider", "openai-chat"}, {"name", "fake"},
                                {"base_url", env.model.url + "/v1"}}},
                     {"retry", {{"max_attempts", 100}, {"initial_backoff_ms", 0},
                                {"backoff_multiplier", 1.0}, {"max_backoff_ms", 0}}}};
    std::string retrying_agent =
        Call("POST", env.Url("/v1/agents"), retrying).body.value("id", "");
    std::string retried =
        Call("POST", env.Url("/v1/sessions"), {{"agent_id", retrying_agent}}).body.value("id", "");
    Json faults = Json::array();
    for (int i = 0; i < 98; ++i) faults.push_back({{"status", 500}});
    int64_t retried_events = 0;
    while (retried_events < history_events) {
      Call("POST", env.model.url + "/_fake/faults", {{"faults", faults}});
      if (!env.RunTurn(retried, "say ok")) {
        std::fprintf(stderr, "warning: a retried turn did not complete\n");
        break;
      }
      retried_events = Call("GET", env.Url("/v1/sessions/" + retried)).body.value("last_seq", 0);
    }
    std::vector<double> small_start, big_start, small_total, big_total, retried_start,
        retried_total;
    struct Timed {
      const std::string* sid;
      std::vector<double>* start;
      std::vector<double>* total;
    };
    std::vector<Timed> order = {{&small, &small_start, &small_total},
                                {&big, &big_start, &big_total},
                                {&retried, &retried_start, &retried_total}};
    for (int r = 0; r < runs; ++r) {
      env.Restart(SIGTERM);
      // Rotated, so that no session always pays for the first request after the restart.
      for (size_t k = 0; k < order.size(); ++k) {
        const Timed& t = order[(k + r) % order.size()];
        auto [to_model, whole] = TimeTurn(env, *t.sid, "say hi");
        t.start->push_back(to_model);
        t.total->push_back(whole);
      }
    }
    Emit({{"bench", "first_turn_after_restart"},
          {"long_session_events", big_events},
          {"retried_session_events", retried_events},
          {"small_to_model_call_ms", Median(small_start)},
          {"long_to_model_call_ms", Median(big_start)},
          {"retried_to_model_call_ms", Median(retried_start)},
          {"small_turn_ms", Median(small_total)},
          {"long_turn_ms", Median(big_total)},
          {"retried_turn_ms", Median(retried_total)}});
  }
  if (want("idle")) {
    env.Restart(SIGTERM);
    int64_t rss_before = RssKib(env.agentd.proc->pid());
    std::atomic<int> next{0};
    std::vector<std::thread> threads;
    auto start = Clock::now();
    for (int w = 0; w < 64; ++w) {
      threads.emplace_back([&] {
        while (next++ < idle_sessions) env.Session();
      });
    }
    for (auto& t : threads) t.join();
    double create_s = Seconds(Clock::now() - start);
    int64_t rss_after = RssKib(env.agentd.proc->pid());
    Json ready = Call("GET", env.Url("/readyz")).body;
    Emit({{"bench", "idle_sessions"}, {"sessions", idle_sessions},
          {"rss_mib_before", rss_before / 1024.0}, {"rss_mib_after", rss_after / 1024.0},
          {"resident_sessions", ready.value("resident_sessions", -1)},
          {"sessions_created_per_s", idle_sessions / create_s}});
  }
  env.agentd.proc->Signal(SIGTERM);
  env.agentd.proc->Wait();
  std::filesystem::remove_all(env.dir);
  return 0;
}
