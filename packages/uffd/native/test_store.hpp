// A native in-process page store for tests and benchmarks (exported under
// @tierstack/uffd/testing): a hash map of pages behind the page-store C ABI, with per-page
// fault injection (a page can be made to return any TS_E_* status, e.g. TS_E_CHECKSUM).
// It stands in for a native tier (CXL, RDMA) where none is built.
#pragma once

#include <tierstack/page_store.h>

#include <atomic>
#include <cstring>
#include <shared_mutex>
#include <unordered_map>
#include <vector>

namespace tsuffd {

class TestStore {
 public:
  explicit TestStore(uint32_t page_size) : page_size_(page_size) {
    store_.abi_version = TS_PAGE_STORE_ABI_VERSION;
    store_.page_size = page_size;
    store_.name = "native-test";
    store_.ops = &kOps;
    store_.self = this;
  }
  ts_page_store *store() { return &store_; }

  void set(uint64_t ns, uint64_t page, const void *data) {
    std::unique_lock<std::shared_mutex> lk(mu_);
    auto &v = pages_[Key{ns, page}];
    v.assign(static_cast<const uint8_t *>(data), static_cast<const uint8_t *>(data) + page_size_);
  }
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

  static int get_op(void *self, uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) {
    auto *t = static_cast<TestStore *>(self);
    t->gets_.fetch_add(n, std::memory_order_relaxed);
    std::shared_lock<std::shared_mutex> lk(t->mu_);
    for (size_t i = 0; i < n; i++) {
      Key k{ns, pages[i]};
      if (!t->failing_.empty()) {
        auto f = t->failing_.find(k);
        if (f != t->failing_.end()) {
          status[i] = f->second;
          continue;
        }
      }
      auto it = t->pages_.find(k);
      if (it == t->pages_.end()) {
        status[i] = TS_PAGE_MISS;
        continue;
      }
      std::memcpy(bufs[i], it->second.data(), t->page_size_);
      status[i] = TS_PAGE_FOUND;
    }
    return TS_OK;
  }
  static int put_op(void *self, uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t) {
    auto *t = static_cast<TestStore *>(self);
    t->puts_.fetch_add(n, std::memory_order_relaxed);
    for (size_t i = 0; i < n; i++) t->set(ns, pages[i], bufs[i]);
    return TS_OK;
  }
  static int remove_op(void *self, uint64_t ns, const uint64_t *pages, size_t n) {
    auto *t = static_cast<TestStore *>(self);
    std::unique_lock<std::shared_mutex> lk(t->mu_);
    for (size_t i = 0; i < n; i++) t->pages_.erase(Key{ns, pages[i]});
    return TS_OK;
  }
  static void retain_op(void *self) { static_cast<TestStore *>(self)->refs_.fetch_add(1); }
  static void release_op(void *self) {
    auto *t = static_cast<TestStore *>(self);
    if (t->refs_.fetch_sub(1) == 1) delete t;
  }
  static constexpr ts_page_store_ops kOps = {TS_PAGE_STORE_ABI_VERSION, sizeof(ts_page_store_ops), get_op, put_op,
                                             remove_op, retain_op, release_op};

  uint32_t page_size_;
  ts_page_store store_{};
  std::atomic<int> refs_{0};
  std::atomic<uint64_t> gets_{0}, puts_{0};
  std::shared_mutex mu_;
  std::unordered_map<Key, std::vector<uint8_t>, KeyHash> pages_;
  std::unordered_map<Key, int32_t, KeyHash> failing_;
};

}  // namespace tsuffd
