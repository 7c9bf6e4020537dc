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
// run_on_thread(env, work, done) starts a thread (and a thread-safe function) per job: right
// for occasional work. An addon with many short jobs (a data path) keeps a JobThreads in its
// instance data and passes it, run_on_thread(threads, env, work, done): every job still runs on
// a thread of its own (a new one starts whenever all are busy), but the threads are reused and
// all results come back through one thread-safe function.
//
// A job holds the event loop open while it runs, like an AsyncWorker. If the environment is torn
// down first, `done` does not run.
#pragma once

#include <napi.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <initializer_list>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace tierstack {

namespace detail {
struct Job {
  explicit Job(Napi::Env env) : deferred(Napi::Promise::Deferred::New(env)) {
    napi_async_init(env, nullptr, Napi::String::New(env, "tierstack-job"), &async);
  }
  Napi::Promise::Deferred deferred;
  std::function<void()> work;
  std::function<void(Napi::Env, Napi::Promise::Deferred &)> done;
  std::vector<Napi::Reference<Napi::Value>> keep;
  napi_async_context async = nullptr;

  // JS thread: settles the promise and lets go of what the job held. In a callback scope, as an
  // AsyncWorker's completion is: closing it runs the microtasks the settlement queued (the
  // awaiting code) now, not at whatever callback the event loop happens to run next.
  void settle(Napi::Env env) {
    Napi::HandleScope scope(env);
    {
      Napi::CallbackScope cb(env, async);
      done(env, deferred);
      keep.clear();
    }
    napi_async_destroy(env, async);
  }
  // The environment is gone: it frees the references itself.
  void abandon() {
    for (auto &r : keep) r.SuppressDestruct();
  }
};

inline Job *make_job(Napi::Env env, std::function<void()> work, std::function<void(Napi::Env, Napi::Promise::Deferred &)> done,
                     std::initializer_list<Napi::Value> keep) {
  auto *job = new Job(env);
  job->work = std::move(work);
  job->done = std::move(done);
  for (const Napi::Value &v : keep)
    if (v.IsObject()) job->keep.push_back(Napi::Persistent(v));  // primitives need no keeping
  return job;
}
}  // namespace detail

inline Napi::Promise run_on_thread(Napi::Env env, std::function<void()> work,
                                   std::function<void(Napi::Env, Napi::Promise::Deferred &)> done,
                                   std::initializer_list<Napi::Value> keep = {}) {
  detail::Job *job = detail::make_job(env, std::move(work), std::move(done), keep);
  Napi::Promise promise = job->deferred.Promise();
  auto tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo &) {}), "tierstack-job", 0, 1);
  std::thread([job, tsfn]() mutable {
    job->work();
    napi_status st = tsfn.BlockingCall(job, [tsfn](Napi::Env env, Napi::Function, detail::Job *j) {
      if (env != nullptr)
        j->settle(env);
      else
        j->abandon();
      delete j;
      Napi::ThreadSafeFunction(tsfn).Release();
    });
    if (st != napi_ok) tsfn.Release();  // the environment is gone: nothing to settle
  }).detach();
  return promise;
}

// Reusable job threads (see above). Create and destroy on the JS thread (addon instance data).
class JobThreads {
 public:
  // `keep` threads stay (started as jobs come, like libuv's four); more start when more jobs run
  // at once, and end after `idle_exit` without work. Sequential jobs rotate over the kept threads
  // (a condition variable wakes its oldest waiter), which on a small shared host spreads them
  // over the CPUs the way the libuv pool's do.
  explicit JobThreads(size_t keep = 4, std::chrono::milliseconds idle_exit = std::chrono::milliseconds(2000))
      : s_(std::make_shared<State>()) {
    s_->keep = keep;
    s_->idle_exit = idle_exit;
  }
  JobThreads(const JobThreads &) = delete;
  JobThreads &operator=(const JobThreads &) = delete;
  ~JobThreads() {
    std::lock_guard<std::mutex> lk(s_->mu);
    s_->closing = true;
    s_->cv.notify_all();
    if (s_->started && !s_->dead) s_->tsfn.Release();
  }

  // JS thread.
  Napi::Promise run(Napi::Env env, std::function<void()> work, std::function<void(Napi::Env, Napi::Promise::Deferred &)> done,
                    std::initializer_list<Napi::Value> keep = {}) {
    detail::Job *job = detail::make_job(env, std::move(work), std::move(done), keep);
    Napi::Promise promise = job->deferred.Promise();
    State &s = *s_;
    if (!s.started) {
      s.started = true;
      s.tsfn = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo &) {}), "tierstack-jobs", 0, 1,
                                             new std::shared_ptr<State>(s_), [](Napi::Env env, std::shared_ptr<State> *keep_state) {
                                               napi_remove_env_cleanup_hook(env, on_teardown, keep_state->get());
                                               delete keep_state;
                                             });
      s.tsfn.Unref(env);  // only pending jobs keep the loop alive
      // Registered after the function's own teardown hook, so it runs first (hooks run in reverse):
      // from then on no thread touches the function the environment is about to close.
      napi_add_env_cleanup_hook(env, on_teardown, &s);
    }
    if (s.pending++ == 0) s.tsfn.Ref(env);
    bool spawn;
    {
      std::lock_guard<std::mutex> lk(s.mu);
      s.queue.push_back(job);
      // Every queued job needs a free thread: an idle one, or a new one.
      spawn = s.queue.size() > s.idle || s.threads < s.keep;
      if (spawn) s.threads++;
    }
    if (spawn) {
      s.tsfn.Acquire();  // the thread's own hold: the function outlives every thread that can call it
      std::thread(worker, s_).detach();
    } else {
      s.cv.notify_one();
    }
    return promise;
  }

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<detail::Job *> queue;  // jobs not yet taken
    std::deque<detail::Job *> done;   // jobs whose work finished, to settle on the JS thread
    size_t idle = 0;                  // threads waiting for a job
    size_t threads = 0;               // threads started and not ended
    size_t keep = 4;
    bool closing = false;
    bool dead = false;  // the environment is being torn down: the function is not to be touched
    std::chrono::milliseconds idle_exit{2000};
    // JS thread only:
    bool started = false;
    size_t pending = 0;
    Napi::ThreadSafeFunction tsfn;
  };

  static void worker(std::shared_ptr<State> s) {
    std::unique_lock<std::mutex> lk(s->mu);
    for (;;) {
      if (!s->queue.empty()) {
        detail::Job *job = s->queue.front();
        s->queue.pop_front();
        lk.unlock();
        job->work();
        lk.lock();
        s->done.push_back(job);
        if (!s->dead) s->tsfn.NonBlockingCall(s.get(), [](Napi::Env env, Napi::Function, State *st) { deliver(env, st); });
        continue;
      }
      if (s->closing) break;
      s->idle++;
      bool woke = s->cv.wait_for(lk, s->idle_exit, [&] { return s->closing || !s->queue.empty(); });
      s->idle--;
      if (!woke && s->threads > s->keep) break;  // an extra thread idle for idle_exit ends
    }
    s->threads--;
    if (!s->dead) s->tsfn.Release();
  }

  static void on_teardown(void *arg) {
    State *s = static_cast<State *>(arg);
    std::lock_guard<std::mutex> lk(s->mu);
    s->dead = true;
    s->closing = true;
    s->cv.notify_all();
  }

  // JS thread: settles every finished job.
  static void deliver(Napi::Env env, State *s) {
    std::deque<detail::Job *> done;
    {
      std::lock_guard<std::mutex> lk(s->mu);
      done.swap(s->done);
    }
    for (detail::Job *j : done) {
      if (env != nullptr) {
        j->settle(env);
        if (--s->pending == 0) s->tsfn.Unref(env);
      } else {
        j->abandon();
      }
      delete j;
    }
  }

  std::shared_ptr<State> s_;
};

// run_on_thread on reusable threads (see JobThreads).
inline Napi::Promise run_on_thread(JobThreads &threads, Napi::Env env, std::function<void()> work,
                                   std::function<void(Napi::Env, Napi::Promise::Deferred &)> done,
                                   std::initializer_list<Napi::Value> keep = {}) {
  return threads.run(env, std::move(work), std::move(done), keep);
}

}  // namespace tierstack
