#include "common/thread_pool.h"

#include <pthread.h>

namespace agentd {

ThreadPool::ThreadPool(std::string name, size_t min_threads, size_t max_threads,
                       std::chrono::milliseconds idle_timeout)
    : name_(std::move(name)),
      min_threads_(min_threads),
      max_threads_(max_threads < 1 ? 1 : max_threads),
      idle_timeout_(idle_timeout) {}

ThreadPool::~ThreadPool() { Shutdown(); }

void ThreadPool::Submit(std::function<void()> fn) {
  std::unique_lock lock(mu_);
  if (stopping_) return;
  queue_.push_back(std::move(fn));
  if (idle_ >= queue_.size()) {
    cv_.notify_one();
    return;
  }
  if (threads_ < max_threads_) {
    ReapLocked();
    ++threads_;
    std::thread t([this] { Worker(); });
    std::string tname = name_.substr(0, 15);
    pthread_setname_np(t.native_handle(), tname.c_str());
    auto id = t.get_id();
    live_.emplace(id, std::move(t));
  } else {
    cv_.notify_one();
  }
}

void ThreadPool::Worker() {
  std::unique_lock lock(mu_);
  while (true) {
    if (queue_.empty()) {
      if (stopping_) break;
      ++idle_;
      bool woke = cv_.wait_for(lock, idle_timeout_,
                               [this] { return !queue_.empty() || stopping_; });
      --idle_;
      if (!woke && threads_ > min_threads_) break;
      continue;
    }
    auto fn = std::move(queue_.front());
    queue_.pop_front();
    lock.unlock();
    fn();
    lock.lock();
  }
  --threads_;
  auto it = live_.find(std::this_thread::get_id());
  if (it != live_.end()) {
    finished_.push_back(std::move(it->second));
    live_.erase(it);
  }
  exited_cv_.notify_all();
}

void ThreadPool::ReapLocked() {
  // A finished thread may still be unwinding its lock; joining waits for that.
  std::vector<std::thread> done;
  done.swap(finished_);
  mu_.unlock();
  for (auto& t : done) t.join();
  mu_.lock();
}

void ThreadPool::Shutdown() {
  std::unique_lock lock(mu_);
  stopping_ = true;
  cv_.notify_all();
  exited_cv_.wait(lock, [this] { return threads_ == 0; });
  ReapLocked();
}

size_t ThreadPool::ThreadCount() const {
  std::lock_guard lock(mu_);
  return threads_;
}

}  // namespace agentd
