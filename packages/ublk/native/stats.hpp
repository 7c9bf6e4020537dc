// Per-device request statistics, updated lock-free from I/O threads and read from JS.
#pragma once

#include <atomic>
#include <cstdint>
#include <cerrno>
#include <cstddef>
#include <sys/mman.h>

#include <tierstack/trace_ring.hpp>

namespace tsublk {

using tierstack::kLevelMiss;
using tierstack::kLevelStack;
using tierstack::TraceRing;

enum class BlockOp : uint8_t { Read = 0, Write = 1, Flush = 2, Discard = 3, WriteZeroes = 4 };
constexpr int kOpCount = 5;
constexpr const char *kOpNames[kOpCount] = {"read", "write", "flush", "discard", "writeZeroes"};

// log2 buckets of nanoseconds: bucket b counts latencies in [2^b, 2^(b+1)) ns (b = 0..39).
constexpr int kLatencyBuckets = 40;

struct OpStats {
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> latency_ns_sum{0};
  std::atomic<uint64_t> buckets[kLatencyBuckets] = {};
};

class DeviceStats {
 public:
  void record(BlockOp op, uint64_t bytes, uint64_t latency_ns, bool ok) {
    OpStats &s = ops_[static_cast<int>(op)];
    s.requests.fetch_add(1, std::memory_order_relaxed);
    if (!ok) s.errors.fetch_add(1, std::memory_order_relaxed);
    else s.bytes.fetch_add(bytes, std::memory_order_relaxed);
    s.latency_ns_sum.fetch_add(latency_ns, std::memory_order_relaxed);
    int b = latency_ns == 0 ? 0 : 63 - __builtin_clzll(latency_ns);
    if (b >= kLatencyBuckets) b = kLatencyBuckets - 1;
    s.buckets[b].fetch_add(1, std::memory_order_relaxed);
  }
  const OpStats &op(int i) const { return ops_[i]; }

  // I/O buffers are mlocked (when asked) so that serving swap never waits on swap itself.
  bool lock_buffers = true;
  std::atomic<uint64_t> locked_bytes{0};
  std::atomic<int> lock_errno{0};
  void lock(void *p, size_t n);

  // Recent requests, for `tierstack ublk trace` (off until enabled).
  TraceRing trace;

 private:
  OpStats ops_[kOpCount];
};

inline void DeviceStats::lock(void *p, size_t n) {
  if (!lock_buffers) return;
  if (mlock(p, n) == 0) locked_bytes.fetch_add(n, std::memory_order_relaxed);
  else lock_errno.store(errno, std::memory_order_relaxed);
}

}  // namespace tsublk
