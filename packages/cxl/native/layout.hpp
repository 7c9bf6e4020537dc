// The on-region layout of a CXL tier. Everything a process needs to use the cache lives inside
// the mapped region, so any process that maps the same backing (devdax device, file, memfd
// passed by path) shares one cache:
//
//   [0, 4096)            Header: magic, version, geometry, creator, header checksum;
//                        then (not checksummed) the boot id of the last opener and the shared
//                        counters, one per cache line.
//   [ns_offset, ...)     Namespace table: ns_entries x NsEntry (namespace id -> UTF-8 name), so
//                        that a process can hand a dirty page of any namespace to its write-back sink.
//   [sets_offset, ...)   set_count x set record (set_bytes each, 64-byte aligned):
//                          SetHead { lock, hand, flags[ways], tags[ways] } then ways x Way { ns, page, seq, crc }.
//                        The index is set-associative: hash(ns, page) picks a set, the page lives in
//                        one of its `ways` slots. The set record IS the index: no separate table.
//   [data_offset, ...)   slot_count x page_size bytes; slot = set * ways + way.
//
// Concurrency (between threads and processes; no process-local lock guards shared state):
//   - Writers (put/remove/evict/flush-clean) take the set's lock: a CAS of 0 -> (start time << 32 | pid).
//     A lock whose owner died (kill -9) is stolen after checking the pid; the thief repairs the set
//     (ways caught mid-write are invalidated) before using it.
//   - Readers take no lock: a per-way seqlock (seq odd while being written) plus the page's
//     CRC-32C. A reader copies the page, then re-checks seq and the checksum; a torn copy is
//     retried, a page whose writer died mid-write is a miss, never wrong bytes.
//   - flags[w] bits: VALID, DIRTY (changed only by the lock holder, atomically) and REF (CLOCK's
//     reference bit, set by readers with an atomic OR, cleared by the hand).
#pragma once

#include <cstddef>
#include <cstdint>

namespace tscxl {

constexpr char kMagic[8] = {'T', 'S', 'C', 'X', 'L', 'R', 'G', '1'};
constexpr uint32_t kVersion = 1;
constexpr uint64_t kHeaderBytes = 4096;
constexpr uint32_t kMinWays = 4;
constexpr uint32_t kMaxWays = 64;
constexpr uint32_t kDefaultWays = 16;
constexpr uint32_t kDefaultNsEntries = 256;
constexpr uint32_t kNsNameMax = 255;

constexpr uint8_t kValid = 1;
constexpr uint8_t kDirty = 2;
constexpr uint8_t kRef = 4;

struct Header {
  char magic[8];
  uint32_t version;
  uint32_t header_bytes;
  uint32_t page_size;
  uint32_t ways;
  uint64_t set_count;
  uint64_t slot_count;
  uint64_t region_bytes;  // bytes of the backing the layout uses (<= the backing's size)
  uint64_t ns_offset;
  uint32_t ns_entries;
  uint32_t set_bytes;
  uint64_t sets_offset;
  uint64_t data_offset;
  uint64_t created_unix_ns;
  uint32_t creator_pid;
  uint32_t pid_namespace;  // inode of the creator's pid namespace: lock owners are pids of it
  char creator_host[64];
  uint32_t header_crc;  // CRC-32C of every byte above this field
  uint32_t pad;
};
static_assert(sizeof(Header) <= 512, "header must fit before the counters");

// Shared counters (hits, misses, ...), each on its own cache line so that processes updating
// different counters do not bounce one line. Updated once per batch, never per page.
enum Counter : unsigned {
  kHits,
  kMisses,
  kPuts,
  kRemoves,
  kEvictions,
  kDirtyEvictions,
  kChecksumErrors,
  kLockSteals,
  kNoSpace,
  kValidPages,  // occupancy, kept per batch (a scan in info() is exact; these can drift after a crash)
  kDirtyPages,
  kCounterCount
};
// Hash of the kernel boot id of the last process that opened the region (mutable, not
// checksummed). A region opened for the first time since a reboot cannot have live lock
// owners: the opener clears every set lock and repairs half-written ways (see Region::open).
constexpr uint64_t kBootIdOffset = 768;
constexpr uint64_t kCountersOffset = 1024;
constexpr uint64_t kCounterStride = 64;
static_assert(kCountersOffset + kCounterCount * kCounterStride <= kHeaderBytes, "counters fit the header page");

struct NsEntry {
  uint64_t id;
  uint32_t state;  // kNsEmpty -> kNsWriting (claimed by CAS) -> kNsReady
  uint16_t len;
  uint16_t pad;
  char name[256];
};
static_assert(sizeof(NsEntry) == 272, "namespace entry size is part of the format");
constexpr uint32_t kNsEmpty = 0, kNsWriting = 1, kNsReady = 2;

struct SetHead {
  uint64_t lock;  // 0 = free, else (owner start time low 32 bits << 32) | owner pid
  uint32_t hand;  // CLOCK hand (way index), moved by the lock holder only
  uint32_t pad;
  uint8_t flags[];  // [ways] flags, then [ways] tags (8 hash bits of the way's key: lookups
                    // compare a way's key only when its tag matches)
};

struct Way {
  uint64_t ns;
  uint64_t page;
  uint32_t seq;  // odd while the way is being written
  uint32_t crc;  // CRC-32C of the page
};
static_assert(sizeof(Way) == 24, "way record size is part of the format");

inline uint64_t align_up(uint64_t v, uint64_t a) { return (v + a - 1) / a * a; }

// Bytes of one set record: head + flags, then the ways (8-byte aligned), rounded to a cache line.
inline uint64_t set_record_bytes(uint32_t ways) {
  return align_up(align_up(sizeof(SetHead) + 2 * uint64_t(ways), 8) + uint64_t(ways) * sizeof(Way), 64);
}
inline uint64_t ways_offset_in_set(uint32_t ways) { return align_up(sizeof(SetHead) + 2 * uint64_t(ways), 8); }

// Index + metadata bytes per cached page (the set record amortised over its ways).
inline double index_bytes_per_page(uint32_t ways) { return double(set_record_bytes(ways)) / ways; }

// Page -> set: a 64-bit mix of (namespace id, page), then a multiply-shift into [0, sets).
inline uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}
inline uint64_t key_hash(uint64_t ns, uint64_t page) { return mix64(ns ^ mix64(page + 0x9e3779b97f4a7c15ULL)); }
inline uint64_t set_of_hash(uint64_t h, uint64_t sets) { return uint64_t((static_cast<unsigned __int128>(h) * sets) >> 64); }
inline uint8_t tag_of_hash(uint64_t h) { return uint8_t(h); }  // low bits: independent of the set (high bits)
inline uint64_t set_of(uint64_t ns, uint64_t page, uint64_t sets) { return set_of_hash(key_hash(ns, page), sets); }

}  // namespace tscxl
