// The page cache inside a mapped region: lookups, inserts with CLOCK replacement, removal,
// dirty-page collection, the namespace table and the shared counters. See layout.hpp for the
// concurrency protocol. Every method may run on any thread of any process at once.
#pragma once

#include <cstdint>
#include <vector>

#include "layout.hpp"
#include "page_crc.hpp"
#include "region.hpp"

namespace tscxl {

// Where put() copies the dirty pages it evicts (JS path). Capacity = pages of the batch.
struct EvictionOut {
  std::vector<uint8_t> *data = nullptr;  // grows by one page per victim (reserved on the first)
  uint64_t *ns = nullptr;
  uint64_t *pages = nullptr;
  size_t capacity = 0;
  size_t count = 0;
};

// One dirty page found by collect_dirty(): its slot and the seq it had when copied, so that
// mark_clean() clears the dirty bit only if the page did not change since.
struct DirtyRef {
  uint64_t slot;
  uint32_t seq;
};

struct Occupancy {
  uint64_t valid = 0;
  uint64_t dirty = 0;
  uint64_t locked_sets = 0;
};

class Cache {
 public:
  explicit Cache(const Region &region);

  uint32_t page_size() const { return page_size_; }
  uint64_t slot_count() const { return set_count_ * ways_; }
  const char *crc_kind() const { return crc_.kind(); }

  // page_store.h semantics. get(): status[i] = FOUND / MISS / TS_E_CHECKSUM.
  int get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status);
  // Dirty victims go to `evict` when given (JS path: their namespace must be named in the
  // namespace table, else they are skipped like on the C ABI path); with no `evict` they are
  // skipped. A page with no reclaimable way is not stored and the call returns TS_E_NO_SPACE
  // after trying every page.
  int put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags, EvictionOut *evict);
  int remove(uint64_t ns, const uint64_t *pages, size_t n);

  // Namespace table: id -> name, append-only.
  int register_namespace(uint64_t id, const char *name, size_t len);
  bool namespace_name(uint64_t id, std::string *name) const;
  std::vector<std::pair<uint64_t, std::string>> namespaces() const;

  // Copies up to `max` dirty pages starting at slot `*cursor` into out/ns/pages/refs; advances
  // *cursor (== slot_count() when the scan is done). Returns the number copied. Dirty pages it
  // cannot hand out are counted: `*unnamed` (namespace not in the table), `*damaged` (bad CRC).
  size_t collect_dirty(uint64_t *cursor, size_t max, uint8_t *out, uint64_t *ns, uint64_t *pages, DirtyRef *refs,
                       uint64_t *unnamed, uint64_t *damaged);
  // Clears the dirty bit of each page that still holds the version collect_dirty() saw.
  size_t mark_clean(const DirtyRef *refs, size_t n);

  Occupancy occupancy() const;
  // After a reboot (no process can hold a lock any more): clears every set lock, invalidates
  // ways left mid-write and recounts the occupancy counters. Only while no other process uses
  // the region (Region::open holds the backing's flock).
  void recover_after_reboot();
  uint64_t counter(Counter c) const { return __atomic_load_n(region_.counter(c), __ATOMIC_RELAXED); }

  // Test hook: starts writing `page` like put() does and stops half-way, leaving the set
  // locked and the way mid-write, as a process killed at that moment would.
#ifdef TIERSTACK_TESTING
  int abandon_put_for_test(uint64_t ns, uint64_t page, const void *buf);  // tierstack_cxl_testing only
#endif

 private:
  uint8_t *set_base(uint64_t s) const { return sets_ + s * set_bytes_; }
  SetHead *head(uint64_t s) const { return reinterpret_cast<SetHead *>(set_base(s)); }
  uint8_t *tags(uint64_t s) const { return head(s)->flags + ways_; }
  Way *way(uint64_t s, uint32_t w) const { return reinterpret_cast<Way *>(set_base(s) + ways_off_) + w; }
  uint8_t *slot_data(uint64_t s, uint32_t w) const { return data_ + (s * ways_ + w) * uint64_t(page_size_); }
  NsEntry *ns_table() const { return reinterpret_cast<NsEntry *>(region_.base() + ns_offset_); }

  void lock_set(uint64_t s, uint64_t *steals);
  void unlock_set(uint64_t s);
  void repair_set(uint64_t s);
  bool owner_dead(uint64_t lock_word) const;
  int find_way(uint64_t s, uint64_t ns, uint64_t page) const;
  int read_page(uint64_t s, uint64_t ns, uint64_t page, void *buf);
  int read_page_once(uint64_t s, uint64_t ns, uint64_t page, void *buf, bool *touched);
  bool read_way(uint64_t s, uint32_t w, void *buf, uint64_t *ns, uint64_t *page, uint32_t *seq, bool *crc_ok);
  int pick_victim(uint64_t s, bool may_evict_dirty);
  bool named(uint64_t ns) const;
  void add(Counter c, uint64_t v) {
    if (v) __atomic_fetch_add(region_.counter(c), v, __ATOMIC_RELAXED);
  }

  const Region &region_;
  uint8_t *sets_;
  uint8_t *data_;
  uint64_t set_count_;
  uint64_t set_bytes_;
  uint64_t ways_off_;
  uint64_t ns_offset_;
  uint32_t ns_entries_;
  uint32_t ways_;
  uint32_t page_size_;
  uint64_t lock_word_;  // this process's lock owner word
  PageCrc crc_;
  uint32_t pid_;
};

// The low 32 bits of a process's start time (clock ticks since boot), from /proc/<pid>/stat;
// with the pid it names a process uniquely even when pids are reused. 0 if unknown.
uint32_t process_start_time(uint32_t pid, char *state = nullptr, bool *exists = nullptr);

}  // namespace tscxl
