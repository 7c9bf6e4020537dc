// CxlStore: one opened region plus its cache, reference counted, exposed through the page-store
// C ABI (page_store.h) so that front-end threads call it with no JavaScript on the path. The kit's
// NativeStore (tierstack/store_adapter.hpp) owns the handle, the references and the closed flag.
#pragma once

#include <memory>
#include <string>

#include <tierstack/store_adapter.hpp>

#include "cache.hpp"
#include "region.hpp"

namespace tscxl {

class CxlStore : public tierstack::NativeStore<CxlStore> {
 public:
  // Opens (and formats if asked or blank) a region; on failure returns null and fills `status`.
  static CxlStore *open(const OpenOptions &options, const std::string &name, Status *status);

  Cache &cache() { return *cache_; }
  Region &region() { return region_; }

  // The C ABI (NativeStore checks closed / empty / null first). From a front-end thread there is
  // no write-back path: dirty victims are skipped (no eviction sink), and a page with nothing
  // reclaimable makes the call return TS_E_NO_SPACE.
  int do_get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) {
    return cache_->get(ns, pages, n, bufs, status);
  }
  int do_put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags) {
    return cache_->put(ns, pages, n, bufs, flags, nullptr);
  }
  int do_remove(uint64_t ns, const uint64_t *pages, size_t n) { return cache_->remove(ns, pages, n); }

 private:
  friend class tierstack::NativeStore<CxlStore>;
  explicit CxlStore(const std::string &name) : NativeStore(name) {}
  ~CxlStore() = default;

  Region region_;
  std::unique_ptr<Cache> cache_;
};

}  // namespace tscxl
