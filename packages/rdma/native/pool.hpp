// The client side of the data plane: RdmaPoolTier's native core. It keeps, in native memory,
// the map page -> slab -> replicas (donor connection, remote address, key) and a CRC-32C per
// page, so that get/put can run entirely in native code from any thread (the page-store C ABI)
// or from a libuv worker for a JavaScript batch. JavaScript owns the control plane: it
// allocates slabs on donors, then tells this map about them (add_slab, add_replica, ...).
//
// Data path: every page of a batch is posted as one one-sided fi_read/fi_write (many in flight),
// then completions are reaped from one shared completion queue. Threads share that queue: any
// waiter dispatches whatever completions it reads to the batches they belong to (under cq_mu_).
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

#include "fabric.hpp"

namespace tsrdma {

constexpr int kMaxReplicas = 4;

enum PageState : uint8_t { kAbsent = 0, kPresent = 1, kLost = 2 };
enum ReplicaState : uint8_t { kNone = 0, kActive = 1, kSyncing = 2, kDead = 3 };

struct Replica {
  int32_t conn = -1;
  uint8_t state = kNone;
  uint64_t addr = 0;
  uint64_t rkey = 0;
  uint64_t slab_id = 0;  // the donor's id of the slab (for the control plane)
};

// A readers/writer lock with no thread affinity: a put batch may take it on the JS thread and
// release it on a worker that finished the batch (std::shared_mutex forbids that). Writers
// (replica copies) are preferred so that a stream of puts cannot starve them.
class IoLock {
 public:
  void lock_shared() {
    std::unique_lock<std::mutex> l(m_);
    cv_.wait(l, [this] { return !writer_ && writers_waiting_ == 0; });
    readers_++;
  }
  void unlock_shared() {
    std::lock_guard<std::mutex> l(m_);
    if (--readers_ == 0) cv_.notify_all();
  }
  void lock() {
    std::unique_lock<std::mutex> l(m_);
    writers_waiting_++;
    cv_.wait(l, [this] { return !writer_ && readers_ == 0; });
    writers_waiting_--;
    writer_ = true;
  }
  void unlock() {
    std::lock_guard<std::mutex> l(m_);
    writer_ = false;
    cv_.notify_all();
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int readers_ = 0;
  int writers_waiting_ = 0;
  bool writer_ = false;
};

struct Slab {
  // Puts hold it shared for their batch; copying a replica holds it exclusively per chunk so
  // that a concurrent put either lands before the chunk is copied or writes the new replica too.
  IoLock io;
  std::mutex reps_mu;  // guards reps[] (short critical sections)
  Replica reps[kMaxReplicas];
  std::vector<uint32_t> crc;
  std::vector<uint8_t> state;  // PageState per page (written under io shared + per page ownership)
  std::atomic<bool> touched{false};
  std::atomic<uint64_t> present{0};
  bool dropped = false;  // set under io (exclusive): the slab left the map; puts must not use it
};

struct Conn {
  fid_ep *ep = nullptr;
  fid_eq *eq = nullptr;      // MSG endpoints: connection events
  fid_av *av = nullptr;      // RDM endpoints: the donor's address
  fi_addr_t dest = 0;        // RDM: the donor in `av`; MSG: unused (0)
  std::shared_mutex use;  // posters hold it shared; closing holds it exclusively
  std::atomic<bool> up{false};
  bool closed = false;  // guarded by use (exclusive) and read under cq_mu_ by waiters
};

struct Op;

struct Batch {
  std::atomic<size_t> pending{0};
};

struct Op {
  fi_context2 ctx;  // must stay first: the CQ returns its address
  Batch *batch = nullptr;
  int32_t result = 1;  // 1 pending, 0 done, < 0 -errno
  int32_t conn = -1;
};

struct SlabKey {
  uint64_t ns, index;
  bool operator==(const SlabKey &o) const { return ns == o.ns && index == o.index; }
};
struct SlabKeyHash {
  size_t operator()(const SlabKey &k) const { return std::hash<uint64_t>()(k.ns * 0x9E3779B97F4A7C15ULL ^ k.index); }
};

class Pool;

// One batch in flight. It can be started on one thread (posting its operations), polled there
// for a short while, and finished on another (a libuv worker) if it takes longer: the JS path
// answers small batches without a thread hop when the donor is quick.
struct Job {
  bool write = false;
  uint64_t ns = 0;
  size_t n = 0;
  std::vector<uint64_t> pages;
  std::vector<void *> bufs;
  std::vector<int32_t> status;              // get: per-page result
  std::vector<std::shared_ptr<Slab>> slab;  // get: per page; put: the distinct slabs, io held shared
  std::vector<Slab *> page_slab;            // put: per page
  std::vector<uint8_t> tried, bad_crc;
  std::vector<int8_t> slot;
  std::vector<uint32_t> crc;
  std::unique_ptr<Op[]> ops;
  size_t nops = 0;
  Batch batch;
  int round = 0;
  size_t todo = 0;
  int rc = TS_OK;
  bool done = false;
  bool locked = false;
  bool counted = false;  // holds one of the pool's running-call counts
  std::vector<fid_mr *> mrs;  // local registrations (FI_MR_LOCAL providers)
  Pool *pool = nullptr;
  ~Job();
};

struct SlabView {  // for JavaScript: what the map holds
  uint64_t ns, index;
  Replica reps[kMaxReplicas];
  uint64_t present;
};

class Pool {
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
  void add_slab(uint64_t ns, uint64_t index, const std::vector<Replica> &reps);
  bool has_slab(uint64_t ns, uint64_t index);
  int add_replica(uint64_t ns, uint64_t index, const Replica &rep);  // syncing; returns slot or -1
  int copy_replica(uint64_t ns, uint64_t index, int slot, std::string &err);  // fills a syncing replica
  bool set_replica_state(uint64_t ns, uint64_t index, int slot, uint8_t state);
  bool drop_replica(uint64_t ns, uint64_t index, int slot);
  // The slab lost every replica: `rep` replaces them; pages present become Lost. Returns them.
  std::vector<uint64_t> replace_lost(uint64_t ns, uint64_t index, const Replica &rep);
  // Removes a slab that holds no page (present and lost both zero) from the map; returns its
  // replicas so the control plane can give them back, or nothing if it is not empty.
  std::vector<Replica> drop_empty_slab(uint64_t ns, uint64_t index);
  std::vector<SlabView> slabs();
  std::vector<std::pair<int32_t, uint64_t>> take_touched();
  uint64_t degraded_events() const { return degraded_.load(); }

  // The tier's backup (a PageStore that receives every write). The C ABI must honour it too:
  // with a JavaScript-only backup its put/remove answer TS_E_NO_SPACE (the caller takes the
  // JavaScript path, which writes both); with a native backup they write through to it and
  // get falls back to it for pages no replica can serve.
  void set_backup_js_only() { backup_mode_.store(1); }
  void set_backup_native(tierstack::StoreRef ref) {
    backup_ = std::move(ref);
    backup_mode_.store(2);
  }
  int abi_get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status);
  int abi_put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags);
  int abi_remove(uint64_t ns, const uint64_t *pages, size_t n);

  // Resumable batches: start (posts), then advance until done. deadline_ns = 0 waits as long
  // as it takes (with the donor timeout); otherwise advance returns false at the deadline.
  std::unique_ptr<Job> start_get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs);
  std::unique_ptr<Job> start_put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs);
  bool advance(Job &job, uint64_t deadline_ns);

  // Data path (any thread).
  int get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status);
  int put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags);
  int remove(uint64_t ns, const uint64_t *pages, size_t n);

 private:
  int connect_rdm(Conn *c, const std::string &raw_addr, std::string &err);
  std::shared_ptr<Slab> find(uint64_t ns, uint64_t index);
  Conn *conn(int32_t idx);
  // Posts one RMA op, progressing the CQ while the provider says EAGAIN. False when the
  // connection is down or the post failed for good (op->result set).
  bool post(bool write, Op &op, int32_t conn_idx, void *buf, size_t len, void *desc, uint64_t addr, uint64_t key);
  bool wait(Batch &b, Op *ops, size_t n, uint64_t deadline_ns = 0);
  void post_get_round(Job &job);
  void finish_get_round(Job &job);
  void finish_put(Job &job);
  void *local_desc(Job &job, const void *buf, size_t len);
  friend struct Job;
  void progress();  // reads and dispatches completions (takes cq_mu_)
  // Reads the CQ until it is empty (or blocks once for up to block_ms first) and completes the
  // operations it names. Called with cq_mu_ held.
  void dispatch_locked(int block_ms = 0);
  bool read_error_locked();  // dispatches one error entry; false if none is at the head
  void fail_closed_locked(Op *ops, size_t n, Batch &b);
  void mark_replica_dead(Slab &s, int slot);
  int transfer_one(bool write, const Replica &r, char *buf, size_t len, void *desc, uint64_t offset);
  int copy_chunk(Slab &s, int src, int dst, uint64_t first, uint64_t count, char *buf, void *desc);

  struct Call {  // counts running calls so close() can wait for them
    Pool &p;
    bool ok;
    explicit Call(Pool &pool);
    ~Call();
  };

  const uint32_t page_size_;
  const uint64_t slab_pages_;
  const uint32_t op_timeout_ms_;
  const std::string name_;
  std::string error_;
  std::string provider_;
  FabricDomain fd_;
  bool mr_local_ = false;
  fid_cq *cq_ = nullptr;
  bool cq_wait_ = false;  // the CQ has a wait object (fi_cq_sread)
  uint64_t spin_ns_ = 500 * 1000;
  std::mutex cq_mu_;
  std::atomic<uint64_t> close_epoch_{0};

  std::mutex conns_mu_;
  std::vector<std::unique_ptr<Conn>> conns_;

  std::shared_mutex map_mu_;
  std::unordered_map<SlabKey, std::shared_ptr<Slab>, SlabKeyHash> map_;

  std::atomic<int> refs_{1};
  std::atomic<bool> closed_{false};
  std::mutex calls_mu_;
  std::condition_variable calls_cv_;
  int calls_ = 0;
  std::atomic<uint64_t> degraded_{0};

  std::atomic<uint64_t> local_key_seq_{1ULL << 48};
  std::atomic<int> backup_mode_{0};
  tierstack::StoreRef backup_;
  ts_page_store store_{};
};

}  // namespace tsrdma
