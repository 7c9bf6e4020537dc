// Per-region counters, updated by fault threads with relaxed atomics (a few increments per
// batch of faults) and read by stats() on the JS thread.
#pragma once

#include <atomic>
#include <cmath>
#include <cstdint>
#include <vector>

#include <tierstack/atomic_bitmap.hpp>

namespace tsuffd {

// Same bucket layout as core's LatencyHistogram (histogram.ts): 64 ns * 2^(i/8), 320 buckets,
// so JS turns the counts into p50/p99 with the same formula.
struct LatencyBuckets {
  static constexpr int kSub = 8;
  static constexpr double kMinNs = 64;
  static constexpr int kBuckets = 40 * kSub;
  std::atomic<uint64_t> counts[kBuckets] = {};
  std::atomic<uint64_t> sum_ns{0};
  std::atomic<uint64_t> max_ns{0};

  void record(uint64_t ns) {
    int idx = ns <= kMinNs ? 0 : static_cast<int>(std::floor(std::log2(ns / kMinNs) * kSub));
    if (idx >= kBuckets) idx = kBuckets - 1;
    counts[idx].fetch_add(1, std::memory_order_relaxed);
    sum_ns.fetch_add(ns, std::memory_order_relaxed);
    uint64_t m = max_ns.load(std::memory_order_relaxed);
    while (ns > m && !max_ns.compare_exchange_weak(m, ns, std::memory_order_relaxed)) {
    }
  }
};

constexpr int kMaxLevels = 16;  // tiers reported individually; deeper levels share the last slot

struct RegionStats {
  std::atomic<uint64_t> faults{0};         // missing faults served
  std::atomic<uint64_t> wp_faults{0};      // write-protect faults (managed regions)
  std::atomic<uint64_t> pages_installed{0};
  std::atomic<uint64_t> zero_pages{0};
  std::atomic<uint64_t> poisoned{0};
  std::atomic<uint64_t> eexist{0};         // installs that found the page already present
  std::atomic<uint64_t> eagain_retries{0};
  std::atomic<uint64_t> prefetched{0};
  std::atomic<uint64_t> js_path_pages{0};
  std::atomic<uint64_t> deadlocks{0};      // JS-thread faults that needed the JS path
  std::atomic<uint64_t> evictions{0};
  std::atomic<uint64_t> writebacks{0};
  std::atomic<uint64_t> writeback_errors{0};
  std::atomic<uint64_t> removed_pages{0};  // pages dropped by REMOVE/UNMAP events
  std::atomic<uint64_t> by_level[kMaxLevels] = {};
  LatencyBuckets latency;

  static void add(std::atomic<uint64_t> &c, uint64_t n = 1) { c.fetch_add(n, std::memory_order_relaxed); }
};

// The bitmap moved to core's kit (snapshot metadata shares it).
using tierstack::AtomicBitmap;

}  // namespace tsuffd
