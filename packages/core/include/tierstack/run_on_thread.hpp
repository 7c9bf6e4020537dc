// Blocking native work off the JavaScript thread, with its result settled on a promise there.
//
// The policy of every addon: work that blocks — and above all work that may wait for the JS path
// (a StackClient call, a device start or stop draining I/O that needs JavaScript, a transfer
// that waits on a remote peer) — runs on a thread of its own, never on the libuv pool. The pool
// has four threads that core's FileTier (node:fs) and every other addon share: four jobs waiting
// for the JS path there would wait for a JS path that waits for the pool. A job's own thread
// cannot be taken from anyone, so no job ever waits behind another.
//
//   return tierstack::run_on_thread(
//       env, [core, rc] { *rc = core->start(); },                       // its own thread
//       [rc](Napi::Env env, Napi::Promise::Deferred &d) {                // the JS thread
//         if (*rc < 0) d.Reject(tierstack::errno_error(env, *rc, "start failed").Value());
//         else d.Resolve(env.Undefined());
//       },
//       {info[1]});  // objects the work reads (Buffers...): held until `done` has run
//
// The job holds the event loop open while it runs, like an AsyncWorker. If the environment is
// torn down first, `done` does not run.
#pragma once

#include <napi.h>

#include <functional>
#include <initializer_list>
#include <memory>
#include <thread>
#include <vector>

namespace tierstack {

inline Napi::Promise run_on_thread(Napi::Env env, std::function<void()> work,
                                   std::function<void(Napi::Env, Napi::Promise::Deferred &)> done,
                                   std::initializer_list<Napi::Value> keep = {}) {
  struct Job {
    explicit Job(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
    Napi::Promise::Deferred deferred;
    std::function<void()> work;
    std::function<void(Napi::Env, Napi::Promise::Deferred &)> done;
    std::vector<Napi::Reference<Napi::Value>> keep;
    Napi::ThreadSafeFunction tsfn;
  };
  auto *job = new Job(env);
  job->work = std::move(work);
  job->done = std::move(done);
  for (const Napi::Value &v : keep)
    if (v.IsObject()) job->keep.push_back(Napi::Persistent(v));  // primitives need no keeping
  Napi::Promise promise = job->deferred.Promise();
  job->tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo &) {}),
                                            "tierstack-job", 0, 1);
  std::thread([job] {
    job->work();
    napi_status st = job->tsfn.BlockingCall(job, [](Napi::Env env, Napi::Function, Job *j) {
      if (env != nullptr) {
        Napi::HandleScope scope(env);
        j->done(env, j->deferred);
        j->keep.clear();
      } else {
        for (auto &r : j->keep) r.SuppressDestruct();  // the environment frees them itself
      }
      j->tsfn.Release();
      delete j;
    });
    if (st != napi_ok) job->tsfn.Release();  // the environment is gone: nothing to settle
  }).detach();
  return promise;
}

}  // namespace tierstack
