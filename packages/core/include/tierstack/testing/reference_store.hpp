// ReferenceStore: the smallest correct native tier, for tests and benchmarks where no native
// tier is built (and a model of the ABI's rules): a hash map of pages behind the page-store C ABI
// (store_adapter.hpp). It keeps dirty flags and honours TS_PUT_PROMOTION (a promoted copy never
// replaces a dirty one), and can make chosen pages answer any TS_E_* status (fault injection).
#pragma once

#include <atomic>
#include <cstring>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "../store_adapter.hpp"

namespace tierstack {
namespace testing {

class ReferenceStore : public NativeStore<ReferenceStore> {
 public:
  ReferenceStore(uint32_t page_size, std::string name) : NativeStore(std::move(name), page_size) {}

  int do_get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) {
    gets_.fetch_add(n, std::memory_order_relaxed);
    std::shared_lock<std::shared_mutex> lk(mu_);
    for (size_t i = 0; i < n; i++) {
      Key k{ns, pages[i]};
      if (!failing_.empty()) {
        auto f = failing_.find(k);
        if (f != failing_.end()) {
          status[i] = f->second;
          continue;
        }
      }
      auto it = pages_.find(k);
      if (it == pages_.end()) {
        status[i] = TS_PAGE_MISS;
        continue;
      }
      std::memcpy(bufs[i], it->second.data.data(), page_size());
      status[i] = TS_PAGE_FOUND;
    }
    return TS_OK;
  }

  int do_put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags) {
    puts_.fetch_add(n, std::memory_order_relaxed);
    std::unique_lock<std::shared_mutex> lk(mu_);
    for (size_t i = 0; i < n; i++) {
      Page &p = pages_[Key{ns, pages[i]}];
      if ((flags & TS_PUT_PROMOTION) && p.dirty) continue;  // the dirty copy is newer
      const auto *b = static_cast<const uint8_t *>(bufs[i]);
      p.data.assign(b, b + page_size());
      p.dirty = (flags & TS_PUT_DIRTY) != 0;
    }
    return TS_OK;
  }

  int do_remove(uint64_t ns, const uint64_t *pages, size_t n) {
    std::unique_lock<std::shared_mutex> lk(mu_);
    for (size_t i = 0; i < n; i++) pages_.erase(Key{ns, pages[i]});
    return TS_OK;
  }

  // Makes `page` answer `status` (a TS_E_* code) on get; 0 clears.
  void fail(uint64_t ns, uint64_t page, int32_t status) {
    std::unique_lock<std::shared_mutex> lk(mu_);
    if (status == 0)
      failing_.erase(Key{ns, page});
    else
      failing_[Key{ns, page}] = status;
  }
  size_t count() {
    std::shared_lock<std::shared_mutex> lk(mu_);
    return pages_.size();
  }
  uint64_t gets() const { return gets_.load(); }
  uint64_t puts() const { return puts_.load(); }

 private:
  struct Key {
    uint64_t ns, page;
    bool operator==(const Key &o) const { return ns == o.ns && page == o.page; }
  };
  struct KeyHash {
    size_t operator()(const Key &k) const { return std::hash<uint64_t>()(k.ns * 0x9e3779b97f4a7c15ull ^ k.page); }
  };
  struct Page {
    std::vector<uint8_t> data;
    bool dirty = false;
  };

  std::atomic<uint64_t> gets_{0}, puts_{0};
  std::shared_mutex mu_;
  std::unordered_map<Key, Page, KeyHash> pages_;
  std::unordered_map<Key, int32_t, KeyHash> failing_;
};

}  // namespace testing
}  // namespace tierstack
