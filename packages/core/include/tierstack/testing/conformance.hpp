// The C ABI conformance suite: what every native tier's handle must do when front-end threads
// call it, checked byte for byte from native threads. One case per rule; @tierstack/core/testing
// runNativeStoreConformance() runs each as a vitest test against a package's handle (the way
// runPageStoreConformance runs the TypeScript rules against its PageStore).
//
// Every case runs in namespaces of its own (`ns`, and `ns2` where two are needed). A case only
// writes the pages conformance_pages() lists, so a tier that needs set-up before its handle can
// place a page (an RDMA pool allocates slabs from JavaScript) can be given it first.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "driver.hpp"

namespace tierstack {
namespace testing {

struct ConformanceSpec {
  bool lossy = false;      // a cache: a stored clean page may be gone (a miss), never wrong
  bool promotion = false;  // check TS_PUT_PROMOTION: a promoted copy never replaces a dirty one
  uint32_t threads = 4;
  uint32_t put_flags = 0;  // flags of the cases' puts (TS_PUT_DIRTY to test dirty pages)
  // A read racing a write of the same page may answer TS_E_CHECKSUM (bytes withheld, as the ABI
  // allows) instead of one whole version: a tier whose writes are not atomic to its readers
  // (RDMA one-sided writes) detects the torn copy instead of preventing it.
  bool checksum_on_race = false;
};

struct CaseReport {
  std::vector<std::string> failures;  // the first few, in words
  uint64_t failed = 0;                // how many checks failed
  uint64_t checked = 0, found = 0, misses = 0;
};

inline const std::vector<std::string> &conformance_cases() {
  static const std::vector<std::string> names = {"misses",    "round-trip", "overwrite",        "remove",        "namespaces",
                                                 "empty",     "promotion",  "threads-disjoint", "threads-shared"};
  return names;
}

namespace detail {

constexpr uint32_t kDisjointPages = 256;  // per thread
constexpr uint64_t kSharedSpan = 512;
inline const std::vector<uint32_t> &round_trip_sizes() {
  static const std::vector<uint32_t> sizes = {1, 2, 7, 64, 256, 1024};
  return sizes;
}
inline std::vector<uint64_t> round_trip_block(size_t i) {
  std::vector<uint64_t> p(round_trip_sizes()[i]);
  for (size_t k = 0; k < p.size(); k++) p[k] = 10000 * (i + 1) + k * 3;
  return p;
}
inline std::vector<uint64_t> large_pages() { return {(1ull << 32) + 5, 1ull << 40, (1ull << 53) - 1}; }
inline std::vector<uint64_t> range(uint64_t from, uint64_t n) {
  std::vector<uint64_t> p(n);
  for (uint64_t k = 0; k < n; k++) p[k] = from + k;
  return p;
}

// Collects what went wrong, in words.
struct Check {
  CaseReport &r;
  void fail(const std::string &what) {
    r.failed++;
    if (r.failures.size() < 20) r.failures.push_back(what);
  }
  void rc(int got, const char *what) {
    r.checked++;
    if (got != TS_OK) fail(std::string(what) + " returned " + std::to_string(got) + " (" + ts_status_code(got) + ")");
  }
};

// Reads `pages` in batches of `batch` and checks each page against expect[i]: a version (>= 0),
// or -1 = must miss. `lossy`: an expected page may miss. A miss leaves the buffer untouched.
template <class Target>
void expect_pages(const Target &t, Check &c, uint64_t ns, const std::vector<uint64_t> &pages, const std::vector<int64_t> &expect,
                  size_t batch, bool lossy, const char *what) {
  const size_t ps = t.page_size();
  std::vector<uint8_t> data(batch * ps), scratch;
  std::vector<void *> bufs(batch);
  std::vector<int32_t> st(batch);
  for (size_t i = 0; i < batch; i++) bufs[i] = data.data() + i * ps;
  for (size_t at = 0; at < pages.size(); at += batch) {
    size_t n = std::min(batch, pages.size() - at);
    std::memset(data.data(), 0xa5, n * ps);
    for (size_t i = 0; i < n; i++) st[i] = 0x7eadbeef;
    int rc = t.get(ns, pages.data() + at, n, bufs.data(), st.data(), nullptr);
    c.rc(rc, what);
    if (rc != TS_OK) continue;
    for (size_t i = 0; i < n; i++) {
      const uint64_t page = pages[at + i];
      const int64_t want = expect[at + i];
      const uint8_t *b = data.data() + i * ps;
      const std::string where = std::string(what) + ": page " + std::to_string(page) + " (batch of " + std::to_string(n) + ")";
      c.r.checked++;
      if (st[i] == TS_PAGE_MISS) {
        c.r.misses++;
        if (want >= 0 && !lossy) c.fail(where + ": expected version " + std::to_string(want) + ", got a miss");
        bool untouched = true;
        for (size_t k = 0; k < ps && untouched; k++) untouched = b[k] == 0xa5;
        if (!untouched) c.fail(where + ": a miss wrote into the caller's buffer");
      } else if (st[i] == TS_PAGE_FOUND) {
        c.r.found++;
        if (want < 0) c.fail(where + ": expected a miss, got a page");
        else if (!page_matches(b, ps, ns, page, uint64_t(want), scratch)) {
          int64_t v = page_version(b, ps, ns, page, scratch);
          c.fail(where + ": expected version " + std::to_string(want) + ", got " +
                 (v >= 0 ? "version " + std::to_string(v) : std::string("bytes of no write of this page")));
        }
      } else {
        c.fail(where + ": status " + std::to_string(st[i]) + (st[i] < 0 ? std::string(" (") + ts_status_code(st[i]) + ")" : ""));
      }
    }
  }
}

template <class Target>
void put_pages(const Target &t, Check &c, uint64_t ns, const std::vector<uint64_t> &pages, uint64_t version, uint32_t flags,
               size_t batch, const char *what) {
  const size_t ps = t.page_size();
  std::vector<uint8_t> data(batch * ps);
  std::vector<const void *> bufs(batch);
  for (size_t i = 0; i < batch; i++) bufs[i] = data.data() + i * ps;
  for (size_t at = 0; at < pages.size(); at += batch) {
    size_t n = std::min(batch, pages.size() - at);
    for (size_t i = 0; i < n; i++) fill_page(data.data() + i * ps, ps, ns, pages[at + i], version);
    c.rc(t.put(ns, pages.data() + at, n, bufs.data(), flags), what);
  }
}

}  // namespace detail

// The pages a case writes (in `ns`, and in `ns2` for "namespaces").
inline std::vector<uint64_t> conformance_pages(const std::string &name, const ConformanceSpec &s) {
  using namespace detail;
  if (name == "round-trip") {
    std::vector<uint64_t> all;
    for (size_t i = 0; i < round_trip_sizes().size(); i++) {
      auto b = round_trip_block(i);
      all.insert(all.end(), b.begin(), b.end());
    }
    auto big = large_pages();
    all.insert(all.end(), big.begin(), big.end());
    return all;
  }
  if (name == "overwrite") return range(0, 64);
  if (name == "remove") return range(0, 32);
  if (name == "namespaces") return range(0, 16);
  if (name == "promotion") return range(0, 2);
  if (name == "threads-disjoint") return range(0, uint64_t(std::max(1u, s.threads)) * kDisjointPages);
  if (name == "threads-shared") return range(0, kSharedSpan);
  return {};
}

// Runs one case; an unknown name is a failure.
template <class Target>
CaseReport run_conformance_case(const Target &t, uint64_t ns, uint64_t ns2, const std::string &name, const ConformanceSpec &s) {
  using namespace detail;
  CaseReport report;
  Check c{report};
  const uint32_t f = s.put_flags;

  if (name == "misses") {
    // Nothing written: every page misses, in batches of every size, and no buffer is touched.
    auto pages = range(0, 16);
    pages.push_back(1ull << 40);
    std::vector<int64_t> none(pages.size(), -1);
    expect_pages(t, c, ns, pages, none, pages.size(), false, "get of unwritten pages");
    expect_pages(t, c, ns, pages, none, 1, false, "get of one unwritten page");

  } else if (name == "round-trip") {
    // Batches of 1 to 1024 pages (and page numbers past 2^32) read back byte for byte, in the
    // batch they were written in, one by one, and in reverse order.
    std::vector<std::vector<uint64_t>> blocks;
    for (size_t i = 0; i < round_trip_sizes().size(); i++) blocks.push_back(round_trip_block(i));
    blocks.push_back(large_pages());
    for (auto &b : blocks) put_pages(t, c, ns, b, 1, f, b.size(), "put");
    for (auto &b : blocks) {
      std::vector<int64_t> v1(b.size(), 1);
      expect_pages(t, c, ns, b, v1, b.size(), s.lossy, "get of the batch written");
      std::vector<uint64_t> few(b.begin(), b.begin() + std::min<size_t>(b.size(), 8));
      expect_pages(t, c, ns, few, std::vector<int64_t>(few.size(), 1), 1, s.lossy, "get of single pages");
      std::vector<uint64_t> rev(b.rbegin(), b.rend());
      expect_pages(t, c, ns, rev, v1, std::min<size_t>(rev.size(), 64), s.lossy, "get in reverse order");
    }
    if (report.found == 0) c.fail("no page written was found again");

  } else if (name == "overwrite") {
    // The newest write wins: v1 everywhere, v2 over the even pages, v3 over 0..7 one at a time.
    auto pages = range(0, 64);
    put_pages(t, c, ns, pages, 1, f, 64, "put v1");
    std::vector<uint64_t> even;
    for (uint64_t p = 0; p < 64; p += 2) even.push_back(p);
    put_pages(t, c, ns, even, 2, f, even.size(), "put v2");
    put_pages(t, c, ns, range(0, 8), 3, f, 1, "put v3");
    std::vector<int64_t> want(64);
    for (uint64_t p = 0; p < 64; p++) want[p] = p < 8 ? 3 : p % 2 == 0 ? 2 : 1;
    expect_pages(t, c, ns, pages, want, 64, s.lossy, "get after overwrites");
    expect_pages(t, c, ns, pages, want, 5, s.lossy, "get after overwrites, batches of 5");

  } else if (name == "remove") {
    // A removed page misses (even in a cache); removing absent pages is TS_OK; a page written
    // again after its removal is found with the new bytes.
    auto pages = range(0, 32);
    put_pages(t, c, ns, pages, 1, f, 32, "put");
    std::vector<uint64_t> odd;
    for (uint64_t p = 1; p < 32; p += 2) odd.push_back(p);
    std::vector<uint64_t> gone = odd;
    for (uint64_t p : {5000, 5001, 5002, 5003}) gone.push_back(p);
    c.rc(t.remove(ns, gone.data(), gone.size()), "remove (with absent pages)");
    std::vector<int64_t> want(32);
    for (uint64_t p = 0; p < 32; p++) want[p] = p % 2 ? -1 : 1;
    expect_pages(t, c, ns, pages, want, 32, s.lossy, "get after remove");
    put_pages(t, c, ns, {1, 3}, 4, f, 2, "put after remove");
    want[1] = want[3] = 4;
    expect_pages(t, c, ns, pages, want, 8, s.lossy, "get after writing removed pages again");

  } else if (name == "namespaces") {
    // The same page numbers in two namespaces are two pages; removing from one leaves the other.
    auto pages = range(0, 16);
    put_pages(t, c, ns, pages, 1, f, 16, "put in ns");
    put_pages(t, c, ns2, pages, 2, f, 16, "put in ns2");
    expect_pages(t, c, ns, pages, std::vector<int64_t>(16, 1), 16, s.lossy, "get from ns");
    expect_pages(t, c, ns2, pages, std::vector<int64_t>(16, 2), 16, s.lossy, "get from ns2");
    auto half = range(0, 8);
    c.rc(t.remove(ns, half.data(), half.size()), "remove from ns");
    std::vector<int64_t> want(16, 1);
    for (int i = 0; i < 8; i++) want[i] = -1;
    expect_pages(t, c, ns, pages, want, 16, s.lossy, "get from ns after remove");
    expect_pages(t, c, ns2, pages, std::vector<int64_t>(16, 2), 16, s.lossy, "get from ns2 after removing from ns");

  } else if (name == "empty") {
    // An empty batch is TS_OK for every operation.
    uint64_t page = 0;
    uint8_t byte = 0;
    void *buf = &byte;
    const void *cbuf = &byte;
    int32_t st = 0;
    c.rc(t.get(ns, &page, 0, &buf, &st, nullptr), "get of 0 pages");
    c.rc(t.put(ns, &page, 0, &cbuf, f), "put of 0 pages");
    c.rc(t.remove(ns, &page, 0), "remove of 0 pages");

  } else if (name == "promotion") {
    // A promoted (clean, from below) copy never replaces a dirty one; a plain write does.
    if (!s.promotion) return report;
    put_pages(t, c, ns, {0, 1}, 1, TS_PUT_DIRTY, 2, "dirty put");
    put_pages(t, c, ns, {0, 1}, 2, TS_PUT_PROMOTION, 2, "promotion over a dirty page");
    expect_pages(t, c, ns, {0, 1}, {1, 1}, 2, false, "get after a promotion over dirty pages");
    put_pages(t, c, ns, {0}, 3, 0, 1, "plain put over a dirty page");
    expect_pages(t, c, ns, {0}, {3}, 1, s.lossy, "get after a plain write");

  } else if (name == "threads-disjoint") {
    // Threads on pages of their own, with batches of every size from 1 to 64: what each thread
    // reads is exactly what it wrote last, or a miss where it removed.
    const uint32_t threads = std::max(1u, s.threads);
    std::vector<CaseReport> per(threads);
    std::vector<std::thread> ts;
    for (uint32_t id = 0; id < threads; id++)
      ts.emplace_back([&, id] {
        Check tc{per[id]};
        auto pages = range(uint64_t(id) * kDisjointPages, kDisjointPages);
        std::vector<int64_t> want(pages.size(), -1);
        uint64_t x = 0x9e3779b97f4a7c15ULL * (id + 7);
        auto rnd = [&x]() {
          x ^= x << 13;
          x ^= x >> 7;
          x ^= x << 17;
          return x;
        };
        for (uint64_t round = 1; round <= 3; round++) {
          // Write a random subset (all of it first) in random batch sizes.
          for (size_t at = 0; at < pages.size();) {
            size_t n = std::min<size_t>(1 + rnd() % 64, pages.size() - at);
            if (round == 1 || rnd() % 2) {
              std::vector<uint64_t> part(pages.begin() + at, pages.begin() + at + n);
              put_pages(t, tc, ns, part, round, f, n, "put");
              for (size_t i = 0; i < n; i++) want[at + i] = int64_t(round);
            }
            at += n;
          }
          // Remove a few.
          std::vector<uint64_t> rm;
          for (size_t i = 0; i < pages.size(); i++)
            if (rnd() % 8 == 0) {
              rm.push_back(pages[i]);
              want[i] = -1;
            }
          if (!rm.empty()) tc.rc(t.remove(ns, rm.data(), rm.size()), "remove");
          expect_pages(t, tc, ns, pages, want, 1 + rnd() % 64, s.lossy, "get");
        }
      });
    for (auto &th : ts) th.join();
    for (auto &p : per) {
      report.checked += p.checked;
      report.found += p.found;
      report.misses += p.misses;
      report.failed += p.failed;
      for (auto &m : p.failures)
        if (report.failures.size() < 20) report.failures.push_back(m);
    }
    if (report.found == 0) c.fail("no page written was found again");

  } else if (name == "threads-shared") {
    // Threads writing, reading and removing the same pages at once: every page read is one
    // whole write of that page (never bytes of two writes, never another page's).
    StressSpec ss;
    ss.threads = std::max(1u, s.threads);
    ss.ops = 2000;
    ss.span = kSharedSpan;
    ss.max_batch = 16;
    ss.dirty_every = (s.put_flags & TS_PUT_DIRTY) ? 1 : 0;
    ss.remove_every = 8;
    StressResult sr;
    stress(t, ns, ss, sr);
    report.checked = sr.gets;
    report.found = sr.hits;
    report.misses = sr.gets - sr.hits;
    if (sr.mismatches) c.fail(std::to_string(sr.mismatches.load()) + " pages read were not one whole write of that page");
    if (sr.errors)
      c.fail(std::to_string(sr.errors.load()) + " calls or pages failed (last status " + std::to_string(sr.last_error.load()) + ")");
    if (sr.no_space && !s.lossy) c.fail(std::to_string(sr.no_space.load()) + " puts answered TS_E_NO_SPACE");
    if (sr.checksum && !s.checksum_on_race)
      c.fail(std::to_string(sr.checksum.load()) + " pages read during a write answered TS_E_CHECKSUM (torn, withheld)");
    if (sr.hits == 0) c.fail("no page was ever found");

  } else {
    c.fail("unknown conformance case " + name);
  }
  return report;
}

}  // namespace testing
}  // namespace tierstack
