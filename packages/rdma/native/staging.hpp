// Pre-registered staging buffers for providers that need local buffers registered (FI_MR_LOCAL,
// e.g. verbs). Registering a caller's buffer per batch (LocalRegs) costs two system calls and a
// page pinning per call: over soft-RoCE it made a 4 KiB read ~4x slower than the raw baseline.
// Batches instead move pages through slots of one region registered once, and copy them to or
// from the caller's buffers (a 4 KiB memcpy is far cheaper than ibv_reg_mr + ibv_dereg_mr).
// When the region cannot be registered (a low RLIMIT_MEMLOCK) or its slots are all in use,
// a batch falls back to registering its own buffers.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "fabric.hpp"

namespace tsrdma {

class StagingArena {
 public:
  StagingArena() = default;
  StagingArena(const StagingArena &) = delete;
  StagingArena &operator=(const StagingArena &) = delete;
  ~StagingArena() { close(); }

  // Registers `slots` slots of `slot_bytes` on the domain (once; later calls do nothing).
  // False if the memory could not be had or registered (the arena then stays unused).
  bool open(fid_domain *domain, size_t slot_bytes, size_t slots, uint64_t key);
  // Read by the data path without the lock: set once the region is registered, cleared at close.
  bool is_open() const { return open_.load(std::memory_order_acquire); }
  // Takes n slots into `out` (all or none): false when fewer are free.
  bool take(size_t n, std::vector<uint32_t> &out);
  void give(const std::vector<uint32_t> &slots);
  char *slot(uint32_t i) const { return mem_ + static_cast<size_t>(i) * slot_bytes_; }
  void *desc() const { return desc_; }
  // Closes the registration (before the domain); no slot may be in use.
  void close();

 private:
  std::mutex mu_;
  std::vector<uint32_t> free_;
  char *mem_ = nullptr;
  size_t bytes_ = 0;
  size_t slot_bytes_ = 0;
  fid_mr *mr_ = nullptr;
  void *desc_ = nullptr;
  std::atomic<bool> open_{false};
};

}  // namespace tsrdma
