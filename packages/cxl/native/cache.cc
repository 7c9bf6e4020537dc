#include "cache.hpp"

#include <cerrno>
#include <cstdio>
#include <cstring>

#include <sched.h>
#include <signal.h>
#include <unistd.h>

#include <tierstack/page_store.hpp>

namespace tscxl {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__)
  __builtin_ia32_pause();
#endif
}

template <typename T>
inline T load_relaxed(const T *p) {
  return __atomic_load_n(p, __ATOMIC_RELAXED);
}
template <typename T>
inline T load_acquire(const T *p) {
  return __atomic_load_n(p, __ATOMIC_ACQUIRE);
}
template <typename T>
inline void store_relaxed(T *p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
template <typename T>
inline void store_release(T *p, T v) {
  __atomic_store_n(p, v, __ATOMIC_RELEASE);
}

// How long a reader waits for a way that is being written before it looks at the writer.
constexpr unsigned kSpinRounds = 64;
constexpr unsigned kCheckOwnerEvery = 1024;
// A reader gives up (reports a miss) after this many rounds even if the writer seems alive.
constexpr unsigned kReaderMaxRounds = 1u << 22;

}  // namespace

uint32_t process_start_time(uint32_t pid, char *state, bool *exists) {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%u/stat", pid);
  FILE *f = std::fopen(path, "re");
  if (!f) {
    if (exists) *exists = errno != ENOENT;
    return 0;
  }
  char buf[1024];
  size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  buf[n] = 0;
  if (exists) *exists = true;
  // "pid (comm) state ppid ..." — comm may hold spaces and parentheses: parse after the last ')'.
  char *p = std::strrchr(buf, ')');
  if (!p) return 0;
  p += 2;  // state
  if (state) *state = *p;
  // starttime is field 22; the state is field 3.
  for (int field = 3; field < 22 && *p; p++)
    if (*p == ' ') field++;
  return uint32_t(std::strtoull(p, nullptr, 10));
}

Cache::Cache(const Region &region) : region_(region), crc_(region.header().page_size) {
  const Header &h = region.header();
  sets_ = region.base() + h.sets_offset;
  data_ = region.base() + h.data_offset;
  set_count_ = h.set_count;
  set_bytes_ = h.set_bytes;
  ways_ = h.ways;
  ways_off_ = ways_offset_in_set(h.ways);
  ns_offset_ = h.ns_offset;
  ns_entries_ = h.ns_entries;
  page_size_ = h.page_size;
  pid_ = uint32_t(getpid());
  lock_word_ = (uint64_t(process_start_time(pid_)) << 32) | pid_;
}

// ---- set locks ----

bool Cache::owner_dead(uint64_t word) const {
  uint32_t pid = uint32_t(word);
  if (pid == pid_) return false;  // another thread of this process: alive by definition
  if (kill(pid_t(pid), 0) != 0 && errno == ESRCH) return true;
  char state = 0;
  bool exists = false;
  uint32_t start = process_start_time(pid, &state, &exists);
  if (!exists) return true;
  if (state == 0) return false;  // cannot tell (no /proc access): assume alive
  if (state == 'Z' || state == 'X') return true;  // killed, not yet reaped
  return start != uint32_t(word >> 32);            // the pid was reused by another process
}

void Cache::lock_set(uint64_t s, uint64_t *steals) {
  uint64_t *lock = &head(s)->lock;
  uint64_t expected = 0;
  if (__atomic_compare_exchange_n(lock, &expected, lock_word_, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return;
  for (unsigned round = 1;; round++) {
    uint64_t cur = load_relaxed(lock);
    if (cur == 0) {
      if (__atomic_compare_exchange_n(lock, &cur, lock_word_, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) return;
      continue;
    }
    if (round < kSpinRounds)
      cpu_relax();
    else
      sched_yield();
    if (round % kCheckOwnerEvery == 0 && owner_dead(cur)) {
      // The owner died holding the lock: take it over, then undo what it left half-done.
      if (__atomic_compare_exchange_n(lock, &cur, lock_word_, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
        repair_set(s);
        if (steals) ++*steals;
        return;
      }
    }
  }
}

void Cache::unlock_set(uint64_t s) { store_release(&head(s)->lock, uint64_t(0)); }

void Cache::repair_set(uint64_t s) {
  SetHead *h = head(s);
  for (uint32_t w = 0; w < ways_; w++) {
    Way *wy = way(s, w);
    uint32_t seq = load_relaxed(&wy->seq);
    if (seq & 1) {  // caught mid-write: its bytes are neither the old nor the new page
      uint8_t f = __atomic_exchange_n(&h->flags[w], uint8_t(0), __ATOMIC_RELAXED);
      store_release(&wy->seq, seq + 1);
      if (f & kValid) add(kValidPages, uint64_t(-1));
      if ((f & (kValid | kDirty)) == (kValid | kDirty)) add(kDirtyPages, uint64_t(-1));
    }
  }
  if (load_relaxed(&h->hand) >= ways_) store_relaxed(&h->hand, 0u);
}

// ---- lookups ----

int Cache::find_way(uint64_t s, uint64_t ns, uint64_t page) const {
  const SetHead *h = head(s);
  const uint8_t tag = tag_of_hash(key_hash(ns, page));
  const uint8_t *t = tags(s);
  for (uint32_t w = 0; w < ways_; w++) {
    if (load_relaxed(&t[w]) != tag || !(load_relaxed(&h->flags[w]) & kValid)) continue;
    const Way *wy = way(s, w);
    if (load_relaxed(&wy->page) == page && load_relaxed(&wy->ns) == ns) return int(w);
  }
  return -1;
}

// Copies one page out with the seqlock protocol. Returns TS_PAGE_FOUND, TS_PAGE_MISS or TS_E_CHECKSUM.
// A miss after a torn copy zeroes the buffer rather than leave a mix of two pages in it.
int Cache::read_page(uint64_t s, uint64_t ns, uint64_t page, void *buf) {
  bool touched = false;
  int r = read_page_once(s, ns, page, buf, &touched);
  if (r != TS_PAGE_FOUND && touched) std::memset(buf, 0, page_size_);
  return r;
}

int Cache::read_page_once(uint64_t s, uint64_t ns, uint64_t page, void *buf, bool *touched) {
  SetHead *h = head(s);
  for (unsigned round = 0;; round++) {
    if (round > 0) {
      if (round > kReaderMaxRounds) return TS_PAGE_MISS;
      if (round < kSpinRounds) {
        cpu_relax();
      } else {
        sched_yield();
        if (round % kCheckOwnerEvery == 0) {
          uint64_t owner = load_relaxed(&h->lock);
          if (owner == 0 || owner_dead(owner)) return TS_PAGE_MISS;  // left mid-write by a dead writer
        }
      }
    }
    int w = find_way(s, ns, page);
    if (w < 0) return TS_PAGE_MISS;
    Way *wy = way(s, uint32_t(w));
    uint32_t s1 = load_acquire(&wy->seq);
    if (s1 & 1) continue;  // being written
    uint8_t f = load_relaxed(&h->flags[w]);
    bool same = (f & kValid) && load_relaxed(&wy->ns) == ns && load_relaxed(&wy->page) == page;
    uint32_t crc = load_relaxed(&wy->crc);
    uint32_t copied_crc = 0;
    if (same) {
      copied_crc = crc_.copy(buf, slot_data(s, uint32_t(w)));  // CRC of the bytes as copied
      *touched = true;
    }
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (load_relaxed(&wy->seq) != s1) continue;  // changed while we copied: try again
    if (!same) continue;                          // the way was reused since find_way: look again
    if (copied_crc != crc) return TS_E_CHECKSUM;
    if (!(f & kRef)) __atomic_fetch_or(&h->flags[w], kRef, __ATOMIC_RELAXED);
    return TS_PAGE_FOUND;
  }
}

int Cache::get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) {
  uint64_t hits = 0, misses = 0, bad = 0;
  for (size_t i = 0; i < n; i++) {
    int r = read_page(set_of(ns, pages[i], set_count_), ns, pages[i], bufs[i]);
    status[i] = r;
    if (r == TS_PAGE_FOUND)
      hits++;
    else if (r == TS_PAGE_MISS)
      misses++;
    else
      bad++;
  }
  add(kHits, hits);
  add(kMisses, misses + bad);
  add(kChecksumErrors, bad);
  return TS_OK;
}

// ---- writes ----

bool Cache::named(uint64_t ns) const { return namespace_name(ns, nullptr); }

// CLOCK over the ways of one set (lock held): a referenced way gets a second chance; a dirty
// way is reclaimable only when its data can be handed to a write-back sink.
int Cache::pick_victim(uint64_t s, bool may_evict_dirty) {
  SetHead *h = head(s);
  uint32_t hand = load_relaxed(&h->hand) % ways_;
  int victim = -1;
  for (uint32_t i = 0; i < 2 * ways_; i++) {
    uint32_t w = hand;
    hand = (hand + 1) % ways_;
    uint8_t f = load_relaxed(&h->flags[w]);
    if (!(f & kValid)) {
      victim = int(w);
      break;
    }
    if (f & kRef) {
      __atomic_fetch_and(&h->flags[w], uint8_t(~kRef), __ATOMIC_RELAXED);
      continue;
    }
    if ((f & kDirty) && !(may_evict_dirty && named(load_relaxed(&way(s, w)->ns)))) continue;
    victim = int(w);
    break;
  }
  store_relaxed(&h->hand, hand);
  return victim;
}

int Cache::put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags, EvictionOut *evict) {
  const bool dirty = (flags & TS_PUT_DIRTY) != 0;
  const uint8_t new_flags = uint8_t(kValid | kRef | (dirty ? kDirty : 0));
  uint64_t stored = 0, evictions = 0, dirty_evictions = 0, steals = 0, no_space = 0, bad_victims = 0;
  int64_t valid_delta = 0, dirty_delta = 0;
  for (size_t i = 0; i < n; i++) {
    const uint64_t page = pages[i];
    const uint64_t s = set_of(ns, page, set_count_);
    lock_set(s, &steals);
    SetHead *h = head(s);
    int target = find_way(s, ns, page);
    if (target >= 0 && (flags & TS_PUT_PROMOTION) && (load_relaxed(&h->flags[target]) & kDirty)) {
      // A copy from below must not replace a dirty copy: the dirty one is newer (it may have
      // been written through the C ABI while the promoted bytes were being read).
      unlock_set(s);
      stored++;
      continue;
    }
    if (target < 0) {
      for (uint32_t w = 0; w < ways_; w++)
        if (!(load_relaxed(&h->flags[w]) & kValid)) {
          target = int(w);
          break;
        }
    }
    if (target < 0) {
      const bool can_hand_out = evict != nullptr && evict->count < evict->capacity;
      target = pick_victim(s, can_hand_out);
      if (target < 0) {
        unlock_set(s);
        no_space++;
        continue;
      }
      evictions++;
      uint8_t vf = load_relaxed(&h->flags[target]);
      if (vf & kDirty) {
        // Hand the dirty victim to the caller's write-back path before its slot is reused.
        Way *vw = way(s, uint32_t(target));
        if (evict->data->capacity() == 0) evict->data->reserve(evict->capacity * uint64_t(page_size_));
        evict->data->resize((evict->count + 1) * uint64_t(page_size_));
        uint8_t *dst = evict->data->data() + evict->count * uint64_t(page_size_);
        if (crc_.copy(dst, slot_data(s, uint32_t(target))) == load_relaxed(&vw->crc)) {
          evict->ns[evict->count] = load_relaxed(&vw->ns);
          evict->pages[evict->count] = load_relaxed(&vw->page);
          evict->count++;
          dirty_evictions++;
        } else {
          evict->data->resize(evict->count * uint64_t(page_size_));
          bad_victims++;  // damaged in the region: never hand out wrong bytes
        }
      }
    }
    Way *wy = way(s, uint32_t(target));
    uint32_t seq = load_relaxed(&wy->seq);
    store_relaxed(&wy->seq, seq + 1);  // odd: readers keep off
    __atomic_thread_fence(__ATOMIC_RELEASE);
    store_relaxed(&wy->ns, ns);
    store_relaxed(&wy->page, page);
    store_relaxed(&tags(s)[target], tag_of_hash(key_hash(ns, page)));
    store_relaxed(&wy->crc, crc_.copy_to_region(slot_data(s, uint32_t(target)), bufs[i]));
    const uint8_t old_flags = __atomic_exchange_n(&h->flags[target], new_flags, __ATOMIC_RELAXED);
    valid_delta += (old_flags & kValid) ? 0 : 1;
    dirty_delta += (dirty ? 1 : 0) - ((old_flags & (kValid | kDirty)) == (kValid | kDirty) ? 1 : 0);
    store_release(&wy->seq, seq + 2);
    unlock_set(s);
    stored++;
  }
  add(kPuts, stored);
  add(kEvictions, evictions);
  add(kDirtyEvictions, dirty_evictions);
  add(kLockSteals, steals);
  add(kNoSpace, no_space);
  add(kValidPages, uint64_t(valid_delta));
  add(kDirtyPages, uint64_t(dirty_delta));
  add(kChecksumErrors, bad_victims);
  return no_space ? TS_E_NO_SPACE : TS_OK;
}

int Cache::remove(uint64_t ns, const uint64_t *pages, size_t n) {
  uint64_t removed = 0, dirty_removed = 0, steals = 0;
  for (size_t i = 0; i < n; i++) {
    const uint64_t s = set_of(ns, pages[i], set_count_);
    if (find_way(s, ns, pages[i]) < 0) continue;  // absent: nothing to lock for
    lock_set(s, &steals);
    int w = find_way(s, ns, pages[i]);
    if (w >= 0) {
      Way *wy = way(s, uint32_t(w));
      uint32_t seq = load_relaxed(&wy->seq);
      store_relaxed(&wy->seq, seq + 1);
      __atomic_thread_fence(__ATOMIC_RELEASE);
      const uint8_t old_flags = __atomic_exchange_n(&head(s)->flags[w], uint8_t(0), __ATOMIC_RELAXED);
      store_release(&wy->seq, seq + 2);
      removed++;
      if (old_flags & kDirty) dirty_removed++;
    }
    unlock_set(s);
  }
  add(kRemoves, removed);
  add(kLockSteals, steals);
  add(kValidPages, uint64_t(-int64_t(removed)));
  add(kDirtyPages, uint64_t(-int64_t(dirty_removed)));
  return TS_OK;
}

#ifdef TIERSTACK_TESTING
int Cache::abandon_put_for_test(uint64_t ns, uint64_t page, const void *buf) {
  const uint64_t s = set_of(ns, page, set_count_);
  lock_set(s, nullptr);
  int w = find_way(s, ns, page);
  if (w < 0) w = 0;
  Way *wy = way(s, uint32_t(w));
  store_relaxed(&wy->seq, load_relaxed(&wy->seq) + 1);
  __atomic_thread_fence(__ATOMIC_RELEASE);
  store_relaxed(&wy->ns, ns);
  store_relaxed(&wy->page, page);
  store_relaxed(&tags(s)[w], tag_of_hash(key_hash(ns, page)));
  __atomic_store_n(&head(s)->flags[w], uint8_t(kValid), __ATOMIC_RELAXED);
  std::memcpy(slot_data(s, uint32_t(w)), buf, page_size_ / 2);
  return TS_OK;  // no unlock, seq stays odd: the caller exits now
}
#endif

// ---- dirty pages ----

bool Cache::read_way(uint64_t s, uint32_t w, void *buf, uint64_t *ns, uint64_t *page, uint32_t *seq, bool *crc_ok) {
  SetHead *h = head(s);
  Way *wy = way(s, w);
  for (unsigned round = 0; round < 1024; round++) {
    if (round) sched_yield();
    uint32_t s1 = load_acquire(&wy->seq);
    if (s1 & 1) continue;
    uint8_t f = load_relaxed(&h->flags[w]);
    uint64_t k_ns = load_relaxed(&wy->ns), k_page = load_relaxed(&wy->page);
    uint32_t crc = load_relaxed(&wy->crc);
    uint32_t copied_crc = crc_.copy(buf, slot_data(s, w));
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    if (load_relaxed(&wy->seq) != s1) continue;
    if ((f & (kValid | kDirty)) != (kValid | kDirty)) return false;
    *ns = k_ns;
    *page = k_page;
    *seq = s1;
    *crc_ok = copied_crc == crc;
    return true;
  }
  return false;
}

size_t Cache::collect_dirty(uint64_t *cursor, size_t max, uint8_t *out, uint64_t *ns, uint64_t *pages, DirtyRef *refs,
                            uint64_t *unnamed, uint64_t *damaged) {
  size_t got = 0;
  uint64_t slot = *cursor;
  const uint64_t slots = slot_count();
  for (; slot < slots && got < max; slot++) {
    uint64_t s = slot / ways_;
    uint32_t w = uint32_t(slot % ways_);
    uint8_t f = load_relaxed(&head(s)->flags[w]);
    if ((f & (kValid | kDirty)) != (kValid | kDirty)) continue;
    bool crc_ok = false;
    uint32_t seq;
    if (!read_way(s, w, out + got * uint64_t(page_size_), &ns[got], &pages[got], &seq, &crc_ok)) continue;
    if (!crc_ok) {
      ++*damaged;
      continue;
    }
    if (!named(ns[got])) {  // written through the C ABI only: no process gave its name
      ++*unnamed;
      continue;
    }
    refs[got] = {slot, seq};
    got++;
  }
  *cursor = slot;
  return got;
}

size_t Cache::mark_clean(const DirtyRef *refs, size_t n) {
  size_t cleaned = 0;
  uint64_t steals = 0;
  for (size_t i = 0; i < n; i++) {
    uint64_t s = refs[i].slot / ways_;
    uint32_t w = uint32_t(refs[i].slot % ways_);
    if (s >= set_count_) continue;
    lock_set(s, &steals);
    if (load_relaxed(&way(s, w)->seq) == refs[i].seq) {
      uint8_t old_flags = __atomic_fetch_and(&head(s)->flags[w], uint8_t(~kDirty), __ATOMIC_RELAXED);
      if ((old_flags & (kValid | kDirty)) == (kValid | kDirty)) cleaned++;
    }
    unlock_set(s);
  }
  add(kLockSteals, steals);
  add(kDirtyPages, uint64_t(-int64_t(cleaned)));
  return cleaned;
}

Occupancy Cache::occupancy() const {
  Occupancy o;
  for (uint64_t s = 0; s < set_count_; s++) {
    const SetHead *h = head(s);
    if (load_relaxed(&h->lock)) o.locked_sets++;
    for (uint32_t w = 0; w < ways_; w++) {
      uint8_t f = load_relaxed(&h->flags[w]);
      if (f & kValid) {
        o.valid++;
        if (f & kDirty) o.dirty++;
      }
    }
  }
  return o;
}

void Cache::recover_after_reboot() {
  uint64_t valid = 0, dirty = 0;
  for (uint64_t s = 0; s < set_count_; s++) {
    SetHead *h = head(s);
    store_relaxed(&h->lock, uint64_t(0));
    for (uint32_t w = 0; w < ways_; w++) {
      Way *wy = way(s, w);
      uint32_t seq = load_relaxed(&wy->seq);
      if (seq & 1) {
        store_relaxed(&h->flags[w], uint8_t(0));
        store_relaxed(&wy->seq, seq + 1);
      }
      uint8_t f = load_relaxed(&h->flags[w]);
      if (f & kValid) {
        valid++;
        if (f & kDirty) dirty++;
      }
    }
    if (load_relaxed(&h->hand) >= ways_) store_relaxed(&h->hand, 0u);
  }
  __atomic_store_n(region_.counter(kValidPages), valid, __ATOMIC_RELAXED);
  __atomic_store_n(region_.counter(kDirtyPages), dirty, __ATOMIC_SEQ_CST);
}

// ---- namespace table ----

int Cache::register_namespace(uint64_t id, const char *name, size_t len) {
  if (len == 0 || len > kNsNameMax) return TS_E_BAD_ARGUMENT;
  NsEntry *t = ns_table();
  for (uint32_t i = 0; i < ns_entries_; i++) {
    NsEntry *e = &t[(id + i) % ns_entries_];
    uint32_t st = load_acquire(&e->state);
    if (st == kNsReady) {
      if (load_relaxed(&e->id) == id) return TS_OK;
      continue;
    }
    if (st == kNsWriting) continue;  // someone is filling it (or died doing so): skip it
    uint32_t expected = kNsEmpty;
    if (!__atomic_compare_exchange_n(&e->state, &expected, kNsWriting, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
      if (expected == kNsReady && load_relaxed(&e->id) == id) return TS_OK;
      continue;
    }
    store_relaxed(&e->id, id);
    e->len = uint16_t(len);
    std::memcpy(e->name, name, len);
    e->name[len] = 0;
    store_release(&e->state, kNsReady);
    return TS_OK;
  }
  return TS_E_NO_SPACE;
}

bool Cache::namespace_name(uint64_t id, std::string *name) const {
  const NsEntry *t = ns_table();
  for (uint32_t i = 0; i < ns_entries_; i++) {
    const NsEntry *e = &t[(id + i) % ns_entries_];
    uint32_t st = load_acquire(&e->state);
    if (st == kNsEmpty) return false;
    if (st != kNsReady || load_relaxed(&e->id) != id) continue;
    if (name) name->assign(e->name, e->len < kNsNameMax ? e->len : kNsNameMax);
    return true;
  }
  return false;
}

std::vector<std::pair<uint64_t, std::string>> Cache::namespaces() const {
  std::vector<std::pair<uint64_t, std::string>> out;
  const NsEntry *t = ns_table();
  for (uint32_t i = 0; i < ns_entries_; i++) {
    if (load_acquire(&t[i].state) != kNsReady) continue;
    out.emplace_back(t[i].id, std::string(t[i].name, t[i].len < kNsNameMax ? t[i].len : kNsNameMax));
  }
  return out;
}

}  // namespace tscxl
