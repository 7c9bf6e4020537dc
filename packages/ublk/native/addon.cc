// N-API surface of @tierstack/ublk: a Device (handler + transport over a StackClient) and a few
// helpers (mlockall, ublk probe/delete). State lives in addon instance data and per-device
// objects; I/O threads never touch JavaScript (the StackClient hands JS-path work over in batches).
#include <napi.h>

#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <tierstack/trace_ring_napi.hpp>
#include <tierstack/napi_error.hpp>
#include <tierstack/run_on_thread.hpp>
#include <tierstack/stack_client.hpp>

#include "block_handler.hpp"
#include "fuse_transport.hpp"
#include "stats.hpp"
#include "ublk_transport.hpp"

namespace tsublk {
namespace {

// The stack as the handler sees it: one namespace of a StackClient.
class StackBackend : public PageBackend {
 public:
  StackBackend(std::shared_ptr<tierstack::StackClient> c, uint64_t ns) : client_(std::move(c)), ns_(ns) {}
  int get(const uint64_t *pages, size_t n, void *const *bufs, int32_t *status, uint8_t *level) override {
    return client_->get(ns_, pages, n, bufs, status, level);
  }
  int put(const uint64_t *pages, size_t n, const void *const *bufs) override {
    return client_->put(ns_, pages, n, bufs, TS_PUT_DIRTY);
  }
  int remove(const uint64_t *pages, size_t n) override { return client_->remove(ns_, pages, n); }
  // Flushes are coalesced: a caller waits for the first stack flush that started after it
  // asked (so it covers every write completed before), and everyone who asks while one runs
  // shares the next one: a burst of FLUSH requests from many queues costs one or two flush().
  int flush() override {
    std::unique_lock<std::mutex> lk(flush_mu_);
    uint64_t mine = ++flush_requested_;
    for (;;) {
      if (flush_done_ >= mine) return flush_rc_;
      if (!flush_running_) {
        flush_running_ = true;
        uint64_t covering = flush_requested_;
        lk.unlock();
        int rc = client_->flush();
        lk.lock();
        flush_running_ = false;
        flush_done_ = covering;
        flush_rc_ = rc;
        flush_cv_.notify_all();
        continue;
      }
      flush_cv_.wait(lk);
    }
  }

 private:
  std::shared_ptr<tierstack::StackClient> client_;
  uint64_t ns_;
  std::mutex flush_mu_;
  std::condition_variable flush_cv_;
  uint64_t flush_requested_ = 0, flush_done_ = 0;
  bool flush_running_ = false;
  int flush_rc_ = TS_OK;
};

using tierstack::make_error;

// Everything a device owns, shared with the threads that start and stop it.
struct DeviceCore {
  std::shared_ptr<tierstack::StackClient> client;
  std::unique_ptr<StackBackend> backend;
  std::unique_ptr<BlockHandler> handler;
  std::unique_ptr<Transport> transport;
  DeviceStats stats;
  TransportInfo info;
  std::mutex mu;
  bool stopped = false;
};

class Device : public Napi::ObjectWrap<Device> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Device",
                       {InstanceMethod("start", &Device::Start), InstanceMethod("stop", &Device::Stop),
                        InstanceMethod("stopSync", &Device::StopSync), InstanceMethod("stats", &Device::Stats),
                        InstanceMethod("traceEnable", &Device::TraceEnable), InstanceMethod("traceDisable", &Device::TraceDisable),
                        InstanceMethod("traceDrain", &Device::TraceDrain)});
  }

  // new Device(options, jsPath)
  explicit Device(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Device>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject()) {
      make_error(env, "TS_ERR_BAD_ARGUMENT", "new Device(options, jsPath) expected", EINVAL).ThrowAsJavaScriptException();
      return;
    }
    Napi::Object o = info[0].As<Napi::Object>();
    auto num = [&](const char *k, double dflt) {
      Napi::Value v = o.Get(k);
      return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : dflt;
    };
    std::string transport = o.Get("transport").ToString().Utf8Value();
    double size = num("sizeBytes", 0);
    bool lossless = false;
    Napi::Value nsv = o.Get("ns");
    uint64_t ns = nsv.IsBigInt() ? nsv.As<Napi::BigInt>().Uint64Value(&lossless) : 0;
    if (size <= 0 || size > 9007199254740991.0 || static_cast<uint64_t>(size) % 4096 != 0 || !nsv.IsBigInt()) {
      make_error(env, "TS_ERR_BAD_ARGUMENT", "sizeBytes must be a positive multiple of 4096 and ns a bigint namespace id", EINVAL)
          .ThrowAsJavaScriptException();
      return;
    }
    tierstack::StackClientOptions copts;
    copts.max_batch_pages = static_cast<size_t>(num("maxBatchPages", 1024));
    copts.max_queued_pages = static_cast<size_t>(num("maxQueuedPages", 8192));
    auto client = tierstack::StackClient::create(env, info[1].As<Napi::Object>(), copts);
    if (!client) return;  // exception pending
    if (client->page_size() != BlockHandler::kPageSize) {
      client->close();
      make_error(env, "TS_ERR_PAGE_SIZE", "the stack's page size must be 4096", EINVAL).ThrowAsJavaScriptException();
      return;
    }
    core_ = std::make_shared<DeviceCore>();
    core_->client = client;
    core_->backend.reset(new StackBackend(client, ns));
    core_->stats.lock_buffers = o.Get("lockBuffers").ToBoolean().Value();
    core_->handler.reset(new BlockHandler(core_->backend.get(), static_cast<uint64_t>(size)));
    if (transport == "fuse-loop") {
      FuseOptions fo;
      fo.mount_dir = o.Get("mountDir").ToString().Utf8Value();
      fo.block_size = static_cast<uint32_t>(num("blockSize", 4096));
      fo.max_threads = static_cast<uint32_t>(num("threads", 16));
      core_->transport.reset(new FuseTransport(core_->handler.get(), &core_->stats, fo));
    } else if (transport == "ublk") {
      UblkOptions uo;
      uo.queues = static_cast<uint32_t>(num("queues", 1));
      uo.depth = static_cast<uint32_t>(num("depth", 64));
      uo.max_io_bytes = static_cast<uint32_t>(num("maxIoBytes", 512 * 1024));
      uo.dev_id = static_cast<int>(num("devId", -1));
      uo.recovery = o.Get("recovery").ToBoolean().Value();
      uo.recover = o.Get("recover").ToBoolean().Value();
      core_->transport.reset(new UblkTransport(core_->handler.get(), &core_->stats, uo));
    } else {
      client->close();
      core_.reset();
      make_error(env, "TS_ERR_BAD_ARGUMENT", "transport must be 'ublk' or 'fuse-loop'", EINVAL).ThrowAsJavaScriptException();
    }
  }

  ~Device() override {
    // A device the program forgot to stop: stop it rather than leave threads serving a freed
    // stack. (The JS wrapper also stops devices on process exit.)
    if (core_) {
      core_->client->close();
      core_->transport->stop();
    }
  }

 private:
  // Starting and stopping block (a stop drains in-flight I/O, which may need the JS path): on
  // threads of their own, never the libuv pool (tierstack/run_on_thread.hpp).
  Napi::Value Start(const Napi::CallbackInfo &info) {
    auto core = core_;
    auto rc = std::make_shared<int>(0);
    auto error = std::make_shared<std::string>();
    return tierstack::run_on_thread(
        info.Env(), [core, rc, error] { *rc = core->transport->start(core->info, *error); },
        [core, rc, error](Napi::Env env, Napi::Promise::Deferred &d) {
          if (*rc != 0) {
            // The transports' messages name the call and its strerror; the code comes from the
            // kit's errno table (page_store.h ts_errno_code).
            d.Reject(make_error(env, ts_errno_code(*rc), *error, *rc).Value());
            return;
          }
          Napi::Object o = Napi::Object::New(env);
          o.Set("path", core->info.path);
          o.Set("id", core->info.id);
          o.Set("directIo", core->info.direct_io);
          d.Resolve(o);
        });
  }
  Napi::Value Stop(const Napi::CallbackInfo &info) {
    auto core = core_;
    return tierstack::run_on_thread(
        info.Env(), [core] { core->transport->stop(); },
        [core](Napi::Env env, Napi::Promise::Deferred &d) {
          core->client->close();
          d.Resolve(env.Undefined());
        });
  }
  // For process exit: fail JS-path waiters first (JS can no longer answer), then tear down.
  Napi::Value StopSync(const Napi::CallbackInfo &info) {
    core_->client->close();
    core_->transport->stop();
    return info.Env().Undefined();
  }
  Napi::Value Stats(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    Napi::Object out = Napi::Object::New(env);
    for (int i = 0; i < kOpCount; i++) {
      const OpStats &s = core_->stats.op(i);
      Napi::Object o = Napi::Object::New(env);
      o.Set("requests", static_cast<double>(s.requests.load()));
      o.Set("errors", static_cast<double>(s.errors.load()));
      o.Set("bytes", static_cast<double>(s.bytes.load()));
      o.Set("latencyNsSum", static_cast<double>(s.latency_ns_sum.load()));
      Napi::Array b = Napi::Array::New(env, kLatencyBuckets);
      for (int k = 0; k < kLatencyBuckets; k++) b.Set(static_cast<uint32_t>(k), static_cast<double>(s.buckets[k].load()));
      o.Set("log2NsBuckets", b);
      out.Set(kOpNames[i], o);
    }
    out.Set("lockedBytes", static_cast<double>(core_->stats.locked_bytes.load()));
    out.Set("lockErrno", core_->stats.lock_errno.load());
    return out;
  }

  // traceEnable(capacity) / traceDisable() / traceDrain(max): the kit's shape (trace_ring_napi.hpp).
  Napi::Value TraceEnable(const Napi::CallbackInfo &info) { return tierstack::trace_enable(info, core_->stats.trace); }
  Napi::Value TraceDisable(const Napi::CallbackInfo &info) {
    core_->stats.trace.disable();
    return info.Env().Undefined();
  }
  Napi::Value TraceDrain(const Napi::CallbackInfo &info) { return tierstack::trace_drain(info, core_->stats.trace, drained_); }

  std::shared_ptr<DeviceCore> core_;
  std::vector<TraceRing::Record> drained_;  // reused by traceDrain (JS thread only)
};

class UblkAddon : public Napi::Addon<UblkAddon> {
 public:
  UblkAddon(Napi::Env env, Napi::Object exports) {
    DefineAddon(exports, {InstanceValue("Device", Device::Init(env)),
                          InstanceMethod("ublkProbe", &UblkAddon::UblkProbe), InstanceMethod("ublkDelete", &UblkAddon::UblkDelete)});
  }

 private:
  Napi::Value UblkProbe(const Napi::CallbackInfo &info) { return Napi::Number::New(info.Env(), -ublk_probe()); }
  Napi::Value UblkDelete(const Napi::CallbackInfo &info) {
    std::string error;
    int rc = ublk_delete(info[0].ToNumber().Int32Value(), error);
    if (rc != 0) make_error(info.Env(), ts_errno_code(rc), error, rc).ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
};

}  // namespace
}  // namespace tsublk

using tsublk::UblkAddon;
NODE_API_ADDON(UblkAddon)
