// FileStore: see file_store.hpp.
#include "file_store.hpp"

#include <errno.h>
#include <fcntl.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <vector>

#include <tierstack/crc32.hpp>

namespace tscore {

namespace {

constexpr uint64_t kSegmentMask = kSegmentPages - 1;
constexpr size_t kMaxIov = 1024;                   // UIO_MAXIOV
constexpr size_t kMaxGapBytes = 64 << 10;          // read through gaps of up to 64 KiB between wanted pages
constexpr size_t kMaxRunPages = 4096;              // meta entries read at once (32 KiB)
constexpr uint64_t kMaxChainBytes = 64ull << 20;   // bytes per preadv
constexpr long kRereadPauseNs = 200 * 1000;        // a writer's data and meta pwrites are ~µs apart

// Internal per-entry states of a run (beside TS_PAGE_MISS / TS_PAGE_FOUND / TS_E_*).
constexpr int32_t kWant = 100;  // present: its data must be read
constexpr int32_t kRead = 101;  // data read, to verify
constexpr int32_t kDup = 102;   // the same page as the entry before it

ssize_t pread_full(int fd, void *buf, size_t len, uint64_t off) {
  size_t done = 0;
  while (done < len) {
    ssize_t r = ::pread(fd, static_cast<uint8_t *>(buf) + done, len - done, static_cast<off_t>(off + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    if (r == 0) break;
    done += static_cast<size_t>(r);
  }
  return static_cast<ssize_t>(done);
}

uint32_t load_u32(const uint8_t *p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;  // little-endian hosts only (x86-64, aarch64), like the JS side's readUInt32LE
}

}  // namespace

struct FileStore::Scratch {
  std::vector<uint32_t> order;  // batch indexes, sorted by page number
  std::vector<uint8_t> meta;    // the meta entries of one run
  std::vector<int32_t> st;      // per entry of a run
  std::vector<uint32_t> crc;
  std::vector<struct iovec> iov = std::vector<struct iovec>(kMaxIov);
  std::vector<uint8_t> discard;  // gap filler of a preadv
};

FileStore::Segment::~Segment() {
  if (data_fd >= 0) ::close(data_fd);
  if (meta_fd >= 0) ::close(meta_fd);
}

FileStore::FileStore(std::string dir, uint32_t page_size, std::string name, size_t max_open_segments)
    : dir_(std::move(dir)), name_(std::move(name)), page_size_(page_size), max_open_(std::max<size_t>(max_open_segments, 1)) {
  abi_ = tierstack::make_page_store(this, page_size_, name_.c_str());
}

FileStore *FileStore::create(std::string dir, uint32_t page_size, std::string name, size_t max_open_segments) {
  return new FileStore(std::move(dir), page_size, std::move(name), max_open_segments);
}

FileStore *FileStore::from(ts_page_store *s) { return tierstack::page_store_self<FileStore>(s); }

void FileStore::register_namespace(uint64_t id, const std::string &dir_name) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  auto it = names_.find(id);
  if (it != names_.end() && it->second == dir_name) return;
  names_[id] = dir_name;
  // Files cached under another directory name for this id are stale now.
  for (auto s = segments_.begin(); s != segments_.end();) s = s->first.ns == id ? segments_.erase(s) : std::next(s);
  generation_++;
}

void FileStore::invalidate(uint64_t ns, uint64_t segment, bool all) {
  std::unique_lock<std::shared_mutex> lk(mu_);
  generation_++;  // openers that started before this do not cache what they opened
  if (!all) {
    segments_.erase(Key{ns, segment});
    return;
  }
  for (auto s = segments_.begin(); s != segments_.end();) s = s->first.ns == ns ? segments_.erase(s) : std::next(s);
}

void FileStore::mark_pending(uint64_t ns, const uint64_t *pages, size_t n, bool on) {
  std::lock_guard<std::mutex> lk(pending_mu_);
  for (size_t i = 0; i < n; i++) {
    if (on)
      pending_.insert(Key{ns, pages[i]});
    else
      pending_.erase(Key{ns, pages[i]});
  }
  pending_count_.store(pending_.size(), std::memory_order_release);
}

bool FileStore::pending(uint64_t ns, uint64_t page) {
  std::lock_guard<std::mutex> lk(pending_mu_);
  return pending_.count(Key{ns, page}) != 0;
}

void FileStore::close() {
  closed_.store(true, std::memory_order_release);
  std::unique_lock<std::shared_mutex> lk(mu_);
  generation_++;
  segments_.clear();  // readers still holding a segment keep its fds until they let go
}

FileStoreStats FileStore::stats() {
  FileStoreStats s{};
  s.get_calls = get_calls_.load();
  s.pages = pages_.load();
  s.found = found_.load();
  s.misses = misses_.load();
  s.checksum_errors = checksum_errors_.load();
  s.corrupt = corrupt_.load();
  s.io_errors = io_errors_.load();
  s.rereads = rereads_.load();
  s.segment_opens = segment_opens_.load();
  s.segment_evictions = segment_evictions_.load();
  {
    std::shared_lock<std::shared_mutex> lk(mu_);
    s.open_segments = segments_.size();
  }
  s.pending_pages = pending_count_.load();
  return s;
}

int FileStore::lookup(uint64_t ns, uint64_t segment, SegmentRef &ref) {
  std::string path;
  uint64_t gen;
  {
    std::shared_lock<std::shared_mutex> lk(mu_);
    auto it = segments_.find(Key{ns, segment});
    if (it != segments_.end()) {
      ref = it->second;
      if (!ref->referenced.load(std::memory_order_relaxed)) ref->referenced.store(1, std::memory_order_relaxed);
      return 1;
    }
    auto nit = names_.find(ns);
    if (nit == names_.end()) return 0;  // a namespace this tier never heard of: nothing stored
    path.reserve(dir_.size() + nit->second.size() + 32);
    path.append(dir_).append("/").append(nit->second).append("/").append(std::to_string(segment));
    gen = generation_;
  }
  if (closed_.load(std::memory_order_acquire)) return TS_E_CLOSED;
  const size_t base = path.size();
  path.append(".meta");
  int meta_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (meta_fd < 0) return errno == ENOENT || errno == ENOTDIR ? 0 : TS_E_IO;
  path.resize(base);
  path.append(".pages");
  int data_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (data_fd < 0 && errno != ENOENT) {
    ::close(meta_fd);
    return TS_E_IO;
  }
  auto seg = std::make_shared<Segment>();
  seg->meta_fd = meta_fd;
  seg->data_fd = data_fd;  // -1: present entries are TS_E_CORRUPT (not cached: re-checked next time)
  segment_opens_.fetch_add(1, std::memory_order_relaxed);
  if (data_fd >= 0) {
    std::unique_lock<std::shared_mutex> lk(mu_);
    if (!closed_.load(std::memory_order_relaxed) && generation_ == gen) {
      auto [it, inserted] = segments_.try_emplace(Key{ns, segment}, seg);
      if (!inserted) {
        ref = it->second;  // another thread opened it meanwhile; ours closes when `seg` goes
        return 1;
      }
      if (segments_.size() > max_open_) {
        // CLOCK: clear reference bits until an unreferenced entry turns up; evict it.
        auto victim = segments_.end();
        for (int pass = 0; pass < 2 && victim == segments_.end(); pass++) {
          for (auto e = segments_.begin(); e != segments_.end(); ++e) {
            if (e->first == Key{ns, segment}) continue;
            if (e->second->referenced.exchange(0, std::memory_order_relaxed) == 0) {
              victim = e;
              break;
            }
          }
        }
        if (victim != segments_.end()) {
          segments_.erase(victim);
          segment_evictions_.fetch_add(1, std::memory_order_relaxed);
        }
      }
    }
  }
  ref = std::move(seg);
  return 1;
}

int32_t FileStore::reread(const Segment &seg, uint64_t off, void *buf) {
  rereads_.fetch_add(1, std::memory_order_relaxed);
  struct timespec pause = {0, kRereadPauseNs};
  nanosleep(&pause, nullptr);
  uint8_t m[kMetaBytes];
  ssize_t r = pread_full(seg.meta_fd, m, kMetaBytes, off * kMetaBytes);
  int32_t st;
  if (r < 0) {
    st = TS_E_IO;
  } else if (r < static_cast<ssize_t>(kMetaBytes) || load_u32(m + 4) != kPresent) {
    st = TS_PAGE_MISS;  // removed meanwhile
  } else {
    r = pread_full(seg.data_fd, buf, page_size_, off * page_size_);
    if (r < 0)
      st = TS_E_IO;
    else if (r < static_cast<ssize_t>(page_size_))
      st = TS_E_CORRUPT;
    else
      st = tierstack::crc32(buf, page_size_) == load_u32(m) ? TS_PAGE_FOUND : TS_E_CHECKSUM;
  }
  // Bytes that failed are never handed out (and a page removed under the read holds no torn bytes).
  if (st != TS_PAGE_FOUND) std::memset(buf, 0, page_size_);
  return st;
}

// Serves s.order[at .. at+count): pages of one segment, sorted, close enough together that one
// pread of their meta entries and one preadv of their data (through small gaps) cover them.
void FileStore::serve_run(Scratch &s, uint64_t ns, const uint64_t *pages, void *const *bufs, int32_t *status,
                          size_t at, size_t count) {
  const uint32_t *idx = s.order.data() + at;
  const uint64_t ps = page_size_;
  const uint64_t segment = pages[idx[0]] >> kSegmentShift;
  const uint64_t first = pages[idx[0]] & kSegmentMask;
  const uint64_t span = (pages[idx[count - 1]] & kSegmentMask) - first + 1;

  auto finish_all = [&](int32_t st) {
    for (size_t k = 0; k < count; k++) status[idx[k]] = st;
    if (st == TS_PAGE_MISS)
      misses_.fetch_add(count, std::memory_order_relaxed);
    else
      io_errors_.fetch_add(count, std::memory_order_relaxed);
  };

  SegmentRef seg;
  int lr = lookup(ns, segment, seg);
  if (lr <= 0) return finish_all(lr == 0 ? TS_PAGE_MISS : lr);

  if (s.meta.size() < span * kMetaBytes) s.meta.resize(span * kMetaBytes);
  ssize_t got = pread_full(seg->meta_fd, s.meta.data(), span * kMetaBytes, first * kMetaBytes);
  if (got < 0) return finish_all(TS_E_IO);

  // Which entries are present (their data to read), missing, or repeats of the one before.
  if (s.st.size() < count) {
    s.st.resize(count);
    s.crc.resize(count);
  }
  int32_t *st = s.st.data();
  const bool check_pending = pending_count_.load(std::memory_order_acquire) != 0;
  std::unique_lock<std::mutex> plk(pending_mu_, std::defer_lock);
  size_t want = 0;
  for (size_t k = 0; k < count; k++) {
    const uint64_t p = pages[idx[k]];
    if (k > 0 && p == pages[idx[k - 1]]) {
      st[k] = kDup;
      continue;
    }
    const uint64_t rel = (p & kSegmentMask) - first;
    const uint8_t *m = s.meta.data() + rel * kMetaBytes;
    if (static_cast<uint64_t>(got) < (rel + 1) * kMetaBytes || load_u32(m + 4) != kPresent) {
      st[k] = TS_PAGE_MISS;
      continue;
    }
    if (check_pending) {
      if (!plk.owns_lock()) plk.lock();
      if (pending_.count(Key{ns, p})) {  // a newer copy is on its way from the stack above
        st[k] = TS_PAGE_MISS;
        continue;
      }
    }
    st[k] = seg->data_fd >= 0 ? kWant : TS_E_CORRUPT;
    s.crc[k] = load_u32(m);
    want += st[k] == kWant;
  }
  if (plk.owns_lock()) plk.unlock();

  // Data: chains of wanted pages, each one preadv straight into the callers' buffers.
  if (want > 0) {
    const uint64_t max_gap_pages = kMaxGapBytes / ps;
    if (max_gap_pages > 0 && s.discard.size() < max_gap_pages * ps) s.discard.resize(max_gap_pages * ps);
    size_t iovn = 0, chain_k = 0;
    uint64_t chain_start = 0, chain_end = 0;
    auto flush = [&](size_t k_end) {
      const uint64_t expect = (chain_end - chain_start) * ps;
      ssize_t r;
      do {
        r = ::preadv(seg->data_fd, s.iov.data(), static_cast<int>(iovn), static_cast<off_t>(chain_start * ps));
      } while (r < 0 && errno == EINTR);
      for (size_t k = chain_k; k < k_end; k++) {
        if (st[k] != kWant) continue;
        if (r >= 0 && static_cast<uint64_t>(r) == expect) {
          st[k] = kRead;
          continue;
        }
        // Short (end of file) or failed: page by page tells which.
        const uint64_t off = pages[idx[k]] & kSegmentMask;
        ssize_t one = pread_full(seg->data_fd, bufs[idx[k]], ps, off * ps);
        st[k] = one < 0 ? TS_E_IO : static_cast<uint64_t>(one) < ps ? TS_E_CORRUPT : kRead;
      }
      iovn = 0;
    };
    for (size_t k = 0; k < count; k++) {
      if (st[k] != kWant) continue;
      const uint64_t off = pages[idx[k]] & kSegmentMask;
      if (iovn > 0) {
        const uint64_t gap = off - chain_end;
        if (gap > max_gap_pages || iovn + 2 > kMaxIov || (off + 1 - chain_start) * ps > kMaxChainBytes) flush(k);
      }
      if (iovn == 0) {
        chain_start = chain_end = off;
        chain_k = k;
      }
      if (off > chain_end) s.iov[iovn++] = {s.discard.data(), static_cast<size_t>((off - chain_end) * ps)};
      s.iov[iovn++] = {bufs[idx[k]], static_cast<size_t>(ps)};
      chain_end = off + 1;
    }
    if (iovn > 0) flush(count);

    for (size_t k = 0; k < count; k++) {
      if (st[k] != kRead) continue;
      void *buf = bufs[idx[k]];
      if (tierstack::crc32(buf, ps) == s.crc[k]) {
        st[k] = TS_PAGE_FOUND;
      } else {
        st[k] = reread(*seg, pages[idx[k]] & kSegmentMask, buf);  // a write may be under way: look again once
      }
    }
  }

  size_t found = 0, misses = 0;
  for (size_t k = 0; k < count; k++) {
    if (st[k] == kDup) {
      st[k] = st[k - 1];
      if (st[k] == TS_PAGE_FOUND) std::memcpy(bufs[idx[k]], bufs[idx[k - 1]], ps);
    }
    status[idx[k]] = st[k];
    if (st[k] == TS_PAGE_FOUND)
      found++;
    else if (st[k] == TS_PAGE_MISS)
      misses++;
    else if (st[k] == TS_E_CHECKSUM)
      checksum_errors_.fetch_add(1, std::memory_order_relaxed);
    else if (st[k] == TS_E_CORRUPT)
      corrupt_.fetch_add(1, std::memory_order_relaxed);
    else
      io_errors_.fetch_add(1, std::memory_order_relaxed);
  }
  found_.fetch_add(found, std::memory_order_relaxed);
  misses_.fetch_add(misses, std::memory_order_relaxed);
}

int FileStore::get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) {
  if (closed_.load(std::memory_order_acquire)) return TS_E_CLOSED;
  if (n == 0) return TS_OK;
  if (pages == nullptr || bufs == nullptr || status == nullptr || n > UINT32_MAX) return TS_E_BAD_ARGUMENT;
  thread_local Scratch s;
  if (s.order.size() < n) s.order.resize(n);
  uint32_t *order = s.order.data();
  std::iota(order, order + n, 0u);
  bool sorted = true;
  for (size_t i = 1; i < n && sorted; i++) sorted = pages[i - 1] <= pages[i];
  if (!sorted) std::sort(order, order + n, [&](uint32_t a, uint32_t b) { return pages[a] < pages[b] || (pages[a] == pages[b] && a < b); });

  get_calls_.fetch_add(1, std::memory_order_relaxed);
  pages_.fetch_add(n, std::memory_order_relaxed);
  const uint64_t max_gap_pages = kMaxGapBytes / page_size_;
  size_t i = 0;
  while (i < n) {
    const uint64_t p0 = pages[order[i]];
    const uint64_t segment = p0 >> kSegmentShift;
    size_t j = i + 1;
    while (j < n) {
      const uint64_t p = pages[order[j]], prev = pages[order[j - 1]];
      if (p >> kSegmentShift != segment || p - prev > max_gap_pages + 1 || p - p0 >= kMaxRunPages) break;
      j++;
    }
    serve_run(s, ns, pages, bufs, status, i, j - i);
    i = j;
  }
  return TS_OK;
}

}  // namespace tscore
