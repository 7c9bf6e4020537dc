#include "pool.hpp"

#include <sched.h>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include <tierstack/clock.hpp>
#include <tierstack/store_adapter.hpp>

namespace tsrdma {

namespace {
constexpr size_t kMaxConns = 256;
constexpr int32_t kPendingRead = 1000;  // internal page status: still to be read
constexpr uint64_t kSpinNs = 500 * 1000;  // default: how long a waiter spins before sleeping on the CQ
constexpr int kNapUs = 50;  // past the spin phase, a waiter on a CQ without a wait object naps between polls

template <class T>
T load(const T &v) {
  return __atomic_load_n(&v, __ATOMIC_ACQUIRE);
}
template <class T>
void astore(T &v, T x) {
  __atomic_store_n(&v, x, __ATOMIC_RELEASE);
}

using tierstack::now_ms;
using tierstack::now_ns;

// Registers caller buffers for providers that need local descriptors (FI_MR_LOCAL, e.g.
// verbs); a no-op for tcp, whose mr_mode has no FI_MR_LOCAL.
struct LocalRegs {
  fid_domain *domain;
  bool needed;
  std::atomic<uint64_t> *key_seq;
  std::vector<fid_mr *> mrs;
  void *desc(const void *buf, size_t len) {
    if (!needed) return nullptr;
    fid_mr *mr = nullptr;
    if (fi_mr_reg(domain, buf, len, FI_READ | FI_WRITE, 0, key_seq->fetch_add(1), 0, &mr, nullptr) != 0) return nullptr;
    mrs.push_back(mr);
    return fi_mr_desc(mr);
  }
  ~LocalRegs() {
    for (auto *mr : mrs) fi_close(&mr->fid);
  }
};
}  // namespace

Pool::Call::Call(Pool &pool) : p(pool) {
  std::lock_guard<std::mutex> lk(p.calls_mu_);
  ok = !p.closed_.load();
  if (ok) p.calls_++;
}
Pool::Call::~Call() {
  if (!ok) return;
  std::lock_guard<std::mutex> lk(p.calls_mu_);
  if (--p.calls_ == 0) p.calls_cv_.notify_all();
}

Pool::Pool(uint32_t page_size, uint64_t slab_pages, uint32_t op_timeout_ms, std::string name)
    : page_size_(page_size), slab_pages_(slab_pages), op_timeout_ms_(op_timeout_ms), name_(std::move(name)) {
  // TIERSTACK_RDMA_SPIN_US tunes the spin phase of waiters (read once; a process-wide setting).
  if (const char *v = getenv("TIERSTACK_RDMA_SPIN_US")) spin_ns_ = strtoull(v, nullptr, 10) * 1000;
  conns_.resize(kMaxConns);
  for (auto &c : conns_) c = std::make_unique<Conn>();
  // The C ABI: abi_get/abi_put/abi_remove (they honour the backup), retain/release.
  store_ = tierstack::make_page_store<Pool, &Pool::abi_get, &Pool::abi_put, &Pool::abi_remove>(this, page_size_, name_.c_str());
}

Pool::~Pool() { close(); }

bool Pool::open(const std::string &provider) {
  set_mr_cache_monitor_default();
  provider_ = provider;
  return true;
}

Conn *Pool::conn(int32_t idx) {
  if (idx < 0 || static_cast<size_t>(idx) >= conns_.size()) return nullptr;
  return conns_[idx].get();
}

bool Pool::conn_up(int32_t idx) {
  Conn *c = conn(idx);
  return c && c->up.load();
}

int Pool::connect(int32_t idx, const std::string &node, const std::string &service, const std::string &raw_addr, std::string &err) {
  Call call(*this);
  if (!call.ok) {
    err = "pool is closed";
    return TS_E_CLOSED;
  }
  Conn *c = conn(idx);
  if (!c) {
    err = "donor index out of range";
    return TS_E_BAD_ARGUMENT;
  }
  std::unique_lock<std::shared_mutex> ul(c->use);
  if (c->up || c->closed) {
    err = "donor index already used";
    return TS_E_BAD_ARGUMENT;
  }
  fi_info *info = nullptr;
  {
    std::lock_guard<std::mutex> lk(conns_mu_);
    if (!fd_.domain) {
      // The first donor decides the fabric and domain (the interface that reaches it).
      if (!fd_.open(provider_, node.empty() ? nullptr : node.c_str(), node.empty() ? nullptr : service.c_str(), false)) {
        err = fd_.error;
        return TS_E_UNAVAILABLE;
      }
      mr_local_ = (fd_.mr_mode() & FI_MR_LOCAL) != 0;
      fi_cq_attr cq_attr{};
      cq_attr.format = FI_CQ_FORMAT_CONTEXT;
      cq_attr.size = 4096;
      // RDM endpoints get a CQ without a wait object. ofi_rxm (libfabric 1.17, and still so
      // upstream) puts each endpoint's internal MSG CQ into the wait set of the CQ the endpoint
      // is bound to (ofi_wait_add_fid in rxm_ep_msg_cq_open) and never takes it out again:
      // after fi_close of a lost donor's endpoint, the next fi_cq_sread/fi_trywait on the
      // shared CQ calls rxm_ep_trywait_cq on the freed endpoint (util_wait_fd_try) and crashes.
      // Without a wait object rxm adds nothing there; waiters poll and nap instead (wait()).
      cq_attr.wait_obj = fd_.rdm() ? FI_WAIT_NONE : FI_WAIT_UNSPEC;
      int rc = fi_cq_open(fd_.domain, &cq_attr, &cq_, nullptr);
      cq_wait_ = !fd_.rdm();
      if (cq_wait_ && (rc == -FI_ENOSYS || rc == -FI_EINVAL)) {
        // No wait object with this provider: poll (and yield) instead.
        cq_attr.wait_obj = FI_WAIT_NONE;
        cq_wait_ = false;
        rc = fi_cq_open(fd_.domain, &cq_attr, &cq_, nullptr);
      }
      if (rc) {
        err = fi_err("fi_cq_open", rc);
        fd_.close();
        return TS_E_UNAVAILABLE;
      }
    }
    if (fd_.rdm()) return connect_rdm(c, raw_addr, err);
    fi_info *hints = fi_dupinfo(fd_.info);
    free(hints->dest_addr);
    hints->dest_addr = nullptr;
    hints->dest_addrlen = 0;
    free(hints->src_addr);
    hints->src_addr = nullptr;
    hints->src_addrlen = 0;
    int rc = fi_getinfo(kFiVersion, node.c_str(), service.c_str(), 0, hints, &info);
    fi_freeinfo(hints);
    if (rc) {
      err = fi_err("fi_getinfo(donor)", rc);
      return TS_E_UNAVAILABLE;
    }
  }
  auto fail = [&](const char *what, int rc) {
    err = fi_err(what, rc);
    if (c->ep) fi_close(&c->ep->fid);
    if (c->eq) fi_close(&c->eq->fid);
    c->ep = nullptr;
    c->eq = nullptr;
    fi_freeinfo(info);
    return TS_E_UNAVAILABLE;
  };
  fi_eq_attr eq_attr{};
  eq_attr.wait_obj = FI_WAIT_UNSPEC;
  int rc = fi_eq_open(fd_.fabric, &eq_attr, &c->eq, nullptr);
  if (rc) return fail("fi_eq_open", rc);
  rc = fi_endpoint(fd_.domain, info, &c->ep, nullptr);
  if (rc) return fail("fi_endpoint", rc);
  rc = fi_ep_bind(c->ep, &c->eq->fid, 0);
  if (rc) return fail("fi_ep_bind(eq)", rc);
  rc = fi_ep_bind(c->ep, &cq_->fid, FI_TRANSMIT | FI_RECV);
  if (rc) return fail("fi_ep_bind(cq)", rc);
  rc = fi_enable(c->ep);
  if (rc) return fail("fi_enable", rc);
  rc = fi_connect(c->ep, info->dest_addr, nullptr, 0);
  if (rc) return fail("fi_connect", rc);
  alignas(8) char buf[sizeof(fi_eq_cm_entry) + 256];
  uint32_t event = 0;
  uint64_t deadline = now_ms() + std::max<uint32_t>(op_timeout_ms_, 1000);
  for (;;) {
    ssize_t n = fi_eq_sread(c->eq, &event, buf, sizeof buf, 100, 0);
    if (n >= 0 && event == FI_CONNECTED) break;
    if (n == -FI_EAVAIL) {
      fi_eq_err_entry e{};
      fi_eq_readerr(c->eq, &e, 0);
      return fail("connect to donor", e.err ? -e.err : -FI_ECONNREFUSED);
    }
    if (n >= 0 || n == -FI_EAGAIN || n == -FI_ETIMEDOUT || n == -FI_EINTR) {
      if (now_ms() > deadline) return fail("connect to donor", -FI_ETIMEDOUT);
      continue;
    }
    return fail("fi_eq_sread", static_cast<int>(n));
  }
  fi_freeinfo(info);
  c->up.store(true);
  return TS_OK;
}

// Called with conns_mu_ and the connection's `use` lock held.
int Pool::connect_rdm(Conn *c, const std::string &raw_addr, std::string &err) {
  auto fail = [&](const char *what, int rc) {
    err = fi_err(what, rc);
    if (c->ep) fi_close(&c->ep->fid);
    if (c->av) fi_close(&c->av->fid);
    c->ep = nullptr;
    c->av = nullptr;
    return TS_E_UNAVAILABLE;
  };
  if (raw_addr.empty()) {
    err = "the donor sent no libfabric address";
    return TS_E_UNAVAILABLE;
  }
  fi_av_attr av_attr{};
  av_attr.type = FI_AV_TABLE;
  int rc = fi_av_open(fd_.domain, &av_attr, &c->av, nullptr);
  if (rc) return fail("fi_av_open", rc);
  rc = fi_endpoint(fd_.domain, fd_.info, &c->ep, nullptr);
  if (rc) return fail("fi_endpoint", rc);
  rc = fi_ep_bind(c->ep, &c->av->fid, 0);
  if (rc) return fail("fi_ep_bind(av)", rc);
  rc = fi_ep_bind(c->ep, &cq_->fid, FI_TRANSMIT | FI_RECV);
  if (rc) return fail("fi_ep_bind(cq)", rc);
  rc = fi_enable(c->ep);
  if (rc) return fail("fi_enable", rc);
  int n = fi_av_insert(c->av, raw_addr.data(), 1, &c->dest, 0, nullptr);
  if (n != 1) return fail("fi_av_insert", n < 0 ? n : -FI_EINVAL);
  c->up.store(true);
  return TS_OK;
}

void Pool::kill_conn(int32_t idx) {
  Conn *c = conn(idx);
  if (!c) return;
  c->up.store(false);
  {
    std::unique_lock<std::shared_mutex> ul(c->use);  // waits for posters on this connection
    if (c->closed || !c->ep) {
      c->closed = true;
      return;
    }
    {
      // Operations may still be posted on the endpoint (a dead peer never answers them).
      // fi_close either reports them (tcp flushes its queues as error completions into the
      // CQ) or frees them silently (ofi_rxm); after it, nothing of this endpoint ever reaches
      // the CQ again. Reading the CQ empty right here, before the connection counts as
      // closed, dispatches whatever it did report: from then on libfabric holds no context
      // of an operation on this connection, and waiters fail the ones never reported
      // (fail_closed_locked, under the same lock) and may free them. No CQ read can run
      // during fi_close (cq_mu_), and no post (use, exclusive).
      std::lock_guard<std::mutex> lk(cq_mu_);
      fi_close(&c->ep->fid);
      c->ep = nullptr;
      if (cq_) dispatch_locked();
      c->closed = true;
      close_epoch_.fetch_add(1);
    }
    if (c->eq) fi_close(&c->eq->fid);
    if (c->av) fi_close(&c->av->fid);
    c->eq = nullptr;
    c->av = nullptr;
  }
  std::shared_lock<std::shared_mutex> ml(map_mu_);
  for (auto &kv : map_) {
    std::lock_guard<std::mutex> lk(kv.second->reps_mu);
    for (auto &r : kv.second->reps)
      if (r.conn == idx && r.state != kNone) r.state = kDead;
  }
  degraded_.fetch_add(1);
}

std::shared_ptr<Slab> Pool::find(uint64_t ns, uint64_t index) {
  std::shared_lock<std::shared_mutex> lk(map_mu_);
  auto it = map_.find(SlabKey{ns, index});
  return it == map_.end() ? nullptr : it->second;
}

bool Pool::has_slab(uint64_t ns, uint64_t index) { return find(ns, index) != nullptr; }

void Pool::add_slab(uint64_t ns, uint64_t index, const std::vector<Replica> &reps) {
  auto s = std::make_shared<Slab>();
  s->crc.assign(slab_pages_, 0);
  s->state.assign(slab_pages_, kAbsent);
  for (size_t i = 0; i < reps.size() && i < kMaxReplicas; i++) s->reps[i] = reps[i];
  std::unique_lock<std::shared_mutex> lk(map_mu_);
  map_.emplace(SlabKey{ns, index}, std::move(s));  // an existing slab is kept
}

int Pool::add_replica(uint64_t ns, uint64_t index, const Replica &rep) {
  auto s = find(ns, index);
  if (!s) return -1;
  std::lock_guard<std::mutex> lk(s->reps_mu);
  for (int i = 0; i < kMaxReplicas; i++) {
    if (s->reps[i].state == kNone || s->reps[i].state == kDead) {
      s->reps[i] = rep;
      s->reps[i].state = kSyncing;  // written by puts from now on, read once copied
      return i;
    }
  }
  return -1;
}

bool Pool::set_replica_state(uint64_t ns, uint64_t index, int slot, uint8_t state) {
  auto s = find(ns, index);
  if (!s || slot < 0 || slot >= kMaxReplicas) return false;
  std::lock_guard<std::mutex> lk(s->reps_mu);
  s->reps[slot].state = state;
  return true;
}

bool Pool::drop_replica(uint64_t ns, uint64_t index, int slot) {
  auto s = find(ns, index);
  if (!s || slot < 0 || slot >= kMaxReplicas) return false;
  // Exclusive io: no put is writing it while it goes away.
  std::unique_lock<IoLock> io(s->io);
  std::lock_guard<std::mutex> lk(s->reps_mu);
  s->reps[slot] = Replica{};
  return true;
}

std::vector<uint64_t> Pool::replace_lost(uint64_t ns, uint64_t index, const Replica &rep) {
  std::vector<uint64_t> lost;
  auto s = find(ns, index);
  if (!s) return lost;
  std::unique_lock<IoLock> io(s->io);
  {
    std::lock_guard<std::mutex> lk(s->reps_mu);
    for (auto &r : s->reps) r = Replica{};
    s->reps[0] = rep;
    s->reps[0].state = kActive;
  }
  for (uint64_t off = 0; off < slab_pages_; off++) {
    uint8_t st = load(s->state[off]);
    if (st == kPresent || st == kLost) {
      astore(s->state[off], static_cast<uint8_t>(kLost));
      lost.push_back(index * slab_pages_ + off);
    }
  }
  s->present.store(0);
  return lost;
}

std::vector<Replica> Pool::drop_empty_slab(uint64_t ns, uint64_t index) {
  std::vector<Replica> out;
  auto s = find(ns, index);
  if (!s) return out;
  std::unique_lock<IoLock> io(s->io);  // no put is writing it
  if (s->present.load() != 0) return out;
  for (uint64_t off = 0; off < slab_pages_; off++)
    if (load(s->state[off]) != kAbsent) return out;
  {
    std::unique_lock<std::shared_mutex> ml(map_mu_);
    auto it = map_.find(SlabKey{ns, index});
    if (it == map_.end() || it->second != s) return out;
    map_.erase(it);
  }
  s->dropped = true;
  std::lock_guard<std::mutex> lk(s->reps_mu);
  for (auto &r : s->reps)
    if (r.state != kNone) out.push_back(r);
  return out;
}

std::vector<SlabView> Pool::slabs() {
  std::vector<SlabView> out;
  std::shared_lock<std::shared_mutex> ml(map_mu_);
  for (auto &kv : map_) {
    SlabView v{kv.first.ns, kv.first.index, {}, kv.second->present.load()};
    std::lock_guard<std::mutex> lk(kv.second->reps_mu);
    for (int i = 0; i < kMaxReplicas; i++) v.reps[i] = kv.second->reps[i];
    out.push_back(v);
  }
  return out;
}

std::vector<std::pair<int32_t, uint64_t>> Pool::take_touched() {
  std::vector<std::pair<int32_t, uint64_t>> out;
  std::shared_lock<std::shared_mutex> ml(map_mu_);
  for (auto &kv : map_) {
    if (!kv.second->touched.exchange(false)) continue;
    std::lock_guard<std::mutex> lk(kv.second->reps_mu);
    for (auto &r : kv.second->reps)
      if (r.state == kActive || r.state == kSyncing) out.emplace_back(r.conn, r.slab_id);
  }
  return out;
}

void Pool::mark_replica_dead(Slab &s, int slot) {
  std::lock_guard<std::mutex> lk(s.reps_mu);
  if (s.reps[slot].state == kActive || s.reps[slot].state == kSyncing) {
    s.reps[slot].state = kDead;
    degraded_.fetch_add(1);
  }
}

bool Pool::post(bool write, Op &op, int32_t conn_idx, void *buf, size_t len, void *desc, uint64_t addr, uint64_t key) {
  Conn *c = conn(conn_idx);
  op.conn = conn_idx;
  if (!c || !c->up.load()) {
    op.result = -FI_ENOTCONN;
    return false;
  }
  uint64_t deadline = 0;
  for (;;) {
    ssize_t rc;
    {
      std::shared_lock<std::shared_mutex> sl(c->use);
      if (c->closed || !c->ep) {
        op.result = -FI_ENOTCONN;
        return false;
      }
      op.result = 1;
      rc = write ? fi_write(c->ep, buf, len, desc, c->dest, addr, key, &op.ctx) : fi_read(c->ep, buf, len, desc, c->dest, addr, key, &op.ctx);
    }
    if (rc == 0) return true;
    if (rc != -FI_EAGAIN) {
      op.result = static_cast<int32_t>(rc);
      return false;
    }
    // The transmit queue is full: complete some operations (ours or other threads') first.
    progress();
    if (!c->up.load()) {
      op.result = -FI_ENOTCONN;
      return false;
    }
    uint64_t t = now_ms();
    if (deadline == 0) deadline = t + op_timeout_ms_;
    if (t > deadline) {
      // Refused for a whole donor timeout. Over ofi_rxm this is what a dead peer looks like:
      // rxm keeps reconnecting and answers EAGAIN, never an error. Give the donor up, as wait()
      // does for operations that never complete, so that later posts to it fail at once
      // instead of each waiting out the timeout (posting runs on the JavaScript thread, which
      // is also the one that would learn of the loss from the control connection).
      kill_conn(conn_idx);
      op.result = -FI_ETIMEDOUT;
      return false;
    }
  }
}

void Pool::dispatch_locked(int block_ms) {
  fi_cq_entry entries[64];
  for (;;) {
    // Blocking (once): sleep in the provider's wait object until a completion arrives, which
    // leaves the CPU to the donor (on a shared host) instead of spinning.
    ssize_t n = block_ms > 0 ? fi_cq_sread(cq_, entries, 64, nullptr, block_ms) : fi_cq_read(cq_, entries, 64);
    block_ms = 0;
    if (n > 0) {
      for (ssize_t k = 0; k < n; k++) {
        auto *op = static_cast<Op *>(entries[k].op_context);
        if (!op || op->result != 1) continue;
        op->result = 0;
        op->batch->pending.fetch_sub(1, std::memory_order_release);
      }
      if (n == 64) continue;
      // A short read stops either at the end of the queue or before an error entry: look for
      // one (no progress, just a peek) so that the queue is always left empty. kill_conn and
      // fail_closed_locked rely on it: an entry left behind could name an operation its
      // waiter has already failed and freed.
      if (!read_error_locked()) return;
      continue;
    }
    if (n == -FI_EAVAIL) {
      if (!read_error_locked()) return;
      continue;
    }
    return;
  }
}

bool Pool::read_error_locked() {
  fi_cq_err_entry err{};
  if (fi_cq_readerr(cq_, &err, 0) <= 0) return false;
  auto *op = static_cast<Op *>(err.op_context);
  if (op && op->result == 1) {
    op->result = -(err.err ? err.err : FI_EIO);
    op->batch->pending.fetch_sub(1, std::memory_order_release);
  }
  return true;
}

void Pool::progress() {
  std::lock_guard<std::mutex> lk(cq_mu_);
  if (cq_) dispatch_locked();
}

void Pool::fail_closed_locked(Op *ops, size_t n, Batch &b) {
  for (size_t i = 0; i < n; i++) {
    Op &op = ops[i];
    if (op.batch != &b || op.result != 1) continue;
    Conn *c = conn(op.conn);
    if (c && c->closed) {
      op.result = -FI_ECONNABORTED;
      b.pending.fetch_sub(1, std::memory_order_release);
    }
  }
}

bool Pool::wait(Batch &b, Op *ops, size_t n, uint64_t deadline_ns) {
  // ~0: check for closed connections on the first pass. A batch may be resumed here after a
  // connection closed while nobody was waiting on it (the JS thread handed it to a worker).
  uint64_t epoch = ~0ULL;
  uint64_t start = 0;
  uint64_t spin_until = 0;
  unsigned spins = 0;
  while (b.pending.load(std::memory_order_acquire) > 0) {
    {
      std::lock_guard<std::mutex> lk(cq_mu_);
      dispatch_locked();
      uint64_t e = close_epoch_.load();
      if (e != epoch) {
        epoch = e;
        fail_closed_locked(ops, n, b);
      }
    }
    if (b.pending.load(std::memory_order_acquire) == 0) break;
    ++spins;
    if (deadline_ns) {
      // A bounded wait (the JS thread polling a small batch): spin, never sleep or give up a donor.
      if ((spins & 31) == 0 && now_ns() > deadline_ns) return false;
      continue;
    }
    // Spin first (a donor answers in tens of microseconds, a batch of 32 pages in a few hundred),
    // yielding now and then; a batch that takes longer sleeps in the CQ's wait object, which
    // leaves the CPU to the donor on a shared host instead of burning it. A CQ without a wait
    // object (RDM endpoints, see connect) naps between polls instead.
    if (spin_until == 0) spin_until = now_ns() + spin_ns_;
    if (spins < 2048 && spin_ns_ > 0) continue;
    if (cq_wait_ && ((spins & 15) == 0 || spin_ns_ == 0) && now_ns() > spin_until) {
      std::lock_guard<std::mutex> lk(cq_mu_);
      if (b.pending.load(std::memory_order_acquire) > 0) dispatch_locked(1);
    } else if (!cq_wait_ && ((spins & 3) == 0 || spin_ns_ == 0) && now_ns() > spin_until) {
      std::this_thread::sleep_for(std::chrono::microseconds(kNapUs));
    } else {
      sched_yield();
    }
    if ((spins & 63) != 0) continue;
    uint64_t t = now_ms();
    if (start == 0) start = t;
    if (t - start > op_timeout_ms_) {
      // A donor that neither answers nor resets the connection: give up on it. Its
      // connection is closed, which fails our operations on it (and everyone else's).
      std::vector<int32_t> stuck;
      {
        std::lock_guard<std::mutex> lk(cq_mu_);
        for (size_t i = 0; i < n; i++)
          if (ops[i].batch == &b && ops[i].result == 1) stuck.push_back(ops[i].conn);
      }
      std::sort(stuck.begin(), stuck.end());
      stuck.erase(std::unique(stuck.begin(), stuck.end()), stuck.end());
      for (int32_t c : stuck) kill_conn(c);
      start = t;
    }
  }
  return true;
}

Job::~Job() {
  if (locked)
    for (auto &s : slab) s->io.unlock_shared();
  for (auto *mr : mrs) fi_close(&mr->fid);
  if (counted) {
    std::lock_guard<std::mutex> lk(pool->calls_mu_);
    if (--pool->calls_ == 0) pool->calls_cv_.notify_all();
  }
}

void *Pool::local_desc(Job &job, const void *buf, size_t len) {
  // Providers with FI_MR_LOCAL (verbs) need local buffers registered; tcp does not.
  if (!mr_local_) return nullptr;
  fid_mr *mr = nullptr;
  if (fi_mr_reg(fd_.domain, buf, len, FI_READ | FI_WRITE, 0, local_key_seq_.fetch_add(1), 0, &mr, nullptr) != 0) return nullptr;
  job.mrs.push_back(mr);
  return fi_mr_desc(mr);
}

// A job counts as a running call (close() waits for it) from creation to destruction.
static std::unique_ptr<Job> new_job(Pool *pool, std::mutex &mu, int &calls, const std::atomic<bool> &closed) {
  auto job = std::make_unique<Job>();
  job->pool = pool;
  std::lock_guard<std::mutex> lk(mu);
  if (closed.load()) {
    job->rc = TS_E_CLOSED;
    job->done = true;
    return job;
  }
  calls++;
  job->counted = true;
  return job;
}

std::unique_ptr<Job> Pool::start_get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs) {
  auto job = new_job(this, calls_mu_, calls_, closed_);
  if (job->done) return job;
  Job &j = *job;
  j.ns = ns;
  j.n = n;
  j.pages.assign(pages, pages + n);
  j.bufs.assign(bufs, bufs + n);
  j.status.assign(n, TS_PAGE_MISS);
  j.slab.resize(n);
  j.tried.assign(n, 0);
  j.bad_crc.assign(n, 0);
  j.slot.assign(n, -1);
  std::shared_ptr<Slab> last;
  uint64_t last_idx = ~0ULL;
  for (size_t i = 0; i < n; i++) {
    uint64_t idx = pages[i] / slab_pages_;
    if (idx != last_idx) {
      last = find(ns, idx);
      last_idx = idx;
    }
    j.slab[i] = last;
    if (!last) continue;
    uint8_t st = load(last->state[pages[i] % slab_pages_]);
    if (st == kLost) j.status[i] = TS_E_UNAVAILABLE;
    if (st == kPresent) {
      j.status[i] = kPendingRead;
      j.todo++;
    }
  }
  if (j.todo == 0) {
    j.done = true;
    return job;
  }
  j.ops.reset(new Op[n]);
  j.nops = n;
  post_get_round(j);
  return job;
}

void Pool::post_get_round(Job &j) {
  for (size_t i = 0; i < j.n; i++) {
    Op &op = j.ops[i];
    op.batch = nullptr;
    op.result = 0;
    if (j.status[i] != kPendingRead) continue;
    Slab &s = *j.slab[i];
    uint64_t off = j.pages[i] % slab_pages_;
    Replica rep;
    int r = -1;
    {
      std::lock_guard<std::mutex> lk(s.reps_mu);
      for (int k = 0; k < kMaxReplicas; k++) {
        int cand = static_cast<int>((j.pages[i] + j.round + k) % kMaxReplicas);
        const Replica &x = s.reps[cand];
        if (x.state != kActive || (j.tried[i] >> cand) & 1 || !conn_up(x.conn)) continue;
        r = cand;
        rep = x;
        break;
      }
    }
    if (r < 0) {
      j.status[i] = j.bad_crc[i] ? TS_E_CHECKSUM : TS_E_UNAVAILABLE;
      j.todo--;
      continue;
    }
    j.tried[i] |= static_cast<uint8_t>(1u << r);
    j.slot[i] = static_cast<int8_t>(r);
    s.touched.store(true, std::memory_order_relaxed);
    op.batch = &j.batch;
    j.batch.pending.fetch_add(1);
    if (!post(false, op, rep.conn, j.bufs[i], page_size_, local_desc(j, j.bufs[i], page_size_), rep.addr + off * page_size_, rep.rkey))
      j.batch.pending.fetch_sub(1);
  }
}

void Pool::finish_get_round(Job &j) {
  for (size_t i = 0; i < j.n; i++) {
    if (j.ops[i].batch != &j.batch || j.status[i] != kPendingRead) continue;
    Slab &s = *j.slab[i];
    if (j.ops[i].result != 0) {
      mark_replica_dead(s, j.slot[i]);
      continue;
    }
    uint32_t expect = load(s.crc[j.pages[i] % slab_pages_]);
    if (tierstack::crc32c(j.bufs[i], page_size_) == expect) {
      j.status[i] = TS_PAGE_FOUND;
      j.todo--;
    } else {
      j.bad_crc[i] = 1;
    }
  }
}

std::unique_ptr<Job> Pool::start_put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs) {
  auto job = new_job(this, calls_mu_, calls_, closed_);
  if (job->done) return job;
  Job &j = *job;
  j.write = true;
  j.ns = ns;
  j.n = n;
  j.pages.assign(pages, pages + n);
  j.bufs.resize(n);
  for (size_t i = 0; i < n; i++) j.bufs[i] = const_cast<void *>(bufs[i]);
  j.page_slab.resize(n);
  {
    std::shared_ptr<Slab> last;
    uint64_t last_idx = ~0ULL;
    for (size_t i = 0; i < n; i++) {
      uint64_t idx = pages[i] / slab_pages_;
      if (idx != last_idx) {
        last = find(ns, idx);
        last_idx = idx;
        // A page with no slab yet: slabs are allocated by the control plane (JavaScript).
        if (!last) {
          j.rc = TS_E_NO_SPACE;
          j.done = true;
          j.slab.clear();
          return job;
        }
        j.slab.push_back(last);
      }
      j.page_slab[i] = last.get();
    }
  }
  std::sort(j.slab.begin(), j.slab.end());
  j.slab.erase(std::unique(j.slab.begin(), j.slab.end()), j.slab.end());
  for (auto &s : j.slab) s->io.lock_shared();  // ascending address order: no deadlock
  j.locked = true;
  for (auto &s : j.slab)
    if (s->dropped) {
      // Given back while we looked it up: the control plane places the page again.
      j.rc = TS_E_NO_SPACE;
      j.done = true;
      return job;
    }
  j.nops = n * kMaxReplicas;
  j.ops.reset(new Op[j.nops]);
  j.crc.resize(n);
  for (size_t i = 0; i < n; i++) {
    j.crc[i] = tierstack::crc32c(j.bufs[i], page_size_);
    Slab &s = *j.page_slab[i];
    s.touched.store(true, std::memory_order_relaxed);
    uint64_t off = pages[i] % slab_pages_;
    Replica reps[kMaxReplicas];
    {
      std::lock_guard<std::mutex> lk(s.reps_mu);
      std::copy(std::begin(s.reps), std::end(s.reps), reps);
    }
    void *desc = local_desc(j, j.bufs[i], page_size_);
    for (int r = 0; r < kMaxReplicas; r++) {
      Op &op = j.ops[i * kMaxReplicas + r];
      op.batch = nullptr;
      op.result = -FI_ENOENT;
      if (reps[r].state != kActive && reps[r].state != kSyncing) continue;
      op.batch = &j.batch;
      j.batch.pending.fetch_add(1);
      if (!post(true, op, reps[r].conn, j.bufs[i], page_size_, desc, reps[r].addr + off * page_size_, reps[r].rkey))
        j.batch.pending.fetch_sub(1);
    }
  }
  return job;
}

void Pool::finish_put(Job &j) {
  bool lost = false;
  for (size_t i = 0; i < j.n; i++) {
    Slab &s = *j.page_slab[i];
    bool ok = false;
    for (int r = 0; r < kMaxReplicas; r++) {
      Op &op = j.ops[i * kMaxReplicas + r];
      if (op.batch != &j.batch) continue;
      if (op.result == 0)
        ok = true;
      else
        mark_replica_dead(s, r);
    }
    uint64_t off = j.pages[i] % slab_pages_;
    uint8_t before = load(s.state[off]);
    if (ok) {
      astore(s.crc[off], j.crc[i]);
      astore(s.state[off], static_cast<uint8_t>(kPresent));
      if (before != kPresent) s.present.fetch_add(1);
    } else {
      // No replica holds the new bytes: the page must not be served from old ones.
      astore(s.state[off], static_cast<uint8_t>(kLost));
      if (before == kPresent) s.present.fetch_sub(1);
      lost = true;
    }
  }
  for (auto &s : j.slab) s->io.unlock_shared();
  j.locked = false;
  j.rc = lost ? TS_E_UNAVAILABLE : TS_OK;
}

bool Pool::advance(Job &j, uint64_t deadline_ns) {
  while (!j.done) {
    if (!wait(j.batch, j.ops.get(), j.nops, deadline_ns)) return false;
    if (j.write) {
      finish_put(j);
      j.done = true;
      break;
    }
    finish_get_round(j);
    j.round++;
    if (j.todo > 0 && j.round < kMaxReplicas) {
      post_get_round(j);
      continue;
    }
    for (size_t i = 0; i < j.n; i++)
      if (j.status[i] == kPendingRead) j.status[i] = j.bad_crc[i] ? TS_E_CHECKSUM : TS_E_UNAVAILABLE;
    j.done = true;
  }
  return true;
}

int Pool::get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) {
  if (n == 0) return closed_.load() ? TS_E_CLOSED : TS_OK;
  if (!pages || !bufs || !status) return TS_E_BAD_ARGUMENT;
  auto job = start_get(ns, pages, n, bufs);
  advance(*job, 0);
  if (job->rc != TS_OK) return job->rc;
  std::copy(job->status.begin(), job->status.end(), status);
  return TS_OK;
}

int Pool::put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t) {
  if (n == 0) return closed_.load() ? TS_E_CLOSED : TS_OK;
  if (!pages || !bufs) return TS_E_BAD_ARGUMENT;
  auto job = start_put(ns, pages, n, bufs);
  advance(*job, 0);
  return job->rc;
}

int Pool::abi_get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) {
  int rc = get(ns, pages, n, bufs, status);
  if (rc != TS_OK || backup_mode_.load() != 2) return rc;
  std::vector<uint64_t> bp;
  std::vector<void *> bb;
  std::vector<size_t> idx;
  for (size_t i = 0; i < n; i++)
    if (status[i] < 0) {
      bp.push_back(pages[i]);
      bb.push_back(bufs[i]);
      idx.push_back(i);
    }
  if (bp.empty()) return TS_OK;
  std::vector<int32_t> bs(bp.size());
  if (backup_.get_pages(ns, bp.data(), bp.size(), bb.data(), bs.data()) != TS_OK) return TS_OK;
  for (size_t k = 0; k < bp.size(); k++)
    if (bs[k] == TS_PAGE_FOUND) status[idx[k]] = TS_PAGE_FOUND;
  return TS_OK;
}

int Pool::abi_put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags) {
  int mode = backup_mode_.load();
  if (mode == 1) return TS_E_NO_SPACE;
  if (mode == 2) {
    // The backup first: a page the pool then fails to place is still stored.
    int brc = backup_.put_pages(ns, pages, n, bufs, flags);
    if (brc != TS_OK) return brc;
    int rc = put(ns, pages, n, bufs, flags);
    return rc == TS_E_UNAVAILABLE ? TS_OK : rc;
  }
  return put(ns, pages, n, bufs, flags);
}

int Pool::abi_remove(uint64_t ns, const uint64_t *pages, size_t n) {
  int mode = backup_mode_.load();
  if (mode == 1) return TS_E_NO_SPACE;
  int rc = remove(ns, pages, n);
  if (rc == TS_OK && mode == 2) rc = backup_.remove_pages(ns, pages, n);
  return rc;
}

int Pool::remove(uint64_t ns, const uint64_t *pages, size_t n) {
  Call call(*this);
  if (!call.ok) return TS_E_CLOSED;
  for (size_t i = 0; i < n; i++) {
    auto s = find(ns, pages[i] / slab_pages_);
    if (!s) continue;
    uint64_t off = pages[i] % slab_pages_;
    uint8_t before = load(s->state[off]);
    astore(s->state[off], static_cast<uint8_t>(kAbsent));
    if (before == kPresent) s->present.fetch_sub(1);
  }
  return TS_OK;
}

// One RMA transfer of `len` bytes between `buf` and a replica, waited for; its completion result.
int Pool::transfer_one(bool write, const Replica &r, char *buf, size_t len, void *desc, uint64_t offset) {
  Op op;
  Batch b;
  op.batch = &b;
  b.pending.store(1);
  if (!post(write, op, r.conn, buf, len, desc, r.addr + offset, r.rkey)) b.pending.store(0);
  wait(b, &op, 1);
  return op.result;
}

int Pool::copy_chunk(Slab &s, int src, int dst, uint64_t first, uint64_t count, char *buf, void *desc) {
  Replica from, to;
  {
    std::lock_guard<std::mutex> lk(s.reps_mu);
    from = s.reps[src];
    to = s.reps[dst];
  }
  const size_t len = count * page_size_;
  if (transfer_one(false, from, buf, len, desc, first * page_size_) != 0) {
    mark_replica_dead(s, src);
    return TS_E_UNAVAILABLE;
  }
  for (uint64_t k = 0; k < count; k++)
    if (load(s.state[first + k]) == kPresent && tierstack::crc32c(buf + k * page_size_, page_size_) != load(s.crc[first + k]))
      return TS_E_CHECKSUM;
  if (transfer_one(true, to, buf, len, desc, first * page_size_) != 0) {
    mark_replica_dead(s, dst);
    return TS_E_IO;
  }
  return TS_OK;
}

int Pool::copy_replica(uint64_t ns, uint64_t index, int slot, std::string &err) {
  Call call(*this);
  if (!call.ok) return TS_E_CLOSED;
  auto s = find(ns, index);
  if (!s || slot < 0 || slot >= kMaxReplicas) {
    err = "no such slab or replica";
    return TS_E_NOT_FOUND;
  }
  const uint64_t chunk = std::min<uint64_t>(slab_pages_, 64);
  std::unique_ptr<char, void (*)(void *)> buf(static_cast<char *>(aligned_alloc(4096, chunk * page_size_)), free);
  LocalRegs regs{fd_.domain, mr_local_, nullptr, {}};
  regs.key_seq = &local_key_seq_;
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

void Pool::close() {
  {
    std::unique_lock<std::mutex> lk(calls_mu_);
    if (closed_.exchange(true) && calls_ == 0 && !cq_ && !fd_.domain) return;
    calls_cv_.wait(lk, [this] { return calls_ == 0; });
  }
  for (size_t i = 0; i < conns_.size(); i++) {
    Conn *c = conns_[i].get();
    std::unique_lock<std::shared_mutex> ul(c->use);
    c->up.store(false);
    if (c->ep) fi_close(&c->ep->fid);
    if (c->eq) fi_close(&c->eq->fid);
    if (c->av) fi_close(&c->av->fid);
    c->ep = nullptr;
    c->eq = nullptr;
    c->av = nullptr;
    c->closed = true;
  }
  {
    std::lock_guard<std::mutex> lk(cq_mu_);
    if (cq_) fi_close(&cq_->fid);
    cq_ = nullptr;
  }
  {
    std::unique_lock<std::shared_mutex> ml(map_mu_);
    map_.clear();
  }
  fd_.close();
}

}  // namespace tsrdma
