#include "store.hpp"

namespace tscxl {

CxlStore *CxlStore::open(const OpenOptions &options, const std::string &name, Status *status) {
  CxlStore *s = new CxlStore(name);
  *status = s->region_.open(options);
  if (!status->is_ok()) {
    s->release();
    return nullptr;
  }
  s->cache_ = std::make_unique<Cache>(s->region_);
  s->set_page_size(s->region_.header().page_size);
  return s;
}

}  // namespace tscxl
