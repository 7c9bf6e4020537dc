// tierstack_cxl_testing.node: the test and benchmark hooks of @tierstack/cxl, in an addon of their
// own (the shipped tierstack_cxl has none), exposed by @tierstack/cxl/testing:
//  - memcpyBaseline / benchMemcpy: the bench's baseline, a memcpy loop over a memfd mapping of
//    the same kind of memory as a region, copying the same page numbers (thread CPU time);
//  - abandonPut: a put that stops half-way (set locked, way mid-write), as a process killed at
//    that moment leaves the region.
// Loops over the tier's C ABI are the testing kit's drivers (@tierstack/core/testing driveStore).
#include <napi.h>

#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <vector>

#include <tierstack/clock.hpp>
#include <tierstack/napi_error.hpp>

#include "../layout.hpp"
#include "../store.hpp"

namespace tscxl {
namespace {

using tierstack::throw_error;

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
  if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsNumber())
    return throw_error(env, "TS_ERR_BAD_ARGUMENT", "memcpyBaseline(spanPages, pageSize)");
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
    return throw_error(env, "TS_ERR_BAD_ARGUMENT", "memfd mapping failed");
  }
  b->base = static_cast<uint8_t *>(p);
  std::memset(b->base, 0x5a, b->bytes);  // fault it in, as the cache's pages are
  return Napi::External<Baseline>::New(env, b, [](Napi::Env, Baseline *x) { delete x; });
}

// benchMemcpy(baseline, 'get'|'put', pages: Float64Array, batch, iterations, start?) -> thread CPU ns
Napi::Value BenchMemcpy(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  const char *usage = "benchMemcpy(baseline, 'get'|'put', pages: Float64Array, batch, iterations, start?)";
  if (info.Length() < 5 || !info[0].IsExternal() || !info[1].IsString() || !info[2].IsTypedArray() ||
      info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array || !info[3].IsNumber() || !info[4].IsNumber())
    return throw_error(env, "TS_ERR_BAD_ARGUMENT", usage);
  Baseline *b = info[0].As<Napi::External<Baseline>>().Data();
  std::string mode = info[1].As<Napi::String>().Utf8Value();
  auto arr = info[2].As<Napi::Float64Array>();
  const double *pages = arr.Data();
  const size_t count = arr.ElementLength();
  const uint32_t batch = info[3].As<Napi::Number>().Uint32Value();
  const uint64_t iterations = uint64_t(info[4].As<Napi::Number>().DoubleValue());
  if ((mode != "get" && mode != "put") || batch == 0 || count < batch) return throw_error(env, "TS_ERR_BAD_ARGUMENT", usage);
  size_t cursor = info.Length() > 5 && info[5].IsNumber() ? size_t(info[5].As<Napi::Number>().DoubleValue()) % count : 0;
  const bool put = mode == "put";
  const size_t ps = b->page_size;
  std::vector<uint8_t> scratch(size_t(batch) * ps, 7);
  uint64_t t0 = tierstack::thread_cpu_ns();
  for (uint64_t it = 0; it < iterations; it++) {
    for (uint32_t k = 0; k < batch; k++) {
      uint64_t p = uint64_t(pages[cursor]);
      cursor = cursor + 1 == count ? 0 : cursor + 1;
      uint8_t *slot = b->base + (mix64(p) % b->span) * ps;
      if (put)
        std::memcpy(slot, scratch.data() + k * ps, ps);
      else
        std::memcpy(scratch.data() + k * ps, slot, ps);
    }
    asm volatile("" ::: "memory");  // keep the copies
  }
  return Napi::Number::New(env, double(tierstack::thread_cpu_ns() - t0));
}

// abandonPut(regionPath, nsId: bigint, page, fill): opens the file region and starts a put of one
// page that never finishes (the caller then dies, e.g. SIGKILL).
Napi::Value AbandonPut(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 3 || !info[0].IsString() || !info[1].IsBigInt() || !info[2].IsNumber())
    return throw_error(env, "TS_ERR_BAD_ARGUMENT", "abandonPut(regionPath, nsId: bigint, page, fill?)");
  OpenOptions opt;
  opt.kind = BackingKind::File;
  opt.path = info[0].As<Napi::String>().Utf8Value();
  Status st;
  CxlStore *s = CxlStore::open(opt, "abandon", &st);
  if (!s) return tierstack::throw_status(env, st.code, st.message, st.sys_errno);
  bool lossless;
  uint64_t ns = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
  uint64_t page = uint64_t(info[2].As<Napi::Number>().DoubleValue());
  std::vector<uint8_t> data(s->page_size(), info.Length() > 3 ? uint8_t(info[3].ToNumber().Uint32Value()) : 0xab);
  int rc = s->cache().abandon_put_for_test(ns, page, data.data());
  // Deliberately no release: the set stays locked, as the dying process leaves it.
  return Napi::Number::New(env, rc);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  return tierstack::export_functions(env, exports, {
      {"memcpyBaseline", MemcpyBaseline},
      {"benchMemcpy", BenchMemcpy},
      {"abandonPut", AbandonPut},
  });
}

}  // namespace
}  // namespace tscxl

static Napi::Object InitCxlTesting(Napi::Env env, Napi::Object exports) { return tscxl::Init(env, exports); }
NODE_API_MODULE(tierstack_cxl_testing, InitCxlTesting)
