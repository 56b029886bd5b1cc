// kd::detail::thread_pool (kd/backend/thread_pool.hpp), the pool behind kd::thread_executor: every index runs exactly
// once and run() returns only after all have; workers persist between calls (none started by a repeated call);
// concurrent callers, nested calls (a task that calls run itself) and exceptions (the first one rethrown on the
// caller, the pool usable afterwards); a forked child gets a working pool; thread_executor's ranges are those of the
// old per-call threads. Runs under ThreadSanitizer in CI (scripts/test-tsan.sh).
#include <kd/backend/executors.hpp>
#include <kd/backend/thread_pool.hpp>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <stdexcept>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

using kd::detail::thread_pool;

TEST_CASE("thread pool: every index once, workers reused", "[threads][pool]") {
  thread_pool& pool = thread_pool::shared();
  for (std::int64_t t : {1, 2, 3, 5, 8}) {
    std::vector<std::atomic<int>> hits(static_cast<std::size_t>(t));
    for (auto& h : hits) h = 0;
    pool.run(t, [&](std::int64_t i) { hits[static_cast<std::size_t>(i)].fetch_add(1); });
    for (auto& h : hits) CHECK(h.load() == 1);  // all done when run returns
  }
  const std::int64_t workers = pool.workers();
  CHECK(workers >= 7);
  for (int rep = 0; rep < 200; ++rep) pool.run(4, [](std::int64_t) {});
  CHECK(pool.workers() == workers);  // no thread started by repeated calls
  pool.run(0, [](std::int64_t) { FAIL("no index for t = 0"); });
}

TEST_CASE("thread pool: index 0 runs on the calling thread", "[threads][pool]") {
  std::thread::id first;
  thread_pool::shared().run(3, [&](std::int64_t i) {
    if (i == 0) first = std::this_thread::get_id();
  });
  CHECK(first == std::this_thread::get_id());
}

TEST_CASE("thread pool: concurrent and nested callers", "[threads][pool]") {
  std::atomic<long> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c)
    callers.emplace_back([&total] {
      for (int rep = 0; rep < 50; ++rep)
        thread_pool::shared().run(3, [&total](std::int64_t) {
          // Nested: every task of the outer call runs an inner call of its own.
          thread_pool::shared().run(2, [&total](std::int64_t j) { total.fetch_add(1 + j); });
        });
    });
  for (auto& th : callers) th.join();
  CHECK(total.load() == 4L * 50 * 3 * (1 + 2));
}

TEST_CASE("thread pool: the first exception reaches the caller, the pool stays usable", "[threads][pool]") {
  std::atomic<int> ran{0};
  CHECK_THROWS_AS(thread_pool::shared().run(4,
                                            [&ran](std::int64_t i) {
                                              ran.fetch_add(1);
                                              if (i == 2) throw std::runtime_error("task 2");
                                            }),
                  std::runtime_error);
  CHECK(ran.load() == 4);  // the other tasks still ran to completion before run returned
  CHECK_THROWS_WITH(thread_pool::shared().run(2, [](std::int64_t i) {
    if (i == 0) throw std::runtime_error("caller's own task");
  }),
                    "caller's own task");
  std::atomic<int> after{0};
  thread_pool::shared().run(4, [&after](std::int64_t) { after.fetch_add(1); });
  CHECK(after.load() == 4);
}

#if defined(__SANITIZE_THREAD__)
#define KD_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KD_TEST_TSAN 1
#endif
#endif

// ThreadSanitizer refuses to start threads in the child of a multi-threaded fork (die_after_fork): skipped there.
#ifndef KD_TEST_TSAN
TEST_CASE("thread pool: a forked child gets a working pool", "[threads][pool]") {
  thread_pool::shared().run(3, [](std::int64_t) {});  // the parent's workers exist
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    std::atomic<int> n{0};
    thread_pool::shared().run(3, [&n](std::int64_t) { n.fetch_add(1); });
    ::_exit(n.load() == 3 ? 0 : 1);
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
#endif

TEST_CASE("thread_executor: contiguous ranges [n i / t, n (i + 1) / t)", "[threads][pool]") {
  for (int threads : {1, 2, 3, 7}) {
    for (std::int64_t n : {0, 1, 5, 64, 1001}) {
      std::vector<std::atomic<int>> cover(static_cast<std::size_t>(n));
      for (auto& c : cover) c = 0;
      std::atomic<int> calls{0};
      kd::thread_executor{threads}.parallel_for(n, [&](std::int64_t b, std::int64_t e) {
        calls.fetch_add(1);
        for (std::int64_t r = b; r < e; ++r) cover[static_cast<std::size_t>(r)].fetch_add(1);
      });
      for (auto& c : cover) CHECK(c.load() == 1);
      const std::int64_t t = std::min<std::int64_t>(threads, n);
      CHECK(calls.load() == (n == 0 ? 0 : t));
    }
  }
}
