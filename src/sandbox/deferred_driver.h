// A sandbox driver opened when first needed, or in the background: its Open probes the host
// (the gvisor driver's probe takes seconds), so agentd starts serving without waiting, and
// hosts that never use the driver never pay for it. Every call waits for the probe.
#pragma once

#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <string>

#include "sandbox/sandbox.h"

namespace agentd::sandbox {

class DeferredDriver : public SandboxDriver {
 public:
  explicit DeferredDriver(std::function<std::unique_ptr<SandboxDriver>()> open);
  ~DeferredDriver() override;

  // Starts opening the driver on its own thread, if that has not begun.
  void Start();
  // Started and finished.
  bool ready() const;
  SandboxDriver& driver();  // Start()s and waits

  const Capabilities& capabilities() const override {
    return const_cast<DeferredDriver*>(this)->driver().capabilities();
  }
  Result<std::unique_ptr<Sandbox>> Create(const SandboxSpec& spec) override {
    return driver().Create(spec);
  }
  Status Discard(const std::string& root) override { return driver().Discard(root); }
  Status Hibernate(Sandbox& box, const std::string& image_dir) override {
    return driver().Hibernate(box, image_dir);
  }
  Result<std::unique_ptr<Sandbox>> Resume(const SandboxSpec& spec,
                                          const std::string& image_dir) override {
    return driver().Resume(spec, image_dir);
  }
  Result<std::unique_ptr<Process>> Reattach(Sandbox& box, int64_t id) override {
    return driver().Reattach(box, id);
  }
  int64_t ProcessId(const Process& process) const override {
    return const_cast<DeferredDriver*>(this)->driver().ProcessId(process);
  }

 private:
  std::function<std::unique_ptr<SandboxDriver>()> open_;
  mutable std::mutex mu_;
  std::shared_future<std::shared_ptr<SandboxDriver>> driver_;  // guarded by mu_; valid once started
};

}  // namespace agentd::sandbox
