// tierstack_uffd_testing.node: the test and benchmark hooks of @tierstack/uffd, in an addon of
// their own (the shipped tierstack_uffd has none), exposed by @tierstack/uffd/testing:
//  - touchPages: touches pages of an address range on a native thread of its own, so that the
//    JS thread never blocks in a fault;
//  - gettid / pinCurrentThread: thread ids and CPU placement for benchmarks.
// The native test tier is the testing kit's reference store (@tierstack/core/testing).
#include <napi.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <vector>

#include <tierstack/napi_args.hpp>
#include <tierstack/napi_error.hpp>
#include <tierstack/run_on_thread.hpp>

namespace tsuffd {
namespace {

using tierstack::throw_error;

using tierstack::u64_of;

// touchPages(address: bigint, pages: Float64Array, pageSize, out?: Buffer, write?: Buffer, cpu?)
// Reads (copies into `out`) or writes (from `write`) each page on a new native thread. Resolves when done.
Napi::Value TouchPages(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint64_t base = u64_of(info[0]);
  Napi::Float64Array arr = info[1].As<Napi::Float64Array>();
  uint64_t ps = info[2].ToNumber().Int64Value();
  auto pages = std::make_shared<std::vector<uint64_t>>(arr.ElementLength());
  for (size_t i = 0; i < pages->size(); i++) (*pages)[i] = static_cast<uint64_t>(arr[i]);
  uint8_t *out = nullptr;
  const uint8_t *in = nullptr;
  Napi::Value keep_out = env.Undefined(), keep_in = env.Undefined();
  if (info.Length() > 3 && info[3].IsBuffer()) {
    auto b = info[3].As<Napi::Buffer<uint8_t>>();
    if (b.Length() < pages->size() * ps) return throw_error(env, "TS_ERR_BAD_ARGUMENT", "out is too small");
    out = b.Data();
    keep_out = info[3];
  }
  if (info.Length() > 4 && info[4].IsBuffer()) {
    auto b = info[4].As<Napi::Buffer<uint8_t>>();
    if (b.Length() < pages->size() * ps) return throw_error(env, "TS_ERR_BAD_ARGUMENT", "write data is too small");
    in = b.Data();
    keep_in = info[4];
  }
  int cpu = info.Length() > 5 && info[5].IsNumber() ? info[5].ToNumber().Int32Value() : -1;
  return tierstack::run_on_thread(
      env,
      [base, pages, ps, out, in, cpu] {
        if (cpu >= 0) {
          cpu_set_t set;
          CPU_ZERO(&set);
          CPU_SET(cpu, &set);
          sched_setaffinity(0, sizeof set, &set);
        }
        volatile uint64_t sink = 0;
        for (size_t i = 0; i < pages->size(); i++) {
          auto *p = reinterpret_cast<uint8_t *>(base + (*pages)[i] * ps);
          if (in)
            std::memcpy(p, in + i * ps, ps);
          else if (out)
            std::memcpy(out + i * ps, p, ps);
          else
            sink = sink + *reinterpret_cast<volatile uint64_t *>(p);
        }
      },
      [](Napi::Env env, Napi::Promise::Deferred &d) { d.Resolve(env.Undefined()); }, {keep_out, keep_in});
}

Napi::Value GetTid(const Napi::CallbackInfo &info) {
  return Napi::Number::New(info.Env(), static_cast<double>(syscall(SYS_gettid)));
}

// pinCurrentThread(cpus: number[]): sets the calling (JS) thread's CPU affinity; [] = all CPUs.
// For benchmarks that place the whole fault-service path on chosen CPUs.
Napi::Value PinCurrentThread(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  cpu_set_t set;
  CPU_ZERO(&set);
  Napi::Array a = info[0].As<Napi::Array>();
  if (a.Length() == 0) {
    for (int c = 0; c < CPU_SETSIZE; c++) CPU_SET(c, &set);
  }
  for (uint32_t i = 0; i < a.Length(); i++) CPU_SET(a.Get(i).ToNumber().Int32Value(), &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) return tierstack::throw_errno(env, errno, "sched_setaffinity", "TS_ERR_IO", "sched_setaffinity");
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  return tierstack::export_functions(env, exports, {
      {"touchPages", TouchPages},
      {"gettid", GetTid},
      {"pinCurrentThread", PinCurrentThread},
  });
}

}  // namespace
}  // namespace tsuffd

static Napi::Object InitUffdTesting(Napi::Env env, Napi::Object exports) { return tsuffd::Init(env, exports); }
NODE_API_MODULE(tierstack_uffd_testing, InitUffdTesting)
