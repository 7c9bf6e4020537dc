// Small N-API helpers: typed errors, and running blocking work on a dedicated thread with the
// result delivered to a promise on the JS thread (never the libuv pool: a job may wait for the
// JS path, whose tiers themselves may need the pool).
#pragma once

#include <napi.h>

#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include <tierstack/page_store.h>

namespace tsuffd {

inline const char *code_of_status(int status) { return ts_status_code(status); }

inline Napi::Error make_error(Napi::Env env, const char *code, const std::string &msg, int err_no = 0,
                              const char *syscall = nullptr) {
  std::string full = msg;
  if (err_no) full += std::string(": ") + std::strerror(err_no);
  Napi::Error e = Napi::Error::New(env, full);
  e.Set("code", Napi::String::New(env, code));
  if (err_no) e.Set("errno", Napi::Number::New(env, err_no));
  if (syscall) e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

inline Napi::Value throw_error(Napi::Env env, const char *code, const std::string &msg, int err_no = 0) {
  make_error(env, code, msg, err_no).ThrowAsJavaScriptException();
  return env.Undefined();
}

// Runs `work()` on a new thread; `done(env, deferred)` then runs on the JS thread.
inline Napi::Value run_on_thread(Napi::Env env, std::function<void()> work,
                                 std::function<void(Napi::Env, Napi::Promise::Deferred &)> done) {
  struct Job {
    explicit Job(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {}
    Napi::Promise::Deferred deferred;
    std::function<void()> work;
    std::function<void(Napi::Env, Napi::Promise::Deferred &)> done;
    Napi::ThreadSafeFunction tsfn;
  };
  auto *job = new Job(env);
  job->work = std::move(work);
  job->done = std::move(done);
  Napi::Promise promise = job->deferred.Promise();
  job->tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo &) {}),
                                            "tierstack-uffd-job", 0, 1);
  std::thread([job] {
    job->work();
    napi_status st = job->tsfn.BlockingCall(job, [](Napi::Env env, Napi::Function, Job *j) {
      if (env != nullptr) {
        Napi::HandleScope scope(env);
        j->done(env, j->deferred);
      }
      j->tsfn.Release();
      delete j;
    });
    if (st != napi_ok) {  // the environment is gone: nothing to resolve
      job->tsfn.Release();
    }
  }).detach();
  return promise;
}

}  // namespace tsuffd
