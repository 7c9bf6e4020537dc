// Filling a new (syncing) replica of a slab from a surviving one: chunk by chunk, each chunk read
// from a source replica, checked against the page CRCs, and written to the new one while the
// slab's io lock is held exclusively, so that a put racing with the copy either lands before the
// chunk is read or (the new replica being written by puts already) after it is written.
#include <stdlib.h>

#include <algorithm>
#include <memory>

#include "pool.hpp"

namespace tsrdma {

int Pool::copy_chunk(Slab &s, int src, int dst, uint64_t first, uint64_t count, char *buf, void *desc) {
  Replica from, to;
  {
    std::lock_guard<std::mutex> lk(s.reps_mu);
    from = s.reps[src];
    to = s.reps[dst];
  }
  const size_t len = count * page_size_;
  if (rma_.transfer_one(false, from, buf, len, desc, first * page_size_) != 0) {
    map_.mark_replica_dead(s, src);
    return TS_E_UNAVAILABLE;
  }
  for (uint64_t k = 0; k < count; k++)
    if (load(s.state[first + k]) == kPresent && tierstack::crc32c(buf + k * page_size_, page_size_) != load(s.crc[first + k]))
      return TS_E_CHECKSUM;
  if (rma_.transfer_one(true, to, buf, len, desc, first * page_size_) != 0) {
    map_.mark_replica_dead(s, dst);
    return TS_E_IO;
  }
  return TS_OK;
}

int Pool::copy_replica(uint64_t ns, uint64_t index, int slot, std::string &err) {
  Call call(*this);
  if (!call.ok) return TS_E_CLOSED;
  auto s = map_.find(ns, index);
  if (!s || slot < 0 || slot >= kMaxReplicas) {
    err = "no such slab or replica";
    return TS_E_NOT_FOUND;
  }
  const uint64_t chunk = std::min<uint64_t>(slab_pages_, 64);
  std::unique_ptr<char, void (*)(void *)> buf(static_cast<char *>(aligned_alloc(4096, chunk * page_size_)), free);
  LocalRegs regs;
  regs.bind(conns_.domain(), conns_.mr_local(), &local_key_seq_);
  void *desc = regs.desc(buf.get(), chunk * page_size_);
  for (uint64_t first = 0; first < slab_pages_; first += chunk) {
    const uint64_t count = std::min(chunk, slab_pages_ - first);
    std::unique_lock<IoLock> io(s->io);
    bool any = false;
    for (uint64_t k = 0; k < count && !any; k++) any = load(s->state[first + k]) == kPresent;
    if (!any) continue;
    int rc = TS_E_UNAVAILABLE;
    for (int src = 0; src < kMaxReplicas; src++) {
      Replica r;
      {
        std::lock_guard<std::mutex> lk(s->reps_mu);
        r = s->reps[src];
      }
      if (src == slot || r.state != kActive || !conn_up(r.conn)) continue;
      rc = copy_chunk(*s, src, slot, first, count, buf.get(), desc);
      if (rc == TS_OK || rc == TS_E_IO) break;
    }
    if (rc != TS_OK) {
      err = rc == TS_E_IO ? "writing the new replica failed" : "no readable source replica";
      return rc;
    }
  }
  std::lock_guard<std::mutex> lk(s->reps_mu);
  if (s->reps[slot].state != kSyncing) {
    err = "the new replica failed while it was copied";
    return TS_E_UNAVAILABLE;
  }
  s->reps[slot].state = kActive;
  return TS_OK;
}

}  // namespace tsrdma
