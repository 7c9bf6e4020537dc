// Clocks for native code (no node-addon-api dependency): one monotonic clock for deadlines and
// latencies, and the calling thread's CPU time for benchmark loops on a shared machine.
#pragma once

#include <time.h>

#include <cstdint>

namespace tierstack {

namespace detail {
inline uint64_t clock_ns(clockid_t id) {
  timespec ts;
  clock_gettime(id, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}
}  // namespace detail

// Monotonic nanoseconds (CLOCK_MONOTONIC, the clock of std::chrono::steady_clock on Linux).
inline uint64_t now_ns() { return detail::clock_ns(CLOCK_MONOTONIC); }
inline uint64_t now_ms() { return now_ns() / 1000000ull; }

// CPU nanoseconds of the calling thread: leaves out the time a busy machine did not run it.
inline uint64_t thread_cpu_ns() { return detail::clock_ns(CLOCK_THREAD_CPUTIME_ID); }

}  // namespace tierstack
