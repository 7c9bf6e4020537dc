// Reading snapshot pages from a tier stack, every copy verified against the snapshot's CRC-32.
//
//  - reread_bad_copy(): what to do with a copy that fails its checksum — drop it from the cache
//    tier that served it and read the page again from the levels below (the uffd engine's fault
//    threads call it for the pages of a fault batch).
//  - read_snapshot_pages(): a whole batch for a reader that is not a fault handler (core's
//    SnapshotReader, used by the CRIU page server): zero pages answered without a tier, the rest
//    fetched in stack batches, verified, repaired.
// Both run on a native thread that may wait for the stack's JavaScript path (never the JS thread).
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "crc32.hpp"
#include "snapshot_meta.hpp"
#include "stack_client.hpp"

namespace tierstack {

// A copy of snapshot page `page` read from stack level `*level` into `buf` failed its checksum.
// Drops that copy from the native cache tier that served it (a wrong clean copy is worth
// nothing; the bottom tier keeps its own) and reads the page again from the levels below until a
// copy matches. Returns TS_PAGE_FOUND (`buf` holds a good copy, `*level` the level that served
// it), TS_E_CHECKSUM (no level below holds a good copy) or TS_E_DEADLOCK (`native_only`: only
// the JS path was left, which the caller's thread must not wait for). Counts into `m`.
inline int32_t reread_bad_copy(StackClient &client, SnapshotMeta &m, uint64_t ns, uint64_t page, void *buf,
                               uint8_t *level, bool native_only) {
  const uint32_t ps = client.page_size();
  size_t lv_now = *level;
  for (;;) {
    m.bad_copies.fetch_add(1, std::memory_order_relaxed);
    const NativeChain &chain = client.chain();
    if (lv_now < chain.size() && lv_now + 1 < client.levels()) chain.tier(lv_now).remove_pages(ns, &page, 1);
    size_t next = lv_now + 1;
    if (next >= client.levels()) break;
    int32_t one = TS_PAGE_MISS;
    uint8_t lv = 0;
    if (native_only)
      client.get_native(ns, &page, 1, &buf, &one, &lv, next);
    else if (client.get(ns, &page, 1, &buf, &one, &lv, next) != TS_OK)
      one = TS_E_IO;
    if (one == TS_E_DEADLOCK) {
      m.unrecoverable.fetch_add(1, std::memory_order_relaxed);
      return TS_E_DEADLOCK;
    }
    if (one != TS_PAGE_FOUND) break;
    if (crc32(buf, ps) == m.crc(page)) {
      m.verified.fetch_add(1, std::memory_order_relaxed);
      m.repaired.fetch_add(1, std::memory_order_relaxed);
      *level = lv;
      return TS_PAGE_FOUND;
    }
    lv_now = lv;
  }
  m.unrecoverable.fetch_add(1, std::memory_order_relaxed);
  return TS_E_CHECKSUM;
}

// Per-thread scratch of read_snapshot_pages: grows to the largest batch, then no allocation.
struct SnapshotReadScratch {
  std::vector<uint64_t> pages;
  std::vector<void *> bufs;
  std::vector<int32_t> status;
  std::vector<uint8_t> level;
  std::vector<size_t> where;
};

// Reads snapshot pages pages[0..n) into out + i * page_size. status[i]: TS_PAGE_FOUND (a verified
// copy, or a zero page), TS_E_NOT_FOUND (outside the snapshot, or no tier holds it),
// TS_E_CHECKSUM (no tier holds a good copy) or another TS_E_* from the stack; the bytes of a
// page that is not found are zeros. level[i] (optional): the level that served page i (255: a
// zero page). Fetches in stack batches of at most `batch` pages.
inline void read_snapshot_pages(StackClient &client, SnapshotMeta &m, uint64_t ns, const uint64_t *pages, size_t n,
                                uint8_t *out, int32_t *status, uint8_t *level, SnapshotReadScratch &sc, size_t batch = 256) {
  const uint32_t ps = client.page_size();
  sc.pages.clear();
  sc.bufs.clear();
  sc.where.clear();
  for (size_t i = 0; i < n; i++) {
    const uint64_t p = pages[i];
    uint8_t *dst = out + i * ps;
    if (!m.contains(p)) {
      status[i] = TS_E_NOT_FOUND;
      std::memset(dst, 0, ps);
    } else if (m.is_zero(p)) {
      status[i] = TS_PAGE_FOUND;
      if (level) level[i] = 255;
      m.zero_served.fetch_add(1, std::memory_order_relaxed);
      std::memset(dst, 0, ps);
    } else {
      sc.pages.push_back(p);
      sc.bufs.push_back(dst);
      sc.where.push_back(i);
    }
  }
  const size_t want = sc.pages.size();
  sc.status.assign(want, TS_PAGE_MISS);
  sc.level.assign(want, 0);
  for (size_t off = 0; off < want; off += batch) {
    const size_t cnt = std::min(batch, want - off);
    int rc = client.get(ns, sc.pages.data() + off, cnt, sc.bufs.data() + off, sc.status.data() + off, sc.level.data() + off);
    if (rc != TS_OK) std::fill(sc.status.begin() + static_cast<std::ptrdiff_t>(off), sc.status.begin() + static_cast<std::ptrdiff_t>(off + cnt), rc);
  }
  for (size_t k = 0; k < want; k++) {
    const size_t i = sc.where[k];
    int32_t st = sc.status[k];
    if (st == TS_PAGE_FOUND) {
      if (crc32(sc.bufs[k], ps) == m.crc(sc.pages[k])) {
        m.verified.fetch_add(1, std::memory_order_relaxed);
      } else {
        st = reread_bad_copy(client, m, ns, sc.pages[k], sc.bufs[k], &sc.level[k], false);
      }
    } else if (st == TS_PAGE_MISS) {
      st = TS_E_NOT_FOUND;
    }
    status[i] = st;
    if (level) level[i] = sc.level[k];
    if (st != TS_PAGE_FOUND) std::memset(sc.bufs[k], 0, ps);
  }
}

}  // namespace tierstack
