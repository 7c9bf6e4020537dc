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
  int get(const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) override {
    return client_->get(ns_, pages, n, bufs, status);
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

const char *code_of_errno(int e) {
  switch (e) {
    case ENOENT:
    case ENODEV:
    case ENXIO:
    case EOPNOTSUPP:
      return "TS_ERR_UNSUPPORTED";
    case EACCES:
    case EPERM:
      return "TS_ERR_PERMISSION";
    case EINVAL:
      return "TS_ERR_BAD_ARGUMENT";
    default:
      return "TS_ERR_IO";
  }
}

Napi::Error make_error(Napi::Env env, int neg_errno, const std::string &msg, const char *code = nullptr) {
  int e = -neg_errno;
  Napi::Error err = Napi::Error::New(env, msg);
  err.Set("code", Napi::String::New(env, code ? code : code_of_errno(e)));
  err.Set("errno", Napi::Number::New(env, e));
  return err;
}

// Everything a device owns, shared with the async workers that start and stop it.
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

class StartWorker : public Napi::AsyncWorker {
 public:
  StartWorker(Napi::Env env, std::shared_ptr<DeviceCore> core)
      : Napi::AsyncWorker(env), core_(std::move(core)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override { rc_ = core_->transport->start(core_->info, error_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (rc_ != 0) {
      deferred_.Reject(make_error(env, rc_, error_).Value());
      return;
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("path", core_->info.path);
    o.Set("id", core_->info.id);
    o.Set("directIo", core_->info.direct_io);
    deferred_.Resolve(o);
  }

 private:
  std::shared_ptr<DeviceCore> core_;
  Napi::Promise::Deferred deferred_;
  int rc_ = 0;
  std::string error_;
};

class StopWorker : public Napi::AsyncWorker {
 public:
  StopWorker(Napi::Env env, std::shared_ptr<DeviceCore> core)
      : Napi::AsyncWorker(env), core_(std::move(core)), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  // Off the JS thread: stopping drains in-flight I/O, which may need the JS path.
  void Execute() override { core_->transport->stop(); }
  void OnOK() override {
    core_->client->close();
    deferred_.Resolve(Env().Undefined());
  }

 private:
  std::shared_ptr<DeviceCore> core_;
  Napi::Promise::Deferred deferred_;
};

class Device : public Napi::ObjectWrap<Device> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Device",
                       {InstanceMethod("start", &Device::Start), InstanceMethod("stop", &Device::Stop),
                        InstanceMethod("stopSync", &Device::StopSync), InstanceMethod("stats", &Device::Stats)});
  }

  // new Device(options, jsPath)
  explicit Device(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Device>(info) {
    Napi::Env env = info.Env();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject()) {
      make_error(env, -EINVAL, "new Device(options, jsPath) expected", "TS_ERR_BAD_ARGUMENT").ThrowAsJavaScriptException();
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
      make_error(env, -EINVAL, "sizeBytes must be a positive multiple of 4096 and ns a bigint namespace id", "TS_ERR_BAD_ARGUMENT")
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
      make_error(env, -EINVAL, "the stack's page size must be 4096", "TS_ERR_PAGE_SIZE").ThrowAsJavaScriptException();
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
      core_->transport.reset(new UblkTransport(core_->handler.get(), &core_->stats, uo));
    } else {
      client->close();
      core_.reset();
      make_error(env, -EINVAL, "transport must be 'ublk' or 'fuse-loop'", "TS_ERR_BAD_ARGUMENT").ThrowAsJavaScriptException();
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
  Napi::Value Start(const Napi::CallbackInfo &info) {
    auto *w = new StartWorker(info.Env(), core_);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  }
  Napi::Value Stop(const Napi::CallbackInfo &info) {
    auto *w = new StopWorker(info.Env(), core_);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
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

  std::shared_ptr<DeviceCore> core_;
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
    if (rc != 0) make_error(info.Env(), rc, error).ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
};

}  // namespace
}  // namespace tsublk

using tsublk::UblkAddon;
NODE_API_ADDON(UblkAddon)
