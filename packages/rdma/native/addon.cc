// N-API surface of @tierstack/rdma: Donor (the memd daemon's data plane) and Pool (the
// RdmaPoolTier's native core, also exported as a page-store C ABI handle). Drivers of the handle
// from native threads are the testing kit's (@tierstack/core/testing driveStore).
#include <napi.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <tierstack/clock.hpp>
#include <tierstack/napi_args.hpp>
#include <tierstack/napi_error.hpp>
#include <tierstack/page_store_napi.hpp>
#include <tierstack/run_on_thread.hpp>

#include "donor.hpp"
#include "pool.hpp"

using namespace tsrdma;

namespace {

using tierstack::throw_error;

using tierstack::pages_of;
using tierstack::u64_of;

Replica to_replica(const Napi::Value &v) {
  auto o = v.As<Napi::Object>();
  Replica r;
  r.conn = o.Get("conn").As<Napi::Number>().Int32Value();
  r.addr = u64_of(o.Get("addr"));
  r.rkey = u64_of(o.Get("rkey"));
  r.slab_id = u64_of(o.Get("slabId"));
  r.state = kActive;
  return r;
}

// ---------------------------------------------------------------- Donor

class DonorWrap : public Napi::ObjectWrap<DonorWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Donor",
                       {InstanceMethod<&DonorWrap::Address>("address"), InstanceMethod<&DonorWrap::MrMode>("mrMode"),
                        InstanceMethod<&DonorWrap::RawAddress>("rawAddress"),
                        InstanceMethod<&DonorWrap::AllocSlab>("allocSlab"), InstanceMethod<&DonorWrap::FreeSlab>("freeSlab"),
                        InstanceMethod<&DonorWrap::Stats>("stats"), InstanceMethod<&DonorWrap::Close>("close")});
  }
  DonorWrap(const Napi::CallbackInfo &info) : Napi::ObjectWrap<DonorWrap>(info) {
    auto env = info.Env();
    if (info.Length() < 3 || !info[0].IsString() || !info[1].IsString() || !info[2].IsString()) {
      throw_error(env, "TS_ERR_BAD_ARGUMENT", "Donor(provider, node, service): strings expected");
      return;
    }
    donor_ = std::make_unique<Donor>();
    if (!donor_->open(info[0].As<Napi::String>(), info[1].As<Napi::String>(), info[2].As<Napi::String>())) {
      std::string msg = "cannot open the libfabric donor endpoint: " + donor_->error();
      donor_.reset();
      throw_error(env, "TS_ERR_UNAVAILABLE", msg);
    }
  }

 private:
  bool check(Napi::Env env) {
    if (donor_) return true;
    throw_error(env, "TS_ERR_CLOSED", "donor is closed");
    return false;
  }
  Napi::Value Address(const Napi::CallbackInfo &info) {
    if (!check(info.Env())) return info.Env().Undefined();
    auto o = Napi::Object::New(info.Env());
    o.Set("node", donor_->node());
    o.Set("service", donor_->service());
    return o;
  }
  Napi::Value RawAddress(const Napi::CallbackInfo &info) {
    if (!check(info.Env())) return info.Env().Undefined();
    const std::string &a = donor_->raw_address();
    return Napi::Buffer<char>::Copy(info.Env(), a.data(), a.size());
  }
  Napi::Value MrMode(const Napi::CallbackInfo &info) {
    if (!check(info.Env())) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), donor_->mr_mode());
  }
  Napi::Value AllocSlab(const Napi::CallbackInfo &info) {
    auto env = info.Env();
    if (!check(env)) return env.Undefined();
    DonorSlab s;
    uint64_t key = info.Length() > 2 ? u64_of(info[2]) : u64_of(info[0]);
    if (!donor_->alloc_slab(u64_of(info[0]), static_cast<size_t>(info[1].As<Napi::Number>().Int64Value()), key, s)) {
      // A refusal to place, whatever the cause; the message (and errno) say which, so that the
      // client's error and the daemon's log name it (e.g. RLIMIT_MEMLOCK below the slab size).
      throw_error(env, "TS_ERR_NO_SPACE", "slab allocation failed: " + donor_->error(), donor_->error_errno());
      return env.Undefined();
    }
    auto o = Napi::Object::New(env);
    o.Set("addr", Napi::BigInt::New(env, s.remote_addr));
    o.Set("rkey", Napi::BigInt::New(env, s.rkey));
    return o;
  }
  Napi::Value FreeSlab(const Napi::CallbackInfo &info) {
    if (!check(info.Env())) return info.Env().Undefined();
    return Napi::Boolean::New(info.Env(), donor_->free_slab(u64_of(info[0])));
  }
  Napi::Value Stats(const Napi::CallbackInfo &info) {
    auto env = info.Env();
    if (!check(env)) return env.Undefined();
    auto o = Napi::Object::New(env);
    o.Set("connections", Napi::Number::New(env, static_cast<double>(donor_->connection_count())));
    o.Set("slabs", Napi::Number::New(env, static_cast<double>(donor_->slab_count())));
    return o;
  }
  Napi::Value Close(const Napi::CallbackInfo &info) {
    donor_.reset();
    return info.Env().Undefined();
  }
  std::unique_ptr<Donor> donor_;
};

// ---------------------------------------------------------------- Pool

// The addon's instance data: the threads pool jobs run on (reused: an async get/put is a job).
struct AddonData {
  tierstack::JobThreads jobs;
};

// Runs `fn` on a thread of its own (tierstack/run_on_thread.hpp: never the libuv pool) with a
// reference on the pool; resolves with what `done` builds, or rejects with the status `fn`
// returned (and its message, if it wrote one).
Napi::Value pool_job(Napi::Env env, Pool *pool, std::function<int(std::string &)> fn, std::function<Napi::Value(Napi::Env)> done,
                     std::initializer_list<Napi::Value> keep = {}) {
  pool->retain();
  auto rc = std::make_shared<int>(TS_OK);
  auto err = std::make_shared<std::string>();
  return tierstack::run_on_thread(
      env.GetInstanceData<AddonData>()->jobs, env, [fn = std::move(fn), rc, err] { *rc = fn(*err); },
      [pool, done = std::move(done), rc, err](Napi::Env env, Napi::Promise::Deferred &d) {
        pool->release();
        if (*rc < 0)
          d.Reject(tierstack::status_error(env, *rc, err->empty() ? std::string("rdma pool operation failed (") + ts_status_code(*rc) + ")" : *err).Value());
        else
          d.Resolve(done ? done(env) : env.Undefined());
      },
      keep);
}

class PoolWrap : public Napi::ObjectWrap<PoolWrap> {
 public:
  static Napi::Function Init(Napi::Env env) {
    return DefineClass(env, "Pool",
                       {InstanceMethod<&PoolWrap::Connect>("connect"), InstanceMethod<&PoolWrap::KillConn>("killConn"),
                        InstanceMethod<&PoolWrap::ConnUp>("connUp"), InstanceMethod<&PoolWrap::AddSlab>("addSlab"),
                        InstanceMethod<&PoolWrap::HasSlab>("hasSlab"), InstanceMethod<&PoolWrap::AddReplica>("addReplica"),
                        InstanceMethod<&PoolWrap::CopyReplica>("copyReplica"), InstanceMethod<&PoolWrap::SetReplicaState>("setReplicaState"),
                        InstanceMethod<&PoolWrap::DropReplica>("dropReplica"), InstanceMethod<&PoolWrap::ReplaceLost>("replaceLost"),
                        InstanceMethod<&PoolWrap::Slabs>("slabs"), InstanceMethod<&PoolWrap::DropEmptySlab>("dropEmptySlab"), InstanceMethod<&PoolWrap::TakeTouched>("takeTouched"),
                        InstanceMethod<&PoolWrap::Degraded>("degradedEvents"), InstanceMethod<&PoolWrap::Get>("get"),
                        InstanceMethod<&PoolWrap::Put>("put"), InstanceMethod<&PoolWrap::Remove>("remove"),
                        InstanceMethod<&PoolWrap::Handle>("handle"), InstanceMethod<&PoolWrap::SetBackup>("setBackup"),
                        InstanceMethod<&PoolWrap::RestoreFromBackup>("restoreFromBackup"), InstanceMethod<&PoolWrap::Counters>("counters"),
                        InstanceMethod<&PoolWrap::Close>("close")});
  }
  PoolWrap(const Napi::CallbackInfo &info) : Napi::ObjectWrap<PoolWrap>(info) {
    auto env = info.Env();
    auto o = info[0].As<Napi::Object>();
    std::string provider = o.Get("provider").As<Napi::String>();
    uint32_t page_size = o.Get("pageSize").As<Napi::Number>().Uint32Value();
    uint64_t slab_pages = static_cast<uint64_t>(o.Get("slabPages").As<Napi::Number>().Int64Value());
    uint32_t timeout = o.Get("opTimeoutMs").As<Napi::Number>().Uint32Value();
    std::string name = o.Get("name").As<Napi::String>();
    if (page_size == 0 || slab_pages == 0) {
      throw_error(env, "TS_ERR_BAD_ARGUMENT", "pageSize and slabPages must be positive");
      return;
    }
    pool_ = new Pool(page_size, slab_pages, timeout, name);
    pool_->open(provider);
  }
  ~PoolWrap() override {
    if (pool_) pool_->release();
  }

 private:
  // connect(idx, node, service, rawAddr?: Buffer)
  Napi::Value Connect(const Napi::CallbackInfo &info) {
    int32_t idx = info[0].As<Napi::Number>().Int32Value();
    std::string node = info[1].As<Napi::String>(), service = info[2].As<Napi::String>();
    std::string raw;
    if (info.Length() > 3 && info[3].IsBuffer()) {
      auto b = info[3].As<Napi::Buffer<char>>();
      raw.assign(b.Data(), b.Length());
    }
    Pool *p = pool_;
    return pool_job(info.Env(), p, [p, idx, node, service, raw](std::string &err) { return p->connect(idx, node, service, raw, err); }, nullptr);
  }
  Napi::Value KillConn(const Napi::CallbackInfo &info) {
    pool_->kill_conn(info[0].As<Napi::Number>().Int32Value());
    return info.Env().Undefined();
  }
  Napi::Value ConnUp(const Napi::CallbackInfo &info) {
    return Napi::Boolean::New(info.Env(), pool_->conn_up(info[0].As<Napi::Number>().Int32Value()));
  }
  Napi::Value AddSlab(const Napi::CallbackInfo &info) {
    auto arr = info[2].As<Napi::Array>();
    std::vector<Replica> reps;
    for (uint32_t i = 0; i < arr.Length(); i++) reps.push_back(to_replica(arr.Get(i)));
    pool_->add_slab(u64_of(info[0]), u64_of(info[1]), reps);
    return info.Env().Undefined();
  }
  Napi::Value HasSlab(const Napi::CallbackInfo &info) {
    return Napi::Boolean::New(info.Env(), pool_->has_slab(u64_of(info[0]), u64_of(info[1])));
  }
  Napi::Value AddReplica(const Napi::CallbackInfo &info) {
    return Napi::Number::New(info.Env(), pool_->map().add_replica(u64_of(info[0]), u64_of(info[1]), to_replica(info[2])));
  }
  Napi::Value CopyReplica(const Napi::CallbackInfo &info) {
    uint64_t ns = u64_of(info[0]), index = u64_of(info[1]);
    int slot = info[2].As<Napi::Number>().Int32Value();
    Pool *p = pool_;
    return pool_job(info.Env(), p, [p, ns, index, slot](std::string &err) { return p->copy_replica(ns, index, slot, err); }, nullptr);
  }
  Napi::Value SetReplicaState(const Napi::CallbackInfo &info) {
    return Napi::Boolean::New(info.Env(), pool_->map().set_replica_state(u64_of(info[0]), u64_of(info[1]), info[2].As<Napi::Number>().Int32Value(),
                                                                   static_cast<uint8_t>(info[3].As<Napi::Number>().Uint32Value())));
  }
  // dropReplica, replaceLost and dropEmptySlab hold the slab's io lock exclusively, which puts
  // and replica copies hold across network waits: on the JavaScript thread they only try it,
  // and when it is taken the call is made again on a job thread (waiting there), its result
  // then a promise. Either way the caller awaits the result.
  template <class R>
  Napi::Value locked_call(Napi::Env env, std::function<R(bool *busy)> call, Napi::Value (*to_js)(Napi::Env, const R &)) {
    bool busy = false;
    R r = call(&busy);
    if (!busy) return to_js(env, r);
    pool_->count_lock_deferred();
    auto out = std::make_shared<R>();
    return pool_job(
        env, pool_, [call, out](std::string &) {
          *out = call(nullptr);
          return TS_OK;
        },
        [out, to_js](Napi::Env env) { return to_js(env, *out); });
  }
  static Napi::Value bool_js(Napi::Env env, const bool &b) { return Napi::Boolean::New(env, b); }
  static Napi::Value pages_js(Napi::Env env, const std::vector<uint64_t> &lost) {
    auto arr = Napi::Float64Array::New(env, lost.size());
    for (size_t i = 0; i < lost.size(); i++) arr[i] = static_cast<double>(lost[i]);
    return arr;
  }
  static Napi::Value replicas_js(Napi::Env env, const std::vector<Replica> &reps) {
    auto arr = Napi::Array::New(env, reps.size());
    for (size_t i = 0; i < reps.size(); i++) {
      auto x = Napi::Object::New(env);
      x.Set("conn", reps[i].conn);
      x.Set("slabId", Napi::BigInt::New(env, reps[i].slab_id));
      arr.Set(i, x);
    }
    return arr;
  }
  Napi::Value DropReplica(const Napi::CallbackInfo &info) {
    uint64_t ns = u64_of(info[0]), index = u64_of(info[1]);
    int slot = info[2].As<Napi::Number>().Int32Value();
    Pool *p = pool_;
    return locked_call<bool>(info.Env(), [p, ns, index, slot](bool *busy) { return p->map().drop_replica(ns, index, slot, busy); }, bool_js);
  }
  Napi::Value ReplaceLost(const Napi::CallbackInfo &info) {
    uint64_t ns = u64_of(info[0]), index = u64_of(info[1]);
    Replica rep = to_replica(info[2]);
    Pool *p = pool_;
    return locked_call<std::vector<uint64_t>>(
        info.Env(), [p, ns, index, rep](bool *busy) { return p->map().replace_lost(ns, index, rep, busy); }, pages_js);
  }
  Napi::Value DropEmptySlab(const Napi::CallbackInfo &info) {
    uint64_t ns = u64_of(info[0]), index = u64_of(info[1]);
    Pool *p = pool_;
    return locked_call<std::vector<Replica>>(info.Env(), [p, ns, index](bool *busy) { return p->map().drop_empty(ns, index, busy); }, replicas_js);
  }
  // counters() -> { postsDeferred, locksDeferred }: what the JavaScript thread left to job threads.
  Napi::Value Counters(const Napi::CallbackInfo &info) {
    auto env = info.Env();
    auto o = Napi::Object::New(env);
    o.Set("postsDeferred", Napi::Number::New(env, static_cast<double>(pool_->posts_deferred())));
    o.Set("locksDeferred", Napi::Number::New(env, static_cast<double>(pool_->locks_deferred())));
    return o;
  }
  Napi::Value Slabs(const Napi::CallbackInfo &info) {
    auto env = info.Env();
    auto views = pool_->map().views();
    auto arr = Napi::Array::New(env, views.size());
    for (size_t i = 0; i < views.size(); i++) {
      auto o = Napi::Object::New(env);
      o.Set("ns", Napi::BigInt::New(env, views[i].ns));
      o.Set("index", Napi::Number::New(env, static_cast<double>(views[i].index)));
      o.Set("present", Napi::Number::New(env, static_cast<double>(views[i].present)));
      auto reps = Napi::Array::New(env);
      for (int r = 0; r < kMaxReplicas; r++) {
        auto x = Napi::Object::New(env);
        x.Set("slot", r);
        x.Set("conn", views[i].reps[r].conn);
        x.Set("state", views[i].reps[r].state);
        x.Set("slabId", Napi::BigInt::New(env, views[i].reps[r].slab_id));
        x.Set("addr", Napi::BigInt::New(env, views[i].reps[r].addr));
        x.Set("rkey", Napi::BigInt::New(env, views[i].reps[r].rkey));
        reps.Set(r, x);
      }
      o.Set("replicas", reps);
      arr.Set(i, o);
    }
    return arr;
  }
  Napi::Value TakeTouched(const Napi::CallbackInfo &info) {
    auto env = info.Env();
    auto t = pool_->map().take_touched();
    auto arr = Napi::Array::New(env, t.size());
    for (size_t i = 0; i < t.size(); i++) {
      auto pair = Napi::Array::New(env, 2);
      pair.Set(0u, Napi::Number::New(env, t[i].first));
      pair.Set(1u, Napi::BigInt::New(env, t[i].second));
      arr.Set(i, pair);
    }
    return arr;
  }
  Napi::Value Degraded(const Napi::CallbackInfo &info) {
    return Napi::Number::New(info.Env(), static_cast<double>(pool_->degraded_events()));
  }
  // get(ns, pages: Float64Array, out: Buffer, syncUs) -> Int32Array | Promise<Int32Array> (per-page
  // status). A small batch is posted and polled on the calling (JS) thread for up to syncUs
  // microseconds: a quick donor answers with no thread hop. Otherwise a thread of its own finishes it.
  Napi::Value Get(const Napi::CallbackInfo &info) {
    auto env = info.Env();
    uint64_t ns = u64_of(info[0]);
    std::vector<uint64_t> pages;
    if (!pages_of(env, info[1], &pages)) return env.Undefined();
    auto out = info[2].As<Napi::Buffer<char>>();
    double sync_us = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : 0;
    const size_t ps = pool_->page_size();
    if (out.Length() != pages.size() * ps) {
      throw_error(env, "TS_ERR_BAD_ARGUMENT", "output buffer size does not match the batch");
      return env.Undefined();
    }
    std::vector<void *> bufs(pages.size());
    for (size_t i = 0; i < bufs.size(); i++) bufs[i] = out.Data() + i * ps;
    return run_job(env, pool_->start_get(ns, pages.data(), pages.size(), bufs.data(), false), sync_us, pages.size() * ps, info[2]);
  }
  // put(ns, pages: Float64Array, data: Buffer, syncUs, flags) -> undefined | Promise<void> (flags:
  // TS_PUT_DIRTY / TS_PUT_PROMOTION, as on the C ABI); fails with
  // TS_ERR_NO_SPACE when a slab is missing (nothing written) and TS_ERR_UNAVAILABLE when some
  // page reached no replica.
  Napi::Value Put(const Napi::CallbackInfo &info) {
    auto env = info.Env();
    uint64_t ns = u64_of(info[0]);
    std::vector<uint64_t> pages;
    if (!pages_of(env, info[1], &pages)) return env.Undefined();
    auto data = info[2].As<Napi::Buffer<char>>();
    double sync_us = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().DoubleValue() : 0;
    uint32_t flags = info.Length() > 4 && info[4].IsNumber() ? info[4].As<Napi::Number>().Uint32Value() : 0;
    const size_t ps = pool_->page_size();
    if (data.Length() != pages.size() * ps) {
      throw_error(env, "TS_ERR_BAD_ARGUMENT", "data size does not match the batch");
      return env.Undefined();
    }
    std::vector<const void *> bufs(pages.size());
    for (size_t i = 0; i < bufs.size(); i++) bufs[i] = data.Data() + i * ps;
    return run_job(env, pool_->start_put(ns, pages.data(), pages.size(), bufs.data(), flags, false), sync_us, pages.size() * ps, info[2]);
  }
  // Batches above this many bytes are never polled on the JS thread.
  static constexpr size_t kSyncMaxBytes = 256 * 1024;
  Napi::Value job_result(Napi::Env env, Job &job) {
    if (job.rc < 0) return tierstack::throw_status(env, job.rc, std::string("rdma pool ") + (job.write ? "put" : "get") + " failed (" + ts_status_code(job.rc) + ")");
    if (job.write) return env.Undefined();
    auto arr = Napi::Int32Array::New(env, job.status.size());
    for (size_t i = 0; i < job.status.size(); i++) arr[i] = job.status[i];
    return arr;
  }
  // The batch was started on this (JavaScript) thread without waiting for anything (see
  // Pool::start_get/start_put): posts the provider refused and slab locks found taken are
  // left in the job. A small batch is then polled here up to its deadline (still waiting for
  // nothing); whatever is left — those deferred posts and locks included — a job thread
  // finishes, where waiting (and giving a donor up after the op timeout) is allowed.
  Napi::Value run_job(Napi::Env env, JobPtr job, double sync_us, size_t bytes, Napi::Value keep) {
    if (job->done) return job_result(env, *job);
    if (sync_us > 0 && bytes <= kSyncMaxBytes && pool_->advance(*job, tierstack::now_ns() + static_cast<uint64_t>(sync_us * 1000)))
      return job_result(env, *job);
    auto shared = std::shared_ptr<Job>(std::move(job));
    Pool *p = pool_;
    return pool_job(
        env, p,
        [p, shared](std::string &) {
          p->advance(*shared, 0);
          return shared->rc;
        },
        [shared](Napi::Env env) -> Napi::Value {
          if (shared->write) return env.Undefined();
          auto arr = Napi::Int32Array::New(env, shared->status.size());
          for (size_t i = 0; i < shared->status.size(); i++) arr[i] = shared->status[i];
          return arr;
        },
        {keep});
  }
  Napi::Value Remove(const Napi::CallbackInfo &info) {
    std::vector<uint64_t> pages;
    if (!pages_of(info.Env(), info[1], &pages)) return info.Env().Undefined();
    return Napi::Number::New(info.Env(), pool_->remove(u64_of(info[0]), pages.data(), pages.size()));
  }
  // setBackup(handle | null): the tier has a backup; null = it has no native handle.
  Napi::Value SetBackup(const Napi::CallbackInfo &info) {
    auto env = info.Env();
    if (info[0].IsNull() || info[0].IsUndefined()) {
      pool_->set_backup_js_only();
      return env.Undefined();
    }
    auto ref = tierstack::unwrap_page_store(env, info[0]);
    if (!ref) return env.Undefined();
    pool_->set_backup_native(std::move(ref));
    return env.Undefined();
  }
  // restoreFromBackup(ns, pages: Float64Array) -> Promise<number>: pages refilled from the native
  // backup by namespace id (TS_ERR_UNSUPPORTED without one). On a thread of its own: it waits
  // for the backup and for RMA writes.
  Napi::Value RestoreFromBackup(const Napi::CallbackInfo &info) {
    auto env = info.Env();
    uint64_t ns = u64_of(info[0]);
    auto pages = std::make_shared<std::vector<uint64_t>>();
    if (!pages_of(env, info[1], pages.get())) return env.Undefined();
    auto restored = std::make_shared<int>(0);
    Pool *p = pool_;
    return pool_job(
        env, p,
        [p, ns, pages, restored](std::string &err) {
          int rc = p->restore_from_backup(ns, pages->data(), pages->size());
          if (rc < 0) {
            err = std::string("restoring pages from the native backup failed (") + ts_status_code(rc) + ")";
            return rc;
          }
          *restored = rc;
          return TS_OK;
        },
        [restored](Napi::Env env) { return Napi::Number::New(env, *restored); });
  }
  Napi::Value Handle(const Napi::CallbackInfo &info) { return tierstack::wrap_page_store(info.Env(), pool_->store()); }
  Napi::Value Close(const Napi::CallbackInfo &info) {
    Pool *p = pool_;
    return pool_job(info.Env(), p, [p](std::string &) {
      p->close();
      return TS_OK;
    }, nullptr);
  }
  Pool *pool_ = nullptr;
};

// providerDefaults(provider): applies libfabric's environment defaults for the provider (unless
// the user set them) and lists them: [{ name, value, ours }]. Call before the process's first
// libfabric use (memd and RdmaPoolTier do, and log the list).
Napi::Value ProviderDefaults(const Napi::CallbackInfo &info) {
  auto env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) return throw_error(env, "TS_ERR_BAD_ARGUMENT", "providerDefaults(provider): a string expected");
  auto list = apply_provider_defaults(info[0].As<Napi::String>());
  auto out = Napi::Array::New(env, list.size());
  for (size_t i = 0; i < list.size(); i++) {
    auto o = Napi::Object::New(env);
    o.Set("name", list[i].name);
    o.Set("value", list[i].value);
    o.Set("ours", list[i].ours);
    out.Set(static_cast<uint32_t>(i), o);
  }
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // No libfabric call here: the defaults are applied with the provider's name, before the first
  // fi_getinfo (providerDefaults from JavaScript, Pool::open, FabricDomain::open).
  env.SetInstanceData<AddonData>(new AddonData());
  exports.Set("Donor", DonorWrap::Init(env));
  exports.Set("Pool", PoolWrap::Init(env));
  exports.Set("providerDefaults", Napi::Function::New<ProviderDefaults>(env, "providerDefaults"));
  exports.Set("kReplicaActive", Napi::Number::New(env, kActive));
  exports.Set("kReplicaSyncing", Napi::Number::New(env, kSyncing));
  exports.Set("kReplicaDead", Napi::Number::New(env, kDead));
  return exports;
}

}  // namespace

static Napi::Object InitRdmaAddon(Napi::Env env, Napi::Object exports) { return Init(env, exports); }
NODE_API_MODULE(tierstack_rdma, InitRdmaAddon)
