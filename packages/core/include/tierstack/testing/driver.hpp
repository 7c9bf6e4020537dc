// Drivers that call a page store from native threads, as a front-end's threads do: the one set
// every package's tests and benchmarks use (through @tierstack/core/testing), for any target
// with the page-store shape:
//
//   uint32_t page_size();
//   int get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status, uint8_t *level);
//   int put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags);
//   int remove(uint64_t ns, const uint64_t *pages, size_t n);
//   int flush();
//
// HandleTarget wraps a ts_page_store (a tier's C ABI handle); core's testing addon adds one for a
// StackClient (a whole stack as a front-end sees it, where `level` says which tier served a page).
//
//  - drive():     a benchmark loop: `calls` batches over a page sequence, timed (wall and thread
//                 CPU), optionally with per-call latencies.
//  - run_ops():   one operation over a page list from many threads (pages split between them, or
//                 every thread doing all), with every page read checked against the pattern.
//  - stress():    threads doing random puts/gets/removes of random batch sizes over one shared
//                 span of pages; every page read must be a whole page of the right key.
//  - read_into(): threads reading batches of a page list into the caller's buffers.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "../clock.hpp"
#include "../page_store.hpp"
#include "pattern.hpp"

namespace tierstack {
namespace testing {

struct HandleTarget {
  StoreRef store;
  uint32_t page_size() const { return store->page_size; }
  int get(uint64_t ns, const uint64_t *p, size_t n, void *const *b, int32_t *st, uint8_t *level) const {
    int rc = store.get_pages(ns, p, n, b, st);
    if (level)
      for (size_t i = 0; i < n; i++) level[i] = 0;
    return rc;
  }
  int put(uint64_t ns, const uint64_t *p, size_t n, const void *const *b, uint32_t flags) const {
    return store.put_pages(ns, p, n, b, flags);
  }
  int remove(uint64_t ns, const uint64_t *p, size_t n) const { return store.remove_pages(ns, p, n); }
  int flush() const { return TS_OK; }
};

enum class Op : uint8_t { kGet, kPut, kRemove, kFlush };

inline bool parse_op(const std::string &s, Op *op) {
  if (s == "get") *op = Op::kGet;
  else if (s == "put") *op = Op::kPut;
  else if (s == "remove") *op = Op::kRemove;
  else if (s == "flush") *op = Op::kFlush;
  else return false;
  return true;
}

// ---- drive: the benchmark loop ----

struct DriveSpec {
  Op op = Op::kGet;          // kGet, kPut or kRemove
  const double *pages = nullptr;  // the sequence to walk (a Float64Array's data: read in the loop)
  size_t count = 0;
  uint32_t batch = 1;
  uint64_t calls = 1;
  size_t start = 0;          // where in `pages` to begin (successive calls can walk the whole sequence)
  bool latencies = false;    // per-call wall latencies (ns)
  uint32_t flags = 0;        // put flags
  uint8_t fill = 0x5a;       // put: every byte of every page
};

struct DriveResult {
  int status = TS_OK;   // the first failed call's status (the loop stops there)
  uint64_t misses = 0;  // get: pages not TS_PAGE_FOUND
  uint64_t calls = 0;   // calls made
  uint64_t wall_ns = 0, cpu_ns = 0;
  std::vector<double> latencies;
};

template <class Target>
DriveResult drive(const Target &t, uint64_t ns, const DriveSpec &s) {
  DriveResult r;
  const size_t ps = t.page_size();
  std::vector<uint8_t> scratch(size_t(s.batch) * ps, s.fill);
  std::vector<void *> bufs(s.batch);
  for (uint32_t k = 0; k < s.batch; k++) bufs[k] = scratch.data() + k * ps;
  std::vector<uint64_t> batch(s.batch);
  std::vector<int32_t> status(s.batch);
  if (s.latencies) r.latencies.reserve(s.calls);
  size_t cursor = s.count ? s.start % s.count : 0;
  const uint64_t w0 = now_ns(), c0 = thread_cpu_ns();
  for (; r.calls < s.calls; r.calls++) {
    for (uint32_t k = 0; k < s.batch; k++) {
      batch[k] = uint64_t(s.pages[cursor]);
      cursor = cursor + 1 == s.count ? 0 : cursor + 1;
    }
    uint64_t t0 = s.latencies ? now_ns() : 0;
    int rc;
    if (s.op == Op::kPut) {
      rc = t.put(ns, batch.data(), s.batch, const_cast<const void *const *>(bufs.data()), s.flags);
    } else if (s.op == Op::kRemove) {
      rc = t.remove(ns, batch.data(), s.batch);
    } else {
      rc = t.get(ns, batch.data(), s.batch, bufs.data(), status.data(), nullptr);
      if (rc == TS_OK)
        for (uint32_t k = 0; k < s.batch; k++) r.misses += status[k] != TS_PAGE_FOUND;
    }
    if (s.latencies) r.latencies.push_back(double(now_ns() - t0));
    if (rc != TS_OK) {
      r.status = rc;
      break;
    }
  }
  r.cpu_ns = thread_cpu_ns() - c0;
  r.wall_ns = now_ns() - w0;
  return r;
}

// ---- run_ops: one operation, many threads, every read checked ----

enum class Split : uint8_t {
  kRange,  // thread t takes the t-th contiguous share of the pages
  kDeal,   // batches are dealt round-robin: thread t takes batches t, t + threads, ...
  kAll,    // every thread does every batch
};

struct OpsSpec {
  Op op = Op::kGet;
  std::vector<uint64_t> pages;
  uint32_t threads = 1, batch = 1, rounds = 1;
  Split split = Split::kRange;
  uint64_t version = 0;                // put: the pattern version written
  std::vector<uint64_t> versions;      // get: the versions a found page may hold (empty: not checked)
  uint32_t flags = TS_PUT_DIRTY;       // put flags
};

struct OpsResult {
  std::atomic<uint64_t> found{0}, misses{0}, mismatches{0}, checksum{0}, errors{0};
  std::atomic<uint64_t> by_level[8] = {};
  std::atomic<int> last_error{0};
};

template <class Target>
void run_ops(const Target &t, uint64_t ns, const OpsSpec &s, OpsResult &r) {
  const uint32_t threads = std::max(1u, s.threads), batch = std::max(1u, s.batch);
  const size_t ps = t.page_size();
  auto worker = [&](uint32_t id) {
    std::vector<uint8_t> data(size_t(batch) * ps), scratch(ps);
    std::vector<void *> bufs(batch);
    std::vector<int32_t> st(batch);
    std::vector<uint8_t> level(batch);
    for (uint32_t i = 0; i < batch; i++) bufs[i] = data.data() + size_t(i) * ps;
    size_t from = 0, to = s.pages.size(), step = batch;
    if (s.split == Split::kRange) {
      size_t share = (s.pages.size() + threads - 1) / threads;
      from = std::min(s.pages.size(), size_t(id) * share);
      to = std::min(s.pages.size(), from + share);
    } else if (s.split == Split::kDeal) {
      from = size_t(id) * batch;
      step = size_t(threads) * batch;
    }
    auto fail = [&](int rc) {
      r.errors++;
      r.last_error = rc;
    };
    for (uint32_t round = 0; round < std::max(1u, s.rounds); round++) {
      if (s.op == Op::kFlush) {
        int rc = t.flush();
        if (rc != TS_OK) fail(rc);
        continue;
      }
      for (size_t at = from; at < to; at += step) {
        size_t n = std::min<size_t>(batch, to - at);
        const uint64_t *p = s.pages.data() + at;
        int rc = TS_OK;
        if (s.op == Op::kPut) {
          for (size_t i = 0; i < n; i++) fill_page(data.data() + i * ps, ps, ns, p[i], s.version);
          rc = t.put(ns, p, n, const_cast<const void *const *>(bufs.data()), s.flags);
        } else if (s.op == Op::kRemove) {
          rc = t.remove(ns, p, n);
        } else {
          rc = t.get(ns, p, n, bufs.data(), st.data(), level.data());
          if (rc == TS_OK) {
            for (size_t i = 0; i < n; i++) {
              if (st[i] == TS_PAGE_MISS) {
                r.misses++;
              } else if (st[i] == TS_PAGE_FOUND) {
                r.found++;
                r.by_level[std::min<uint8_t>(level[i], 7)]++;
                if (s.versions.empty()) continue;
                bool ok = false;
                for (uint64_t v : s.versions) ok = ok || page_matches(data.data() + i * ps, ps, ns, p[i], v, scratch);
                if (!ok) r.mismatches++;
              } else if (st[i] == TS_E_CHECKSUM) {
                r.checksum++;
              } else {
                fail(st[i]);
              }
            }
          }
        }
        if (rc != TS_OK) fail(rc);
      }
    }
  };
  std::vector<std::thread> ts;
  for (uint32_t id = 0; id < threads; id++) ts.emplace_back(worker, id);
  for (auto &th : ts) th.join();
}

// ---- stress: random mixed traffic over shared pages ----

struct StressSpec {
  uint32_t threads = 4;
  uint64_t ops = 1000;       // per thread
  uint64_t span = 1024;      // pages 0..span-1, shared by every thread
  uint32_t max_batch = 8;
  uint32_t dirty_every = 4;  // 1 put in N is TS_PUT_DIRTY (0: never)
  uint32_t remove_every = 0; // 1 op in N is a remove (0: never)
  uint64_t seed = 1;
};

struct StressResult {
  std::atomic<uint64_t> puts{0}, gets{0}, hits{0}, removes{0}, mismatches{0}, errors{0}, no_space{0};
  std::atomic<uint64_t> checksum{0};  // pages answered TS_E_CHECKSUM (bytes withheld), not in `errors`
  std::atomic<int> last_error{0};
};

template <class Target>
void stress(const Target &t, uint64_t ns, const StressSpec &s, StressResult &r) {
  const size_t ps = t.page_size();
  const uint32_t max_batch = std::max(1u, s.max_batch);
  auto worker = [&](uint32_t id) {
    std::vector<uint8_t> data(size_t(max_batch) * ps), scratch(ps);
    std::vector<void *> bufs(max_batch);
    for (uint32_t k = 0; k < max_batch; k++) bufs[k] = data.data() + size_t(k) * ps;
    std::vector<uint64_t> pages(max_batch);
    std::vector<int32_t> st(max_batch);
    uint64_t x = (0x2545f4914f6cdd1dULL * (id + 1)) ^ (s.seed * 0x9e3779b97f4a7c15ULL);
    if (x == 0) x = 1;
    auto rnd = [&x]() {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      return x;
    };
    uint64_t version = uint64_t(id + 1) << 32;  // unique per writer
    uint64_t puts = 0, gets = 0, hits = 0, removes = 0, bad = 0, errors = 0, no_space = 0, checksum = 0;
    int last = 0;
    for (uint64_t op = 0; op < s.ops; op++) {
      size_t n = 1 + rnd() % max_batch;
      for (size_t k = 0; k < n; k++) pages[k] = rnd() % std::max<uint64_t>(1, s.span);
      uint64_t pick = rnd();
      if (s.remove_every && pick % s.remove_every == 0) {
        int rc = t.remove(ns, pages.data(), n);
        if (rc != TS_OK) errors++, last = rc;
        removes += n;
      } else if ((pick >> 8) & 1) {
        for (size_t k = 0; k < n; k++) fill_page(data.data() + k * ps, ps, ns, pages[k], ++version);
        uint32_t flags = s.dirty_every && (pick >> 16) % s.dirty_every == 0 ? TS_PUT_DIRTY : 0;
        int rc = t.put(ns, pages.data(), n, const_cast<const void *const *>(bufs.data()), flags);
        if (rc == TS_E_NO_SPACE) no_space++;
        else if (rc != TS_OK) errors++, last = rc;
        puts += n;
      } else {
        int rc = t.get(ns, pages.data(), n, bufs.data(), st.data(), nullptr);
        if (rc != TS_OK) {
          errors++, last = rc;
          continue;
        }
        gets += n;
        for (size_t k = 0; k < n; k++) {
          if (st[k] == TS_PAGE_FOUND) {
            hits++;
            if (page_version(data.data() + k * ps, ps, ns, pages[k], scratch) < 0) bad++;
          } else if (st[k] == TS_E_CHECKSUM) {
            checksum++;
          } else if (st[k] < 0) {
            errors++, last = st[k];
          }
        }
      }
    }
    r.puts += puts;
    r.gets += gets;
    r.hits += hits;
    r.removes += removes;
    r.mismatches += bad;
    r.errors += errors;
    r.no_space += no_space;
    r.checksum += checksum;
    if (last) r.last_error = last;
  };
  std::vector<std::thread> ts;
  for (uint32_t id = 0; id < std::max(1u, s.threads); id++) ts.emplace_back(worker, id);
  for (auto &th : ts) th.join();
}

// ---- read_into: many threads reading into the caller's buffers ----

// Thread k reads batches k, k + threads, ... of `pages` into out (page i at i * page_size) and
// its statuses into status[i]. Returns TS_OK or the status of a failed call.
template <class Target>
int read_into(const Target &t, uint64_t ns, const std::vector<uint64_t> &pages, uint8_t *out, int32_t *status,
              uint32_t batch, uint32_t threads) {
  batch = std::max(1u, batch);
  threads = std::max(1u, threads);
  const size_t ps = t.page_size();
  std::atomic<int> result{TS_OK};
  std::vector<std::thread> ts;
  for (uint32_t k = 0; k < threads; k++)
    ts.emplace_back([&, k] {
      std::vector<void *> bufs(batch);
      for (size_t start = size_t(k) * batch; start < pages.size(); start += size_t(threads) * batch) {
        size_t n = std::min<size_t>(batch, pages.size() - start);
        for (size_t i = 0; i < n; i++) bufs[i] = out + (start + i) * ps;
        int rc = t.get(ns, pages.data() + start, n, bufs.data(), status + start, nullptr);
        if (rc != TS_OK) result = rc;
      }
    });
  for (auto &th : ts) th.join();
  return result.load();
}

}  // namespace testing
}  // namespace tierstack
