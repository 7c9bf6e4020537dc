// N-API surface of @tierstack/uffd. JavaScript wrappers live in src/; this file only converts
// arguments, owns native objects and turns statuses into typed errors.
#include <napi.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include <tierstack/napi_args.hpp>
#include <tierstack/page_store_napi.hpp>
#include <tierstack/snapshot_meta_napi.hpp>
#include <tierstack/trace_ring_napi.hpp>
#include <tierstack/stack_client.hpp>

#include "engine.hpp"
#include "napi_util.hpp"
#include "shared_region.hpp"
#include "shared_region_napi.hpp"
#include "unix_socket.hpp"

namespace tsuffd {
namespace {

using tierstack::u64_of;

struct AddonData {
  Napi::FunctionReference engine_ctor;
  Napi::FunctionReference source_ctor;
  Napi::FunctionReference snapshot_ctor;
};

// ---- Snapshot (what a restore's regions know natively: zero pages, checksums, recorder) ----

// new NativeSnapshot({ pageCount, zeroBitmap: Uint8Array, checksums: Uint32Array, record, maxRecordPages })
class SnapshotWrap : public Napi::ObjectWrap<SnapshotWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeSnapshot",
                       {InstanceMethod("workingSet", &SnapshotWrap::WorkingSet),
                        InstanceMethod("stats", &SnapshotWrap::Stats)});
  }
  explicit SnapshotWrap(const Napi::CallbackInfo &info) : Napi::ObjectWrap<SnapshotWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 1 || !info[0].IsObject()) {
      throw_error(env, "TS_ERR_BAD_ARGUMENT", "NativeSnapshot(options)");
      return;
    }
    meta_ = tierstack::snapshot_meta_from(env, info[0].As<Napi::Object>(), true);
  }
  std::shared_ptr<SnapshotMeta> meta() const { return meta_; }

 private:
  // The recorded first-touch order (snapshot page numbers). Read it once the regions closed.
  Napi::Value WorkingSet(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    auto ws = meta_ ? meta_->working_set() : std::vector<uint32_t>{};
    auto out = Napi::Uint32Array::New(env, ws.size());
    if (!ws.empty()) std::memcpy(out.Data(), ws.data(), ws.size() * sizeof(uint32_t));
    return out;
  }
  Napi::Value Stats(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (!meta_) return Napi::Object::New(env);
    Napi::Object o = tierstack::snapshot_counters(env, *meta_);
    o.Set("recorded", Napi::Number::New(env, static_cast<double>(meta_->working_set().size())));
    return o;
  }
  std::shared_ptr<SnapshotMeta> meta_;
};

bool read_region_config(Napi::Env env, Napi::Object o, uint32_t ps, RegionConfig *c) {
  c->base = o.Has("base") ? u64_of(o.Get("base")) : 0;
  c->size = static_cast<uint64_t>(o.Get("size").ToNumber().Int64Value());
  c->ns = u64_of(o.Get("ns"));
  c->page_offset = static_cast<uint64_t>(o.Get("pageOffset").ToNumber().Int64Value());
  c->missing = o.Get("missing").ToString().Utf8Value() == "zero" ? MissingPolicy::kZero : MissingPolicy::kStrict;
  c->fault_around = o.Get("faultAround").ToNumber().Uint32Value();
  c->zero_after_remove = o.Get("zeroAfterRemove").ToBoolean().Value();
  c->managed = o.Get("managed").ToBoolean().Value();
  c->budget_pages = static_cast<uint64_t>(o.Get("budgetPages").ToNumber().Int64Value());
  c->fresh = o.Get("fresh").ToBoolean().Value();
  Napi::Value snap = o.Get("snapshot");
  if (snap.IsObject()) {
    Napi::Object so = snap.As<Napi::Object>();
    Napi::Value ctor = env.GetInstanceData<AddonData>()->snapshot_ctor.Value();
    if (!so.InstanceOf(ctor.As<Napi::Function>())) {
      throw_error(env, "TS_ERR_BAD_ARGUMENT", "region snapshot must be a NativeSnapshot");
      return false;
    }
    c->snap = SnapshotWrap::Unwrap(so)->meta();
    if (!c->snap) {
      throw_error(env, "TS_ERR_BAD_ARGUMENT", "region snapshot is not initialised");
      return false;
    }
  }
  if (c->size == 0 || c->size % ps != 0 || c->base % ps != 0) {
    throw_error(env, "TS_ERR_BAD_ARGUMENT", "region base and size must be non-zero multiples of the page size");
    return false;
  }
  if (c->fault_around < 1 || c->fault_around > 64) {
    throw_error(env, "TS_ERR_BAD_ARGUMENT", "faultAround must be in 1..64");
    return false;
  }
  return true;
}

class SourceWrap;


// ---- Engine ----

class EngineWrap : public Napi::ObjectWrap<EngineWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeEngine",
                       {InstanceMethod("createRegion", &EngineWrap::CreateRegion),
                        InstanceMethod("adopt", &EngineWrap::Adopt), InstanceMethod("close", &EngineWrap::Close),
                        InstanceMethod("adoptShared", &EngineWrap::AdoptShared),
                        InstanceMethod("features", &EngineWrap::Features),
                        InstanceMethod("takeEvents", &EngineWrap::TakeEvents),
                        InstanceMethod("traceEnable", &EngineWrap::TraceEnable),
                        InstanceMethod("traceDisable", &EngineWrap::TraceDisable),
                        InstanceMethod("traceDrain", &EngineWrap::TraceDrain)});
  }

  // new NativeEngine(jsPath, { faultThreads, cpus, maxBatchPages, maxQueuedPages }, onEvents)
  explicit EngineWrap(const Napi::CallbackInfo &info) : Napi::ObjectWrap<EngineWrap>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 3 || !info[0].IsObject() || !info[1].IsObject() || !info[2].IsFunction()) {
      throw_error(env, "TS_ERR_BAD_ARGUMENT", "NativeEngine(jsPath, options, onEvents)");
      return;
    }
    Napi::Object jp = info[0].As<Napi::Object>();
    Napi::Object o = info[1].As<Napi::Object>();
    tierstack::StackClientOptions copts;
    copts.max_batch_pages = o.Get("maxBatchPages").ToNumber().Uint32Value();
    copts.max_queued_pages = o.Get("maxQueuedPages").ToNumber().Uint32Value();
    auto client = tierstack::StackClient::create(env, jp, copts);
    if (!client) return;
    client->unref(env);  // an idle engine must not keep the process alive
    client_ = client;
    EngineOptions eo;
    eo.fault_threads = o.Get("faultThreads").ToNumber().Uint32Value();
    eo.max_batch_pages = copts.max_batch_pages;
    Napi::Value cpus = o.Get("cpus");
    if (cpus.IsArray()) {
      Napi::Array a = cpus.As<Napi::Array>();
      for (uint32_t i = 0; i < a.Length(); i++) eo.cpus.push_back(a.Get(i).ToNumber().Int32Value());
    }
    engine_ = std::make_shared<Engine>(client, eo);
    events_ = Napi::ThreadSafeFunction::New(env, info[2].As<Napi::Function>(), "tierstack-uffd-events", 0, 1);
    events_.Unref(env);
    auto tsfn = events_;
    engine_->set_notifier([tsfn]() mutable { tsfn.NonBlockingCall(); });
    int rc = engine_->start();
    if (rc < 0) {
      engine_->stop();
      throw_errno(env, rc, "userfaultfd is not available", "TS_ERR_UNSUPPORTED");
      return;
    }
  }

  ~EngineWrap() override { Shutdown(); }

  std::shared_ptr<Engine> engine() const { return engine_; }

 private:
  void Shutdown() {
    if (!engine_) return;
    engine_->set_notifier(nullptr);
    // Fail JS-path waiters first: a fault thread waiting for JavaScript (which cannot answer
    // while this thread is here) then returns, and the threads can be joined.
    if (client_) client_->close();
    engine_->stop();
    events_.Release();
    engine_.reset();
    client_.reset();
  }

  Napi::Value Close(const Napi::CallbackInfo &info) {
    Shutdown();
    return info.Env().Undefined();
  }

  Napi::Value Features(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (!engine_) return throw_error(env, "TS_ERR_CLOSED", "the uffd engine is closed");
    Napi::Object o = Napi::Object::New(env);
    uint64_t f = engine_->kernel_features();
    o.Set("raw", Napi::BigInt::New(env, f));
    o.Set("threadId", (f & UFFD_FEATURE_THREAD_ID) != 0);
    o.Set("writeProtect", (f & UFFD_FEATURE_PAGEFAULT_FLAG_WP) != 0);
    o.Set("poison", (f & UFFD_FEATURE_POISON) != 0);
    o.Set("eventRemove", (f & UFFD_FEATURE_EVENT_REMOVE) != 0);
    o.Set("minorShmem", (f & UFFD_FEATURE_MINOR_SHMEM) != 0);
    o.Set("jsThreadId", client_->js_thread_id());
    return o;
  }

  Napi::Value TakeEvents(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Napi::Array out = Napi::Array::New(env);
    if (!engine_) return out;
    auto evs = engine_->take_events();
    for (size_t i = 0; i < evs.size(); i++) {
      auto &e = evs[i];
      Napi::Object o = Napi::Object::New(env);
      o.Set("kind", e.kind == EngineEvent::kPageError ? "pageError" : "ownerExit");
      o.Set("source", Napi::Number::New(env, static_cast<double>(e.source_id)));
      o.Set("region", e.region_id);
      o.Set("address", Napi::BigInt::New(env, e.address));
      o.Set("page", Napi::Number::New(env, static_cast<double>(e.page)));
      o.Set("status", e.status);
      o.Set("code", e.kind == EngineEvent::kPageError ? code_of_status(e.status) : "TS_ERR_CLOSED");
      o.Set("tid", e.tid);
      o.Set("cause", e.cause);
      out.Set(static_cast<uint32_t>(i), o);
    }
    return out;
  }

  Napi::Value CreateRegion(const Napi::CallbackInfo &info);
  Napi::Value Adopt(const Napi::CallbackInfo &info);
  Napi::Value AdoptShared(const Napi::CallbackInfo &info);

  // The fault trace (Engine::trace()), in the kit's shape (trace_ring_napi.hpp).
  Napi::Value TraceEnable(const Napi::CallbackInfo &info) {
    if (!engine_) return throw_error(info.Env(), "TS_ERR_CLOSED", "the engine is closed");
    return tierstack::trace_enable(info, engine_->trace());
  }
  Napi::Value TraceDisable(const Napi::CallbackInfo &info) {
    if (engine_) engine_->trace().disable();
    return info.Env().Undefined();
  }
  Napi::Value TraceDrain(const Napi::CallbackInfo &info) {
    if (!engine_) return throw_error(info.Env(), "TS_ERR_CLOSED", "the engine is closed");
    return tierstack::trace_drain(info, engine_->trace(), drained_);
  }

  std::vector<tierstack::TraceRing::Record> drained_;  // reused by traceDrain (JS thread only)
  std::shared_ptr<Engine> engine_;
  std::shared_ptr<tierstack::StackClient> client_;
  Napi::ThreadSafeFunction events_;
};

// ---- Source (an in-process region, or an adopted uffd with its regions) ----

class SourceWrap : public Napi::ObjectWrap<SourceWrap> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "NativeSource",
                       {InstanceMethod("regionCount", &SourceWrap::RegionCount),
                        InstanceMethod("regionInfo", &SourceWrap::RegionInfo),
                        InstanceMethod("buffer", &SourceWrap::Buffer), InstanceMethod("stats", &SourceWrap::Stats),
                        InstanceMethod("prefetch", &SourceWrap::Prefetch), InstanceMethod("ensure", &SourceWrap::Ensure),
                        InstanceMethod("flush", &SourceWrap::Flush), InstanceMethod("discard", &SourceWrap::Discard),
                        InstanceMethod("residentPages", &SourceWrap::ResidentPages),
                        InstanceMethod("beginClose", &SourceWrap::BeginClose),
                        InstanceMethod("busy", &SourceWrap::Busy),
                        InstanceMethod("finishClose", &SourceWrap::FinishClose)});
  }
  explicit SourceWrap(const Napi::CallbackInfo &info) : Napi::ObjectWrap<SourceWrap>(info) {}
  ~SourceWrap() override {
    // Collected without close(): stop serving and release the kernel objects. Fault threads
    // may still hold the source briefly; they only use it through their own shared_ptr.
    if (source_ && engine_ && !finished_) {
      engine_->begin_close(source_);
      // A Buffer handed out may outlive this wrapper: keep the mapping rather than unmap
      // memory JavaScript can still reach (close() detaches the buffers first).
      if (!buffers_.empty()) source_->owns_mapping = false;
      // A fault thread may still be serving this source, possibly waiting for the JS thread
      // (which is running this finalizer): release the kernel objects once it is done.
      auto engine = engine_;
      auto source = source_;
      std::thread([engine, source] {
        while (source->busy.load() > 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        engine->finish_close(source);
      }).detach();
    }
  }

  void Init(std::shared_ptr<Engine> engine, std::shared_ptr<Source> source) {
    engine_ = std::move(engine);
    source_ = std::move(source);
  }

 private:
  Region *region_arg(const Napi::CallbackInfo &info, size_t i) {
    uint32_t k = info.Length() > i ? info[i].ToNumber().Uint32Value() : 0;
    if (!source_ || finished_ || k >= source_->regions.size()) {
      throw_error(info.Env(), "TS_ERR_CLOSED", "the region is closed");
      return nullptr;
    }
    return source_->regions[k].get();
  }

  Napi::Value RegionCount(const Napi::CallbackInfo &info) {
    return Napi::Number::New(info.Env(), source_ ? static_cast<double>(source_->regions.size()) : 0);
  }

  Napi::Value RegionInfo(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Region *r = region_arg(info, 0);
    if (!r) return env.Undefined();
    Napi::Object o = Napi::Object::New(env);
    o.Set("id", r->id);
    o.Set("address", Napi::BigInt::New(env, r->cfg.base));
    o.Set("size", Napi::Number::New(env, static_cast<double>(r->cfg.size)));
    o.Set("pages", Napi::Number::New(env, static_cast<double>(r->npages)));
    o.Set("pageOffset", Napi::Number::New(env, static_cast<double>(r->cfg.page_offset)));
    o.Set("features", Napi::BigInt::New(env, source_->features));
    o.Set("ownerPid", source_->owner_pid);
    o.Set("source", Napi::Number::New(env, static_cast<double>(source_->id)));
    return o;
  }

  // An external ArrayBuffer over an in-process region (detached by JS on close).
  Napi::Value Buffer(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Region *r = region_arg(info, 0);
    if (!r) return env.Undefined();
    if (!source_->owns_mapping) return throw_error(env, "TS_ERR_UNSUPPORTED", "an adopted region lives in another process");
    auto ab = Napi::ArrayBuffer::New(env, reinterpret_cast<void *>(r->cfg.base), r->cfg.size);
    buffers_.push_back(Napi::Persistent(ab));  // detached on close, before the memory is unmapped
    return ab;
  }

  Napi::Value Stats(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Region *r = region_arg(info, 0);
    if (!r) return env.Undefined();
    const RegionStats &s = r->stats;
    Napi::Object o = Napi::Object::New(env);
    auto num = [&](const char *k, const std::atomic<uint64_t> &v) {
      o.Set(k, Napi::Number::New(env, static_cast<double>(v.load(std::memory_order_relaxed))));
    };
    num("faults", s.faults);
    num("wpFaults", s.wp_faults);
    num("pagesInstalled", s.pages_installed);
    num("zeroPages", s.zero_pages);
    num("poisoned", s.poisoned);
    num("alreadyPresent", s.eexist);
    num("eagainRetries", s.eagain_retries);
    num("prefetched", s.prefetched);
    num("jsPathPages", s.js_path_pages);
    num("deadlocks", s.deadlocks);
    num("evictions", s.evictions);
    num("writebacks", s.writebacks);
    num("writebackErrors", s.writeback_errors);
    num("removedPages", s.removed_pages);
    Napi::Array lv = Napi::Array::New(env);
    for (int i = 0; i < kMaxLevels; i++) lv.Set(i, Napi::Number::New(env, static_cast<double>(s.by_level[i].load())));
    o.Set("pagesByLevel", lv);
    auto hist = Napi::Float64Array::New(env, LatencyBuckets::kBuckets);
    for (int i = 0; i < LatencyBuckets::kBuckets; i++) hist[i] = static_cast<double>(s.latency.counts[i].load());
    o.Set("latencyBuckets", hist);
    o.Set("latencySumNs", Napi::Number::New(env, static_cast<double>(s.latency.sum_ns.load())));
    o.Set("latencyMaxNs", Napi::Number::New(env, static_cast<double>(s.latency.max_ns.load())));
    return o;
  }

  Napi::Value ResidentPages(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Region *r = region_arg(info, 0);
    if (!r) return env.Undefined();
    size_t n = 0;
    for (size_t i = 0; i < r->npages; i++) n += r->installed.test(i);
    return Napi::Number::New(env, static_cast<double>(n));
  }

  // prefetch(region, pages: Float64Array, chunkPages?) → Promise<number>: pages in arrival order,
  // installed chunk by chunk (one wake each) on a native thread.
  Napi::Value Prefetch(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Region *r = region_arg(info, 0);
    if (!r) return env.Undefined();
    Napi::Float64Array arr = info[1].As<Napi::Float64Array>();
    auto idx = std::make_shared<std::vector<uint64_t>>(arr.ElementLength());
    for (size_t i = 0; i < arr.ElementLength(); i++) (*idx)[i] = static_cast<uint64_t>(arr[i]);
    auto engine = engine_;
    auto source = source_;
    auto got = std::make_shared<int64_t>(0);
    size_t chunk = info.Length() > 2 && info[2].IsNumber() ? static_cast<size_t>(info[2].ToNumber().Int64Value()) : 0;
    return run_on_thread(
        env, [engine, source, r, idx, got, chunk] { *got = engine->prefetch(*source, *r, *idx, chunk); },
        [got](Napi::Env env, Napi::Promise::Deferred &d) { d.Resolve(Napi::Number::New(env, static_cast<double>(*got))); });
  }

  // ensure(region, firstPage, count): JS thread, native tiers only; throws TS_ERR_DEADLOCK when
  // a page needs the JS path (it cannot be served while this thread waits).
  Napi::Value Ensure(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Region *r = region_arg(info, 0);
    if (!r) return env.Undefined();
    uint64_t first = static_cast<uint64_t>(info[1].ToNumber().Int64Value());
    uint64_t count = static_cast<uint64_t>(info[2].ToNumber().Int64Value());
    int32_t bad = 0;
    uint64_t bad_page = 0;
    int64_t got = engine_->ensure(*source_, *r, first, count, &bad, &bad_page);
    if (bad != 0) {
      std::string msg = bad == TS_E_DEADLOCK
                            ? "page " + std::to_string(bad_page) +
                                  " is only available through the JS path: the JS thread cannot wait for it (use prefetch() first, or touch it from another thread)"
                            : "page " + std::to_string(bad_page) + " could not be produced";
      Napi::Error e = make_error(env, code_of_status(bad), msg);
      e.Set("page", Napi::Number::New(env, static_cast<double>(bad_page)));
      e.ThrowAsJavaScriptException();
      return env.Undefined();
    }
    return Napi::Number::New(env, static_cast<double>(got));
  }

  Napi::Value Flush(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Region *r = region_arg(info, 0);
    if (!r) return env.Undefined();
    auto engine = engine_;
    auto source = source_;
    auto rc = std::make_shared<int>(0);
    return run_on_thread(
        env, [engine, source, r, rc] { *rc = engine->flush(*source, *r); },
        [rc](Napi::Env env, Napi::Promise::Deferred &d) {
          if (*rc == TS_OK)
            d.Resolve(env.Undefined());
          else
            d.Reject(make_error(env, code_of_status(*rc), "flushing the region's dirty pages failed").Value());
        });
  }

  Napi::Value Discard(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Region *r = region_arg(info, 0);
    if (!r) return env.Undefined();
    uint64_t first = info.Length() > 1 ? static_cast<uint64_t>(info[1].ToNumber().Int64Value()) : 0;
    uint64_t count = info.Length() > 2 ? static_cast<uint64_t>(info[2].ToNumber().Int64Value()) : r->npages;
    int rc = engine_->discard(*source_, *r, first, count);
    if (rc != TS_OK) return throw_error(env, code_of_status(rc), "discard failed");
    return env.Undefined();
  }

  Napi::Value BeginClose(const Napi::CallbackInfo &info) {
    if (source_ && engine_) engine_->begin_close(source_);
    return info.Env().Undefined();
  }
  Napi::Value Busy(const Napi::CallbackInfo &info) {
    return Napi::Boolean::New(info.Env(), source_ && source_->busy.load() > 0);
  }
  Napi::Value FinishClose(const Napi::CallbackInfo &info) {
    if (source_ && engine_ && !finished_) {
      for (auto &ref : buffers_)
        if (!ref.IsEmpty()) ref.Value().Detach();
      buffers_.clear();
      engine_->begin_close(source_);
      engine_->finish_close(source_);
      finished_ = true;
    }
    return info.Env().Undefined();
  }

  std::shared_ptr<Engine> engine_;
  std::shared_ptr<Source> source_;
  std::vector<Napi::Reference<Napi::ArrayBuffer>> buffers_;
  bool finished_ = false;
};

Napi::Value EngineWrap::CreateRegion(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!engine_) return throw_error(env, "TS_ERR_CLOSED", "the uffd engine is closed");
  RegionConfig c;
  if (!read_region_config(env, info[0].As<Napi::Object>(), engine_->page_size(), &c)) return env.Undefined();
  std::string err;
  int e = 0;
  auto s = engine_->create_region(c, &err, &e);
  if (!s) return throw_errno(env, e, err);  // the kit's errno policy (page_store.h ts_errno_code)
  Napi::Object obj = env.GetInstanceData<AddonData>()->source_ctor.New({});
  SourceWrap::Unwrap(obj)->Init(engine_, s);
  return obj;
}

// adopt(fd, pid, features: bigint, apiDone, regions[])
Napi::Value EngineWrap::Adopt(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!engine_) return throw_error(env, "TS_ERR_CLOSED", "the uffd engine is closed");
  int fd = info[0].ToNumber().Int32Value();
  pid_t pid = info[1].ToNumber().Int32Value();
  uint64_t features = u64_of(info[2]);
  bool api_done = info[3].ToBoolean().Value();
  Napi::Array regions = info[4].As<Napi::Array>();
  std::vector<RegionConfig> cfgs;
  for (uint32_t i = 0; i < regions.Length(); i++) {
    RegionConfig c;
    if (!read_region_config(env, regions.Get(i).As<Napi::Object>(), engine_->page_size(), &c)) return env.Undefined();
    if (c.managed) return throw_error(env, "TS_ERR_UNSUPPORTED", "managed regions must be in this process");
    cfgs.push_back(c);
  }
  // Optional 6th argument: { removed: Float64Array [start, length, ...], removeSink: fd, removeTag }.
  std::vector<std::pair<uint64_t, uint64_t>> removed;
  int sink = -1;
  uint32_t tag = 0;
  if (info.Length() > 5 && info[5].IsObject()) {
    Napi::Object x = info[5].As<Napi::Object>();
    Napi::Value rv = x.Get("removed");
    if (rv.IsTypedArray() && rv.As<Napi::TypedArray>().TypedArrayType() == napi_float64_array) {
      auto arr = rv.As<Napi::Float64Array>();
      for (size_t i = 0; i + 1 < arr.ElementLength(); i += 2) {
        uint64_t start = static_cast<uint64_t>(arr[i]), len = static_cast<uint64_t>(arr[i + 1]);
        removed.emplace_back(start, start + len);
      }
    }
    if (x.Get("removeSink").IsNumber()) sink = x.Get("removeSink").ToNumber().Int32Value();
    if (x.Get("removeTag").IsNumber()) tag = x.Get("removeTag").ToNumber().Uint32Value();
  }
  std::string err;
  int e = 0;
  auto s = engine_->adopt(fd, pid, features, api_done, cfgs, &err, &e, removed, sink, tag);
  if (!s) return throw_errno(env, e, err, "TS_ERR_IO");
  Napi::Object obj = env.GetInstanceData<AddonData>()->source_ctor.New({});
  SourceWrap::Unwrap(obj)->Init(engine_, s);
  return obj;
}

// adoptShared(uffd, memfd, fileOffset, pid, region) → { source: NativeSource, shared }: a managed
// region of another process that maps `memfd` MAP_SHARED (shared_region.hpp). Takes both fds.
Napi::Value EngineWrap::AdoptShared(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (!engine_) return throw_error(env, "TS_ERR_CLOSED", "the uffd engine is closed");
  int uffd = info[0].ToNumber().Int32Value();
  int memfd = info[1].ToNumber().Int32Value();
  uint64_t file_offset = u64_of(info[2]);
  pid_t pid = info[3].ToNumber().Int32Value();
  RegionConfig c;
  if (!read_region_config(env, info[4].As<Napi::Object>(), engine_->page_size(), &c)) {
    ::close(uffd);
    ::close(memfd);
    return env.Undefined();
  }
  std::string err;
  int e = 0;
  auto s = adopt_shared(*engine_, uffd, memfd, file_offset, pid, c, &err, &e);
  if (!s) return throw_errno(env, e, err);  // the kit's errno policy (page_store.h ts_errno_code)
  Napi::Object src = env.GetInstanceData<AddonData>()->source_ctor.New({});
  SourceWrap::Unwrap(src)->Init(engine_, s);
  Napi::Object out = Napi::Object::New(env);
  out.Set("source", src);
  out.Set("shared", shared_region_object(env, engine_, s));
  return out;
}

// ---- Unix socket descriptor passing ----

Napi::Value ReceivedToJs(Napi::Env env, const Received &r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("fd", r.fd);
  o.Set("conn", r.conn);
  o.Set("pid", static_cast<double>(r.pid));
  o.Set("uid", static_cast<double>(r.uid));
  o.Set("gid", static_cast<double>(r.gid));
  o.Set("message", Napi::Buffer<uint8_t>::Copy(env, r.message.data(), r.message.size()));
  return o;
}

Napi::Value ListenUnix(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int fd = listen_unix(info[0].ToString().Utf8Value(), info.Length() > 1 ? info[1].ToNumber().Int32Value() : 16);
  if (fd < 0) return throw_errno(env, fd, "cannot listen on " + info[0].ToString().Utf8Value(), "TS_ERR_IO");
  return Napi::Number::New(env, fd);
}

Napi::Value ReceiveCommon(const Napi::CallbackInfo &info, bool accept) {
  Napi::Env env = info.Env();
  int fd = info[0].ToNumber().Int32Value();
  int timeout = info.Length() > 1 && info[1].IsNumber() ? info[1].ToNumber().Int32Value() : -1;
  auto res = std::make_shared<Received>();
  return run_on_thread(
      env, [fd, timeout, accept, res] { *res = accept ? accept_and_receive(fd, timeout) : receive_fd(fd, timeout); },
      [res](Napi::Env env, Napi::Promise::Deferred &d) {
        if (res->fd >= 0 && res->err == 0) {
          d.Resolve(ReceivedToJs(env, *res));
        } else {
          if (res->fd >= 0) ::close(res->fd);
          const char *code = res->err == ETIMEDOUT ? "TS_ERR_TIMEOUT" : res->err == EBADMSG ? "TS_ERR_PROTOCOL" : "TS_ERR_IO";
          d.Reject(errno_error(env, res->err, "receiving a userfaultfd failed (" + res->what + ")", code).Value());
        }
      });
}
Napi::Value AcceptFd(const Napi::CallbackInfo &info) { return ReceiveCommon(info, true); }
Napi::Value ReceiveFd(const Napi::CallbackInfo &info) { return ReceiveCommon(info, false); }


// sendFd(path, message: Buffer, fd) → connection fd (kept open by the caller). For tests and
// for handing a uffd on to another handler.
Napi::Value SendFd(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  int conn = connect_unix(info[0].ToString().Utf8Value());
  if (conn < 0) return throw_errno(env, conn, "connect", "TS_ERR_IO");
  auto msg = info[1].As<Napi::Buffer<uint8_t>>();
  int rc = send_fd(conn, msg.Data(), msg.Length(), info[2].ToNumber().Int32Value());
  if (rc < 0) {
    ::close(conn);
    return throw_errno(env, rc, "sendmsg", "TS_ERR_IO");
  }
  return Napi::Number::New(env, conn);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto *data = new AddonData();
  data->engine_ctor = Napi::Persistent(EngineWrap::Define(env));
  data->source_ctor = Napi::Persistent(SourceWrap::Define(env));
  data->snapshot_ctor = Napi::Persistent(SnapshotWrap::Define(env));
  env.SetInstanceData<AddonData>(data);
  exports.Set("NativeEngine", data->engine_ctor.Value());
  exports.Set("NativeSnapshot", data->snapshot_ctor.Value());
  exports.Set("listenUnix", Napi::Function::New(env, ListenUnix));
  exports.Set("acceptFd", Napi::Function::New(env, AcceptFd));
  exports.Set("receiveFd", Napi::Function::New(env, ReceiveFd));
  exports.Set("sendFd", Napi::Function::New(env, SendFd));
  exports.Set("closeFd", Napi::Function::New(env, tierstack::close_fd));
  exports.Set("shutdownFd", Napi::Function::New(env, tierstack::shutdown_fd));
  exports.Set("sharedRegionsSupported", Napi::Function::New(env, SharedRegionsSupported));
  return exports;
}

}  // namespace
Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return Init(env, exports); }
}  // namespace tsuffd

static Napi::Object InitTierstackUffd(Napi::Env env, Napi::Object exports) { return tsuffd::InitAddon(env, exports); }
NODE_API_MODULE(tierstack_uffd, InitTierstackUffd)
