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
constexpr int32_t kPendingRead = 1000;  // internal page status: still to be read
constexpr uint64_t kSpinNs = 500 * 1000;  // default: how long a waiter spins before sleeping on the CQ

// TIERSTACK_RDMA_SPIN_US tunes the spin phase of waiters (read once per pool; a process-wide setting).
uint64_t spin_ns_setting() {
  const char *v = getenv("TIERSTACK_RDMA_SPIN_US");
  return v ? strtoull(v, nullptr, 10) * 1000 : kSpinNs;
}
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
    : page_size_(page_size),
      slab_pages_(slab_pages),
      name_(std::move(name)),
      map_(slab_pages),
      conns_(cq_, op_timeout_ms),
      rma_(conns_, cq_, *this, op_timeout_ms, spin_ns_setting()) {
  // The C ABI: abi_get/abi_put/abi_remove (they honour the backup), retain/release.
  store_ = tierstack::make_page_store<Pool, &Pool::abi_get, &Pool::abi_put, &Pool::abi_remove>(this, page_size_, name_.c_str());
}

Pool::~Pool() { close(); }

bool Pool::open(const std::string &provider) {
  apply_provider_defaults(provider);
  conns_.set_provider(provider);
  return true;
}

bool Pool::conn_up(int32_t idx) { return conns_.up(idx); }

int Pool::connect(int32_t idx, const std::string &node, const std::string &service, const std::string &raw_addr, std::string &err) {
  Call call(*this);
  if (!call.ok) {
    err = "pool is closed";
    return TS_E_CLOSED;
  }
  int rc = conns_.connect(idx, node, service, raw_addr, err);
  if (rc == TS_OK && conns_.mr_local() && !staging_.is_open()) {
    // 16 MiB of slots (64..1024 of them): QD32 batches of several threads at once. A failure
    // (RLIMIT_MEMLOCK) leaves batches registering their own buffers.
    const size_t slots = std::min<size_t>(1024, std::max<size_t>(64, (16u << 20) / page_size_));
    staging_.open(conns_.domain(), page_size_, slots, local_key_seq_.fetch_add(1));
  }
  return rc;
}

void Pool::kill_conn(int32_t idx) {
  if (conns_.close_one(idx)) map_.mark_conn_dead(idx);
}

Job::~Job() { reset(); }

void Job::reset() {
  for (size_t k = 0; k < nlocked; k++) exclusive ? slab[k]->io.unlock() : slab[k]->io.unlock_shared();
  nlocked = 0;
  start_pending = false;
  unposted = 0;
  regs.release();  // before the call count drops: close() may free the domain once it is zero
  if (arena) arena->give(staged);
  arena = nullptr;
  staged.clear();
  write = false;
  flags = 0;
  exclusive = false;
  ns = 0;
  n = 0;
  pages.clear();
  bufs.clear();
  status.clear();
  slab.clear();
  page_slab.clear();
  tried.clear();
  bad_crc.clear();
  skip.clear();
  slot.clear();
  crc.clear();
  nops = 0;
  batch.pending.store(0);
  round = 0;
  todo = 0;
  rc = TS_OK;
  done = false;
}

void Job::prepare_ops(size_t count) {
  if (ops_capacity < count) {
    ops.reset(new Op[count]);
    ops_capacity = count;
  } else {
    for (size_t i = 0; i < count; i++) ops[i] = Op{};
  }
  nops = count;
}

void JobRecycler::operator()(Job *job) const {
  if (job->pool)
    job->pool->recycle(job);
  else
    delete job;
}

JobPtr Pool::new_job() {
  Job *job = nullptr;
  bool counted = false;
  {
    std::lock_guard<std::mutex> lk(calls_mu_);
    if (!kept_jobs_.empty()) {
      job = kept_jobs_.back();
      kept_jobs_.pop_back();
    }
    if (!closed_.load()) {
      calls_++;
      counted = true;
    }
  }
  if (!job) job = new Job();
  job->pool = this;
  job->counted = counted;
  if (!counted) {
    job->rc = TS_E_CLOSED;
    job->done = true;
  }
  return JobPtr(job);
}

void Pool::recycle(Job *job) {
  const bool counted = job->counted;
  job->counted = false;
  job->reset();
  std::unique_lock<std::mutex> lk(calls_mu_);
  // Kept only while the pool is open: close() frees the kept ones once no call runs.
  bool keep = !closed_.load() && kept_jobs_.size() < kKeptJobs;
  if (keep) kept_jobs_.push_back(job);
  if (counted && --calls_ == 0) calls_cv_.notify_all();
  lk.unlock();
  if (!keep) {
    job->pool = nullptr;
    delete job;
  }
}

JobPtr Pool::start_get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, bool may_wait) {
  auto job = new_job();
  if (job->done) return job;
  Job &j = *job;
  j.regs.bind(conns_.domain(), conns_.mr_local(), &local_key_seq_);
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
      last = map_.find(ns, idx);
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
  j.prepare_ops(n);
  if (staging_.is_open() && staging_.take(n, j.staged)) j.arena = &staging_;
  post_get_round(j, may_wait);
  return job;
}

void Pool::post_op(Job &j, Op &op, PostPass &pass) {
  op.batch = &j.batch;
  if (!pass.may_wait && pass.refuses(op.conn)) {
    op.result = kOpUnposted;
  } else {
    j.batch.pending.fetch_add(1);  // before the post: its completion may come at once
    const Rma::Posted r = rma_.post(j.write, op, pass.may_wait);
    if (r == Rma::Posted::kYes) return;
    j.batch.pending.fetch_sub(1);
    if (r == Rma::Posted::kFailed) return;  // op.result < 0: counts against the replica
    pass.refused_by(op.conn);
  }
  j.unposted++;
  posts_deferred_.fetch_add(1, std::memory_order_relaxed);
}

bool Pool::post_unposted(Job &j, PostPass &pass) {
  for (size_t i = 0; i < j.nops && j.unposted > 0; i++) {
    Op &op = j.ops[i];
    if (op.batch != &j.batch || op.result != kOpUnposted) continue;
    if (!pass.may_wait && pass.refuses(op.conn)) continue;
    j.batch.pending.fetch_add(1);
    const Rma::Posted r = rma_.post(j.write, op, pass.may_wait);
    if (r == Rma::Posted::kRefused) {  // only without may_wait: still unposted
      j.batch.pending.fetch_sub(1);
      pass.refused_by(op.conn);
      continue;
    }
    if (r == Rma::Posted::kFailed) j.batch.pending.fetch_sub(1);
    j.unposted--;
  }
  return j.unposted == 0;
}

void Pool::post_get_round(Job &j, bool may_wait) {
  PostPass pass{may_wait};
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
    // Into a staging slot (copied out once its checksum holds), or straight into the caller's buffer.
    void *buf = j.staged.empty() ? j.bufs[i] : staging_.slot(j.staged[i]);
    void *desc = j.staged.empty() ? j.regs.desc(buf, page_size_) : staging_.desc();
    Rma::set(op, rep.conn, buf, page_size_, desc, rep.addr + off * page_size_, rep.rkey);
    post_op(j, op, pass);
  }
}

void Pool::finish_get_round(Job &j) {
  for (size_t i = 0; i < j.n; i++) {
    if (j.ops[i].batch != &j.batch || j.status[i] != kPendingRead) continue;
    Slab &s = *j.slab[i];
    if (j.ops[i].result != 0) {
      map_.mark_replica_dead(s, j.slot[i]);
      continue;
    }
    uint32_t expect = load(s.crc[j.pages[i] % slab_pages_]);
    const void *got = j.staged.empty() ? j.bufs[i] : staging_.slot(j.staged[i]);
    if (tierstack::crc32c(got, page_size_) == expect) {
      if (got != j.bufs[i]) memcpy(j.bufs[i], got, page_size_);
      j.status[i] = TS_PAGE_FOUND;
      j.todo--;
    } else {
      j.bad_crc[i] = 1;
    }
  }
}

JobPtr Pool::start_put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags, bool may_wait) {
  auto job = new_job();
  if (job->done) return job;
  Job &j = *job;
  j.regs.bind(conns_.domain(), conns_.mr_local(), &local_key_seq_);
  j.write = true;
  j.flags = flags;
  // A promotion holds its slabs exclusively: no put of them is in flight while it looks at the
  // dirty flags and writes, so a dirty write either finished before (and is kept) or starts
  // after (and replaces the promoted copy). Promotions are rare (a miss above, a hit below).
  j.exclusive = (flags & TS_PUT_PROMOTION) != 0;
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
        last = map_.find(ns, idx);
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
  j.start_pending = true;
  resume_put(j, may_wait);
  return job;
}

bool Pool::resume_put(Job &j, bool may_wait) {
  // Ascending address order, on any thread: no deadlock. A lock is held across network waits
  // (a put waiting for its donors, a replica copy per chunk, a promotion): the JavaScript
  // thread only tries, and leaves the rest of the start to a job thread when one is taken.
  while (j.nlocked < j.slab.size()) {
    Slab &s = *j.slab[j.nlocked];
    if (may_wait) {
      j.exclusive ? s.io.lock() : s.io.lock_shared();
    } else if (!(j.exclusive ? s.io.try_lock() : s.io.try_lock_shared())) {
      locks_deferred_.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    j.nlocked++;
  }
  j.start_pending = false;
  const size_t n = j.n;
  for (auto &s : j.slab)
    if (s->dropped) {
      // Given back while we looked it up: the control plane places the page again.
      j.rc = TS_E_NO_SPACE;
      j.done = true;
      return true;
    }
  j.prepare_ops(n * kMaxReplicas);
  j.crc.resize(n);
  j.skip.assign(n, 0);
  if (staging_.is_open() && staging_.take(n, j.staged)) j.arena = &staging_;
  PostPass pass{may_wait};
  for (size_t i = 0; i < n; i++) {
    Slab &s = *j.page_slab[i];
    uint64_t off = j.pages[i] % slab_pages_;
    if (j.exclusive && load(s.state[off]) == kPresent && load(s.dirty[off])) {
      j.skip[i] = 1;  // a copy from below never replaces a dirty one
      for (int r = 0; r < kMaxReplicas; r++) j.ops[i * kMaxReplicas + r].batch = nullptr;
      continue;
    }
    j.crc[i] = tierstack::crc32c(j.bufs[i], page_size_);
    s.touched.store(true, std::memory_order_relaxed);
    Replica reps[kMaxReplicas];
    {
      std::lock_guard<std::mutex> lk(s.reps_mu);
      std::copy(std::begin(s.reps), std::end(s.reps), reps);
    }
    // From a staging slot holding a copy of the page, or straight from the caller's buffer.
    void *src = j.bufs[i];
    void *desc;
    if (!j.staged.empty()) {
      src = staging_.slot(j.staged[i]);
      memcpy(src, j.bufs[i], page_size_);
      desc = staging_.desc();
    } else {
      desc = j.regs.desc(src, page_size_);
    }
    for (int r = 0; r < kMaxReplicas; r++) {
      Op &op = j.ops[i * kMaxReplicas + r];
      op.batch = nullptr;
      op.result = -FI_ENOENT;
      if (reps[r].state != kActive && reps[r].state != kSyncing) continue;
      Rma::set(op, reps[r].conn, src, page_size_, desc, reps[r].addr + off * page_size_, reps[r].rkey);
      post_op(j, op, pass);
    }
  }
  return true;
}

void Pool::finish_put(Job &j) {
  bool lost = false;
  for (size_t i = 0; i < j.n; i++) {
    if (j.skip[i]) continue;
    Slab &s = *j.page_slab[i];
    bool ok = false;
    for (int r = 0; r < kMaxReplicas; r++) {
      Op &op = j.ops[i * kMaxReplicas + r];
      if (op.batch != &j.batch) continue;
      if (op.result == 0)
        ok = true;
      else
        map_.mark_replica_dead(s, r);
    }
    uint64_t off = j.pages[i] % slab_pages_;
    uint8_t before = load(s.state[off]);
    if (ok) {
      astore(s.crc[off], j.crc[i]);
      astore(s.dirty[off], static_cast<uint8_t>((j.flags & TS_PUT_DIRTY) ? 1 : 0));
      astore(s.state[off], static_cast<uint8_t>(kPresent));
      if (before != kPresent) s.present.fetch_add(1);
    } else {
      // No replica holds the new bytes: the page must not be served from old ones.
      astore(s.state[off], static_cast<uint8_t>(kLost));
      if (before == kPresent) s.present.fetch_sub(1);
      lost = true;
    }
  }
  for (size_t k = 0; k < j.nlocked; k++) j.exclusive ? j.slab[k]->io.unlock() : j.slab[k]->io.unlock_shared();
  j.nlocked = 0;
  j.rc = lost ? TS_E_UNAVAILABLE : TS_OK;
}

bool Pool::advance(Job &j, uint64_t deadline_ns) {
  const bool may_wait = deadline_ns == 0;
  while (!j.done) {
    if (j.start_pending) {
      // A put whose start found a slab lock taken (on the JavaScript thread).
      if (!resume_put(j, may_wait)) return false;
      continue;
    }
    if (j.unposted > 0) {
      // Posts refused on the JavaScript thread. Here they are posted as any other thread posts
      // (waiting out EAGAIN, giving the donor up after the op timeout); on the JavaScript
      // thread they are tried again until the deadline. An unposted op never reaches
      // finish_get_round/finish_put: it would count as a failed replica.
      PostPass pass{may_wait};
      while (!post_unposted(j, pass)) {
        if (tierstack::now_ns() > deadline_ns) return false;
        pass = PostPass{may_wait};
      }
    }
    if (!rma_.wait(j.batch, j.ops.get(), j.nops, deadline_ns)) return false;
    if (j.write) {
      finish_put(j);
      j.done = true;
      break;
    }
    finish_get_round(j);
    j.round++;
    if (j.todo > 0 && j.round < kMaxReplicas) {
      post_get_round(j, may_wait);
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

int Pool::put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags) {
  if (n == 0) return closed_.load() ? TS_E_CLOSED : TS_OK;
  if (!pages || !bufs) return TS_E_BAD_ARGUMENT;
  auto job = start_put(ns, pages, n, bufs, flags);
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

int Pool::restore_from_backup(uint64_t ns, const uint64_t *pages, size_t n) {
  if (backup_mode_.load() != 2) return TS_E_UNSUPPORTED;
  Call call(*this);
  if (!call.ok) return TS_E_CLOSED;
  constexpr size_t kChunk = 64;  // pages per backup read and pool write
  std::unique_ptr<char, void (*)(void *)> mem(static_cast<char *>(aligned_alloc(4096, kChunk * page_size_)), free);
  if (!mem) return TS_E_IO;
  std::vector<void *> bufs(kChunk);
  std::vector<const void *> found_bufs;
  std::vector<uint64_t> found;
  std::vector<int32_t> status(kChunk);
  int restored = 0;
  for (size_t first = 0; first < n; first += kChunk) {
    const size_t count = std::min(kChunk, n - first);
    for (size_t k = 0; k < count; k++) bufs[k] = mem.get() + k * page_size_;
    int rc = backup_.get_pages(ns, pages + first, count, bufs.data(), status.data());
    if (rc != TS_OK) return rc;
    found.clear();
    found_bufs.clear();
    for (size_t k = 0; k < count; k++)
      if (status[k] == TS_PAGE_FOUND) {
        found.push_back(pages[first + k]);
        found_bufs.push_back(bufs[k]);
      }
    if (found.empty()) continue;
    // A plain put: the backup's copy is what a stack above last wrote.
    rc = put(ns, found.data(), found.size(), found_bufs.data(), 0);
    if (rc != TS_OK) return rc;
    restored += static_cast<int>(found.size());
  }
  return restored;
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
    auto s = map_.find(ns, pages[i] / slab_pages_);
    if (!s) continue;
    uint64_t off = pages[i] % slab_pages_;
    uint8_t before = load(s->state[off]);
    astore(s->state[off], static_cast<uint8_t>(kAbsent));
    astore(s->dirty[off], static_cast<uint8_t>(0));
    if (before == kPresent) s->present.fetch_sub(1);
  }
  return TS_OK;
}

void Pool::close() {
  {
    std::unique_lock<std::mutex> lk(calls_mu_);
    if (closed_.exchange(true) && calls_ == 0 && !conns_.domain()) return;
    calls_cv_.wait(lk, [this] { return calls_ == 0; });
    for (Job *j : kept_jobs_) {
      j->pool = nullptr;
      delete j;
    }
    kept_jobs_.clear();
  }
  staging_.close();  // its registration before the domain
  conns_.close_all();
  map_.clear();
}

}  // namespace tsrdma
