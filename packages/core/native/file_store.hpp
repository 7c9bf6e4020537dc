// FileStore: the native read path of FileTier (src/file-tier.ts) behind the page-store C ABI.
//
// It reads the tier's on-disk layout directly, from any thread (uffd fault threads, ublk queue
// threads), with no JavaScript on the path:
//   <dir>/<ns dir>/<segment>.pages   page p of the segment at offset p * page_size
//   <dir>/<ns dir>/<segment>.meta    8 bytes per page: u32 CRC-32 (zlib), u32 PRESENT marker
// A page is FOUND only after its CRC-32 matched (tierstack::crc32, the value JS wrote with
// node:zlib); MISS when absent (no namespace, no segment file, short meta file, no PRESENT
// marker); TS_E_CHECKSUM on a mismatch that survives one re-read (the bytes are zeroed, never
// handed out); TS_E_CORRUPT when a present entry's data lies past the end of the data file.
//
// Writes stay in JavaScript: put()/remove() through the ABI answer TS_E_NO_SPACE, the ABI's
// "take the JavaScript path" answer (StackClient and RdmaPoolTier's backup write-through fall
// back on it), and createJsPath() routes writes of a stack whose tiers include a FileTier
// through JS (FileTier.nativeReadOnly).
//
// Concurrency
//  - Segment files are opened read-only on first use and kept in a bounded cache (CLOCK). An
//    entry is a shared_ptr: a reader holds its copy for the duration of its reads, so an fd
//    number is never closed (and reused) under a reader. invalidate() drops entries; a reader
//    that opened a file before an invalidation does not cache it (generation check), so after
//    JS unlinks a segment and invalidates, no fd of the deleted file is ever served from again.
//  - JS writes data before meta: a page being overwritten can read as a mismatch; it is re-read
//    once after a short pause before TS_E_CHECKSUM is reported.
//  - Pages a stack above has queued for writing here (TierStack write-back queues) are marked
//    pending from JS and answered as MISS, so the reader asks the stack's JS path, which serves
//    the queued (newer) copy, instead of this tier's older one.
//
// The hot path (segment cached) takes a shared lock, reads the meta entries of a run with one
// pread and the data with one preadv straight into the caller's buffers, and allocates nothing:
// its scratch is thread_local and grows to the largest batch seen.
#pragma once

#include <tierstack/store_adapter.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>

namespace tscore {

constexpr unsigned kSegmentShift = 18;  // 2^18 pages per segment (SEGMENT_PAGES in file-tier.ts)
constexpr uint64_t kSegmentPages = uint64_t(1) << kSegmentShift;
constexpr uint32_t kPresent = 0x50535431;  // PRESENT in file-tier.ts
constexpr size_t kMetaBytes = 8;

struct FileStoreStats {
  uint64_t get_calls, pages, found, misses, checksum_errors, corrupt, io_errors, rereads, segment_opens,
      segment_evictions, open_segments, pending_pages;
};

class FileStore {
 public:
  // `dir` absolute. Returned with one reference (the caller's).
  static FileStore *create(std::string dir, uint32_t page_size, std::string name, size_t max_open_segments);

  ts_page_store *abi() { return &abi_; }
  static FileStore *from(ts_page_store *s);  // nullptr if `s` is not a FileStore

  // ---- control (JS thread) ----
  void register_namespace(uint64_t id, const std::string &dir_name);
  // Drops cached files of segment `segment` of `ns`, or of every segment of `ns` when all = true.
  void invalidate(uint64_t ns, uint64_t segment, bool all);
  void mark_pending(uint64_t ns, const uint64_t *pages, size_t n, bool on);
  void close();
  FileStoreStats stats();

  // ---- C ABI (tierstack::page_store_ops<FileStore>) ----
  int get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status);
  // Writes stay in JavaScript (data, meta, checksums, hole punching, segment files): TS_E_NO_SPACE
  // is the ABI's "use the JavaScript path" answer, so every native caller falls back correctly.
  int put(uint64_t, const uint64_t *, size_t n, const void *const *, uint32_t) { return n == 0 ? TS_OK : TS_E_NO_SPACE; }
  int remove(uint64_t, const uint64_t *, size_t n) { return n == 0 ? TS_OK : TS_E_NO_SPACE; }
  void retain() { refs_.fetch_add(1, std::memory_order_relaxed); }
  void release() {
    if (refs_.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
  }

 private:
  struct Segment {
    int data_fd = -1;
    int meta_fd = -1;
    std::atomic<uint8_t> referenced{1};
    ~Segment();
  };
  using SegmentRef = std::shared_ptr<Segment>;
  struct Key {
    uint64_t ns, n;
    bool operator==(const Key &o) const { return ns == o.ns && n == o.n; }
  };
  struct KeyHash {
    size_t operator()(const Key &k) const {
      uint64_t x = k.ns ^ (k.n * 0x9e3779b97f4a7c15ULL);
      x ^= x >> 31;
      return static_cast<size_t>(x * 0xbf58476d1ce4e5b9ULL);
    }
  };
  struct Scratch;

  FileStore(std::string dir, uint32_t page_size, std::string name, size_t max_open_segments);
  ~FileStore() = default;

  // 1 = found (ref set), 0 = the segment does not exist (all its pages miss), < 0 = TS_E_*.
  int lookup(uint64_t ns, uint64_t segment, SegmentRef &ref);
  void serve_run(Scratch &s, uint64_t ns, const uint64_t *pages, void *const *bufs, int32_t *status, size_t at,
                 size_t count);
  int32_t reread(const Segment &seg, uint64_t off, void *buf);
  bool pending(uint64_t ns, uint64_t page);

  ts_page_store abi_{};
  const std::string dir_;
  const std::string name_;
  const uint32_t page_size_;
  const size_t max_open_;
  std::atomic<int> refs_{1};
  std::atomic<bool> closed_{false};

  std::shared_mutex mu_;  // segments_, names_, generation_
  std::unordered_map<Key, SegmentRef, KeyHash> segments_;
  std::unordered_map<uint64_t, std::string> names_;
  uint64_t generation_ = 0;

  std::mutex pending_mu_;
  std::unordered_set<Key, KeyHash> pending_;
  std::atomic<size_t> pending_count_{0};

  std::atomic<uint64_t> get_calls_{0}, pages_{0}, found_{0}, misses_{0}, checksum_errors_{0}, corrupt_{0},
      io_errors_{0}, rereads_{0}, segment_opens_{0}, segment_evictions_{0};
};

}  // namespace tscore
