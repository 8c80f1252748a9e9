// A named, elastic pool for blocking work (SQLite reads, outbound HTTP, waits).
//
// Threads are started on demand up to `max_threads` and exit after `idle_timeout` without
// work, down to `min_threads`. Submit() never blocks; work queues when every thread is busy
// and the maximum is reached. Thread-safe. The destructor finishes queued work first.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <map>
#include <thread>
#include <vector>

namespace agentd {

class ThreadPool {
 public:
  ThreadPool(std::string name, size_t min_threads, size_t max_threads,
             std::chrono::milliseconds idle_timeout = std::chrono::seconds(30));
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  void Submit(std::function<void()> fn);
  // Stops taking work, runs what is queued, joins every thread.
  void Shutdown();
  size_t ThreadCount() const;

 private:
  void Worker();
  // Joins threads that left on idle timeout. Requires mu_ held.
  void ReapLocked();

  const std::string name_;
  const size_t min_threads_;
  const size_t max_threads_;
  const std::chrono::milliseconds idle_timeout_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable exited_cv_;
  std::deque<std::function<void()>> queue_;  // guarded by mu_
  size_t threads_ = 0;                        // guarded by mu_
  size_t idle_ = 0;                           // guarded by mu_
  bool stopping_ = false;                     // guarded by mu_
  std::map<std::thread::id, std::thread> live_;  // guarded by mu_
  std::vector<std::thread> finished_;            // guarded by mu_
};

}  // namespace agentd
