// SnapshotReader: snapshot pages read from a tier stack in batches, off the JavaScript thread,
// every copy verified against the snapshot's CRC-32 and repaired from the levels below when it
// is bad (tierstack/snapshot_read.hpp). The CRIU page server answers GETs with it: the native
// tiers are read on a job thread with no JavaScript on the path; pages below them come through
// the stack's JavaScript path (StackClient), which that thread may wait for.
//
//   new SnapshotReader(jsPath, nsId: bigint, { pageCount, zeroBitmap: Uint8Array, checksums: Uint32Array })
//   reader.read(pages: Float64Array, out: Buffer, status: Int32Array, level: Uint8Array): Promise<number of pages not read>
//   reader.stats(): { zeroServed, verified, badCopies, repaired, unrecoverable }
//   reader.close()
#include "snapshot_reader.hpp"

#include <tierstack/napi_args.hpp>
#include <tierstack/napi_error.hpp>
#include <tierstack/snapshot_meta_napi.hpp>
#include <tierstack/snapshot_read.hpp>

#include <memory>
#include <string>

namespace tscore {
namespace {

using tierstack::throw_error;

class SnapshotReaderWrap : public Napi::ObjectWrap<SnapshotReaderWrap> {
 public:
  explicit SnapshotReaderWrap(const Napi::CallbackInfo &info) : Napi::ObjectWrap<SnapshotReaderWrap>(info) {
    Napi::Env env = info.Env();
    jobs_ = static_cast<tierstack::JobThreads *>(info.Data());
    if (info.Length() < 3 || !info[0].IsObject() || !info[1].IsBigInt() || !info[2].IsObject()) {
      throw_error(env, "TS_ERR_BAD_ARGUMENT", "SnapshotReader(jsPath, nsId, { pageCount, zeroBitmap, checksums })");
      return;
    }
    bool lossless = false;
    ns_ = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
    meta_ = tierstack::snapshot_meta_from(env, info[2].As<Napi::Object>(), false);
    if (!meta_) return;  // exception pending
    client_ = tierstack::StackClient::create(env, info[0].As<Napi::Object>());
    if (!client_) return;  // exception pending
    // Only reads in flight keep the event loop alive (they hold the job's own reference).
    client_->unref(env);
  }

  static Napi::Function Define(Napi::Env env, tierstack::JobThreads *jobs) {
    return DefineClass(env, "SnapshotReader",
                       {InstanceMethod("read", &SnapshotReaderWrap::Read), InstanceMethod("stats", &SnapshotReaderWrap::Stats),
                        InstanceMethod("close", &SnapshotReaderWrap::Close)},
                       jobs);
  }

 private:
  Napi::Value Read(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (!client_ || closed_) return throw_error(env, "TS_ERR_CLOSED", "the snapshot reader is closed");
    if (info.Length() < 4 || !is_typed(info[0], napi_float64_array) || !info[1].IsTypedArray() || !is_typed(info[2], napi_int32_array) ||
        !is_typed(info[3], napi_uint8_array))
      return throw_error(env, "TS_ERR_BAD_ARGUMENT", "read(pages: Float64Array, out: Buffer, status: Int32Array, level: Uint8Array)");
    auto pages = info[0].As<Napi::Float64Array>();
    auto out = info[1].As<Napi::TypedArray>();
    auto status = info[2].As<Napi::Int32Array>();
    auto level = info[3].As<Napi::Uint8Array>();
    const size_t n = pages.ElementLength();
    const uint32_t ps = client_->page_size();
    if (out.ByteLength() < n * ps || status.ElementLength() < n || level.ElementLength() < n)
      return throw_error(env, "TS_ERR_BAD_ARGUMENT", "read: out, status and level must hold one page / entry per requested page");
    const double *pg = pages.Data();
    uint8_t *dst = static_cast<uint8_t *>(out.ArrayBuffer().Data()) + out.ByteOffset();
    int32_t *st = status.Data();
    uint8_t *lv = level.Data();
    auto client = client_;
    auto meta = meta_;
    const uint64_t ns = ns_;
    client->ref(env);
    auto bad = std::make_shared<size_t>(0);
    // The typed arrays stay referenced (kept alive) until `done` has run. Resolves with the number
    // of pages not read, so JavaScript looks at `status` only when there is something to see.
    return jobs_->run(
        env,
        [client, meta, ns, pg, n, dst, st, lv, bad] {
          thread_local tierstack::SnapshotReadScratch sc;
          thread_local std::vector<uint64_t> want;
          want.resize(n);
          for (size_t i = 0; i < n; i++) want[i] = pg[i] >= 0 ? static_cast<uint64_t>(pg[i]) : UINT64_MAX;
          tierstack::read_snapshot_pages(*client, *meta, ns, want.data(), n, dst, st, lv, sc);
          for (size_t i = 0; i < n; i++) *bad += st[i] != TS_PAGE_FOUND;
        },
        [client, bad](Napi::Env env, Napi::Promise::Deferred &d) {
          client->unref(env);
          d.Resolve(Napi::Number::New(env, static_cast<double>(*bad)));
        },
        {info[0], info[1], info[2], info[3]});
  }

  Napi::Value Stats(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    return meta_ ? tierstack::snapshot_counters(env, *meta_) : Napi::Object::New(env);
  }

  // Reads still running finish (JS-path requests fail with TS_E_CLOSED); later reads throw.
  Napi::Value Close(const Napi::CallbackInfo &info) {
    if (client_ && !closed_) client_->close();
    closed_ = true;
    return info.Env().Undefined();
  }

  static bool is_typed(const Napi::Value &v, napi_typedarray_type t) {
    return v.IsTypedArray() && v.As<Napi::TypedArray>().TypedArrayType() == t;
  }

  tierstack::JobThreads *jobs_ = nullptr;
  std::shared_ptr<tierstack::StackClient> client_;
  std::shared_ptr<tierstack::SnapshotMeta> meta_;
  uint64_t ns_ = 0;
  bool closed_ = false;
};

}  // namespace

Napi::Function define_snapshot_reader(Napi::Env env, tierstack::JobThreads *jobs) { return SnapshotReaderWrap::Define(env, jobs); }

}  // namespace tscore
