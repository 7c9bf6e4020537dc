#include "engine.hpp"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>

#include <algorithm>
#include <cstring>

#include <tierstack/crc32.hpp>

namespace tsuffd {

uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + static_cast<uint64_t>(ts.tv_nsec);
}

namespace {
constexpr size_t kMsgBatch = 128;
constexpr int kMaxEagain = 100000;
constexpr uint64_t kStopTag = 0;
// What fill() does with each wanted page.
enum Action : uint8_t { kCopy, kZero, kPoison, kSkip, kFetch };
inline uint64_t tag_of(uint64_t id, bool pidfd) { return (id << 1) | (pidfd ? 1 : 0); }

int pidfd_open_(pid_t pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
#else
  errno = ENOSYS;
  return -1;
#endif
}
}  // namespace

Region::Region(uint32_t id_, const RegionConfig &c, uint32_t ps)
    : id(id_), cfg(c), page_size(ps), npages(c.size / ps), installed(c.size / ps), removed(c.size / ps),
      dirty(c.managed ? c.size / ps : 0), stored(c.managed && c.fresh ? c.size / ps : 0) {
  if (cfg.managed) {
    evict_gen.reset(new std::atomic<uint32_t>[npages]);
    for (size_t i = 0; i < npages; i++) evict_gen[i].store(0, std::memory_order_relaxed);
  }
}

struct Engine::Scratch {
  std::vector<uffd_msg> msgs = std::vector<uffd_msg>(kMsgBatch);
  std::vector<uffd_msg> drain = std::vector<uffd_msg>(32);
  std::vector<std::pair<Region *, Fault>> queued;  // page faults read, not yet served
  std::vector<std::pair<Region *, Fault>> batch;
  std::vector<Fault> faults;
  std::vector<Want> wants, uniq;
  std::vector<uint64_t> blocks;
  std::vector<uint8_t> buf;
  std::vector<uint64_t> pages;
  std::vector<void *> bufs;
  std::vector<int32_t> status;
  std::vector<uint8_t> level;
  std::vector<uint8_t> action;
  std::vector<int8_t> result;
  std::vector<uint32_t> gens;
  std::vector<size_t> sub;  // indexes of a sub-list (native-only fetches)
  std::vector<uint64_t> sub_pages;
  std::vector<void *> sub_bufs;
  std::vector<int32_t> sub_status;
  std::vector<uint8_t> sub_level;
  tierstack::NativeChain::Scratch chain;
  void reserve(size_t n, size_t ps) {
    if (buf.size() < n * ps) buf.resize(n * ps);
    pages.resize(n);
    bufs.resize(n);
    status.resize(n);
    level.resize(n);
    action.resize(n);
    result.resize(n);
    gens.resize(n);
  }
};

Engine::Engine(std::shared_ptr<tierstack::StackClient> client, bool has_js_tiers, uint32_t page_size, pid_t js_tid,
               EngineOptions opts)
    : client_(std::move(client)), has_js_tiers_(has_js_tiers), page_size_(page_size), js_tid_(js_tid),
      opts_(std::move(opts)), zeros_(64 * page_size, 0) {
  if (opts_.fault_threads == 0) opts_.fault_threads = 1;
  if (opts_.max_batch_pages == 0) opts_.max_batch_pages = 256;
}

Engine::~Engine() {
  stop();
  std::lock_guard<std::mutex> lk(mu_);
  for (auto &kv : sources_) {
    Source &s = *kv.second;
    if (s.fd >= 0) ::close(s.fd);
    if (s.pidfd >= 0) ::close(s.pidfd);
    s.fd = s.pidfd = -1;
  }
  if (epfd_ >= 0) ::close(epfd_);
  if (stopfd_ >= 0) ::close(stopfd_);
}

int Engine::start() {
  uint64_t f = 0;
  int rc = probe_features(&f);
  if (rc < 0) return rc;
  kernel_features_ = f;
  epfd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epfd_ < 0) return -errno;
  stopfd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (stopfd_ < 0) return -errno;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = kStopTag;
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, stopfd_, &ev) != 0) return -errno;
  for (uint32_t i = 0; i < opts_.fault_threads; i++) threads_.emplace_back([this, i] { thread_main(static_cast<int>(i)); });
  return 0;
}

void Engine::stop() {
  if (stopping_.exchange(true)) return;
  if (stopfd_ >= 0) {
    uint64_t one = 1;
    ssize_t w = ::write(stopfd_, &one, sizeof one);
    (void)w;
  }
  for (auto &t : threads_)
    if (t.joinable()) t.join();
  threads_.clear();
}

void Engine::thread_main(int index) {
  // Fault threads must not take process signals meant for the JS thread.
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);
  if (!opts_.cpus.empty()) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(opts_.cpus[static_cast<size_t>(index) % opts_.cpus.size()], &set);
    sched_setaffinity(0, sizeof set, &set);
  }
  Scratch sc;
  epoll_event evs[16];
  while (!stopping_.load(std::memory_order_acquire)) {
    int n = epoll_wait(epfd_, evs, 16, -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      return;
    }
    for (int i = 0; i < n; i++) {
      uint64_t tag = evs[i].data.u64;
      if (tag == kStopTag) return;  // the eventfd stays readable: every thread sees it
      std::shared_ptr<Source> s;
      {
        std::lock_guard<std::mutex> lk(mu_);
        auto it = sources_.find(tag >> 1);
        if (it == sources_.end() || it->second->closing.load()) continue;
        s = it->second;
        s->busy.fetch_add(1);
      }
      if (tag & 1) {
        source_died(s, 0);  // the owner process exited
      } else if ((evs[i].events & (EPOLLERR | EPOLLHUP)) && !(evs[i].events & EPOLLIN)) {
        source_died(s, EPIPE);
      } else {
        serve_source(*s, sc);
      }
      s->busy.fetch_sub(1);
    }
  }
}

std::shared_ptr<Source> Engine::lookup(uint64_t id) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = sources_.find(id);
  return it == sources_.end() ? nullptr : it->second;
}

void Engine::serve_source(Source &s, Scratch &sc) {
  // The uffd is level-triggered with exclusive wake-ups: while this thread serves what it
  // read, a fault arriving meanwhile wakes another fault thread.
  ssize_t n = ::read(s.fd, sc.msgs.data(), sc.msgs.size() * sizeof(uffd_msg));
  int err = errno;
  if (n < 0) {
    if (err == EAGAIN || err == EINTR) return;
    source_died(lookup(s.id), err);
    return;
  }
  if (n == 0) {
    source_died(lookup(s.id), 0);
    return;
  }
  handle_messages(s, sc, static_cast<size_t>(n) / sizeof(uffd_msg));
  serve_faults(s, sc);
}

void Engine::handle_messages(Source &s, Scratch &sc, size_t n) {
  uint64_t t0 = now_ns();
  for (size_t i = 0; i < n; i++) {
    const uffd_msg &m = sc.msgs[i];
    switch (m.event) {
      case UFFD_EVENT_PAGEFAULT: {
        uint64_t addr = m.arg.pagefault.address & ~static_cast<uint64_t>(page_size_ - 1);
        Region *r = s.find(addr);
        if (r == nullptr) {
          // Not ours: nothing can serve it. Fail the access rather than leave the thread hanging.
          poison_once(s.fd, addr, page_size_, false);
          EngineEvent ev{EngineEvent::kPageError};
          ev.source_id = s.id;
          ev.address = addr;
          ev.status = TS_E_BAD_ARGUMENT;
          ev.cause = "fault outside every registered region";
          post(std::move(ev));
          break;
        }
        Fault f{addr, (s.features & UFFD_FEATURE_THREAD_ID) ? m.arg.pagefault.feat.ptid : 0u,
                (m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE) != 0,
                (m.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) != 0, t0};
        sc.queued.emplace_back(r, f);  // served after the batch (never under a region lock)
        break;
      }
      case UFFD_EVENT_REMOVE:
        handle_remove(s, m.arg.remove.start, m.arg.remove.end, false);
        break;
      case UFFD_EVENT_UNMAP:
        handle_remove(s, m.arg.remove.start, m.arg.remove.end, true);
        break;
      case UFFD_EVENT_FORK:
        ::close(static_cast<int>(m.arg.fork.ufd));  // never requested; do not leak it
        break;
      default:
        break;
    }
  }
}

void Engine::handle_remove(Source &s, uint64_t start, uint64_t end, bool unmap) {
  for (auto &rp : s.regions) {
    Region &r = *rp;
    uint64_t lo = std::max(start, r.cfg.base), hi = std::min(end, r.cfg.base + r.cfg.size);
    if (lo >= hi) continue;
    uint64_t first = r.index_of(lo), last = (hi - r.cfg.base + page_size_ - 1) / page_size_;
    uint64_t dropped = 0;
    for (uint64_t i = first; i < last && i < r.npages; i++) {
      if (r.installed.clear(i)) dropped++;
      if (r.cfg.zero_after_remove) r.removed.set(i);
    }
    RegionStats::add(r.stats.removed_pages, dropped);
    if (unmap && lo == r.cfg.base && hi == r.cfg.base + r.cfg.size) r.gone.store(true);
  }
}

void Engine::serve_faults(Source &s, Scratch &sc) {
  while (!sc.queued.empty()) {
    std::vector<std::pair<Region *, Fault>> &batch = sc.batch;
    batch.clear();
    batch.swap(sc.queued);
    // Group by region, keeping arrival order within each.
    std::stable_sort(batch.begin(), batch.end(), [](const auto &a, const auto &b) { return a.first < b.first; });
    std::vector<Fault> &faults = sc.faults;
    for (size_t i = 0; i < batch.size();) {
      Region *r = batch[i].first;
      faults.clear();
      for (; i < batch.size() && batch[i].first == r; i++) {
        if (batch[i].second.wp)
          wp_fault(s, *r, batch[i].second);
        else
          faults.push_back(batch[i].second);
      }
      if (!faults.empty()) serve_region_faults(s, *r, faults, sc);
    }
  }
}

void Engine::wp_fault(Source &s, Region &r, const Fault &f) {
  RegionStats::add(r.stats.wp_faults);
  uint64_t idx = r.index_of(f.addr);
  std::lock_guard<std::mutex> lk(r.mu);
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
  while (done < pages) {
    uint64_t dst = r.addr_of(first_idx + done);
    uint64_t len = (pages - done) * ps;
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
    // ENOENT/ESRCH (range or process gone) or a persistent failure: the rest is not installed.
    for (size_t j = done; j < pages; j++) result[at + j] = -1;
    break;
  }
  return installed;
}

void Engine::drain_events(Source &s, Scratch &sc) {
  ssize_t n = ::read(s.fd, sc.drain.data(), sc.drain.size() * sizeof(uffd_msg));
  if (n <= 0) return;
  std::swap(sc.drain, sc.msgs);
  handle_messages(s, sc, static_cast<size_t>(n) / sizeof(uffd_msg));  // page faults are queued
  std::swap(sc.drain, sc.msgs);
}

int64_t Engine::fill(Source &s, Region &r, std::vector<Want> &wants, std::vector<Fault> *faults, Mode mode,
                     Scratch &sc, int32_t *bad_status, uint64_t *bad_page) {
  const size_t n = wants.size();
  if (n == 0) return 0;
  const uint64_t ps = page_size_;
  sc.reserve(n, ps);
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
  RegionStats::add(r.stats.pages_installed, static_cast<uint64_t>(installed));
  if (mode == Mode::kPrefetch) RegionStats::add(r.stats.prefetched, static_cast<uint64_t>(installed));
  // 6. Wake threads whose page we did not install with a waking ioctl (already present, lost).
  if (mode == Mode::kFault) {
    for (size_t k = 0; k < n; k++)
      if (wants[k].fault >= 0 && sc.result[k] != 1 && sc.result[k] != 2) wake(s.fd, r.addr_of(wants[k].idx), ps);
  }
  return installed;
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
    // A bad copy. Drop it from the native tier that served it (a clean cached copy that is
    // wrong is worth nothing; the bottom tier keeps its copy) and look below that tier.
    size_t level = sc.level[k];
    int32_t st = TS_E_CHECKSUM;
    for (;;) {
      m.bad_copies.fetch_add(1, std::memory_order_relaxed);
      const auto &chain = client_->chain();
      if (level < chain.size() && level + 1 < client_->levels()) chain.tier(level).remove_pages(r.cfg.ns, &page, 1);
      size_t next = level + 1;
      if (next >= client_->levels()) break;
      int32_t one = TS_PAGE_MISS;
      uint8_t lv = 0;
      if (wants[k].js_thread) {
        client_->get_native(r.cfg.ns, &page, 1, &sc.bufs[k], &one, &lv, next);
      } else if (client_->get(r.cfg.ns, &page, 1, &sc.bufs[k], &one, &lv, next) != TS_OK) {
        one = TS_E_IO;
      }
      if (one != TS_PAGE_FOUND) {
        if (one < 0 && one != TS_E_DEADLOCK) st = one == TS_E_NOT_FOUND ? TS_E_CHECKSUM : st;
        if (one == TS_E_DEADLOCK) st = TS_E_DEADLOCK;
        break;
      }
      if (tierstack::crc32(sc.bufs[k], page_size_) == m.crc(page)) {
        m.verified.fetch_add(1, std::memory_order_relaxed);
        m.repaired.fetch_add(1, std::memory_order_relaxed);
        sc.level[k] = lv;
        st = TS_PAGE_FOUND;
        break;
      }
      level = lv;
    }
    if (st != TS_PAGE_FOUND) {
      m.unrecoverable.fetch_add(1, std::memory_order_relaxed);
      sc.status[k] = st;
      sc.action[k] = kFetch;  // step 3 treats it as a failure (poison if waited on)
    }
  }
}

void Engine::page_error(Source &s, Region &r, uint64_t idx, int32_t status, uint32_t tid, const char *cause) {
  EngineEvent ev{EngineEvent::kPageError};
  ev.source_id = s.id;
  ev.region_id = r.id;
  ev.address = r.addr_of(idx);
  ev.page = r.cfg.page_offset + idx;
  ev.status = status;
  ev.tid = tid;
  ev.cause = cause;
  post(std::move(ev));
}

void Engine::post(EngineEvent ev) {
  std::function<void()> notify;
  {
    std::lock_guard<std::mutex> lk(ev_mu_);
    if (events_.empty()) notify = notify_;  // one wake-up per batch of events
    if (events_.size() < 65536) events_.push_back(std::move(ev));  // bounded: JS may be slow
  }
  if (notify) notify();
}

std::vector<EngineEvent> Engine::take_events() {
  std::lock_guard<std::mutex> lk(ev_mu_);
  std::vector<EngineEvent> out;
  out.swap(events_);
  return out;
}

// ---- managed regions ----

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
    for (uint64_t idx : victims) {
      uint64_t addr = r.addr_of(idx);
      if (r.dirty.test(idx)) {
        // Stop writers first, then copy: the copy is the page's final content.
        write_protect(s.fd, addr, ps, true, false);
        auto copy = std::make_shared<std::vector<uint8_t>>(ps);
        std::memcpy(copy->data(), reinterpret_cast<const void *>(addr), ps);
        uint64_t page = r.cfg.page_offset + idx;
        r.writeback[page] = copy;
        r.wb_inflight.insert(page);
        if (r.cfg.fresh) r.stored.set(idx);
        wb_pages.push_back(page);
        wb_data.push_back(copy);
        r.dirty.clear(idx);
      }
    }
    // Drop the pages, coalescing neighbours into one madvise.
    for (size_t i = 0; i < victims.size();) {
      size_t e = i + 1;
      while (e < victims.size() && victims[e] == victims[e - 1] + 1) e++;
      madvise(reinterpret_cast<void *>(r.addr_of(victims[i])), (e - i) * ps, MADV_DONTNEED);
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
        std::memcpy(copy->data(), reinterpret_cast<const void *>(addr), ps);
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

// ---- sources ----

int Engine::add_to_epoll(Source &s) {
  epoll_event ev{};
  ev.events = EPOLLIN | EPOLLEXCLUSIVE;
  ev.data.u64 = tag_of(s.id, false);
  if (epoll_ctl(epfd_, EPOLL_CTL_ADD, s.fd, &ev) != 0) return -errno;
  if (s.pidfd >= 0) {
    epoll_event pev{};
    pev.events = EPOLLIN | EPOLLONESHOT;
    pev.data.u64 = tag_of(s.id, true);
    if (epoll_ctl(epfd_, EPOLL_CTL_ADD, s.pidfd, &pev) != 0) return -errno;
  }
  return 0;
}

std::shared_ptr<Source> Engine::create_region(const RegionConfig &cfg_in, std::string *err, int *err_errno) {
  RegionConfig cfg = cfg_in;
  void *mem = mmap(nullptr, cfg.size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) {
    *err_errno = errno;
    *err = "mmap of the region failed";
    return nullptr;
  }
  madvise(mem, cfg.size, MADV_NOHUGEPAGE);  // faults and installs are per 4 KiB page
  cfg.base = reinterpret_cast<uint64_t>(mem);
  auto s = std::make_shared<Source>();
  s->owns_mapping = true;
  auto fail = [&](const char *what, int e) {
    *err_errno = e;
    *err = what;
    if (s->fd >= 0) ::close(s->fd);
    munmap(mem, cfg.size);
    return nullptr;
  };
  int fd = open_uffd();
  if (fd < 0) return fail("cannot open a userfaultfd", -fd);
  s->fd = fd;
  uint64_t want = UFFD_FEATURE_THREAD_ID;
  if (cfg.managed) want |= UFFD_FEATURE_PAGEFAULT_FLAG_WP;
  want |= UFFD_FEATURE_POISON;
  want &= kernel_features_;
  if (cfg.managed && !(want & UFFD_FEATURE_PAGEFAULT_FLAG_WP))
    return fail("managed regions need userfaultfd write-protect support", ENOTSUP);
  int rc = api(fd, want, &s->features);
  if (rc < 0) return fail("UFFDIO_API failed", -rc);
  s->thread_ids = (s->features & UFFD_FEATURE_THREAD_ID) != 0;
  uint64_t mode = UFFDIO_REGISTER_MODE_MISSING | (cfg.managed ? UFFDIO_REGISTER_MODE_WP : 0);
  uint64_t ioctls = 0;
  rc = register_range(fd, cfg.base, cfg.size, mode, &ioctls);
  if (rc < 0) return fail("UFFDIO_REGISTER failed", -rc);
  s->regions.push_back(std::make_shared<Region>(next_region_id(), cfg, page_size_));
  {
    std::lock_guard<std::mutex> lk(mu_);
    s->id = next_source_id_++;
    sources_[s->id] = s;
  }
  rc = add_to_epoll(*s);
  if (rc < 0) {
    std::lock_guard<std::mutex> lk(mu_);
    sources_.erase(s->id);
    return fail("epoll_ctl failed", -rc);
  }
  return s;
}

std::shared_ptr<Source> Engine::adopt(int fd, pid_t pid, uint64_t features, bool api_done,
                                      const std::vector<RegionConfig> &cfgs, std::string *err, int *err_errno) {
  auto s = std::make_shared<Source>();
  s->fd = fd;
  s->owner_pid = pid;
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0) {
    *err_errno = errno;
    *err = "the adopted descriptor is not usable";
    return nullptr;
  }
  fcntl(fd, F_SETFD, FD_CLOEXEC);
  if (!api_done) {
    uint64_t want = (UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP | UFFD_FEATURE_POISON) & kernel_features_;
    int rc = api(fd, want, &s->features);
    if (rc < 0) {
      *err_errno = -rc;
      *err = "UFFDIO_API on the adopted userfaultfd failed";
      return nullptr;
    }
    for (auto &c : cfgs) {
      rc = register_range(fd, c.base, c.size, UFFDIO_REGISTER_MODE_MISSING, nullptr);
      if (rc < 0) {
        *err_errno = -rc;
        *err = "UFFDIO_REGISTER of an adopted range failed";
        return nullptr;
      }
    }
  } else {
    s->features = features;
  }
  s->thread_ids = false;  // tids of another process never match our JS thread
  for (auto &c : cfgs) s->regions.push_back(std::make_shared<Region>(next_region_id(), c, page_size_));
  if (pid > 0) {
    s->pidfd = pidfd_open_(pid);  // best effort: exit is also seen as a hang-up on the uffd
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    s->id = next_source_id_++;
    sources_[s->id] = s;
  }
  int rc = add_to_epoll(*s);
  if (rc < 0) {
    std::lock_guard<std::mutex> lk(mu_);
    sources_.erase(s->id);
    if (s->pidfd >= 0) ::close(s->pidfd);
    s->pidfd = -1;
    *err_errno = -rc;
    *err = "epoll_ctl failed";
    return nullptr;
  }
  return s;
}

void Engine::source_died(const std::shared_ptr<Source> &s, int err) {
  if (!s || s->dead.exchange(true)) return;
  begin_close(s);
  EngineEvent ev{EngineEvent::kOwnerExit};
  ev.source_id = s->id;
  ev.status = err;
  ev.cause = err == 0 ? "the process that owns the region exited" : "the userfaultfd failed";
  post(std::move(ev));
}

void Engine::begin_close(const std::shared_ptr<Source> &s) {
  if (!s) return;
  std::lock_guard<std::mutex> lk(mu_);
  if (s->closing.exchange(true)) return;
  sources_.erase(s->id);
  if (s->fd >= 0) epoll_ctl(epfd_, EPOLL_CTL_DEL, s->fd, nullptr);
  if (s->pidfd >= 0) epoll_ctl(epfd_, EPOLL_CTL_DEL, s->pidfd, nullptr);
}

void Engine::finish_close(const std::shared_ptr<Source> &s) {
  if (s->fd >= 0) {
    if (s->owns_mapping && !s->dead.load())
      for (auto &r : s->regions) unregister_range(s->fd, r->cfg.base, r->cfg.size);
    ::close(s->fd);  // wakes any thread still waiting on a fault in these ranges
    s->fd = -1;
  }
  if (s->pidfd >= 0) {
    ::close(s->pidfd);
    s->pidfd = -1;
  }
  if (s->owns_mapping) {
    for (auto &r : s->regions) munmap(reinterpret_cast<void *>(r->cfg.base), r->cfg.size);
    s->owns_mapping = false;
  }
}

}  // namespace tsuffd
