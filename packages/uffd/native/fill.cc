// Filling pages: what a fault (with its fault-around block), a prefetch chunk or an ensure()
// needs is decided (zero, fetch, poison), fetched through the StackClient (native tiers on this
// thread; the rest through one batched JS hand-off), verified against the snapshot's checksums
// when the region restores one, and installed with UFFDIO_COPY/ZEROPAGE in runs.
#include <sched.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include <tierstack/crc32.hpp>
#include <tierstack/snapshot_read.hpp>

#include "engine.hpp"
#include "engine_internal.hpp"
#include "shared_region.hpp"

namespace tsuffd {

void Engine::serve_region_faults(Source &s, Region &r, std::vector<Fault> &faults, Scratch &sc) {
  RegionStats::add(r.stats.faults, faults.size());
  if (r.gone.load()) return;
  const uint64_t fa = std::max<uint32_t>(1, std::min<uint32_t>(64, r.cfg.fault_around));
  std::vector<Want> &wants = sc.wants;
  wants.clear();
  // Aligned blocks around each fault; the faulting page always (its bit may be stale), the
  // others only when not installed.
  std::vector<uint64_t> &blocks = sc.blocks;
  blocks.clear();
  for (size_t fi = 0; fi < faults.size(); fi++) {
    const Fault &f = faults[fi];
    uint64_t idx = r.index_of(f.addr);
    bool js = s.thread_ids && client_->is_js_thread(static_cast<pid_t>(f.tid));
    uint64_t b0 = idx / fa * fa;
    bool seen = std::find(blocks.begin(), blocks.end(), b0) != blocks.end();
    if (!seen) blocks.push_back(b0);
    for (uint64_t p = b0; p < b0 + fa && p < r.npages; p++) {
      bool mine = p == idx;
      if (seen && !mine) continue;
      if (!mine && r.installed.test(p)) continue;
      Want w{p, mine ? static_cast<int>(fi) : -1, mine && f.write, js};
      wants.push_back(w);
    }
  }
  std::sort(wants.begin(), wants.end(), [](const Want &a, const Want &b) {
    return a.idx != b.idx ? a.idx < b.idx : a.fault > b.fault;  // a faulting entry first
  });
  // Unique by page, keeping a faulting entry; extra faults on the same page only need a wake.
  std::vector<Want> &uniq = sc.uniq;
  uniq.clear();
  for (auto &w : wants) {
    if (!uniq.empty() && uniq.back().idx == w.idx) continue;
    uniq.push_back(w);
  }
  if (r.cfg.snap && r.cfg.snap->recording()) {
    // First-touch order: the faulting pages first, then the rest of their blocks.
    for (auto &f : faults) r.cfg.snap->record(r.cfg.page_offset + r.index_of(f.addr));
    for (auto &w : uniq) r.cfg.snap->record(r.cfg.page_offset + w.idx);
  }
  for (auto &f : faults) readahead(*this, s, r, r.index_of(f.addr));  // shared regions (shared_region.hpp)
  int64_t rc = -EAGAIN;
  for (int attempt = 0; attempt < 64 && rc == -EAGAIN; attempt++)
    rc = fill(s, r, uniq, &faults, Mode::kFault, sc, nullptr, nullptr);  // -EAGAIN: evicted during the fetch; refetch
  if (rc == -EAGAIN) {
    // Still racing evictions: let the faulting threads fault again rather than wait forever.
    for (auto &f : faults) wake(s.fd, f.addr, page_size_);
  }
  // Threads faulting on a page someone else served (duplicates) get woken too.
  uint64_t t1 = now_ns();
  for (auto &f : faults) {
    r.stats.latency.record(t1 - f.t0);
  }
  evict_if_needed(s, r, sc);
}

int64_t Engine::install_run(Source &s, Region &r, uint64_t first_idx, const uint8_t *src, size_t pages, bool zero,
                            bool wp, bool dontwake, Scratch &sc, std::vector<int8_t> &result, size_t at) {
  const uint64_t ps = page_size_;
  size_t done = 0;
  int64_t installed = 0;
  int eagain = 0;
  bool single = false;  // one page per ioctl: the run crosses a VMA boundary (the owner split its mapping)
  while (done < pages) {
    uint64_t dst = r.addr_of(first_idx + done);
    uint64_t len = (single ? 1 : pages - done) * ps;
    int64_t rc;
    if (zero && !wp) {
      rc = zeropage_once(s.fd, dst, len, dontwake);
    } else if (zero) {
      uint64_t chunk = std::min<uint64_t>(len, zeros_.size());
      rc = copy_once(s.fd, dst, zeros_.data(), chunk, wp, dontwake);
    } else {
      rc = copy_once(s.fd, dst, src + done * ps, len, wp, dontwake);
    }
    if (rc > 0) {
      size_t k = static_cast<size_t>(rc) / ps;
      for (size_t j = 0; j < k; j++) result[at + done + j] = 1;
      done += k;
      installed += static_cast<int64_t>(k);
      continue;
    }
    if (rc == -EEXIST) {
      result[at + done] = 0;
      RegionStats::add(r.stats.eexist);
      done++;
      continue;
    }
    if (rc == -EAGAIN && ++eagain < kMaxEagain) {
      // A mapping change (REMOVE/UNMAP) is pending: read those events, then retry.
      RegionStats::add(r.stats.eagain_retries);
      drain_events(s, sc);
      if (r.gone.load()) break;
      sched_yield();
      continue;
    }
    if ((rc == -ENOENT || rc == -EINVAL) && !single && pages - done > 1) {
      single = true;  // UFFDIO_COPY/ZEROPAGE refuse a range spanning two VMAs (ENOENT; e.g. after an madvise)
      continue;
    }
    // ENOENT/ESRCH (range or process gone) or a persistent failure: the rest is not installed.
    for (size_t j = done; j < pages; j++) result[at + j] = -1;
    break;
  }
  return installed;
}

int64_t Engine::fill(Source &s, Region &r, std::vector<Want> &wants, std::vector<Fault> *faults, Mode mode,
                     Scratch &sc, int32_t *bad_status, uint64_t *bad_page) {
  const size_t n = wants.size();
  if (n == 0) return 0;
  const uint64_t ps = page_size_;
  sc.reserve(n, ps);
  const uint64_t traced_from = trace_.enabled() ? now_ns() : 0;
  const bool managed = r.cfg.managed;
  const bool zero_policy = r.cfg.missing == MissingPolicy::kZero;

  // Eviction generations first: anything decided from here on about a page (never stored,
  // in the write-back map, fetched) is re-checked against them before installing.
  if (managed)
    for (size_t k = 0; k < n; k++) sc.gens[k] = r.evict_gen[wants[k].idx].load(std::memory_order_acquire);
  // 1. What needs fetching.
  for (size_t k = 0; k < n; k++) {
    const uint64_t idx = wants[k].idx;
    bool zero = (r.cfg.zero_after_remove && r.removed.test(idx)) || (managed && r.cfg.fresh && !r.stored.test(idx)) ||
                (r.cfg.snap && r.cfg.snap->is_zero(r.cfg.page_offset + idx));
    sc.action[k] = zero ? kZero : kFetch;
    if (zero && r.cfg.snap) r.cfg.snap->zero_served.fetch_add(1, std::memory_order_relaxed);
    sc.status[k] = TS_PAGE_MISS;
    sc.level[k] = 0;
    sc.pages[k] = r.cfg.page_offset + wants[k].idx;
    sc.bufs[k] = sc.buf.data() + k * ps;
  }
  if (managed) {
    std::lock_guard<std::mutex> lk(r.mu);
    if (!r.writeback.empty()) {
      for (size_t k = 0; k < n; k++) {
        auto it = r.writeback.find(sc.pages[k]);
        if (it == r.writeback.end() || sc.action[k] != kFetch) continue;
        std::memcpy(sc.bufs[k], it->second->data(), ps);
        sc.status[k] = TS_PAGE_FOUND;
        sc.action[k] = kCopy;
        sc.level[k] = 0;
      }
    }
  }

  // 2. Fetch: pages a JS-thread access waits on may use native tiers only (JavaScript cannot
  // answer while its thread is blocked in this fault); everything else in one batch.
  for (int pass = 0; pass < 2; pass++) {
    bool native_only = pass == 1;
    sc.sub.clear();
    for (size_t k = 0; k < n; k++)
      if (sc.action[k] == kFetch && wants[k].js_thread == native_only) sc.sub.push_back(k);
    if (sc.sub.empty()) continue;
    size_t m = sc.sub.size();
    sc.sub_pages.resize(m);
    sc.sub_bufs.resize(m);
    sc.sub_status.assign(m, TS_PAGE_MISS);
    sc.sub_level.assign(m, 0);
    for (size_t j = 0; j < m; j++) {
      sc.sub_pages[j] = sc.pages[sc.sub[j]];
      sc.sub_bufs[j] = sc.bufs[sc.sub[j]];
    }
    int rc = TS_OK;
    if (native_only) {
      client_->get_native(r.cfg.ns, sc.sub_pages.data(), m, sc.sub_bufs.data(), sc.sub_status.data(), sc.sub_level.data());
    } else {
      for (size_t off = 0; off < m && rc == TS_OK; off += opts_.max_batch_pages) {
        size_t cnt = std::min<size_t>(opts_.max_batch_pages, m - off);
        rc = client_->get(r.cfg.ns, sc.sub_pages.data() + off, cnt, sc.sub_bufs.data() + off, sc.sub_status.data() + off,
                          sc.sub_level.data() + off);
        if (rc != TS_OK)
          for (size_t j = off; j < m; j++) sc.sub_status[j] = rc;
      }
    }
    for (size_t j = 0; j < m; j++) {
      size_t k = sc.sub[j];
      sc.status[k] = sc.sub_status[j];
      sc.level[k] = sc.sub_level[j];
      if (sc.status[k] == TS_PAGE_FOUND) {
        sc.action[k] = kCopy;
        uint8_t lv = std::min<uint8_t>(sc.level[k], kMaxLevels - 1);
        RegionStats::add(r.stats.by_level[lv]);
        if (sc.level[k] >= client_->chain().size()) RegionStats::add(r.stats.js_path_pages);
      }
    }
  }

  if (r.cfg.snap) verify_snapshot_pages(r, wants, sc);

  // 3. Misses and failures.
  int64_t failures = 0;
  for (size_t k = 0; k < n; k++) {
    if (sc.action[k] != kFetch) continue;
    int32_t st = sc.status[k];
    if (st == TS_PAGE_MISS && zero_policy) {
      sc.action[k] = kZero;
      continue;
    }
    bool waited_on = wants[k].fault >= 0 || mode == Mode::kEnsure;
    if (!waited_on) {
      sc.action[k] = kSkip;  // a neighbour: leave it to its own fault
      continue;
    }
    int32_t code = st == TS_PAGE_MISS ? TS_E_NOT_FOUND : st;
    failures++;
    if (bad_status && *bad_status == 0) {
      *bad_status = code;
      *bad_page = sc.pages[k];
    }
    if (mode == Mode::kFault) {
      sc.action[k] = kPoison;
      if (code == TS_E_DEADLOCK) RegionStats::add(r.stats.deadlocks);
      const char *cause = code == TS_E_DEADLOCK ? "the JS thread touched a page that only the JS path can serve"
                          : st == TS_PAGE_MISS ? "no tier holds the page (strict region)"
                          : code == TS_E_CHECKSUM ? "no tier holds a copy that matches the snapshot's checksum"
                                                  : "the page could not be read from the stack";
      uint32_t tid = faults ? (*faults)[static_cast<size_t>(wants[k].fault)].tid : 0;
      page_error(s, r, wants[k].idx, code, tid, cause);
    } else {
      sc.action[k] = kSkip;
    }
  }

  // 4. Install, in address order, runs of neighbouring pages with one ioctl each.
  std::unique_lock<std::mutex> lk(r.mu, std::defer_lock);
  if (managed) {
    lk.lock();
    for (size_t k = 0; k < n; k++) {
      if (sc.gens[k] == r.evict_gen[wants[k].idx].load(std::memory_order_acquire)) continue;
      bool installs = sc.action[k] == kCopy || sc.action[k] == kZero;
      if (wants[k].fault >= 0 && installs) return -EAGAIN;  // evicted meanwhile: decide again
      if (installs) sc.action[k] = kSkip;
    }
  }
  const bool dontwake = mode == Mode::kPrefetch;
  if (managed && install_writable(r))  // writes are likely: no write-protect fault per page (shared_region.hpp)
    for (auto &w : wants) w.write = true;
  int64_t installed = 0;
  for (size_t k = 0; k < n;) {
    uint8_t a = sc.action[k];
    sc.result[k] = 0;
    if (a == kSkip) {
      k++;
      continue;
    }
    if (a == kPoison) {
      int64_t rc = poison_once(s.fd, r.addr_of(wants[k].idx), ps, dontwake);
      sc.result[k] = rc > 0 ? 2 : -1;
      if (rc > 0) RegionStats::add(r.stats.poisoned);
      k++;
      continue;
    }
    bool wp = managed && !wants[k].write;
    size_t e = k + 1;
    while (e < n && sc.action[e] == a && wants[e].idx == wants[e - 1].idx + 1 && (managed && !wants[e].write) == wp) e++;
    int64_t got = install_run(s, r, wants[k].idx, a == kCopy ? sc.buf.data() + k * ps : nullptr, e - k, a == kZero, wp,
                              dontwake, sc, sc.result, k);
    installed += got;
    if (a == kZero) RegionStats::add(r.stats.zero_pages, static_cast<uint64_t>(got));
    k = e;
  }
  // 5. Bookkeeping.
  for (size_t k = 0; k < n; k++) {
    if (sc.result[k] != 1) continue;
    uint64_t idx = wants[k].idx;
    r.installed.set(idx);
    r.removed.clear(idx);
    if (managed) {
      r.fifo.push_back(static_cast<uint32_t>(idx));
      r.resident++;
      if (wants[k].write) r.dirty.set(idx);
    }
  }
  if (lk.owns_lock()) lk.unlock();
  if (traced_from != 0) trace_fill(r, wants, faults, mode, sc, installed, traced_from);
  RegionStats::add(r.stats.pages_installed, static_cast<uint64_t>(installed));
  if (mode == Mode::kPrefetch) RegionStats::add(r.stats.prefetched, static_cast<uint64_t>(installed));
  // 6. Wake threads whose page we did not install with a waking ioctl (already present, lost).
  if (mode == Mode::kFault) {
    for (size_t k = 0; k < n; k++)
      if (wants[k].fault >= 0 && sc.result[k] != 1 && sc.result[k] != 2) wake(s.fd, r.addr_of(wants[k].idx), ps);
  }
  return installed;
}

// The trace records of one fill (see Engine::trace()). Levels: the stack level that served the
// page, kLevelZero for a zero page, kLevelMiss when nothing served it.
void Engine::trace_fill(const Region &r, const std::vector<Want> &wants, const std::vector<Fault> *faults, Mode mode,
                        const Scratch &sc, int64_t installed, uint64_t started) {
  const uint64_t now = now_ns(), ps = page_size_;
  auto level_of = [&](size_t k) -> uint8_t {
    if (sc.action[k] == kZero) return tierstack::kLevelZero;
    if (sc.status[k] != TS_PAGE_FOUND) return tierstack::kLevelMiss;
    return sc.level[k];
  };
  if (mode == Mode::kFault && faults) {
    for (size_t k = 0; k < wants.size(); k++) {
      if (wants[k].fault < 0) continue;
      const Fault &f = (*faults)[static_cast<size_t>(wants[k].fault)];
      trace_.record(kTraceFault, f.t0, (r.cfg.page_offset + wants[k].idx) * ps, ps, now - f.t0, level_of(k), sc.result[k] == 1 || sc.result[k] == 0);
    }
  } else if (mode == Mode::kPrefetch) {
    uint8_t deepest = 0;
    for (size_t k = 0; k < wants.size(); k++)
      if (sc.action[k] == kCopy && sc.level[k] > deepest) deepest = sc.level[k];
    trace_.record(kTracePrefetch, started, (r.cfg.page_offset + wants.front().idx) * ps, static_cast<uint64_t>(std::max<int64_t>(installed, 0)) * ps,
                  now - started, deepest, installed >= 0);
  }
}

void Engine::verify_snapshot_pages(Region &r, std::vector<Want> &wants, Scratch &sc) {
  SnapshotMeta &m = *r.cfg.snap;
  const size_t n = wants.size();
  for (size_t k = 0; k < n; k++) {
    if (sc.status[k] != TS_PAGE_FOUND) continue;
    const uint64_t page = sc.pages[k];
    if (!m.contains(page)) {  // outside the snapshot: nothing to check it against
      sc.status[k] = TS_E_NOT_FOUND;
      sc.action[k] = kFetch;  // step 3 treats it as a failure
      continue;
    }
    if (tierstack::crc32(sc.bufs[k], page_size_) == m.crc(page)) {
      m.verified.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    // A bad copy: the kit drops it from the cache tier that served it and reads below. A
    // JS-thread fault may only use the native tiers (JavaScript cannot answer while it waits).
    uint8_t lv = sc.level[k];
    int32_t st = tierstack::reread_bad_copy(*client_, m, r.cfg.ns, page, sc.bufs[k], &lv, wants[k].js_thread);
    if (st == TS_PAGE_FOUND) sc.level[k] = lv;
    if (st != TS_PAGE_FOUND) {
      sc.status[k] = st;
      sc.action[k] = kFetch;  // step 3 treats it as a failure (poison if waited on)
    }
  }
}

int64_t Engine::prefetch(Source &s, Region &r, const std::vector<uint64_t> &idx, size_t chunk) {
  Scratch sc;
  if (chunk == 0) chunk = idx.size();
  std::vector<uint64_t> list;
  std::vector<Want> wants;
  int64_t total = 0;
  for (size_t c0 = 0; c0 < idx.size(); c0 += chunk) {
    if (r.gone.load() || s.closing.load()) break;
    // One chunk, in arrival order of the chunks; sorted within it so runs install together.
    list.clear();
    for (size_t j = c0; j < std::min(idx.size(), c0 + chunk); j++)
      if (idx[j] < r.npages && !r.installed.test(idx[j])) list.push_back(idx[j]);
    std::sort(list.begin(), list.end());
    list.erase(std::unique(list.begin(), list.end()), list.end());
    for (size_t off = 0; off < list.size(); off += opts_.max_batch_pages) {
      size_t cnt = std::min<size_t>(opts_.max_batch_pages, list.size() - off);
      wants.clear();
      for (size_t j = off; j < off + cnt; j++) wants.push_back(Want{list[j], -1, false, false});
      int64_t got = -EAGAIN;
      for (int attempt = 0; attempt < 64 && got == -EAGAIN; attempt++) got = fill(s, r, wants, nullptr, Mode::kPrefetch, sc, nullptr, nullptr);
      if (got > 0) total += got;
      // Faults read while we installed without waking (drained on EAGAIN) are served now.
      serve_faults(s, sc);
    }
    if (!list.empty()) {
      uint64_t lo = r.addr_of(list.front()), hi = r.addr_of(list.back()) + page_size_;
      wake(s.fd, lo, hi - lo);  // one wake for the chunk
    }
    evict_if_needed(s, r, sc);
  }
  return total;
}

int64_t Engine::ensure(Source &s, Region &r, uint64_t first, uint64_t count, int32_t *bad_status, uint64_t *bad_page) {
  Scratch sc;
  std::vector<Want> wants;
  for (uint64_t i = first; i < first + count && i < r.npages; i++)
    if (!r.installed.test(i)) wants.push_back(Want{i, -1, false, true});
  *bad_status = 0;
  int64_t got = -EAGAIN;
  for (int attempt = 0; attempt < 64 && got == -EAGAIN; attempt++) got = fill(s, r, wants, nullptr, Mode::kEnsure, sc, bad_status, bad_page);
  if (got >= 0) evict_if_needed(s, r, sc);
  return got;
}

}  // namespace tsuffd
