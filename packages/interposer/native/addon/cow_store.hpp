// CowStore: the page store `tierstack run`'s uffd engine serves from. It passes every call to
// the real tier stack (through a StackClient: native tiers on the calling thread, the rest through
// the batched JS path) and adds one thing: copy-on-write namespaces for fork().
//
// At a fork the parent's arena (namespace P) is snapshotted: the child gets namespace C whose
// "pending" pages (the ones P held at the fork) are read from P until the child writes or frees
// them. Before P's own copy of a page changes (P writes it back, frees it, or is released at
// exit), the old copy is first put into every child still pending on it. A child of a child works
// the same way (reads resolve through the chain). Without forks there is no locking and no extra
// work: every call goes straight to the stack.
//
// Write-behind: puts (the engine's write-backs of evicted dirty pages) are queued and written to
// the stack by a writer thread of their own, so that a fault thread never waits for a tier that
// is slow or only writable through the JS path (FileTier, Redis). Reads see the queued copies;
// a remove cancels queued writes of its pages and waits for one under way; the queue holds at most
// `max_queued_pages` (then put waits: back-pressure). While fork layers are live, puts are written
// straight through (the copy-on-write bookkeeping needs the stack's current copies).
#pragma once

#include <tierstack/page_store.h>
#include <tierstack/stack_client.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace tsrun {

class CowStore {
 public:
  CowStore(std::shared_ptr<tierstack::StackClient> below, uint32_t page_size, size_t max_queued_pages = 4096);
  ~CowStore();
  ts_page_store *store() { return &store_; }
  // Waits until every queued write is in the stack, or until writes fail (the queue keeps those
  // pages and retries); returns the last write error (TS_OK if none) and clears it. Off the JS
  // thread (the writer may wait for the JS path).
  int drain();
  // Tells the writer thread to finish (it exits once the queue is empty, or at once when the
  // stack's client is closed: what is left is then not written). Never blocks.
  void stop();

  // A child namespace whose pages marked in `pending` (a bitmap, 64 pages a word) read from
  // `source` until written or removed. Not on the JS thread (it may wait for calls using the
  // stack, which may wait for the JS thread).
  void add_layer(uint64_t child, uint64_t source, std::vector<uint64_t> pending);
  // Forgets a layer (its owner is gone). Children still pending on it get their pages copied
  // first (normally none are left: the owner's release removed its pages, which copied them).
  // Off the JS thread.
  void drop_layer(uint64_t ns);
  // Pages of `ns` still read from its source.
  uint64_t pending_pages(uint64_t ns);

  struct Stats {
    std::atomic<uint64_t> gets{0}, puts{0}, removes{0};
    std::atomic<uint64_t> pages_read{0}, pages_found{0}, pages_written{0}, pages_removed{0};
    std::atomic<uint64_t> native_pages{0}, js_pages{0};  // pages found by native tiers / by the JS path
    std::atomic<uint64_t> cow_reads{0}, cow_copies{0};    // reads resolved through a source; copies made for children
    std::atomic<uint64_t> errors{0};
    std::atomic<uint64_t> queued_writes{0}, queue_hits{0}, write_retries{0};  // write-behind
  };
  const Stats &stats() const { return stats_; }

  void retain() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

 private:
  struct Layer {
    uint64_t source = 0;
    bool has_source = false;
    std::vector<uint64_t> pending;  // bitmap
    uint64_t npending = 0;
    std::vector<uint64_t> children;
    bool is_pending(uint64_t p) const { return (p >> 6) < pending.size() && ((pending[p >> 6] >> (p & 63)) & 1); }
    void clear_pending(uint64_t p) {
      if ((p >> 6) < pending.size() && ((pending[p >> 6] >> (p & 63)) & 1)) {
        pending[p >> 6] &= ~(uint64_t{1} << (p & 63));
        npending--;
      }
    }
  };

  int get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status);
  int put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags);
  int remove(uint64_t ns, const uint64_t *pages, size_t n);
  // Reads from the stack, counting where pages came from.
  int below_get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status);
  // Under mu_ (shared or exclusive): the namespace page `p` of `ns` is really read from.
  uint64_t resolve(uint64_t ns, uint64_t p) const;
  // Under mu_ exclusive: before `ns`'s copies of `pages` change, children pending on them get the old copies.
  int copy_to_children(uint64_t ns, const uint64_t *pages, size_t n);

  static int op_get(void *self, uint64_t ns, const uint64_t *pages, size_t count, void *const *bufs, int32_t *status);
  static int op_put(void *self, uint64_t ns, const uint64_t *pages, size_t count, const void *const *bufs, uint32_t flags);
  static int op_remove(void *self, uint64_t ns, const uint64_t *pages, size_t count);
  static void op_retain(void *self);
  static void op_release(void *self);
  static const ts_page_store_ops kOps;

  // ---- write-behind ----
  struct WBatch {
    uint64_t ns;
    std::vector<uint64_t> pages;
    std::vector<uint8_t> data;
    std::vector<uint8_t> cancelled;
    uint32_t flags;
  };
  struct PendingRef {
    std::shared_ptr<WBatch> batch;
    size_t index;
  };
  struct KeyHash {
    size_t operator()(const std::pair<uint64_t, uint64_t> &k) const { return std::hash<uint64_t>()(k.first * 0x9e3779b97f4a7c15ull ^ k.second); }
  };
  static constexpr int kNotQueued = 1;  // queue_put: write it through instead
  int queue_put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags);
  // Copies queued pages into bufs (status FOUND); returns how many.
  size_t read_queued(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status);
  void cancel_queued(uint64_t ns, const uint64_t *pages, size_t n);
  void writer_main();
  const size_t max_queued_;
  std::mutex wq_mu_;
  std::condition_variable wq_work_, wq_space_, wq_idle_;
  std::deque<std::shared_ptr<WBatch>> wq_;
  std::vector<std::shared_ptr<WBatch>> writing_;  // the batches of the put under way
  static constexpr size_t kMergePages = 1024;
  std::unordered_map<std::pair<uint64_t, uint64_t>, PendingRef, KeyHash> queued_;
  size_t queued_pages_ = 0;
  std::vector<std::vector<uint8_t>> pool_;  // batch buffers to reuse
  std::atomic<size_t> queued_count_{0};  // queued_.size(), read without the lock on the fast path
  bool stopping_ = false;
  bool failing_ = false;  // the last write failed: no back-pressure until one succeeds
  int write_error_ = TS_OK;

  std::shared_ptr<tierstack::StackClient> below_;
  ts_page_store store_{};
  std::atomic<int> refs_{1};
  std::atomic<int> layers_with_source_{0};  // 0: no fork is live, no COW work or locking
  mutable std::shared_mutex mu_;
  std::unordered_map<uint64_t, Layer> layers_;
  Stats stats_;
};

}  // namespace tsrun
