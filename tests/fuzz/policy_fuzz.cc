// libFuzzer target for the policy parser (src/identity/policy.h): any input must parse or
// fail with InvalidArgument, never crash, hang or leak; a document that parses is decided
// against a few requests, and a decision must name a statement of its own effect.
//
//   CXX=clang++ cmake -S . -B build-fuzz -DAGENTD_FUZZ=ON && cmake --build build-fuzz -t policy_fuzz
//   build-fuzz/bin/policy_fuzz -max_total_time=120 tests/fuzz/policy_corpus
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "identity/policy.h"

using namespace agentd::identity;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  agentd::Result<Policy> policy = ParsePolicy(text);
  if (!policy.ok()) {
    if (policy.status().code() != agentd::StatusCode::kInvalidArgument) std::abort();
    return 0;
  }
  Request req;
  req.principal.id = "u-1";
  req.principal.tenant = "acme";
  req.principal.kind = "user";
  req.principal.groups = {"dev"};
  req.tool_name = "exec";
  req.tool_arguments = {{"path", "/workspace/a"}, {"amount", 5}};
  req.time_millis = 1'790'000'000'000;
  const std::vector<const Policy*> policies = {&*policy};
  for (std::string_view action : {"sessions:Invoke", "tools:Call", "audit:Read"}) {
    for (const char* resource : {"agentd:acme:session/s-1", "agentd:acme:tool/a-1/exec", "x"}) {
      req.action = action;
      req.resource = resource;
      Decision d = Decide(policies, req);
      if (d.reason == DecisionReason::kDefaultDeny) continue;
      const Statement& st = policy->statements().at(d.statement_index);
      if (st.effect != d.effect) std::abort();
    }
  }
  return 0;
}
