// Managed regions (user-space swap): write-protect faults mark pages dirty; over the residency
// budget the oldest pages are evicted (dirty ones copied and written back to the stack first,
// reads of them served from the write-back copy until the write lands); flush and discard.
#include <sched.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "engine.hpp"
#include "engine_internal.hpp"
#include "shared_region.hpp"

namespace tsuffd {

void Engine::wp_fault(Source &s, Region &r, const Fault &f) {
  RegionStats::add(r.stats.wp_faults);
  uint64_t idx = r.index_of(f.addr);
  std::lock_guard<std::mutex> lk(r.mu);
  if (r.cfg.managed && r.installed.test(idx) && !r.dirty.test(idx)) note_clean_written(r);
  int rc;
  int tries = 0;
  do {
    if (r.cfg.managed && r.installed.test(idx)) {
      r.dirty.set(idx);
      rc = write_protect(s.fd, f.addr, page_size_, false, false);  // un-protect and wake
    } else {
      rc = wake(s.fd, f.addr, page_size_);  // evicted meanwhile: the retry faults as missing
    }
  } while (rc == -EAGAIN && ++tries < kMaxEagain && (sched_yield(), true));
}

int Engine::write_back(Source &, Region &r, std::vector<uint64_t> &pages,
                       std::vector<std::shared_ptr<std::vector<uint8_t>>> &data) {
  int rc = TS_OK;
  std::vector<const void *> bufs(pages.size());
  for (size_t i = 0; i < pages.size(); i++) bufs[i] = data[i]->data();
  for (size_t off = 0; off < pages.size(); off += opts_.max_batch_pages) {
    size_t cnt = std::min<size_t>(opts_.max_batch_pages, pages.size() - off);
    int prc = client_->put(r.cfg.ns, pages.data() + off, cnt, bufs.data() + off, TS_PUT_DIRTY);
    std::lock_guard<std::mutex> lk(r.mu);
    for (size_t i = off; i < off + cnt; i++) {
      r.wb_inflight.erase(pages[i]);
      if (prc != TS_OK) continue;  // stays in r.writeback: reads keep seeing it, the next flush retries
      auto it = r.writeback.find(pages[i]);
      if (it != r.writeback.end() && it->second == data[i]) r.writeback.erase(it);
    }
    if (prc != TS_OK) {
      rc = prc;
      RegionStats::add(r.stats.writeback_errors, cnt);
    } else {
      RegionStats::add(r.stats.writebacks, cnt);
    }
  }
  r.wb_done.notify_all();
  return rc;
}

void Engine::evict_if_needed(Source &s, Region &r, Scratch &) {
  if (!r.cfg.managed) return;
  {
    std::lock_guard<std::mutex> lk(r.mu);
    if (r.resident <= r.cfg.budget_pages) return;
  }
  const uint64_t ps = page_size_;
  std::vector<uint64_t> wb_pages;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> wb_data;
  {
    std::lock_guard<std::mutex> lk(r.mu);
    if (r.resident <= r.cfg.budget_pages) return;
    size_t slack = std::max<size_t>(1, std::min<size_t>(64, r.cfg.budget_pages / 8));
    size_t want = r.resident - r.cfg.budget_pages + slack;
    std::vector<uint64_t> victims;
    size_t looked = 0, limit = r.fifo.size();
    while (victims.size() < want && !r.fifo.empty() && looked++ < limit) {
      uint64_t idx = r.fifo.front();
      r.fifo.pop_front();
      if (!r.installed.test(idx)) continue;
      if (r.dirty.test(idx) && r.wb_inflight.count(r.cfg.page_offset + idx)) {
        r.fifo.push_back(static_cast<uint32_t>(idx));  // its last write-back is still running: later
        continue;
      }
      if (std::find(victims.end() - std::min<size_t>(victims.size(), 8), victims.end(), idx) != victims.end()) continue;
      victims.push_back(idx);
    }
    std::sort(victims.begin(), victims.end());
    victims.erase(std::unique(victims.begin(), victims.end()), victims.end());
    // Stop writers first (one ioctl per run of dirty neighbours), then copy: the copies are the
    // pages' final content (dirty bits cannot change meanwhile: write-protect faults take r.mu).
    for (size_t i = 0; i < victims.size();) {
      size_t e = i + 1;
      if (r.dirty.test(victims[i])) {
        while (e < victims.size() && victims[e] == victims[e - 1] + 1 && r.dirty.test(victims[e])) e++;
        write_protect(s.fd, r.addr_of(victims[i]), (e - i) * ps, true, false);
      }
      i = e;
    }
    for (uint64_t idx : victims) {
      if (r.dirty.test(idx)) {
        auto copy = std::make_shared<std::vector<uint8_t>>(ps);
        read_page(r, idx, copy->data());
        uint64_t page = r.cfg.page_offset + idx;
        r.writeback[page] = copy;
        r.wb_inflight.insert(page);
        if (r.cfg.fresh) r.stored.set(idx);
        wb_pages.push_back(page);
        wb_data.push_back(copy);
        r.dirty.clear(idx);
      } else {
        note_clean_dropped(r, 1);
      }
    }
    // Drop the pages, coalescing neighbours into one madvise.
    for (size_t i = 0; i < victims.size();) {
      size_t e = i + 1;
      while (e < victims.size() && victims[e] == victims[e - 1] + 1) e++;
      drop_pages(r, victims[i], e - i);
      i = e;
    }
    for (uint64_t idx : victims) {
      r.installed.clear(idx);
      r.evict_gen[idx].fetch_add(1, std::memory_order_acq_rel);
      r.resident--;
    }
    RegionStats::add(r.stats.evictions, victims.size());
  }
  if (!wb_pages.empty()) write_back(s, r, wb_pages, wb_data);
}

int Engine::flush(Source &s, Region &r) {
  if (!r.cfg.managed) return client_->flush();
  const uint64_t ps = page_size_;
  int rc;
  {
    std::vector<uint64_t> wb_pages;
    std::vector<std::shared_ptr<std::vector<uint8_t>>> wb_data;
    {
      std::unique_lock<std::mutex> lk(r.mu);
      // Running write-backs finish first: each page then has at most one (ours).
      r.wb_done.wait(lk, [&] { return r.wb_inflight.empty(); });
      for (uint64_t idx = 0; idx < r.npages; idx++) {
        if (!r.dirty.test(idx)) continue;
        uint64_t addr = r.addr_of(idx);
        write_protect(s.fd, addr, ps, true, false);
        auto copy = std::make_shared<std::vector<uint8_t>>(ps);
        read_page(r, idx, copy->data());
        uint64_t page = r.cfg.page_offset + idx;
        r.writeback[page] = copy;  // in case the put fails: reads keep seeing it
        if (r.cfg.fresh) r.stored.set(idx);
        r.dirty.clear(idx);
      }
      for (auto &kv : r.writeback) {  // includes earlier write-backs that failed
        wb_pages.push_back(kv.first);
        wb_data.push_back(kv.second);
        r.wb_inflight.insert(kv.first);
      }
    }
    rc = write_back(s, r, wb_pages, wb_data);
  }
  int frc = client_->flush();
  return rc != TS_OK ? rc : frc;
}

int Engine::discard(Source &s, Region &r, uint64_t first, uint64_t count) {
  if (!s.owns_mapping) return TS_E_UNSUPPORTED;
  if (first >= r.npages) return TS_OK;
  count = std::min<uint64_t>(count, r.npages - first);
  if (r.cfg.managed) {
    int rc = flush(s, r);
    if (rc != TS_OK) return rc;
  }
  std::lock_guard<std::mutex> lk(r.mu);
  madvise(reinterpret_cast<void *>(r.addr_of(first)), count * page_size_, MADV_DONTNEED);
  for (uint64_t i = first; i < first + count; i++) {
    bool was = r.installed.clear(i);
    r.removed.clear(i);
    if (r.cfg.managed) {
      r.evict_gen[i].fetch_add(1);
      if (was) r.resident--;
    }
  }
  return TS_OK;
}

}  // namespace tsuffd
