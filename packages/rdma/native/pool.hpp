// The client side of the data plane: RdmaPoolTier's native core. get/put run entirely in native
// code from any thread (the page-store C ABI) or from a thread of its own for a JavaScript
// batch; JavaScript owns the control plane: it allocates slabs on donors, then tells the map
// about them (add_slab, add_replica, ...). The parts, each in a module of its own:
//   slab_map     page -> slab -> replicas, per-page state, dirty mark and CRC-32C
//   connections  the fabric/domain and one endpoint per donor; closing one safely
//   completions  the shared completion queue and the dispatch of what it reports
//   rma          posting one-sided reads/writes and waiting for them
//   replica_copy filling a new replica from a surviving one (pool member, replica_copy.cc)
//   staging      pre-registered bounce slots for FI_MR_LOCAL providers (verbs)
// This file: batches (a Job per get/put: post one op per page and replica, finish, retry reads
// on the next replica), the C ABI (with the backup tier), close.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <tierstack/page_store.hpp>

#include "completions.hpp"
#include "connections.hpp"
#include "fabric.hpp"
#include "rma.hpp"
#include "slab_map.hpp"
#include "staging.hpp"

namespace tsrdma {

class Pool;

// One batch in flight. It can be started on one thread (posting its operations), polled there
// for a short while, and finished on another (a job thread) if it takes longer: the JS path
// answers small batches without a thread hop when the donor is quick. Started on the
// JavaScript thread, it waits for nothing there: a post the provider refuses (EAGAIN) is left
// unposted (Op::result kOpUnposted, counted in `unposted`) and a slab lock that is taken stops
// the put's start (`start_pending`); advance() picks both up where waiting is allowed.
struct Job {
  bool write = false;
  uint32_t flags = 0;      // put: TS_PUT_DIRTY / TS_PUT_PROMOTION
  bool exclusive = false;  // put: slabs held exclusively (a promotion), else shared
  uint64_t ns = 0;
  size_t n = 0;
  std::vector<uint64_t> pages;
  std::vector<void *> bufs;
  std::vector<int32_t> status;              // get: per-page result
  std::vector<std::shared_ptr<Slab>> slab;  // get: per page; put: the distinct slabs, io held shared
  std::vector<Slab *> page_slab;            // put: per page
  std::vector<uint8_t> tried, bad_crc;
  std::vector<uint8_t> skip;  // put: a promotion left this page alone (a dirty copy is newer)
  std::vector<int8_t> slot;
  std::vector<uint32_t> crc;
  std::unique_ptr<Op[]> ops;
  size_t nops = 0;
  size_t ops_capacity = 0;  // ops kept across reuses (see Pool::recycle)
  Batch batch;
  int round = 0;
  size_t todo = 0;
  int rc = TS_OK;
  bool done = false;
  size_t nlocked = 0;          // put: slab[0..nlocked) have their io lock held
  bool start_pending = false;  // put: locks still to take (from slab[nlocked]), then the posts
  size_t unposted = 0;         // ops refused without waiting (result kOpUnposted), still to post
  bool counted = false;  // holds one of the pool's running-call counts
  LocalRegs regs;  // local registrations of the batch's buffers (FI_MR_LOCAL providers)
  std::vector<uint32_t> staged;     // FI_MR_LOCAL: a staging slot per page (empty: regs instead)
  StagingArena *arena = nullptr;    // where `staged` came from
  Pool *pool = nullptr;
  // Back to a fresh job's state, keeping the vectors' capacity: slabs unlocked, local
  // registrations and staging slots given back. The running-call count is the pool's business.
  void reset();
  // `count` ops, each as new (grows the kept array only when it is too small).
  void prepare_ops(size_t count);
  ~Job();
};

// Jobs are recycled by their pool, not freed: a batch then allocates nothing once the pool's
// jobs have grown to its size (the C ABI path runs on fault threads).
struct JobRecycler {
  void operator()(Job *job) const;
};
using JobPtr = std::unique_ptr<Job, JobRecycler>;

class Pool final : private ConnLoss {
 public:
  Pool(uint32_t page_size, uint64_t slab_pages, uint32_t op_timeout_ms, std::string name);
  ~Pool();

  bool open(const std::string &provider);
  const std::string &error() const { return error_; }
  ts_page_store *store() { return &store_; }
  uint32_t page_size() const { return page_size_; }

  // Lifetime of the C ABI object: the JS wrapper and every handle hold a reference.
  void retain() { refs_.fetch_add(1); }
  void release() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }
  void close();  // further calls return TS_E_CLOSED; waits for running calls

  // Control (JS thread or a worker).
  // MSG providers connect to node:service; RDM providers insert `raw_addr` (the donor's
  // fi_getname) into a per-donor address vector.
  int connect(int32_t idx, const std::string &node, const std::string &service, const std::string &raw_addr, std::string &err);
  void kill_conn(int32_t idx);
  bool conn_up(int32_t idx);
  // The slab map (see slab_map.hpp) for the control plane.
  SlabMap &map() { return map_; }
  void add_slab(uint64_t ns, uint64_t index, const std::vector<Replica> &reps) { map_.add(ns, index, reps); }
  bool has_slab(uint64_t ns, uint64_t index) { return map_.find(ns, index) != nullptr; }
  int copy_replica(uint64_t ns, uint64_t index, int slot, std::string &err);  // fills a syncing replica
  uint64_t degraded_events() const { return map_.degraded_events(); }

  // The tier's backup (a PageStore that receives every write). The C ABI must honour it too:
  // with a JavaScript-only backup its put/remove answer TS_E_NO_SPACE (the caller takes the
  // JavaScript path, which writes both); with a native backup they write through to it and
  // get falls back to it for pages no replica can serve.
  void set_backup_js_only() { backup_mode_.store(1); }
  void set_backup_native(tierstack::StoreRef ref) {
    backup_ = std::move(ref);
    backup_mode_.store(2);
  }
  // Refills `pages` of namespace id `ns` from a native backup (after their slab lost every
  // replica): no name needed, so namespaces written only through the C ABI are restored too.
  // Returns how many pages were restored, or a TS_E_* status (TS_E_UNSUPPORTED: no native backup).
  int restore_from_backup(uint64_t ns, const uint64_t *pages, size_t n);
  int abi_get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status);
  int abi_put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags);
  int abi_remove(uint64_t ns, const uint64_t *pages, size_t n);

  // Resumable batches: start (posts), then advance until done. may_wait false (the JavaScript
  // thread) never waits on a donor or on a lock held across network waits: what would wait is
  // left to advance(). advance with deadline_ns = 0 waits as long as it takes (posting what
  // is left with the spin-then-give-up policy, waiting with the donor timeout); otherwise it
  // waits for nothing and returns false at the deadline, the batch not finished.
  JobPtr start_get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, bool may_wait = true);
  JobPtr start_put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags = 0, bool may_wait = true);
  bool advance(Job &job, uint64_t deadline_ns);

  // What the JavaScript thread left to other threads (pool stats): ops whose post the provider
  // refused there (EAGAIN: a full transmit queue, a stopped or dead peer), and batches or
  // control calls that found a slab lock taken.
  uint64_t posts_deferred() const { return posts_deferred_.load(std::memory_order_relaxed); }
  uint64_t locks_deferred() const { return locks_deferred_.load(std::memory_order_relaxed); }
  void count_lock_deferred() { locks_deferred_.fetch_add(1, std::memory_order_relaxed); }

  // Data path (any thread).
  int get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status);
  int put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags);
  int remove(uint64_t ns, const uint64_t *pages, size_t n);

 private:
  // ConnLoss: the data path gave a donor up (rma.cc).
  void conn_lost(int32_t conn) override { kill_conn(conn); }
  // Conns that refused a post during one pass over a batch on a thread that may not wait: the
  // batch's further ops to them are left unposted without asking again.
  struct PostPass {
    bool may_wait;
    int nrefused = 0;
    int32_t refused[8];
    bool refuses(int32_t conn) const {
      for (int i = 0; i < nrefused; i++)
        if (refused[i] == conn) return true;
      return false;
    }
    void refused_by(int32_t conn) {
      if (nrefused < 8) refused[nrefused++] = conn;
    }
  };
  // Posts one op of the job (its transfer set, op.batch = the job's batch).
  void post_op(Job &job, Op &op, PostPass &pass);
  // Posts the job's unposted ops; true when none is left (always so when pass.may_wait).
  bool post_unposted(Job &job, PostPass &pass);
  void post_get_round(Job &job, bool may_wait);
  // The put's start from its slab locks on; false if a lock was taken and may_wait is false.
  bool resume_put(Job &job, bool may_wait);
  void finish_get_round(Job &job);
  void finish_put(Job &job);
  friend struct Job;
  friend struct JobRecycler;
  // A job from the kept ones (or a new one), counted as a running call unless the pool is closed.
  JobPtr new_job();
  // Takes a finished job back: reset, kept for the next batch (up to kKeptJobs), call count dropped.
  void recycle(Job *job);
  static constexpr size_t kKeptJobs = 64;
  std::vector<Job *> kept_jobs_;  // under calls_mu_
  int copy_chunk(Slab &s, int src, int dst, uint64_t first, uint64_t count, char *buf, void *desc);

  struct Call {  // counts running calls so close() can wait for them
    Pool &p;
    bool ok;
    explicit Call(Pool &pool);
    ~Call();
  };

  const uint32_t page_size_;
  const uint64_t slab_pages_;
  const std::string name_;
  std::string error_;
  SlabMap map_;
  CompletionQueue cq_;
  Connections conns_;
  Rma rma_;
  StagingArena staging_;

  std::atomic<uint64_t> posts_deferred_{0};
  std::atomic<uint64_t> locks_deferred_{0};

  std::atomic<int> refs_{1};
  std::atomic<bool> closed_{false};
  std::mutex calls_mu_;
  std::condition_variable calls_cv_;
  int calls_ = 0;

  std::atomic<uint64_t> local_key_seq_{1ULL << 48};
  std::atomic<int> backup_mode_{0};
  tierstack::StoreRef backup_;
  ts_page_store store_{};
};

}  // namespace tsrdma
