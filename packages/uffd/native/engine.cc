// The engine's sources and fault reader: userfaultfds in an epoll set, fault threads that read
// their messages (page faults, REMOVE/UNMAP, owner exits) and hand page faults to fill.cc.
// Managed-region eviction and write-back live in managed.cc.
#include "engine.hpp"
#include "engine_internal.hpp"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>

#include <algorithm>
#include <cstring>


namespace tsuffd {

namespace {
constexpr uint64_t kStopTag = 0;
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

Engine::Engine(std::shared_ptr<tierstack::StackClient> client, EngineOptions opts)
    : client_(std::move(client)), page_size_(client_->page_size()), opts_(std::move(opts)), zeros_(64 * page_size_, 0) {
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
  if (s.remove_sink >= 0 && !unmap) {
    // Told at once (a stack buffer, one non-blocking send): a handler that dies after this read
    // leaves the range with the keeper, and its successor zero-fills it too.
    char rec[96];
    int len = snprintf(rec, sizeof rec, "REMOVED %u %llu %llu", s.remove_tag, static_cast<unsigned long long>(start),
                       static_cast<unsigned long long>(end));
    if (len > 0) (void)::send(s.remove_sink, rec, static_cast<size_t>(len), MSG_DONTWAIT | MSG_NOSIGNAL);
  }
}

void Engine::serve_faults(Source &s, Scratch &sc) {
  while (!sc.queued.empty()) {
    std::vector<std::pair<Region *, Fault>> &batch = sc.batch;
    batch.clear();
    batch.swap(sc.queued);
    // Group by region, keeping arrival order within each (an insertion sort: batches are short,
    // usually of one region, and std::stable_sort would allocate on every call).
    for (size_t i = 1; i < batch.size(); i++)
      for (size_t j = i; j > 0 && batch[j].first < batch[j - 1].first; j--) std::swap(batch[j], batch[j - 1]);
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

void Engine::drain_events(Source &s, Scratch &sc) {
  ssize_t n = ::read(s.fd, sc.drain.data(), sc.drain.size() * sizeof(uffd_msg));
  if (n <= 0) return;
  std::swap(sc.drain, sc.msgs);
  handle_messages(s, sc, static_cast<size_t>(n) / sizeof(uffd_msg));  // page faults are queued
  std::swap(sc.drain, sc.msgs);
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
                                      const std::vector<RegionConfig> &cfgs, std::string *err, int *err_errno,
                                      const std::vector<std::pair<uint64_t, uint64_t>> &removed, int remove_sink,
                                      uint32_t remove_tag) {
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
  // Before any fault is read: what earlier handlers saw removed reads as zeros here too.
  for (auto &rg : removed) handle_remove(*s, rg.first, rg.second, false);
  if (remove_sink >= 0) {
    s->remove_sink = fcntl(remove_sink, F_DUPFD_CLOEXEC, 0);
    s->remove_tag = remove_tag;
  }
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
    if (s->remove_sink >= 0) ::close(s->remove_sink);
    s->remove_sink = -1;
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
  if (s->remove_sink >= 0) {
    ::close(s->remove_sink);
    s->remove_sink = -1;
  }
  if (s->owns_mapping) {
    for (auto &r : s->regions) munmap(reinterpret_cast<void *>(r->cfg.base), r->cfg.size);
    s->owns_mapping = false;
  }
}

}  // namespace tsuffd
