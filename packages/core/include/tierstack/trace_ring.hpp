// A bounded ring of recent requests (op, offset, length, latency, serving level, result), written
// by I/O or fault threads and drained by the JS thread: block requests for `tierstack ublk trace`,
// restore faults for `tierstack restore --trace`. The op codes are the front-end's own.
//
// Off by default: the I/O path then pays one relaxed load. On, a request costs one fetch_add and
// six relaxed stores into memory allocated once when tracing was first enabled — no allocation,
// no lock, no JS call per request. Writers never wait for the reader: a reader that falls more
// than `capacity` behind loses the oldest records and counts them as dropped. Each slot carries a
// sequence number (odd while being written, 2*index+2 once complete) so the reader can tell a
// finished record from one being written or overwritten under it (a seqlock per slot).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace tierstack {

// Serving "level" of a request: 0..k-1 the stack's native tiers, k its JS path (page_store
// StackClient levels), or one of these.
constexpr uint8_t kLevelZero = 253;   // answered with zeros without asking a tier (a zero page)
constexpr uint8_t kLevelMiss = 254;   // a read no tier held (served as zeros)
constexpr uint8_t kLevelStack = 255;  // not a read: writes, discards and flushes go to the stack

class TraceRing {
 public:
  // One decoded record (what drain() hands out).
  struct Record {
    uint64_t at_ns, offset, latency_ns, length;
    uint8_t op, level;
    bool ok;
  };

  // Called from the JS thread. The first call allocates `capacity` (rounded up to a power of two)
  // slots, kept until the device goes; later calls keep that size. Starts a fresh trace.
  void enable(size_t capacity) {
    std::lock_guard<std::mutex> lk(reader_mu_);
    if (!slots_) {
      size_t cap = 1024;
      while (cap < capacity && cap < (size_t{1} << 24)) cap <<= 1;
      slots_.reset(new Slot[cap]);
      mask_ = cap - 1;
    }
    read_ = head_.load(std::memory_order_acquire);
    enabled_.store(true, std::memory_order_release);
  }
  void disable() { enabled_.store(false, std::memory_order_relaxed); }
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }
  size_t capacity() const { return slots_ ? mask_ + 1 : 0; }

  // Called from I/O threads.
  void record(uint8_t op, uint64_t at_ns, uint64_t offset, uint64_t length, uint64_t latency_ns, uint8_t level, bool ok) {
    if (!enabled_.load(std::memory_order_acquire)) return;
    uint64_t idx = head_.fetch_add(1, std::memory_order_relaxed);
    Slot &s = slots_[idx & mask_];
    s.seq.store(2 * idx + 1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_release);
    s.w[0].store(at_ns, std::memory_order_relaxed);
    s.w[1].store(offset, std::memory_order_relaxed);
    s.w[2].store(latency_ns, std::memory_order_relaxed);
    s.w[3].store(length << 24 | uint64_t{ok} << 16 | uint64_t{level} << 8 | op, std::memory_order_relaxed);
    s.seq.store(2 * idx + 2, std::memory_order_release);
  }

  // Called from the JS thread: appends every complete record since the last drain to `out` (up to
  // `max`), oldest first; returns how many were lost (overwritten before they were read).
  uint64_t drain(std::vector<Record> &out, size_t max) {
    std::lock_guard<std::mutex> lk(reader_mu_);
    if (!slots_) return 0;
    uint64_t lost = 0;
    uint64_t head = head_.load(std::memory_order_acquire);
    uint64_t cap = mask_ + 1;
    if (head - read_ > cap) {
      lost += head - read_ - cap;
      read_ = head - cap;
    }
    for (; read_ < head && out.size() < max; read_++) {
      Slot &s = slots_[read_ & mask_];
      uint64_t want = 2 * read_ + 2;
      uint64_t s1 = s.seq.load(std::memory_order_acquire);
      if (s1 < want) break;  // its writer is still at it: the next drain takes it
      if (s1 > want) {
        lost++;
        continue;
      }
      uint64_t w0 = s.w[0].load(std::memory_order_relaxed), w1 = s.w[1].load(std::memory_order_relaxed),
               w2 = s.w[2].load(std::memory_order_relaxed), w3 = s.w[3].load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (s.seq.load(std::memory_order_relaxed) != want) {
        lost++;
        continue;
      }
      out.push_back({w0, w1, w2, w3 >> 24, static_cast<uint8_t>(w3 & 0xff), static_cast<uint8_t>((w3 >> 8) & 0xff), ((w3 >> 16) & 1) != 0});
    }
    return lost;
  }

 private:
  struct Slot {
    std::atomic<uint64_t> seq{0};
    std::atomic<uint64_t> w[4] = {};
  };
  std::unique_ptr<Slot[]> slots_;
  uint64_t mask_ = 0;
  std::atomic<bool> enabled_{false};
  std::atomic<uint64_t> head_{0};
  uint64_t read_ = 0;
  std::mutex reader_mu_;  // enable and drain (JS thread only, but cheap insurance)
};

}  // namespace tierstack
