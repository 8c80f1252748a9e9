// Policy evaluation (src/identity/policy.h): one request decided against a document of 1,000
// statements that all name the request's action and tenant, with wildcard resources, a
// quarter of them with conditions. Shapes:
//   matching_late   the only statement that applies is the last one (an allow)
//   matching_none   no statement applies (default deny)
//   deny_in_middle  statement 500 is a deny that applies; the last is an allow that would
//   other_service   the statements name another service's actions
//   broad_none      like matching_none, with resources "agentd:*:session/s-<i>-*"
//   unindexed_none  like matching_none, with resources "agentd:*s-<i>-*", which the index
//                   cannot narrow: every pattern is tried (the worst case)
// Besides Google Benchmark's mean time per decision, each benchmark reports p50_ns and
// p99_ns: percentiles of 20,000 decisions timed one by one (the clock reads included).
#include <benchmark/benchmark.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <vector>

#include "identity/policy.h"

using agentd::identity::Decide;
using agentd::identity::Decision;
using agentd::identity::ParsePolicy;
using agentd::identity::Policy;
using agentd::identity::Request;

namespace {

constexpr int kStatements = 1000;

enum class Shape {
  kMatchingLate,
  kMatchingNone,
  kDenyInMiddle,
  kOtherService,
  kBroadNone,
  kUnindexedNone
};

// Statements like those a tenant's policy holds: wildcard actions, resources scoped with the
// tenant variable and per-session wildcards, some with conditions.
std::string StatementJson(int i, const char* effect, const std::string& resource,
                          const char* actions) {
  std::string conditions;
  if (i % 4 == 0) {
    conditions = R"(, "conditions": {"StringEquals": {"principal.kind": "user"},
                                      "StringLikeIfExists": {"tool.name": "read_*"}})";
  }
  return fmt::format(
      R"({{"sid": "s{}", "effect": "{}", "actions": [{}],
          "resources": ["{}", "agentd:${{principal.tenant}}:agent/a-{}"]{}}})",
      i, effect, actions, resource, i, conditions);
}

Policy MakePolicy(Shape shape) {
  const char* actions = shape == Shape::kOtherService ? R"("tools:*", "agents:Read")"
                                                      : R"("sessions:*", "agents:Read")";
  std::string statements;
  for (int i = 0; i < kStatements; ++i) {
    std::string resource = fmt::format("agentd:${{principal.tenant}}:session/s-{}-*", i);
    if (shape == Shape::kBroadNone) resource = fmt::format("agentd:*:session/s-{}-*", i);
    if (shape == Shape::kUnindexedNone) resource = fmt::format("agentd:*s-{}-*", i);
    const char* effect = "allow";
    bool last = i == kStatements - 1;
    if (shape == Shape::kDenyInMiddle && i == kStatements / 2) {
      effect = "deny";
      resource = "agentd:*:session/target*";
    } else if (last && (shape == Shape::kMatchingLate || shape == Shape::kDenyInMiddle ||
                        shape == Shape::kOtherService)) {
      resource = "agentd:${principal.tenant}:session/target*";
    }
    if (i > 0) statements += ",";
    statements += StatementJson(i, effect, resource, actions);
  }
  auto policy = ParsePolicy(R"({"version": "2026-11-01", "statements": [)" + statements + "]}");
  if (!policy.ok()) {
    std::cerr << policy.status().ToString() << "\n";
    std::abort();
  }
  return std::move(policy).value();
}

Request MakeRequest() {
  Request r;
  r.action = "sessions:Invoke";
  r.resource = "agentd:acme:session/target-0042";
  r.principal.id = "u-alice";
  r.principal.tenant = "acme";
  r.principal.kind = "user";
  r.principal.groups = {"dev"};
  r.tool_name = "read_file";
  r.time_millis = 1'790'000'000'000;
  return r;
}

void Run(benchmark::State& state, Shape shape, const char* expect) {
  const Policy policy = MakePolicy(shape);
  const std::vector<const Policy*> policies = {&policy};
  const Request req = MakeRequest();
  Decision first = Decide(policies, req);
  if (std::string(agentd::identity::DecisionReasonName(first.reason)) != expect) {
    state.SkipWithError("unexpected decision");
    return;
  }
  for (auto _ : state) {
    Decision d = Decide(policies, req);
    benchmark::DoNotOptimize(d);
  }
  std::vector<double> ns(20000);
  for (double& t : ns) {
    auto start = std::chrono::steady_clock::now();
    Decision d = Decide(policies, req);
    benchmark::DoNotOptimize(d);
    t = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - start).count();
  }
  std::sort(ns.begin(), ns.end());
  state.counters["p50_ns"] = ns[ns.size() / 2];
  state.counters["p99_ns"] = ns[ns.size() * 99 / 100];
  state.SetLabel(fmt::format("{} statements, {}", kStatements, expect));
}

void BM_MatchingLate(benchmark::State& s) { Run(s, Shape::kMatchingLate, "allow"); }
void BM_MatchingNone(benchmark::State& s) { Run(s, Shape::kMatchingNone, "default_deny"); }
void BM_DenyInMiddle(benchmark::State& s) { Run(s, Shape::kDenyInMiddle, "explicit_deny"); }
void BM_OtherService(benchmark::State& s) { Run(s, Shape::kOtherService, "default_deny"); }
void BM_BroadNone(benchmark::State& s) { Run(s, Shape::kBroadNone, "default_deny"); }
void BM_UnindexedNone(benchmark::State& s) { Run(s, Shape::kUnindexedNone, "default_deny"); }

void BM_Parse(benchmark::State& state) {
  // Parsing and compiling the matching_late document (about 240 KB of JSON).
  std::string statements;
  for (int i = 0; i < kStatements; ++i) {
    if (i > 0) statements += ",";
    statements +=
        StatementJson(i, "allow", fmt::format("agentd:${{principal.tenant}}:session/s-{}-*", i),
                      R"("sessions:*", "agents:Read")");
  }
  std::string text = R"({"version": "2026-11-01", "statements": [)" + statements + "]}";
  for (auto _ : state) {
    auto p = ParsePolicy(text);
    benchmark::DoNotOptimize(p);
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * text.size()));
}

BENCHMARK(BM_MatchingLate);
BENCHMARK(BM_MatchingNone);
BENCHMARK(BM_DenyInMiddle);
BENCHMARK(BM_OtherService);
BENCHMARK(BM_BroadNone);
BENCHMARK(BM_UnindexedNone);
BENCHMARK(BM_Parse)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
