// Helpers the sandbox tests share: a sandbox with the probe in its workspace, and a command
// run in it.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "sandbox/sandbox.h"

namespace agentd::sandbox {

// Creates a sandbox from `spec` (whose root must exist), keeps it in `boxes`, and copies the
// probe (AGENTD_SANDBOX_PROBE) into its workspace, as a user's own program would be. Returns
// nullptr, after a test failure, when the driver refuses.
inline Sandbox* CreateWithProbe(SandboxDriver& driver, const SandboxSpec& spec,
                                std::vector<std::unique_ptr<Sandbox>>* boxes) {
  auto box = driver.Create(spec);
  EXPECT_TRUE(box.ok()) << box.status().ToString();
  if (!box.ok()) return nullptr;
  boxes->push_back(std::move(box).value());
  Sandbox* b = boxes->back().get();
  std::filesystem::copy_file(AGENTD_SANDBOX_PROBE, b->workspace() + "/probe");
  chmod((b->workspace() + "/probe").c_str(), 0755);
  return b;
}

// Runs `command`; a sandbox failure is a test failure (and an empty result).
inline ExecResult RunIn(Sandbox* b, const std::string& command,
                        std::chrono::milliseconds timeout = std::chrono::milliseconds(20000)) {
  ExecRequest req;
  req.command = command;
  req.timeout = timeout;
  auto r = b->Exec(req);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : ExecResult{};
}

}  // namespace agentd::sandbox
