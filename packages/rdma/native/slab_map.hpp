// The client's map of where pages live: (namespace id, slab index) -> Slab, and per slab its
// replicas (donor connection, remote address, key) and, per page, a state, a dirty mark and the
// CRC-32C of the bytes last written. Control-plane edits (JavaScript: add a slab or a replica,
// mark one dead, drop an empty slab) and the data path's lookups share it; the data path
// itself (rma, pool) reads and writes a Slab's per-page vectors under the Slab's io lock.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tsrdma {

constexpr int kMaxReplicas = 4;

enum PageState : uint8_t { kAbsent = 0, kPresent = 1, kLost = 2 };
enum ReplicaState : uint8_t { kNone = 0, kActive = 1, kSyncing = 2, kDead = 3 };

// Per-page fields are written by one batch at a time per page and read by others without a lock.
template <class T>
T load(const T &v) {
  return __atomic_load_n(&v, __ATOMIC_ACQUIRE);
}
template <class T>
void astore(T &v, T x) {
  __atomic_store_n(&v, x, __ATOMIC_RELEASE);
}

struct Replica {
  int32_t conn = -1;
  uint8_t state = kNone;
  uint64_t addr = 0;
  uint64_t rkey = 0;
  uint64_t slab_id = 0;  // the donor's id of the slab (for the control plane)
};

// A readers/writer lock with no thread affinity: a put batch may take it on the JS thread and
// release it on a worker that finished the batch (std::shared_mutex forbids that). Writers
// (replica copies, promotions) are preferred so that a stream of puts cannot starve them.
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
  // Without waiting (the JavaScript thread): false when the lock would block. m_ itself is only
  // ever held for a few instructions.
  bool try_lock_shared() {
    std::lock_guard<std::mutex> l(m_);
    if (writer_ || writers_waiting_ > 0) return false;
    readers_++;
    return true;
  }
  bool try_lock() {
    std::lock_guard<std::mutex> l(m_);
    if (writer_ || readers_ > 0) return false;
    writer_ = true;
    return true;
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
  // 1 = the page was last written with TS_PUT_DIRTY (newer than the tiers below): a promotion
  // (TS_PUT_PROMOTION, a copy read from below) must not replace it. Same discipline as state.
  std::vector<uint8_t> dirty;
  std::atomic<bool> touched{false};
  std::atomic<uint64_t> present{0};
  bool dropped = false;  // set under io (exclusive): the slab left the map; puts must not use it
};

struct SlabView {  // for JavaScript: what the map holds
  uint64_t ns, index;
  Replica reps[kMaxReplicas];
  uint64_t present;
};

class SlabMap {
 public:
  explicit SlabMap(uint64_t slab_pages) : slab_pages_(slab_pages) {}
  uint64_t slab_pages() const { return slab_pages_; }

  std::shared_ptr<Slab> find(uint64_t ns, uint64_t index);
  void add(uint64_t ns, uint64_t index, const std::vector<Replica> &reps);  // an existing slab is kept
  int add_replica(uint64_t ns, uint64_t index, const Replica &rep);         // syncing; returns slot or -1
  bool set_replica_state(uint64_t ns, uint64_t index, int slot, uint8_t state);
  // The next three hold the slab's io lock exclusively, which puts and replica copies hold
  // across network waits. With `busy` null they wait for it; otherwise (the JavaScript thread)
  // they only try, and set *busy and do nothing when it is taken (call again where waiting is
  // allowed: a job thread).
  bool drop_replica(uint64_t ns, uint64_t index, int slot, bool *busy = nullptr);
  // The slab lost every replica: `rep` replaces them; pages present become Lost. Returns them.
  std::vector<uint64_t> replace_lost(uint64_t ns, uint64_t index, const Replica &rep, bool *busy = nullptr);
  // Removes a slab that holds no page from the map; its replicas, or nothing if it is not empty.
  std::vector<Replica> drop_empty(uint64_t ns, uint64_t index, bool *busy = nullptr);
  std::vector<SlabView> views();
  // (connection, donor slab id) of every live replica of slabs touched since the last call.
  std::vector<std::pair<int32_t, uint64_t>> take_touched();
  // A connection was closed: every replica on it is dead.
  void mark_conn_dead(int32_t conn);
  // An RMA on this replica failed: it is dead (counted as a degradation once).
  void mark_replica_dead(Slab &s, int slot);
  // Degradations so far (replicas lost): the control plane repairs when it changes.
  uint64_t degraded_events() const { return degraded_.load(); }
  void count_degraded() { degraded_.fetch_add(1); }
  void clear();

 private:
  struct Key {
    uint64_t ns, index;
    bool operator==(const Key &o) const { return ns == o.ns && index == o.index; }
  };
  struct KeyHash {
    size_t operator()(const Key &k) const { return std::hash<uint64_t>()(k.ns * 0x9E3779B97F4A7C15ULL ^ k.index); }
  };

  const uint64_t slab_pages_;
  std::shared_mutex mu_;
  std::unordered_map<Key, std::shared_ptr<Slab>, KeyHash> map_;
  std::atomic<uint64_t> degraded_{0};
};

}  // namespace tsrdma
