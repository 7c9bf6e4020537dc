// What a native reader knows about a snapshot it serves, so that no page of it needs
// JavaScript: which pages are zero (answered without asking a tier), the expected CRC-32 of
// every stored page (verified after each fetch), and the first-touch order of a restore (the
// working set the next restore prefetches).
//
// Stack page p of the snapshot's namespace is snapshot page p. Immutable after construction
// except for the recorder, which threads append to without locks, and the counters.
// Used by the uffd engine's fault threads and by core's SnapshotReader (CRIU page server).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "atomic_bitmap.hpp"

namespace tierstack {

class SnapshotMeta {
 public:
  // `zero_bitmap`: bit p set = page p is zero (the manifest's bitmap, LSB first).
  // `stored_crcs`: CRC-32 of each stored (non-zero) page, in page order. Returns nullptr with
  // `err` set when they disagree (a manifest the caller should have rejected).
  static std::shared_ptr<SnapshotMeta> create(uint64_t page_count, const uint8_t *zero_bitmap, size_t bitmap_bytes,
                                              const uint32_t *stored_crcs, size_t ncrcs, bool record,
                                              size_t max_record, const char **err) {
    if (bitmap_bytes * 8 < page_count) {
      *err = "the zero-page bitmap is shorter than the snapshot";
      return nullptr;
    }
    std::shared_ptr<SnapshotMeta> m(new SnapshotMeta(page_count, record ? std::min<uint64_t>(max_record, page_count) : 0));
    size_t k = 0;
    for (uint64_t p = 0; p < page_count; p++) {
      if ((zero_bitmap[p >> 3] >> (p & 7)) & 1) {
        m->zero_.set(p);
        continue;
      }
      if (k == ncrcs) {
        *err = "fewer checksums than stored pages";
        return nullptr;
      }
      m->crc_[p] = stored_crcs[k++];
    }
    if (k != ncrcs) {
      *err = "more checksums than stored pages";
      return nullptr;
    }
    return m;
  }

  uint64_t page_count() const { return page_count_; }
  // Pages outside the snapshot count as neither zero nor stored: the caller fails them.
  bool contains(uint64_t page) const { return page < page_count_; }
  bool is_zero(uint64_t page) const { return page < page_count_ && zero_.test(page); }
  uint32_t crc(uint64_t page) const { return crc_[page]; }

  // Appends `page` to the first-touch order if it was never recorded (bounded; lock-free).
  void record(uint64_t page) {
    if (cap_ == 0 || page >= page_count_ || seen_.test(page) || seen_.set(page)) return;
    size_t at = count_.fetch_add(1, std::memory_order_acq_rel);
    if (at < cap_)
      order_[at] = static_cast<uint32_t>(page);
    else
      count_.store(cap_, std::memory_order_release);  // full: later pages are not kept
  }
  bool recording() const { return cap_ > 0; }
  // The recorded order. Call once the fault threads stopped serving the regions.
  std::vector<uint32_t> working_set() const {
    size_t n = std::min(count_.load(std::memory_order_acquire), cap_);
    return std::vector<uint32_t>(order_.begin(), order_.begin() + static_cast<std::ptrdiff_t>(n));
  }

  // Counters for JavaScript (restore stats).
  std::atomic<uint64_t> zero_served{0};   // zero pages installed without asking a tier
  std::atomic<uint64_t> verified{0};      // fetched pages whose checksum matched
  std::atomic<uint64_t> bad_copies{0};    // fetched copies that failed their checksum
  std::atomic<uint64_t> repaired{0};      // bad copies replaced by a good one from a lower tier
  std::atomic<uint64_t> unrecoverable{0}; // pages no tier had a good copy of

 private:
  SnapshotMeta(uint64_t page_count, size_t cap)
      : page_count_(page_count), zero_(page_count), seen_(cap ? page_count : 0), crc_(page_count, 0), order_(cap), cap_(cap) {}

  const uint64_t page_count_;
  AtomicBitmap zero_;
  AtomicBitmap seen_;
  std::vector<uint32_t> crc_;
  std::vector<uint32_t> order_;
  const size_t cap_;
  std::atomic<size_t> count_{0};
};

}  // namespace tierstack
