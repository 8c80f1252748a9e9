#include "sandbox/deferred_driver.h"

#include <chrono>

namespace agentd::sandbox {

DeferredDriver::DeferredDriver(std::function<std::unique_ptr<SandboxDriver>()> open)
    : open_(std::move(open)) {}

DeferredDriver::~DeferredDriver() {
  std::lock_guard<std::mutex> lock(mu_);
  if (driver_.valid()) driver_.wait();
}

void DeferredDriver::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (driver_.valid()) return;
  driver_ = std::async(std::launch::async, [this] {
              return std::shared_ptr<SandboxDriver>(open_());
            }).share();
}

bool DeferredDriver::ready() const {
  std::lock_guard<std::mutex> lock(mu_);
  return driver_.valid() && driver_.wait_for(std::chrono::seconds(0)) == std::future_status::ready;
}

SandboxDriver& DeferredDriver::driver() {
  Start();
  std::shared_future<std::shared_ptr<SandboxDriver>> f;
  {
    std::lock_guard<std::mutex> lock(mu_);
    f = driver_;
  }
  return *f.get();
}

}  // namespace agentd::sandbox
