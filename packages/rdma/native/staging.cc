#include "staging.hpp"

#include <sys/mman.h>

namespace tsrdma {

bool StagingArena::open(fid_domain *domain, size_t slot_bytes, size_t slots, uint64_t key) {
  std::lock_guard<std::mutex> lk(mu_);
  if (mr_ || !domain || slots == 0) return mr_ != nullptr;
  const size_t bytes = slot_bytes * slots;
  void *mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return false;
  fid_mr *mr = nullptr;
  if (fi_mr_reg(domain, mem, bytes, FI_READ | FI_WRITE, 0, key, 0, &mr, nullptr) != 0) {
    munmap(mem, bytes);
    return false;
  }
  mem_ = static_cast<char *>(mem);
  bytes_ = bytes;
  slot_bytes_ = slot_bytes;
  mr_ = mr;
  desc_ = fi_mr_desc(mr);
  free_.reserve(slots);
  for (size_t i = slots; i-- > 0;) free_.push_back(static_cast<uint32_t>(i));
  open_.store(true, std::memory_order_release);
  return true;
}

bool StagingArena::take(size_t n, std::vector<uint32_t> &out) {
  std::lock_guard<std::mutex> lk(mu_);
  if (!mr_ || free_.size() < n) return false;
  out.assign(free_.end() - static_cast<ptrdiff_t>(n), free_.end());
  free_.resize(free_.size() - n);
  return true;
}

void StagingArena::give(const std::vector<uint32_t> &slots) {
  if (slots.empty()) return;
  std::lock_guard<std::mutex> lk(mu_);
  free_.insert(free_.end(), slots.begin(), slots.end());
}

void StagingArena::close() {
  std::lock_guard<std::mutex> lk(mu_);
  open_.store(false, std::memory_order_release);
  if (mr_) fi_close(&mr_->fid);
  if (mem_) munmap(mem_, bytes_);
  mr_ = nullptr;
  mem_ = nullptr;
  desc_ = nullptr;
  free_.clear();
}

}  // namespace tsrdma
