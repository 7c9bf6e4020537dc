// Header-only C++17 helpers over the page-store C ABI (page_store.h).
//
//  - StoreRef:    an owning reference (retain/release) to a ts_page_store.
//  - NativeChain: the native prefix of a tier stack, walked top to bottom from a front-end
//                 thread, promoting hits into the tiers above (clean), like TierStack.get.
//  - crc32c():    hardware CRC-32C (SSE4.2) with a table fallback, for native tiers' checksums.
//
// The napi glue (wrapping a store into a tagged external and back) is in page_store_napi.hpp
// so that code with no node-addon-api dependency can use this header.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "page_store.h"

namespace tierstack {

class StoreRef {
 public:
  StoreRef() = default;
  explicit StoreRef(ts_page_store *s) : s_(s) {
    if (s_ && s_->ops->retain) s_->ops->retain(s_->self);
  }
  StoreRef(const StoreRef &o) : StoreRef(o.s_) {}
  StoreRef(StoreRef &&o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  StoreRef &operator=(StoreRef o) noexcept {
    std::swap(s_, o.s_);
    return *this;
  }
  ~StoreRef() {
    if (s_ && s_->ops->release) s_->ops->release(s_->self);
  }
  ts_page_store *get() const { return s_; }
  ts_page_store *operator->() const { return s_; }
  explicit operator bool() const { return s_ != nullptr; }

  int get_pages(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) const {
    return s_->ops->get(s_->self, ns, pages, n, bufs, status);
  }
  int put_pages(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags) const {
    return s_->ops->put(s_->self, ns, pages, n, bufs, flags);
  }
  int remove_pages(uint64_t ns, const uint64_t *pages, size_t n) const {
    return s_->ops->remove(s_->self, ns, pages, n);
  }

 private:
  ts_page_store *s_ = nullptr;
};

// The native tiers at the top of a stack, in order. A page that none of them holds must be
// fetched through the stack's JavaScript path (tiers below the first non-native tier).
// Not thread-safe to mutate; const methods may run on many threads at once.
class NativeChain {
 public:
  NativeChain() = default;
  explicit NativeChain(std::vector<StoreRef> tiers) : tiers_(std::move(tiers)) {}

  size_t size() const { return tiers_.size(); }
  bool empty() const { return tiers_.empty(); }
  const StoreRef &tier(size_t i) const { return tiers_[i]; }

  // Per-call scratch, owned by the calling thread, reused across calls to avoid allocation.
  struct Scratch {
    std::vector<uint64_t> pages;
    std::vector<void *> bufs;
    std::vector<int32_t> status;
    std::vector<size_t> index;   // position in the caller's batch
    std::vector<uint8_t> level;  // tier that served each page
    std::vector<uint64_t> hit_pages;  // promotions
    std::vector<const void *> hit_bufs;
  };

  // Looks up `n` pages; status[i] ends as TS_PAGE_FOUND, TS_PAGE_MISS (no native tier holds
  // it: ask JavaScript) or a negative per-page error from the tier that held it. Hits below
  // the top are promoted (clean) into every tier above. `hit_level[i]` (optional) receives the
  // index of the tier that served page i. Returns the number of pages found.
  // `first_tier` > 0 starts the walk lower down (a copy found above was bad: look below it);
  // hits are then promoted into every tier above them, replacing the bad clean copies.
  // No allocation once the scratch has grown to the batch size.
  size_t get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status,
             Scratch &s, uint8_t *hit_level = nullptr, size_t first_tier = 0) const {
    for (size_t i = 0; i < n; i++) status[i] = TS_PAGE_MISS;
    s.index.resize(n);
    for (size_t i = 0; i < n; i++) s.index[i] = i;
    size_t remaining = n, found = 0;
    for (size_t t = first_tier; t < tiers_.size() && remaining > 0; t++) {
      s.pages.resize(remaining);
      s.bufs.resize(remaining);
      s.status.assign(remaining, TS_PAGE_MISS);
      for (size_t k = 0; k < remaining; k++) {
        s.pages[k] = pages[s.index[k]];
        s.bufs[k] = bufs[s.index[k]];
      }
      int rc = tiers_[t].get_pages(ns, s.pages.data(), remaining, s.bufs.data(), s.status.data());
      if (rc != TS_OK) continue;  // a failing tier is skipped: the ones below may still hold the page
      size_t keep = 0;
      std::vector<uint64_t> &hit_pages = s.hit_pages;
      std::vector<const void *> &hit_bufs = s.hit_bufs;
      hit_pages.clear();
      hit_bufs.clear();
      for (size_t k = 0; k < remaining; k++) {
        size_t i = s.index[k];
        if (s.status[k] == TS_PAGE_FOUND) {
          status[i] = TS_PAGE_FOUND;
          if (hit_level) hit_level[i] = static_cast<uint8_t>(t);
          found++;
          if (t > 0) {
            hit_pages.push_back(s.pages[k]);
            hit_bufs.push_back(s.bufs[k]);
          }
        } else {
          if (s.status[k] < 0) status[i] = s.status[k];  // remember the error, but keep looking below
          s.index[keep++] = i;
        }
      }
      remaining = keep;
      for (size_t up = 0; up < t && !hit_pages.empty(); up++)  // promotion failure is harmless
        tiers_[up].put_pages(ns, hit_pages.data(), hit_pages.size(), hit_bufs.data(), TS_PUT_PROMOTION);
    }
    return found;
  }

 private:
  std::vector<StoreRef> tiers_;
};

namespace detail {
constexpr std::array<uint32_t, 256> crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}
inline uint32_t crc32c_soft(uint32_t crc, const uint8_t *p, size_t n) {
  constexpr auto table = crc32c_table();
  while (n--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}
#if defined(__x86_64__)
__attribute__((target("sse4.2"))) inline uint32_t crc32c_hw(uint32_t crc, const uint8_t *p, size_t n) {
  uint64_t c = crc;
  while (n >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    n -= 8;
  }
  uint32_t c32 = static_cast<uint32_t>(c);
  while (n--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32;
}
#endif
}  // namespace detail

// CRC-32C (Castagnoli) of `n` bytes: SSE4.2 where the CPU has it.
inline uint32_t crc32c(const void *data, size_t n, uint32_t seed = 0) {
  const auto *p = static_cast<const uint8_t *>(data);
  uint32_t crc = ~seed;
#if defined(__x86_64__)
  if (__builtin_cpu_supports("sse4.2")) return ~detail::crc32c_hw(crc, p, n);
#endif
  return ~detail::crc32c_soft(crc, p, n);
}

}  // namespace tierstack
