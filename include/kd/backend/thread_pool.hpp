// A persistent pool of worker threads for kd::thread_executor (executors.hpp): a call no longer starts and joins
// threads (tens of microseconds, as much as a whole small call: N = 64 rows of V = 32000), it wakes parked workers.
//
//   kd::detail::thread_pool::shared()      the process's pool (created on first use; never destroyed: its workers park
//                                          on a condition variable and end with the process)
//   pool.run(t, f)                         calls f(i) for i in [0, t): i = 0 on the calling thread, the others on
//                                          workers (started on demand, up to the largest t - 1 ever asked for); returns
//                                          when all have returned, rethrowing the first exception one of them threw
//                                          (with exceptions enabled)
//
// Any number of threads may call run concurrently, and f may itself call run (nested parallel_for): a caller waiting
// for its tasks runs those of them still queued instead of blocking (never another call's, so one caller's latency
// does not depend on the others' work, and a task cannot end up inside an unrelated one's locks); a task is thus either
// queued, and its own caller will run it, or running, so nesting cannot deadlock. If a worker cannot be started
// (thread limits), run goes on with the workers it has (the caller then runs the rest itself). After fork() the child
// gets a fresh pool (the parent's workers do not exist there): shared() compares the process id; a fork from inside a
// task, or while another thread is inside shared(), is not supported.
//
// The class lives in an inline namespace named after the exception mode (tasks' exceptions are caught and rethrown only
// when exceptions are enabled), so units built with and without -fno-exceptions do not share an inline member with two
// different bodies (one definition rule); they then use separate pools.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <unistd.h>
#include <vector>

#include "../version.hpp"

// Trainers built with -fno-exceptions (docs/errors.md): tasks then cannot throw, and run() has nothing to rethrow.
#if defined(__cpp_exceptions) || defined(__EXCEPTIONS)
#define KD_POOL_EXCEPTIONS_ 1
#define KD_POOL_NAMESPACE_ pool_exceptions
#else
#define KD_POOL_EXCEPTIONS_ 0
#define KD_POOL_NAMESPACE_ pool_no_exceptions
#endif

KD_BEGIN_NAMESPACE
namespace detail {
inline namespace KD_POOL_NAMESPACE_ {

class thread_pool {
 public:
  static thread_pool& shared() {
    static std::mutex m;
    static thread_pool* pool = nullptr;
    static pid_t owner = 0;
    std::lock_guard<std::mutex> lock(m);
    const pid_t pid = ::getpid();
    if (!pool || owner != pid) {  // first use, or the child of a fork: the old pool (if any) is left as it is
      pool = new thread_pool();
      owner = pid;
    }
    return *pool;
  }

  template <class F>
  void run(std::int64_t t, F&& f) {
    if (t <= 1) {
      if (t == 1) f(std::int64_t{0});
      return;
    }
    call c;
    c.pending = t - 1;
    {
      std::lock_guard<std::mutex> lock(mu_);
      grow(t - 1);
      for (std::int64_t i = 1; i < t; ++i) queue_.push_back(task{&c, [&f, i] { f(i); }});
    }
    cv_.notify_all();
    if (std::exception_ptr e = invoke([&f] { f(std::int64_t{0}); })) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!c.error) c.error = e;
    }
    // Until this call's tasks are done: run those still queued, else wait for a worker to finish one.
    std::unique_lock<std::mutex> lock(mu_);
    while (c.pending > 0) {
      const auto it = std::find_if(queue_.begin(), queue_.end(), [&c](const task& k) { return k.owner == &c; });
      if (it != queue_.end()) {
        task k = std::move(*it);
        queue_.erase(it);
        lock.unlock();
        execute(k);
        lock.lock();
      } else {
        done_.wait(lock);
      }
    }
#if KD_POOL_EXCEPTIONS_
    if (c.error) std::rethrow_exception(c.error);
#endif
  }

  std::int64_t workers() {
    std::lock_guard<std::mutex> lock(mu_);
    return static_cast<std::int64_t>(workers_.size());
  }

 private:
  struct call {
    std::int64_t pending = 0;  // tasks not yet finished (guarded by mu_)
    std::exception_ptr error;  // the first exception a task threw (guarded by mu_)
  };
  struct task {
    call* owner;
    std::function<void()> fn;
  };

  thread_pool() = default;

  // Starts workers up to n (under mu_). A thread that cannot be started (EAGAIN: process or cgroup thread limits)
  // leaves the pool smaller; with -fno-exceptions std::thread aborts there instead.
  void grow(std::int64_t n) {
    while (static_cast<std::int64_t>(workers_.size()) < n) {
      if (invoke([this] { workers_.emplace_back([this] { work(); }); })) return;
    }
  }

  // Calls fn; the exception it threw, if any (built with -fno-exceptions: nothing can throw, none).
  template <class Fn>
  static std::exception_ptr invoke(Fn&& fn) noexcept {
#if KD_POOL_EXCEPTIONS_
    try {
      fn();
    } catch (...) {
      return std::current_exception();
    }
#else
    fn();
#endif
    return nullptr;
  }

  // Runs k outside the lock, then records its completion (and its exception) under it.
  void execute(task& k) {
    const std::exception_ptr e = invoke(k.fn);
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (e && !k.owner->error) k.owner->error = e;
      --k.owner->pending;
    }
    done_.notify_all();
  }

  void work() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return !queue_.empty(); });
      task k = std::move(queue_.front());
      queue_.pop_front();
      lock.unlock();
      execute(k);
      lock.lock();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;    // workers: a task was queued
  std::condition_variable done_;  // callers: a task finished
  std::deque<task> queue_;
  std::vector<std::thread> workers_;
};

}  // namespace KD_POOL_NAMESPACE_
}  // namespace detail
KD_END_NAMESPACE

#undef KD_POOL_EXCEPTIONS_
#undef KD_POOL_NAMESPACE_
