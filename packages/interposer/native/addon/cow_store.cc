#include "cow_store.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>

namespace tsrun {

const ts_page_store_ops CowStore::kOps = {
    TS_PAGE_STORE_ABI_VERSION, sizeof(ts_page_store_ops), &CowStore::op_get, &CowStore::op_put, &CowStore::op_remove,
    &CowStore::op_retain,      &CowStore::op_release,
};

CowStore::CowStore(std::shared_ptr<tierstack::StackClient> below, uint32_t page_size, size_t max_queued_pages)
    : max_queued_(max_queued_pages == 0 ? 1 : max_queued_pages), below_(std::move(below)) {
  store_.abi_version = TS_PAGE_STORE_ABI_VERSION;
  store_.page_size = page_size;
  store_.name = "tierstack-run";
  store_.ops = &kOps;
  store_.self = this;
  // The writer holds a reference of its own, dropped when it exits (after stop()): the store is
  // never freed under it, and nobody joins it from the JS thread (it may wait for the JS path).
  retain();
  std::thread([this] {
    writer_main();
    release();
  }).detach();
}

CowStore::~CowStore() = default;  // the writer held a reference: it has exited by now

void CowStore::stop() {
  {
    std::lock_guard<std::mutex> lk(wq_mu_);
    stopping_ = true;
  }
  wq_work_.notify_all();
  wq_space_.notify_all();
  wq_idle_.notify_all();
}

int CowStore::drain() {
  std::unique_lock<std::mutex> lk(wq_mu_);
  wq_idle_.wait(lk, [&] { return (wq_.empty() && writing_.empty()) || stopping_ || failing_; });
  int rc = write_error_;
  write_error_ = TS_OK;
  return rc;
}

void CowStore::writer_main() {
  std::unique_lock<std::mutex> lk(wq_mu_);
  int failures = 0;
  const uint32_t ps = store_.page_size;
  std::vector<uint64_t> pages;
  std::vector<const void *> bufs;
  std::unordered_map<uint64_t, size_t> slot;  // page -> position in `pages` (the newest copy wins)
  for (;;) {
    wq_work_.wait(lk, [&] { return stopping_ || !wq_.empty(); });
    if (wq_.empty() && stopping_) break;
    if (wq_.empty()) continue;
    // One put for the head batch and the batches of the same namespace behind it (up to
    // kMergePages): a backed-up queue costs one trip to the stack (often through JS) per merge.
    std::vector<std::shared_ptr<WBatch>> &w = writing_;
    w.clear();
    pages.clear();
    bufs.clear();
    slot.clear();
    const uint64_t ns = wq_.front()->ns;
    const uint32_t flags = wq_.front()->flags;
    size_t total = 0;
    while (!wq_.empty() && wq_.front()->ns == ns && wq_.front()->flags == flags &&
           (w.empty() || total + wq_.front()->pages.size() <= kMergePages)) {
      w.push_back(wq_.front());
      total += wq_.front()->pages.size();
      wq_.pop_front();
    }
    for (auto &b : w) {
      for (size_t i = 0; i < b->pages.size(); i++) {
        if (b->cancelled[i]) continue;
        const void *src = b->data.data() + i * ps;
        auto it = slot.find(b->pages[i]);
        if (it != slot.end()) {
          bufs[it->second] = src;  // a later put of the same page: only the newest is written
          continue;
        }
        slot.emplace(b->pages[i], pages.size());
        pages.push_back(b->pages[i]);
        bufs.push_back(src);
      }
    }
    lk.unlock();
    int rc = pages.empty() ? TS_OK : below_->put(ns, pages.data(), pages.size(), bufs.data(), flags);
    lk.lock();
    std::vector<std::shared_ptr<WBatch>> done;
    done.swap(w);
    if (rc != TS_OK && rc != TS_E_CLOSED && !stopping_) {
      // Never dropped: back to the head of the queue, in order (reads keep seeing them; a remove
      // may cancel pages of them meanwhile), tried again after a pause that grows up to a second.
      stats_.write_retries.fetch_add(1, std::memory_order_relaxed);
      stats_.errors.fetch_add(1, std::memory_order_relaxed);
      write_error_ = rc;
      for (auto it = done.rbegin(); it != done.rend(); ++it) wq_.push_front(*it);
      failing_ = true;
      wq_space_.notify_all();
      wq_idle_.notify_all();
      failures = std::min(failures + 1, 10);
      wq_work_.wait_for(lk, std::chrono::milliseconds(10 << failures), [&] { return stopping_; });
      continue;
    }
    failures = 0;
    failing_ = false;
    if (rc != TS_OK) write_error_ = rc;  // closing: the stack is gone
    for (auto &b : done) {
      for (size_t i = 0; i < b->pages.size(); i++) {
        auto it = queued_.find({b->ns, b->pages[i]});
        if (it != queued_.end() && it->second.batch == b) queued_.erase(it);  // unless a newer put replaced it
      }
      queued_pages_ -= b->pages.size();
    }
    queued_count_.store(queued_.size(), std::memory_order_release);
    // Buffers go back to the pool once no reader holds their batch (read_queued copies under this
    // lock, and the map no longer names them).
    for (auto &b : done) {
      if (pool_.size() < 16 && b.use_count() == 1) {
        pool_.emplace_back();
        pool_.back().swap(b->data);
      }
    }
    done.clear();
    wq_space_.notify_all();
    if (wq_.empty()) wq_idle_.notify_all();
  }
  // Closing: whatever is left will not be written (the stack's client is closed).
  wq_.clear();
  queued_.clear();
  queued_count_.store(0, std::memory_order_release);
  queued_pages_ = 0;
  wq_idle_.notify_all();
  wq_space_.notify_all();
}

int CowStore::queue_put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags) {
  const uint32_t ps = store_.page_size;
  auto b = std::make_shared<WBatch>();
  {
    // A buffer from the pool: no allocation (and no page faults on fresh memory) per write-back.
    std::lock_guard<std::mutex> lk(wq_mu_);
    if (!pool_.empty()) {
      b->data.swap(pool_.back());
      pool_.pop_back();
    }
  }
  b->ns = ns;
  b->pages.assign(pages, pages + n);
  if (b->data.size() < n * ps) b->data.resize(n * ps);
  b->cancelled.assign(n, 0);
  b->flags = flags;
  for (size_t i = 0; i < n; i++) std::memcpy(b->data.data() + i * ps, bufs[i], ps);
  std::unique_lock<std::mutex> lk(wq_mu_);
  // Back-pressure while the writer makes progress; while its writes fail (a full or unreachable
  // tier) the queue holds the pages instead, as the engine's write-back copies would.
  wq_space_.wait(lk, [&] { return stopping_ || failing_ || queued_pages_ == 0 || queued_pages_ + n <= max_queued_; });
  // A fork layer appeared (add_layer counts it before draining under this lock): write through.
  if (layers_with_source_.load(std::memory_order_acquire) != 0) return kNotQueued;
  if (stopping_) {
    lk.unlock();
    return below_->put(ns, pages, n, bufs, flags);
  }
  for (size_t i = 0; i < n; i++) queued_[{ns, pages[i]}] = PendingRef{b, i};
  queued_count_.store(queued_.size(), std::memory_order_release);
  queued_pages_ += n;
  wq_.push_back(std::move(b));
  stats_.queued_writes.fetch_add(n, std::memory_order_relaxed);
  wq_work_.notify_one();
  return TS_OK;
}

size_t CowStore::read_queued(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) {
  if (queued_count_.load(std::memory_order_acquire) == 0) return 0;
  const uint32_t ps = store_.page_size;
  size_t hits = 0;
  std::lock_guard<std::mutex> lk(wq_mu_);
  for (size_t i = 0; i < n; i++) {
    auto it = queued_.find({ns, pages[i]});
    if (it == queued_.end()) continue;
    std::memcpy(bufs[i], it->second.batch->data.data() + it->second.index * ps, ps);
    status[i] = TS_PAGE_FOUND;
    hits++;
  }
  if (hits) stats_.queue_hits.fetch_add(hits, std::memory_order_relaxed);
  return hits;
}

void CowStore::cancel_queued(uint64_t ns, const uint64_t *pages, size_t n) {
  std::unique_lock<std::mutex> lk(wq_mu_);
  // A write of one of these pages under way right now must land before the remove, or it would
  // bring the page back after it.
  wq_idle_.wait(lk, [&] {
    if (stopping_) return true;
    for (auto &w : writing_) {
      if (w->ns != ns) continue;
      for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < w->pages.size(); k++)
          if (w->pages[k] == pages[i] && !w->cancelled[k]) return false;
    }
    return true;
  });
  if (queued_count_.load(std::memory_order_relaxed) == 0) return;
  for (size_t i = 0; i < n; i++) {
    auto it = queued_.find({ns, pages[i]});
    if (it == queued_.end()) continue;
    it->second.batch->cancelled[it->second.index] = 1;
    queued_.erase(it);
  }
  queued_count_.store(queued_.size(), std::memory_order_release);
}

int CowStore::op_get(void *self, uint64_t ns, const uint64_t *pages, size_t count, void *const *bufs, int32_t *status) {
  return static_cast<CowStore *>(self)->get(ns, pages, count, bufs, status);
}
int CowStore::op_put(void *self, uint64_t ns, const uint64_t *pages, size_t count, const void *const *bufs, uint32_t flags) {
  return static_cast<CowStore *>(self)->put(ns, pages, count, bufs, flags);
}
int CowStore::op_remove(void *self, uint64_t ns, const uint64_t *pages, size_t count) {
  return static_cast<CowStore *>(self)->remove(ns, pages, count);
}
void CowStore::op_retain(void *self) { static_cast<CowStore *>(self)->retain(); }
void CowStore::op_release(void *self) { static_cast<CowStore *>(self)->release(); }

int CowStore::below_get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) {
  // This store is itself a tier of the uffd engine's StackClient and runs inside its get(); the
  // stack below is read through its own StackClient on this same thread (StackClient::get is
  // re-entrant). `level` says which pages the JS path served.
  thread_local std::vector<uint8_t> level;
  level.assign(n, 0);
  int rc = below_->get(ns, pages, n, bufs, status, level.data());
  if (rc != TS_OK) {
    stats_.errors.fetch_add(1, std::memory_order_relaxed);
    return rc;
  }
  const size_t native_levels = below_->chain().size();
  uint64_t found = 0, js = 0;
  for (size_t i = 0; i < n; i++) {
    if (status[i] != TS_PAGE_FOUND) continue;
    found++;
    if (level[i] >= native_levels) js++;
  }
  stats_.pages_found.fetch_add(found, std::memory_order_relaxed);
  stats_.native_pages.fetch_add(found - js, std::memory_order_relaxed);
  stats_.js_pages.fetch_add(js, std::memory_order_relaxed);
  return TS_OK;
}

uint64_t CowStore::resolve(uint64_t ns, uint64_t p) const {
  for (int depth = 0; depth < 1024; depth++) {
    auto it = layers_.find(ns);
    if (it == layers_.end() || !it->second.has_source || !it->second.is_pending(p)) return ns;
    ns = it->second.source;
  }
  return ns;
}

int CowStore::get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) {
  stats_.gets.fetch_add(1, std::memory_order_relaxed);
  stats_.pages_read.fetch_add(n, std::memory_order_relaxed);
  if (layers_with_source_.load(std::memory_order_acquire) == 0) {
    if (queued_count_.load(std::memory_order_acquire) == 0) return below_get(ns, pages, n, bufs, status);
    // Some pages may still wait in the write-behind queue: those are the newest copies.
    thread_local std::vector<int32_t> qst;
    qst.assign(n, TS_PAGE_MISS);
    size_t hits = read_queued(ns, pages, n, bufs, qst.data());
    if (hits == 0) return below_get(ns, pages, n, bufs, status);
    thread_local std::vector<uint64_t> rest;
    thread_local std::vector<void *> rest_bufs;
    thread_local std::vector<int32_t> rest_st;
    thread_local std::vector<size_t> where;
    rest.clear();
    rest_bufs.clear();
    where.clear();
    for (size_t i = 0; i < n; i++) {
      status[i] = qst[i];
      if (qst[i] == TS_PAGE_FOUND) continue;
      rest.push_back(pages[i]);
      rest_bufs.push_back(bufs[i]);
      where.push_back(i);
    }
    stats_.pages_found.fetch_add(hits, std::memory_order_relaxed);
    stats_.native_pages.fetch_add(hits, std::memory_order_relaxed);
    if (rest.empty()) return TS_OK;
    rest_st.assign(rest.size(), TS_PAGE_MISS);
    int rc = below_get(ns, rest.data(), rest.size(), rest_bufs.data(), rest_st.data());
    if (rc != TS_OK) return rc;
    for (size_t k = 0; k < where.size(); k++) status[where[k]] = rest_st[k];
    return TS_OK;
  }
  // Hold the layers shared for the whole read: a parent's copy cannot change under a child's
  // read of it (copy_to_children runs exclusive).
  std::shared_lock<std::shared_mutex> lk(mu_);
  thread_local std::vector<uint64_t> from;
  from.resize(n);
  bool all_own = true;
  for (size_t i = 0; i < n; i++) {
    from[i] = resolve(ns, pages[i]);
    if (from[i] != ns) all_own = false;
  }
  if (all_own) return below_get(ns, pages, n, bufs, status);
  // Group by the namespace each page is read from (usually one or two).
  thread_local std::vector<uint64_t> sub_pages;
  thread_local std::vector<void *> sub_bufs;
  thread_local std::vector<int32_t> sub_status;
  thread_local std::vector<size_t> sub_idx;
  thread_local std::vector<uint8_t> done;
  done.assign(n, 0);
  for (size_t i = 0; i < n; i++) {
    if (done[i]) continue;
    const uint64_t src = from[i];
    sub_pages.clear();
    sub_bufs.clear();
    sub_idx.clear();
    for (size_t k = i; k < n; k++) {
      if (done[k] || from[k] != src) continue;
      sub_pages.push_back(pages[k]);
      sub_bufs.push_back(bufs[k]);
      sub_idx.push_back(k);
      done[k] = 1;
    }
    sub_status.assign(sub_pages.size(), TS_PAGE_MISS);
    int rc = below_get(src, sub_pages.data(), sub_pages.size(), sub_bufs.data(), sub_status.data());
    if (rc != TS_OK) return rc;
    for (size_t k = 0; k < sub_idx.size(); k++) status[sub_idx[k]] = sub_status[k];
    if (src != ns) stats_.cow_reads.fetch_add(sub_pages.size(), std::memory_order_relaxed);
  }
  return TS_OK;
}

int CowStore::copy_to_children(uint64_t ns, const uint64_t *pages, size_t n) {
  auto it = layers_.find(ns);
  if (it == layers_.end() || it->second.children.empty()) return TS_OK;
  const uint32_t ps = store_.page_size;
  std::vector<uint64_t> want;
  for (uint64_t child : std::vector<uint64_t>(it->second.children)) {
    auto c = layers_.find(child);
    if (c == layers_.end()) continue;
    want.clear();
    for (size_t i = 0; i < n; i++)
      if (c->second.is_pending(pages[i])) want.push_back(pages[i]);
    if (want.empty()) continue;
    std::sort(want.begin(), want.end());
    want.erase(std::unique(want.begin(), want.end()), want.end());
    // The old copies, as ns sees them (a page ns itself still reads from its source included):
    // one read per namespace they come from.
    std::vector<uint8_t> buf(want.size() * ps);
    std::vector<int32_t> st(want.size(), TS_PAGE_MISS);
    std::vector<uint64_t> from(want.size());
    for (size_t k = 0; k < want.size(); k++) from[k] = resolve(ns, want[k]);
    std::vector<uint8_t> done(want.size(), 0);
    for (size_t k = 0; k < want.size(); k++) {
      if (done[k]) continue;
      std::vector<uint64_t> sub;
      std::vector<void *> sub_bufs;
      std::vector<size_t> idx;
      for (size_t j = k; j < want.size(); j++) {
        if (done[j] || from[j] != from[k]) continue;
        sub.push_back(want[j]);
        sub_bufs.push_back(buf.data() + j * ps);
        idx.push_back(j);
        done[j] = 1;
      }
      std::vector<int32_t> sub_st(sub.size(), TS_PAGE_MISS);
      int rc = below_get(from[k], sub.data(), sub.size(), sub_bufs.data(), sub_st.data());
      if (rc != TS_OK) return rc;
      for (size_t j = 0; j < idx.size(); j++) st[idx[j]] = sub_st[j];
    }
    // Found pages go to the child; a page ns no longer has (a miss) is simply no longer pending
    // (the child would read a miss either way). A page that cannot be read stays pending and the
    // caller's change fails: the child's copy is never lost.
    std::vector<uint64_t> put_pages;
    std::vector<const void *> put_bufs;
    for (size_t k = 0; k < want.size(); k++) {
      if (st[k] == TS_PAGE_FOUND) {
        put_pages.push_back(want[k]);
        put_bufs.push_back(buf.data() + k * ps);
      } else if (st[k] < 0) {
        return st[k];
      }
    }
    if (!put_pages.empty()) {
      int rc = below_->put(child, put_pages.data(), put_pages.size(), put_bufs.data(), TS_PUT_DIRTY);
      if (rc != TS_OK) {
        stats_.errors.fetch_add(1, std::memory_order_relaxed);
        return rc;
      }
      stats_.cow_copies.fetch_add(put_pages.size(), std::memory_order_relaxed);
    }
    for (uint64_t p : want) c->second.clear_pending(p);
  }
  return TS_OK;
}

int CowStore::put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags) {
  stats_.puts.fetch_add(1, std::memory_order_relaxed);
  stats_.pages_written.fetch_add(n, std::memory_order_relaxed);
  if (layers_with_source_.load(std::memory_order_acquire) == 0) {
    int rc = queue_put(ns, pages, n, bufs, flags);
    if (rc != kNotQueued) return rc;
  }
  std::unique_lock<std::shared_mutex> lk(mu_);
  int rc = copy_to_children(ns, pages, n);
  if (rc != TS_OK) return rc;
  rc = below_->put(ns, pages, n, bufs, flags);
  if (rc != TS_OK) return rc;
  auto it = layers_.find(ns);
  if (it != layers_.end())
    for (size_t i = 0; i < n; i++) it->second.clear_pending(pages[i]);  // ns has its own copy now
  return TS_OK;
}

int CowStore::remove(uint64_t ns, const uint64_t *pages, size_t n) {
  stats_.removes.fetch_add(1, std::memory_order_relaxed);
  stats_.pages_removed.fetch_add(n, std::memory_order_relaxed);
  cancel_queued(ns, pages, n);
  if (layers_with_source_.load(std::memory_order_acquire) == 0) return below_->remove(ns, pages, n);
  std::unique_lock<std::shared_mutex> lk(mu_);
  int rc = copy_to_children(ns, pages, n);
  if (rc != TS_OK) return rc;
  auto it = layers_.find(ns);
  if (it != layers_.end())
    for (size_t i = 0; i < n; i++) it->second.clear_pending(pages[i]);  // freed: no longer the source's
  return below_->remove(ns, pages, n);
}

void CowStore::add_layer(uint64_t child, uint64_t source, std::vector<uint64_t> pending) {
  // Copy-on-write reads the stack's current copies: nothing may wait in the write-behind queue.
  // (Puts go straight through from here on; one queued meanwhile is drained below, under mu_.)
  drain();
  std::unique_lock<std::shared_mutex> lk(mu_);
  layers_with_source_.fetch_add(1, std::memory_order_acq_rel);
  lk.unlock();
  drain();
  lk.lock();
  Layer &c = layers_[child];
  c.source = source;
  c.has_source = true;
  c.pending = std::move(pending);
  c.npending = 0;
  for (uint64_t w : c.pending) c.npending += static_cast<uint64_t>(__builtin_popcountll(w));
  layers_[source].children.push_back(child);
}

void CowStore::drop_layer(uint64_t ns) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  auto it = layers_.find(ns);
  if (it == layers_.end()) return;
  // Children still pending on ns: copy what they still read from it.
  if (!it->second.children.empty()) {
    for (uint64_t child : std::vector<uint64_t>(it->second.children)) {
      auto c = layers_.find(child);
      if (c == layers_.end() || c->second.npending == 0) continue;
      std::vector<uint64_t> pend;
      for (size_t w = 0; w < c->second.pending.size(); w++) {
        uint64_t bits = c->second.pending[w];
        while (bits) {
          pend.push_back(w * 64 + static_cast<uint64_t>(__builtin_ctzll(bits)));
          bits &= bits - 1;
        }
      }
      for (size_t off = 0; off < pend.size(); off += 256)
        copy_to_children(ns, pend.data() + off, std::min<size_t>(256, pend.size() - off));
    }
  }
  it = layers_.find(ns);
  if (it == layers_.end()) return;
  if (it->second.has_source) {
    auto s = layers_.find(it->second.source);
    if (s != layers_.end()) {
      auto &ch = s->second.children;
      ch.erase(std::remove(ch.begin(), ch.end(), ns), ch.end());
      if (ch.empty() && !s->second.has_source) layers_.erase(s);
    }
    layers_with_source_.fetch_sub(1, std::memory_order_acq_rel);
  }
  // ns's children keep reading from ns's pages they already have copies of; their link to ns
  // (now empty of pending pages) is cut.
  for (uint64_t child : it->second.children) {
    auto c = layers_.find(child);
    if (c == layers_.end() || !c->second.has_source) continue;
    c->second.has_source = false;
    c->second.pending.clear();
    c->second.npending = 0;
    layers_with_source_.fetch_sub(1, std::memory_order_acq_rel);
  }
  layers_.erase(ns);
}

uint64_t CowStore::pending_pages(uint64_t ns) {
  std::shared_lock<std::shared_mutex> lk(mu_);
  auto it = layers_.find(ns);
  return it == layers_.end() ? 0 : it->second.npending;
}

}  // namespace tsrun
