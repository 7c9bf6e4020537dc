// @tierstack/core's addon (tierstack_core.node): FileTier's native read path (FileStore behind
// the page-store C ABI) and the file-space calls JavaScript has no API for (hole punching).
// Loaded lazily by src/core-addon.ts; core works without it (FileTier then stays JS-only).
#include <errno.h>
#include <fcntl.h>
#include <napi.h>

#include <tierstack/crc32.hpp>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <tierstack/napi_error.hpp>
#include <tierstack/page_store_napi.hpp>
#include <tierstack/run_on_thread.hpp>

#include "file_store.hpp"
#include "snapshot_reader.hpp"

namespace tscore {
namespace {

using tierstack::throw_error;

bool get_u64(const Napi::Value &v, uint64_t &out) {
  if (v.IsBigInt()) {
    bool lossless = false;
    out = v.As<Napi::BigInt>().Uint64Value(&lossless);
    return lossless;
  }
  if (v.IsNumber()) {
    double d = v.As<Napi::Number>().DoubleValue();
    if (!(d >= 0) || d > 9007199254740991.0 || d != static_cast<double>(static_cast<uint64_t>(d))) return false;
    out = static_cast<uint64_t>(d);
    return true;
  }
  return false;
}

class CoreAddon : public Napi::Addon<CoreAddon> {
 public:
  CoreAddon(Napi::Env env, Napi::Object exports) {
    DefineAddon(exports, {
                             InstanceMethod("fileStoreCreate", &CoreAddon::Create),
                             InstanceMethod("fileStoreRegister", &CoreAddon::Register),
                             InstanceMethod("fileStoreInvalidate", &CoreAddon::Invalidate),
                             InstanceMethod("fileStorePending", &CoreAddon::Pending),
                             InstanceMethod("fileStoreClose", &CoreAddon::Close),
                             InstanceMethod("fileStoreStats", &CoreAddon::Stats),
                             InstanceMethod("punchHoles", &CoreAddon::PunchHoles),
                             InstanceMethod("crc32Pages", &CoreAddon::Crc32Pages),
                             InstanceValue("SnapshotReader", define_snapshot_reader(env, &jobs_)),
                         });
  }

 private:
  // Threads of the snapshot readers' batches (each read a job of its own; threads reused).
  tierstack::JobThreads jobs_;

  // The FileStore inside a handle (a tagged page-store external made by fileStoreCreate).
  static FileStore *store_of(Napi::Env env, const Napi::Value &v) {
    tierstack::StoreRef ref = tierstack::unwrap_page_store(env, v);
    if (!ref) return nullptr;  // exception pending
    FileStore *f = FileStore::from(ref.get());
    if (f == nullptr) throw_error(env, "TS_ERR_BAD_ARGUMENT", "the handle is not a FileTier store");
    return f;  // the caller's handle keeps it alive for the call
  }

  // crc32Pages(data: Uint8Array, pageSize, out: Uint32Array): out[i] = CRC-32 of page i (zlib
  // polynomial, the same value as pageChecksum), with the kit's folded CRC — a batch in one call.
  Napi::Value Crc32Pages(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsTypedArray() || !info[1].IsNumber() || !info[2].IsTypedArray())
      return throw_error(env, "TS_ERR_BAD_ARGUMENT", "crc32Pages(data, pageSize, out)");
    auto data = info[0].As<Napi::TypedArray>();
    auto out = info[2].As<Napi::TypedArray>();
    uint32_t ps = info[1].As<Napi::Number>().Uint32Value();
    if (ps == 0 || out.TypedArrayType() != napi_uint32_array || data.ByteLength() % ps != 0 || out.ElementLength() < data.ByteLength() / ps)
      return throw_error(env, "TS_ERR_BAD_ARGUMENT", "crc32Pages: data must be whole pages and out a Uint32Array with one entry per page");
    const uint8_t *p = static_cast<const uint8_t *>(data.ArrayBuffer().Data()) + data.ByteOffset();
    uint32_t *o = reinterpret_cast<uint32_t *>(static_cast<uint8_t *>(out.ArrayBuffer().Data()) + out.ByteOffset());
    size_t n = data.ByteLength() / ps;
    for (size_t i = 0; i < n; i++) o[i] = tierstack::crc32(p + i * ps, ps);
    return env.Undefined();
  }

  // fileStoreCreate(dir, pageSize, name, maxOpenSegments) → handle
  Napi::Value Create(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (info.Length() < 4 || !info[0].IsString() || !info[1].IsNumber() || !info[2].IsString() || !info[3].IsNumber())
      return throw_error(env, "TS_ERR_BAD_ARGUMENT", "fileStoreCreate(dir, pageSize, name, maxOpenSegments)");
    uint32_t ps = info[1].As<Napi::Number>().Uint32Value();
    if (ps < 512 || (ps & (ps - 1)) != 0) return throw_error(env, "TS_ERR_PAGE_SIZE", "bad page size");
    FileStore *f = FileStore::create(info[0].As<Napi::String>().Utf8Value(), ps, info[2].As<Napi::String>().Utf8Value(),
                                     info[3].As<Napi::Number>().Uint32Value());
    Napi::Value handle = tierstack::wrap_page_store(env, f->abi());
    f->release();  // the external holds the only reference now
    return handle;
  }

  // fileStoreRegister(handle, nsId: bigint, dirName)
  Napi::Value Register(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    FileStore *f = store_of(env, info[0]);
    if (!f) return env.Undefined();
    uint64_t id;
    if (!get_u64(info[1], id) || !info[2].IsString()) return throw_error(env, "TS_ERR_BAD_ARGUMENT", "fileStoreRegister(handle, id, dirName)");
    std::string dir = info[2].As<Napi::String>().Utf8Value();
    if (dir.empty() || dir.find('/') != std::string::npos || dir == "." || dir == "..")
      return throw_error(env, "TS_ERR_BAD_ARGUMENT", "bad namespace directory name");
    f->register_namespace(id, dir);
    return env.Undefined();
  }

  // fileStoreInvalidate(handle, nsId: bigint, segment: number | -1 for all)
  Napi::Value Invalidate(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    FileStore *f = store_of(env, info[0]);
    if (!f) return env.Undefined();
    uint64_t id;
    if (!get_u64(info[1], id) || !info[2].IsNumber()) return throw_error(env, "TS_ERR_BAD_ARGUMENT", "fileStoreInvalidate(handle, id, segment)");
    double seg = info[2].As<Napi::Number>().DoubleValue();
    f->invalidate(id, seg < 0 ? 0 : static_cast<uint64_t>(seg), seg < 0);
    return env.Undefined();
  }

  // fileStorePending(handle, nsId: bigint, pages: Float64Array, on: boolean)
  Napi::Value Pending(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    FileStore *f = store_of(env, info[0]);
    if (!f) return env.Undefined();
    uint64_t id;
    if (!get_u64(info[1], id) || !info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
      return throw_error(env, "TS_ERR_BAD_ARGUMENT", "fileStorePending(handle, id, pages: Float64Array, on)");
    auto arr = info[2].As<Napi::Float64Array>();
    std::vector<uint64_t> pages(arr.ElementLength());
    for (size_t i = 0; i < pages.size(); i++) pages[i] = static_cast<uint64_t>(arr[i]);
    f->mark_pending(id, pages.data(), pages.size(), info[3].ToBoolean().Value());
    return env.Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    FileStore *f = store_of(env, info[0]);
    if (f) f->close();
    return env.Undefined();
  }

  Napi::Value Stats(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    FileStore *f = store_of(env, info[0]);
    if (!f) return env.Undefined();
    auto s = f->stats();
    Napi::Object o = Napi::Object::New(env);
    auto set = [&](const char *k, uint64_t v) { o.Set(k, Napi::Number::New(env, static_cast<double>(v))); };
    set("nativeGets", s.get_calls);
    set("nativePages", s.pages);
    set("nativeFound", s.found);
    set("nativeMisses", s.misses);
    set("nativeChecksumErrors", s.checksum_errors);
    set("nativeCorrupt", s.corrupt);
    set("nativeIoErrors", s.io_errors);
    set("nativeRereads", s.rereads);
    set("nativeSegmentOpens", s.segment_opens);
    set("nativeSegmentEvictions", s.segment_evictions);
    set("nativeOpenSegments", s.open_segments);
    set("nativePendingPages", s.pending_pages);
    return o;
  }

  // punchHoles(fd, ranges: Float64Array [offset, length, ...]) → Promise<void>
  Napi::Value PunchHoles(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsNumber() || !info[1].IsTypedArray() ||
        info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array)
      return throw_error(env, "TS_ERR_BAD_ARGUMENT", "punchHoles(fd, ranges: Float64Array)");
    int fd = info[0].As<Napi::Number>().Int32Value();
    auto arr = info[1].As<Napi::Float64Array>();
    std::vector<uint64_t> ranges(arr.ElementLength());
    for (size_t i = 0; i < ranges.size(); i++) {
      double d = arr[i];
      if (!(d >= 0)) return throw_error(env, "TS_ERR_BAD_ARGUMENT", "negative hole offset or length");
      ranges[i] = static_cast<uint64_t>(d);
    }
    // Off the JS thread, on a thread of its own (tierstack/run_on_thread.hpp).
    auto err = std::make_shared<int>(0);
    return tierstack::run_on_thread(
        env,
        [fd, ranges = std::move(ranges), err] {
          for (size_t i = 0; i + 1 < ranges.size(); i += 2) {
            if (ranges[i + 1] == 0) continue;
            if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(ranges[i]),
                            static_cast<off_t>(ranges[i + 1])) != 0) {
              *err = errno;
              return;
            }
          }
        },
        [err](Napi::Env env, Napi::Promise::Deferred &d) {
          if (*err == 0)
            d.Resolve(env.Undefined());
          else
            d.Reject(tierstack::errno_error(env, *err, "fallocate(PUNCH_HOLE)", nullptr, "fallocate").Value());
        });
  }
};

}  // namespace
}  // namespace tscore

using tscore::CoreAddon;
NODE_API_ADDON(CoreAddon)
