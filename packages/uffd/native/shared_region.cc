// Shared regions (see shared_region.hpp): adoption, free, write-back of every dirty page, and the
// release of everything a region stored once its owner is gone.
#include "shared_region.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "engine.hpp"

#ifndef FALLOC_FL_KEEP_SIZE
#define FALLOC_FL_KEEP_SIZE 0x01
#endif
#ifndef FALLOC_FL_PUNCH_HOLE
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif

namespace tsuffd {

namespace {
constexpr size_t kBatch = 256;  // pages per stack call

bool any_inflight_in(const Region &r, uint64_t first, uint64_t count) {
  const uint64_t lo = r.cfg.page_offset + first, hi = lo + count;
  for (uint64_t p : r.wb_inflight)
    if (p >= lo && p < hi) return true;
  return false;
}

int remove_from_stack(Engine &e, const Region &r, const std::vector<uint64_t> &pages) {
  int rc = TS_OK;
  for (size_t off = 0; off < pages.size(); off += kBatch) {
    size_t cnt = std::min(kBatch, pages.size() - off);
    int one = e.client()->remove(r.cfg.ns, pages.data() + off, cnt);
    if (one != TS_OK) rc = one;
  }
  return rc;
}
}  // namespace

void SharedMirror::release() {
  if (memfd >= 0) ::close(memfd);
  memfd = -1;
}

void read_page(const Region &r, uint64_t idx, void *dst) {
  const uint64_t ps = r.page_size;
  if (!r.cfg.mirror) {
    std::memcpy(dst, reinterpret_cast<const void *>(r.addr_of(idx)), ps);
    return;
  }
  const SharedMirror &m = *r.cfg.mirror;
  size_t done = 0;
  if (m.memfd >= 0) {
    while (done < ps) {
      ssize_t n = pread(m.memfd, static_cast<uint8_t *>(dst) + done, ps - done, static_cast<off_t>(m.file_offset + idx * ps + done));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
  }
  if (done < ps) std::memset(static_cast<uint8_t *>(dst) + done, 0, ps - done);
}

void drop_pages(const Region &r, uint64_t first, uint64_t count) {
  const uint64_t ps = r.page_size;
  if (r.cfg.mirror) {
    if (r.cfg.mirror->memfd >= 0)
      fallocate(r.cfg.mirror->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                static_cast<off_t>(r.cfg.mirror->file_offset + first * ps), static_cast<off_t>(count * ps));
    return;
  }
  madvise(reinterpret_cast<void *>(r.addr_of(first)), count * ps, MADV_DONTNEED);
}

namespace {
void age(SharedMirror &m) {
  // Halve both counts once they are big enough to mean something: recent behaviour wins.
  if (m.clean_then_written.load(std::memory_order_relaxed) + m.clean_dropped.load(std::memory_order_relaxed) > 8192) {
    m.clean_then_written.store(m.clean_then_written.load(std::memory_order_relaxed) / 2, std::memory_order_relaxed);
    m.clean_dropped.store(m.clean_dropped.load(std::memory_order_relaxed) / 2, std::memory_order_relaxed);
  }
}
}  // namespace

void note_clean_written(const Region &r) {
  if (!r.cfg.mirror) return;
  r.cfg.mirror->clean_then_written.fetch_add(1, std::memory_order_relaxed);
  age(*r.cfg.mirror);
}

void note_clean_dropped(const Region &r, uint64_t pages) {
  if (!r.cfg.mirror) return;
  r.cfg.mirror->clean_dropped.fetch_add(static_cast<uint32_t>(pages), std::memory_order_relaxed);
  age(*r.cfg.mirror);
}

bool install_writable(const Region &r) {
  if (!r.cfg.mirror) return false;
  SharedMirror &m = *r.cfg.mirror;
  if ((m.fills.fetch_add(1, std::memory_order_relaxed) & 31) == 0) return false;  // a probe: install clean
  return m.clean_then_written.load(std::memory_order_relaxed) > m.clean_dropped.load(std::memory_order_relaxed);
}

void readahead(Engine &e, Source &s, Region &r, uint64_t idx) {
  if (!r.cfg.mirror || !r.cfg.managed) return;
  SharedMirror &m = *r.cfg.mirror;
  const uint64_t fa = std::max<uint64_t>(1, std::min<uint64_t>(64, r.cfg.fault_around));
  const uint64_t block = idx / fa * fa;
  const uint64_t prev = m.seq_end.exchange(block + fa, std::memory_order_relaxed);
  uint64_t ra = m.ra_end.load(std::memory_order_relaxed);
  // Sequential: this block follows the previous fault's, or starts where the last readahead ended.
  if (block != prev && block != ra) return;
  const uint64_t window = std::min<uint64_t>({8 * fa, 256, std::max<uint64_t>(fa, r.cfg.budget_pages / 4)});
  const uint64_t from = std::max(block + fa, ra);
  const uint64_t to = std::min<uint64_t>(r.npages, block + fa + window);
  if (from >= to) return;
  if (!m.ra_end.compare_exchange_strong(ra, to, std::memory_order_relaxed)) return;  // another thread has it
  std::vector<uint64_t> list;
  list.reserve(to - from);
  for (uint64_t p = from; p < to; p++)
    if (!r.installed.test(p)) list.push_back(p);
  if (!list.empty()) e.prefetch(s, r, list, list.size());
}

int shared_regions_supported(std::string *why) {
  uint64_t f = 0;
  int rc = probe_features(&f);
  if (rc < 0) {
    *why = "userfaultfd is not available";
    return rc;
  }
  if (!(f & UFFD_FEATURE_MISSING_SHMEM)) {
    *why = "this kernel's userfaultfd cannot serve missing faults of shared memory (Linux >= 4.11)";
    return -ENOTSUP;
  }
  if (!(f & UFFD_FEATURE_WP_HUGETLBFS_SHMEM)) {
    *why = "this kernel's userfaultfd cannot write-protect shared memory (Linux >= 5.19)";
    return -ENOTSUP;
  }
  return 0;
}

std::shared_ptr<Source> adopt_shared(Engine &e, int uffd, int memfd, uint64_t file_offset, pid_t pid, RegionConfig cfg,
                                     std::string *err, int *err_errno) {
  auto mirror = std::make_shared<SharedMirror>();
  mirror->memfd = memfd;  // closed with the mirror, on failure too
  auto fail = [&](const char *what, int en) -> std::shared_ptr<Source> {
    *err = what;
    *err_errno = en;
    if (uffd >= 0) ::close(uffd);
    return nullptr;
  };
  const uint64_t ps = e.page_size();
  if (cfg.size == 0 || cfg.size % ps != 0 || cfg.base % ps != 0 || file_offset % ps != 0)
    return fail("a shared region's base, size and file offset must be multiples of the page size", EINVAL);
  std::string why;
  if (shared_regions_supported(&why) < 0) return fail("shared regions are not supported here", ENOTSUP);
  struct stat st;
  if (fstat(memfd, &st) != 0) return fail("the region's memfd is not usable", errno);
  if (static_cast<uint64_t>(st.st_size) < file_offset + cfg.size) return fail("the region's memfd is smaller than the region", EINVAL);
  fcntl(memfd, F_SETFD, FD_CLOEXEC);
  mirror->size = cfg.size;
  mirror->file_offset = file_offset;

  // The owner's uffd: negotiated and registered here (the calls act on the owner's memory).
  uint64_t want = UFFD_FEATURE_WP_HUGETLBFS_SHMEM | (UFFD_FEATURE_POISON & e.kernel_features());
  uint64_t got = 0;
  int rc = api(uffd, want, &got);
  if (rc < 0) return fail("UFFDIO_API on the owner's userfaultfd failed", -rc);
  uint64_t ioctls = 0;
  rc = register_range(uffd, cfg.base, cfg.size, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP, &ioctls);
  if (rc < 0) return fail("UFFDIO_REGISTER of the owner's shared range failed", -rc);
  if (!(ioctls & (1ull << _UFFDIO_COPY)) || !(ioctls & (1ull << _UFFDIO_WRITEPROTECT)))
    return fail("the owner's range cannot be served (no UFFDIO_COPY/UFFDIO_WRITEPROTECT): is it a MAP_SHARED memfd mapping?", ENOTSUP);

  cfg.managed = true;
  cfg.fresh = true;
  cfg.zero_after_remove = false;  // no REMOVE events are negotiated
  if (cfg.budget_pages == 0) cfg.budget_pages = cfg.size / ps;
  cfg.mirror = mirror;
  std::vector<RegionConfig> cfgs{cfg};
  auto s = e.adopt(uffd, pid, got, true, cfgs, err, err_errno);
  if (!s) {
    ::close(uffd);  // adopt() leaves the descriptor to the caller on failure
    return nullptr;
  }
  return s;
}

int forget_pages(Engine &e, Source &, Region &r, uint64_t first, uint64_t count) {
  if (!r.cfg.mirror || !r.cfg.managed || !r.cfg.fresh) return TS_E_UNSUPPORTED;
  if (first >= r.npages) return TS_OK;
  count = std::min<uint64_t>(count, r.npages - first);
  if (count == 0) return TS_OK;
  std::vector<uint64_t> stored;
  {
    std::unique_lock<std::mutex> lk(r.mu);
    // A write-back of one of these pages that lands after the remove would re-create the page.
    r.wb_done.wait(lk, [&] { return !any_inflight_in(r, first, count); });
    drop_pages(r, first, count);  // unmaps them in the owner too
    const uint64_t lo = r.cfg.page_offset + first, hi = lo + count;
    for (auto it = r.writeback.begin(); it != r.writeback.end();) {  // failed write-backs: forget them too
      if (it->first >= lo && it->first < hi)
        it = r.writeback.erase(it);
      else
        ++it;
    }
    for (uint64_t i = first; i < first + count; i++) {
      if (r.installed.clear(i)) r.resident--;
      r.dirty.clear(i);
      r.removed.clear(i);
      // A fill deciding about this page right now (fault-around of a neighbour) must not install it.
      r.evict_gen[i].fetch_add(1, std::memory_order_acq_rel);
      if (r.stored.clear(i)) stored.push_back(r.cfg.page_offset + i);
    }
  }
  return remove_from_stack(e, r, stored);
}

int write_back_dirty(Engine &e, Source &s, Region &r) {
  if (!r.cfg.managed) return TS_OK;
  const uint64_t ps = r.page_size;
  std::vector<uint64_t> pages;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> data;
  {
    std::unique_lock<std::mutex> lk(r.mu);
    r.wb_done.wait(lk, [&] { return r.wb_inflight.empty(); });
    for (uint64_t idx = 0; idx < r.npages;) {
      if (!r.dirty.test(idx)) {
        idx++;
        continue;
      }
      uint64_t end = idx + 1;
      while (end < r.npages && r.dirty.test(end)) end++;
      // Stop writers first (one ioctl per run), then copy: the copies are the pages' contents now.
      write_protect(s.fd, r.addr_of(idx), (end - idx) * ps, true, false);
      for (uint64_t i = idx; i < end; i++) {
        auto copy = std::make_shared<std::vector<uint8_t>>(ps);
        read_page(r, i, copy->data());
        uint64_t page = r.cfg.page_offset + i;
        r.writeback[page] = copy;  // reads see it until the put lands; kept if the put fails
        if (r.cfg.fresh) r.stored.set(i);
        r.dirty.clear(i);
      }
      idx = end;
    }
    for (auto &kv : r.writeback) {  // includes earlier write-backs that failed
      pages.push_back(kv.first);
      data.push_back(kv.second);
      r.wb_inflight.insert(kv.first);
    }
  }
  return e.write_back(s, r, pages, data);
}

std::vector<uint64_t> stored_bitmap(Region &r) {
  std::vector<uint64_t> words((r.npages + 63) / 64, 0);
  if (!r.cfg.fresh) return words;
  std::unique_lock<std::mutex> lk(r.mu);
  r.wb_done.wait(lk, [&] { return r.wb_inflight.empty(); });
  for (uint64_t i = 0; i < r.npages; i++)
    if (r.stored.test(i)) words[i >> 6] |= uint64_t{1} << (i & 63);
  return words;
}

void mark_stored(Region &r, const std::vector<uint64_t> &bitmap) {
  if (!r.cfg.fresh) return;
  std::lock_guard<std::mutex> lk(r.mu);
  for (uint64_t w = 0; w < bitmap.size() && w * 64 < r.npages; w++) {
    uint64_t bits = bitmap[w];
    while (bits) {
      uint64_t i = w * 64 + static_cast<uint64_t>(__builtin_ctzll(bits));
      bits &= bits - 1;
      if (i < r.npages) r.stored.set(i);
    }
  }
}

int64_t release_shared(Engine &e, Source &, Region &r) {
  std::vector<uint64_t> stored;
  {
    std::unique_lock<std::mutex> lk(r.mu);
    r.wb_done.wait(lk, [&] { return r.wb_inflight.empty(); });
    if (r.cfg.fresh)
      for (uint64_t i = 0; i < r.npages; i++)
        if (r.stored.clear(i)) stored.push_back(r.cfg.page_offset + i);
    for (auto &kv : r.writeback)  // write-backs that failed: the stack may hold an older copy
      if (std::find(stored.begin(), stored.end(), kv.first) == stored.end()) stored.push_back(kv.first);
    r.writeback.clear();
    for (uint64_t i = 0; i < r.npages; i++) {
      r.installed.clear(i);
      r.dirty.clear(i);
    }
    r.resident = 0;
    if (r.cfg.mirror) r.cfg.mirror->release();
  }
  int rc = remove_from_stack(e, r, stored);
  return rc == TS_OK ? static_cast<int64_t>(stored.size()) : rc;
}

}  // namespace tsuffd
