#include "store.hpp"

namespace cxl {

namespace {

CxlStore *self_of(void *self) { return static_cast<CxlStore *>(self); }

int op_get(void *self, uint64_t ns, const uint64_t *pages, size_t count, void *const *bufs, int32_t *status) {
  CxlStore *s = self_of(self);
  if (s->closed()) return TS_E_CLOSED;
  if (count == 0) return TS_OK;
  if (!pages || !bufs || !status) return TS_E_BAD_ARGUMENT;
  return s->cache().get(ns, pages, count, bufs, status);
}

// From a front-end thread there is no write-back path: dirty victims are skipped (no eviction
// sink), and a page with nothing reclaimable makes the call return TS_E_NO_SPACE.
int op_put(void *self, uint64_t ns, const uint64_t *pages, size_t count, const void *const *bufs, uint32_t flags) {
  CxlStore *s = self_of(self);
  if (s->closed()) return TS_E_CLOSED;
  if (count == 0) return TS_OK;
  if (!pages || !bufs) return TS_E_BAD_ARGUMENT;
  return s->cache().put(ns, pages, count, bufs, flags, nullptr);
}

int op_remove(void *self, uint64_t ns, const uint64_t *pages, size_t count) {
  CxlStore *s = self_of(self);
  if (s->closed()) return TS_E_CLOSED;
  if (count == 0) return TS_OK;
  if (!pages) return TS_E_BAD_ARGUMENT;
  return s->cache().remove(ns, pages, count);
}

void op_retain(void *self) { self_of(self)->retain(); }
void op_release(void *self) { self_of(self)->release(); }

constexpr ts_page_store_ops kOps = {
    TS_PAGE_STORE_ABI_VERSION, sizeof(ts_page_store_ops), op_get, op_put, op_remove, op_retain, op_release,
};

}  // namespace

CxlStore *CxlStore::open(const OpenOptions &options, const std::string &name, Status *status) {
  CxlStore *s = new CxlStore();
  *status = s->region_.open(options);
  if (!status->is_ok()) {
    delete s;
    return nullptr;
  }
  s->name_ = name;
  s->cache_ = std::make_unique<Cache>(s->region_);
  s->handle_.abi_version = TS_PAGE_STORE_ABI_VERSION;
  s->handle_.page_size = s->region_.header().page_size;
  s->handle_.name = s->name_.c_str();
  s->handle_.ops = &kOps;
  s->handle_.self = s;
  return s;
}

}  // namespace cxl
