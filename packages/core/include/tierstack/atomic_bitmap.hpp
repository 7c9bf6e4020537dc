// A fixed-size bitmap with atomic bit operations (one bit per page), shared by threads that
// set and test bits without a lock: fault threads marking pages installed, a recorder noting
// first touches.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace tierstack {

class AtomicBitmap {
 public:
  explicit AtomicBitmap(size_t bits = 0) : n_(bits), words_((bits + 63) / 64) {
    for (auto &w : words_) w.store(0, std::memory_order_relaxed);
  }
  AtomicBitmap(const AtomicBitmap &) = delete;
  AtomicBitmap &operator=(const AtomicBitmap &) = delete;
  size_t size() const { return n_; }
  bool test(size_t i) const { return (words_[i >> 6].load(std::memory_order_acquire) >> (i & 63)) & 1; }
  // Returns the previous value.
  bool set(size_t i) { return (words_[i >> 6].fetch_or(bit(i), std::memory_order_acq_rel) & bit(i)) != 0; }
  bool clear(size_t i) { return (words_[i >> 6].fetch_and(~bit(i), std::memory_order_acq_rel) & bit(i)) != 0; }
  void clear_all() {
    for (auto &w : words_) w.store(0, std::memory_order_release);
  }

 private:
  static uint64_t bit(size_t i) { return uint64_t{1} << (i & 63); }
  size_t n_;
  std::vector<std::atomic<uint64_t>> words_;
};

}  // namespace tierstack
