// CxlStore: one opened region plus its cache, reference counted, exposed through the page-store
// C ABI (page_store.h) so that front-end threads call it with no JavaScript on the path.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include <tierstack/page_store.h>

#include "cache.hpp"
#include "region.hpp"

namespace cxl {

class CxlStore {
 public:
  // Opens (and formats if asked or blank) a region; on failure returns null and fills `status`.
  static CxlStore *open(const OpenOptions &options, const std::string &name, Status *status);

  ts_page_store *handle() { return &handle_; }
  Cache &cache() { return *cache_; }
  Region &region() { return region_; }
  const std::string &name() const { return name_; }

  void retain() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }
  // Later calls through the C ABI return TS_E_CLOSED; the mapping lives until the last release.
  void close() { closed_.store(true, std::memory_order_release); }
  bool closed() const { return closed_.load(std::memory_order_acquire); }

 private:
  CxlStore() = default;
  ~CxlStore() = default;

  std::atomic<int> refs_{1};
  std::atomic<bool> closed_{false};
  std::string name_;
  Region region_;
  std::unique_ptr<Cache> cache_;
  ts_page_store handle_{};
};

}  // namespace cxl
