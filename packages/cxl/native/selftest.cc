// A test helper: several native threads of this process use one page store through its C ABI
// at once (as a front-end's fault threads do), writing pages whose bytes encode (page, thread,
// version) and checking every page they read back. Blocks the calling thread until they end.
#include <napi.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include <tierstack/page_store_napi.hpp>

namespace cxl {
namespace {

void fill_page(uint8_t *p, size_t n, uint64_t page, uint32_t thread, uint32_t version) {
  uint64_t *w = reinterpret_cast<uint64_t *>(p);
  w[0] = page;
  w[1] = (uint64_t(thread) << 32) | version;
  uint64_t x = page * 0x9e3779b97f4a7c15ULL ^ w[1] * 0xc2b2ae3d27d4eb4fULL;
  for (size_t i = 2; i < n / 8; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    w[i] = x;
  }
}

bool page_ok(const uint8_t *p, size_t n, uint64_t page, std::vector<uint8_t> &scratch) {
  const uint64_t *w = reinterpret_cast<const uint64_t *>(p);
  if (w[0] != page) return false;
  fill_page(scratch.data(), n, page, uint32_t(w[1] >> 32), uint32_t(w[1]));
  return std::memcmp(scratch.data(), p, n) == 0;
}

struct Totals {
  std::atomic<uint64_t> puts{0}, gets{0}, hits{0}, mismatches{0}, errors{0}, no_space{0};
};

void worker(tierstack::StoreRef store, uint64_t ns, uint32_t id, uint64_t span, int millis, Totals *t) {
  const size_t ps = store->page_size;
  std::vector<uint8_t> buf(8 * ps), scratch(ps);
  std::vector<void *> bufs(8);
  for (int k = 0; k < 8; k++) bufs[k] = buf.data() + k * ps;
  std::vector<uint64_t> pages(8);
  std::vector<int32_t> status(8);
  uint64_t x = 0x2545f4914f6cdd1dULL * (id + 1);
  auto rnd = [&x]() {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
  };
  uint32_t version = 0;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(millis);
  uint64_t puts = 0, gets = 0, hits = 0, bad = 0, errors = 0, no_space = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    size_t n = 1 + rnd() % 8;
    for (size_t k = 0; k < n; k++) pages[k] = rnd() % span;
    if (rnd() & 1) {
      for (size_t k = 0; k < n; k++) fill_page(buf.data() + k * ps, ps, pages[k], id, ++version);
      int rc = store.put_pages(ns, pages.data(), n, const_cast<const void *const *>(bufs.data()), (rnd() & 3) == 0 ? TS_PUT_DIRTY : 0);
      if (rc == TS_E_NO_SPACE) no_space++;
      else if (rc != TS_OK) errors++;
      puts += n;
    } else {
      int rc = store.get_pages(ns, pages.data(), n, bufs.data(), status.data());
      if (rc != TS_OK) {
        errors++;
        continue;
      }
      gets += n;
      for (size_t k = 0; k < n; k++) {
        if (status[k] == TS_PAGE_FOUND) {
          hits++;
          if (!page_ok(buf.data() + k * ps, ps, pages[k], scratch)) bad++;
        } else if (status[k] < 0) {
          errors++;
        }
      }
    }
  }
  t->puts += puts;
  t->gets += gets;
  t->hits += hits;
  t->mismatches += bad;
  t->errors += errors;
  t->no_space += no_space;
}

// threadStress(nativeHandle, nsId, threads, millis, keySpan) -> { puts, gets, hits, mismatches, errors, noSpace }
Napi::Value ThreadStress(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  tierstack::StoreRef store = tierstack::unwrap_page_store(env, info[0]);
  if (!store) return env.Undefined();
  bool lossless;
  uint64_t ns = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
  uint32_t threads = info[2].As<Napi::Number>().Uint32Value();
  int millis = info[3].As<Napi::Number>().Int32Value();
  uint64_t span = uint64_t(info[4].As<Napi::Number>().DoubleValue());
  Totals t;
  std::vector<std::thread> pool;
  for (uint32_t i = 0; i < threads; i++) pool.emplace_back(worker, store, ns, i, span, millis, &t);
  for (auto &th : pool) th.join();
  Napi::Object r = Napi::Object::New(env);
  r.Set("puts", double(t.puts));
  r.Set("gets", double(t.gets));
  r.Set("hits", double(t.hits));
  r.Set("mismatches", double(t.mismatches));
  r.Set("errors", double(t.errors));
  r.Set("noSpace", double(t.no_space));
  return r;
}

}  // namespace

void register_selftest(Napi::Env env, Napi::Object exports) {
  exports.Set("threadStress", Napi::Function::New(env, ThreadStress, "threadStress"));
}

}  // namespace cxl
