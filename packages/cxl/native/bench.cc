#include "bench.hpp"

#include <cstring>
#include <ctime>
#include <string>
#include <vector>

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <tierstack/page_store_napi.hpp>

#include "layout.hpp"

namespace cxl {
namespace {

// CPU time of the calling thread: the loops are single-threaded, and on a shared machine this
// leaves out the time the thread was not running (both for the tier and the memcpy baseline).
uint64_t now_ns() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return uint64_t(ts.tv_sec) * 1000000000ULL + uint64_t(ts.tv_nsec);
}

Napi::Value bad(Napi::Env env, const char *msg) {
  Napi::Error err = Napi::TypeError::New(env, msg);
  err.Set("code", Napi::String::New(env, "TS_ERR_BAD_ARGUMENT"));
  err.ThrowAsJavaScriptException();
  return env.Undefined();
}

// A memory area of `span` pages standing in for the region in the memcpy baseline.
struct Baseline {
  uint8_t *base = nullptr;
  size_t bytes = 0;
  uint64_t span = 0;
  uint32_t page_size = 0;
  ~Baseline() {
    if (base) munmap(base, bytes);
  }
};

// memcpyBaseline(spanPages, pageSize) -> external
Napi::Value MemcpyBaseline(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber()) return bad(env, "memcpyBaseline(spanPages, pageSize)");
  auto *b = new Baseline();
  b->span = uint64_t(info[0].As<Napi::Number>().DoubleValue());
  b->page_size = info[1].As<Napi::Number>().Uint32Value();
  b->bytes = b->span * b->page_size;
  // The same kind of memory as a memfd-backed region (shared shmem pages), so that the baseline
  // pays the same TLB and page-cache costs as the tier.
  int fd = int(syscall(SYS_memfd_create, "tierstack-cxl-baseline", 1u));
  void *p = MAP_FAILED;
  if (fd >= 0 && ftruncate(fd, off_t(b->bytes)) == 0) p = mmap(nullptr, b->bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (fd >= 0) close(fd);
  if (p == MAP_FAILED) {
    delete b;
    return bad(env, "memfd mapping failed");
  }
  b->base = static_cast<uint8_t *>(p);
  std::memset(b->base, 0x5a, b->bytes);  // fault it in, as the cache's pages are
  return Napi::External<Baseline>::New(env, b, [](Napi::Env, Baseline *x) { delete x; });
}

struct Loop {
  const double *pages = nullptr;  // the page numbers to cycle through (the caller's Float64Array)
  size_t count = 0;
  uint32_t batch = 1;
  uint64_t iterations = 0;
  size_t start = 0;
  bool put = false;
};

bool loop_args(const Napi::CallbackInfo &info, size_t first, Loop *l) {
  // (mode, pages: Float64Array, batch, iterations)
  if (info.Length() < first + 4 || !info[first].IsString() || !info[first + 1].IsTypedArray() || !info[first + 2].IsNumber() ||
      !info[first + 3].IsNumber())
    return false;
  std::string mode = info[first].As<Napi::String>().Utf8Value();
  if (mode != "get" && mode != "put") return false;
  l->put = mode == "put";
  if (info[first + 1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) return false;
  auto arr = info[first + 1].As<Napi::Float64Array>();
  l->pages = arr.Data();
  l->count = arr.ElementLength();
  l->batch = info[first + 2].As<Napi::Number>().Uint32Value();
  l->iterations = uint64_t(info[first + 3].As<Napi::Number>().DoubleValue());
  // Optional: where in `pages` to start, so that successive calls walk the whole sequence.
  if (info.Length() > first + 4 && info[first + 4].IsNumber())
    l->start = size_t(info[first + 4].As<Napi::Number>().DoubleValue()) % (l->count ? l->count : 1);
  return l->count > 0 && l->batch > 0 && l->count >= l->batch;
}

// benchMemcpy(baseline, mode, pages, batch, iterations, start?) -> thread CPU ns
Napi::Value BenchMemcpy(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Loop l;
  if (info.Length() < 1 || !info[0].IsExternal() || !loop_args(info, 1, &l))
    return bad(env, "benchMemcpy(baseline, 'get'|'put', pages, batch, iterations)");
  Baseline *b = info[0].As<Napi::External<Baseline>>().Data();
  const size_t ps = b->page_size;
  std::vector<uint8_t> scratch(size_t(l.batch) * ps, 7);
  size_t cursor = l.start;
  uint64_t t0 = now_ns();
  for (uint64_t it = 0; it < l.iterations; it++) {
    for (uint32_t k = 0; k < l.batch; k++) {
      uint64_t p = uint64_t(l.pages[cursor]);
      cursor = cursor + 1 == l.count ? 0 : cursor + 1;
      uint8_t *slot = b->base + (mix64(p) % b->span) * ps;
      if (l.put)
        std::memcpy(slot, scratch.data() + k * ps, ps);
      else
        std::memcpy(scratch.data() + k * ps, slot, ps);
    }
    asm volatile("" ::: "memory");  // keep the copies
  }
  return Napi::Number::New(env, double(now_ns() - t0));
}

// benchStore(nativeHandle, nsId, mode, pages, batch, iterations, start?) -> { ns: thread CPU ns, misses, status }. Calls the store
// through its C ABI function pointers, like a front-end thread. Throws if an op fails or a get misses.
Napi::Value BenchStore(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2) return bad(env, "benchStore(handle, nsId, 'get'|'put', pages, batch, iterations)");
  tierstack::StoreRef store = tierstack::unwrap_page_store(env, info[0]);
  if (!store) return env.Undefined();
  if (!info[1].IsBigInt()) return bad(env, "nsId must be a bigint");
  bool lossless;
  uint64_t ns = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
  Loop l;
  if (!loop_args(info, 2, &l)) return bad(env, "benchStore(handle, nsId, 'get'|'put', pages, batch, iterations)");
  const size_t ps = store->page_size;
  std::vector<uint8_t> scratch(size_t(l.batch) * ps, 7);
  std::vector<void *> bufs(l.batch);
  for (uint32_t k = 0; k < l.batch; k++) bufs[k] = scratch.data() + k * ps;
  std::vector<uint64_t> batch(l.batch);
  std::vector<int32_t> status(l.batch);
  size_t cursor = l.start;
  uint64_t misses = 0;
  int rc = TS_OK;
  uint64_t t0 = now_ns();
  for (uint64_t it = 0; it < l.iterations && rc == TS_OK; it++) {
    for (uint32_t k = 0; k < l.batch; k++) {
      batch[k] = uint64_t(l.pages[cursor]);
      cursor = cursor + 1 == l.count ? 0 : cursor + 1;
    }
    if (l.put) {
      rc = store.put_pages(ns, batch.data(), l.batch, const_cast<const void *const *>(bufs.data()), 0);
    } else {
      rc = store.get_pages(ns, batch.data(), l.batch, bufs.data(), status.data());
      for (uint32_t k = 0; k < l.batch; k++) misses += status[k] != TS_PAGE_FOUND;
    }
  }
  uint64_t elapsed = now_ns() - t0;
  Napi::Object r = Napi::Object::New(env);
  r.Set("status", rc);
  r.Set("ns", double(elapsed));
  r.Set("misses", double(misses));
  return r;
}

}  // namespace

void register_bench(Napi::Env env, Napi::Object exports) {
  exports.Set("memcpyBaseline", Napi::Function::New(env, MemcpyBaseline, "memcpyBaseline"));
  exports.Set("benchMemcpy", Napi::Function::New(env, BenchMemcpy, "benchMemcpy"));
  exports.Set("benchStore", Napi::Function::New(env, BenchStore, "benchStore"));
}

}  // namespace cxl
