// StackClient: a whole tier stack as seen from a native front-end thread (uffd fault threads,
// ublk/FUSE queue threads).
//
//  - Pages held by native tiers (the stack's native chain, see NativeChain) are served on the
//    calling thread, with no JavaScript on the path.
//  - Everything else (misses of the native chain, writes when the top tier is not native,
//    removes and flushes when the stack has JS tiers) is queued and handed to JavaScript in
//    batches: one thread-safe-function call carries the requests of many threads at once.
//    The calling thread blocks until JavaScript answers.
//  - A blocking call made ON the JavaScript thread would wait for itself: it returns
//    TS_E_DEADLOCK at once. (A front-end whose kernel event names the faulting thread must
//    also check that thread against js_thread_id(): see the uffd engine.)
//
// The JavaScript side is createJsPath(stack) in @tierstack/core (src/js-path.ts); its result
// object is what StackClient::create() takes.
//
// Lifetime: create() returns a shared_ptr. Front-end threads keep copies; close() (JS thread)
// fails queued and future JS-path requests with TS_E_CLOSED and releases the thread-safe
// function. The object is freed when the last copy and the thread-safe function are gone.
#pragma once

#include <napi.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <condition_variable>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <vector>

#include "page_store_napi.hpp"

namespace tierstack {

struct StackClientOptions {
  size_t max_batch_pages = 256;    // pages per JavaScript hand-off (more requests → more calls)
  size_t max_queued_pages = 4096;  // bound on pages waiting for JavaScript; callers wait beyond it
};

class StackClient {
 public:
  enum Op : uint8_t { kGet = 0, kPut = 1, kRemove = 2, kFlush = 3 };

  // JS thread. `js_path` is the object returned by createJsPath(stack):
  // { pageSize, chain: handle[], hasJsTiers, jsWrites, writeNative: boolean, handler: Function }.
  // On bad input a JS exception is pending and nullptr is returned.
  static std::shared_ptr<StackClient> create(Napi::Env env, Napi::Object js_path, StackClientOptions opts = {}) {
    std::vector<StoreRef> chain;
    Napi::Value chain_v = js_path.Get("chain");
    if (!chain_v.IsArray()) return fail(env, "createJsPath result expected (chain missing)");
    Napi::Array arr = chain_v.As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); i++) {
      StoreRef ref = unwrap_page_store(env, arr.Get(i));
      if (!ref) return nullptr;
      chain.push_back(std::move(ref));
    }
    Napi::Value handler = js_path.Get("handler");
    if (!handler.IsFunction()) return fail(env, "createJsPath result expected (handler missing)");
    uint32_t page_size = static_cast<uint32_t>(js_path.Get("pageSize").ToNumber().Uint32Value());
    if (page_size == 0) return fail(env, "createJsPath result expected (pageSize missing)");
    for (auto &t : chain)
      if (t->page_size != page_size) return fail(env, "a native tier's page size differs from the stack's");

    std::shared_ptr<StackClient> c(new StackClient(NativeChain(std::move(chain)), page_size, opts));
    c->has_js_tiers_ = js_path.Get("hasJsTiers").ToBoolean().Value();
    c->js_writes_ = js_path.Get("jsWrites").ToBoolean().Value();
    c->write_native_ = js_path.Get("writeNative").ToBoolean().Value() && !c->chain_.empty();
    c->js_tid_ = current_tid();
    // The thread-safe function owns one reference to the client, dropped in its finalizer, so
    // the client outlives every call the TSFN can still deliver.
    auto *keep = new std::shared_ptr<StackClient>(c);
    c->tsfn_ = Napi::ThreadSafeFunction::New(env, handler.As<Napi::Function>(), "tierstack-js-path", 0, 1, keep,
                                             [](Napi::Env, std::shared_ptr<StackClient> *k) { delete k; });
    return c;
  }

  StackClient(const StackClient &) = delete;
  StackClient &operator=(const StackClient &) = delete;

  uint32_t page_size() const { return page_size_; }
  const NativeChain &chain() const { return chain_; }
  pid_t js_thread_id() const { return js_tid_; }
  bool on_js_thread() const { return current_tid() == js_tid_; }

  // Reads `n` pages: status[i] = TS_PAGE_FOUND, TS_PAGE_MISS or a negative per-page TS_E_*.
  // `level[i]` (optional) receives the stack level that served page i (native tiers 0..k-1,
  // k for the JavaScript path). `first_level` > 0 skips the levels above it (a copy read
  // there was bad; levels <= k). Returns TS_OK or a TS_E_* code for the whole batch.
  // No heap allocation once the calling thread's scratch has grown to the batch size.
  // Re-entrant: a native tier may itself read through a StackClient on the same thread.
  int get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status,
          uint8_t *level = nullptr, size_t first_level = 0) {
    ScratchLease<GetScratch> lease;
    GetScratch &sc = *lease;
    size_t found = 0;
    if (first_level < chain_.size())
      found = chain_.get(ns, pages, n, bufs, status, sc.chain, level, first_level);
    else
      for (size_t i = 0; i < n; i++) status[i] = TS_PAGE_MISS;
    if (found == n || !has_js_tiers_) return TS_OK;
    // Ask JavaScript for the rest, in one request.
    sc.rest.clear();
    sc.rest_bufs.clear();
    sc.where.clear();
    for (size_t i = 0; i < n; i++) {
      if (status[i] == TS_PAGE_FOUND) continue;
      sc.rest.push_back(pages[i]);
      sc.rest_bufs.push_back(bufs[i]);
      sc.where.push_back(i);
    }
    sc.rest_status.assign(sc.rest.size(), TS_PAGE_MISS);
    Request r{kGet, ns, sc.rest.data(), sc.rest.size(), sc.rest_bufs.data(), nullptr, sc.rest_status.data(), 0};
    int rc = submit(r);
    if (rc != TS_OK) return rc;
    for (size_t k = 0; k < sc.where.size(); k++) {
      status[sc.where[k]] = sc.rest_status[k];
      if (level && sc.rest_status[k] == TS_PAGE_FOUND) level[sc.where[k]] = static_cast<uint8_t>(chain_.size());
    }
    return TS_OK;
  }

  // Reads from the native tiers only, never waiting for JavaScript (safe on any thread,
  // including one the JS thread is blocked on). A page no native tier holds is TS_PAGE_MISS
  // when nothing lies below the native tiers, TS_E_DEADLOCK when only the JS path could have it.
  void get_native(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status,
                  uint8_t *level = nullptr, size_t first_level = 0) {
    ScratchLease<NativeChain::Scratch> lease;
    NativeChain::Scratch &sc = *lease;
    if (first_level < chain_.size())
      chain_.get(ns, pages, n, bufs, status, sc, level, first_level);
    else
      for (size_t i = 0; i < n; i++) status[i] = TS_PAGE_MISS;
    if (has_js_tiers_)
      for (size_t i = 0; i < n; i++)
        if (status[i] == TS_PAGE_MISS) status[i] = TS_E_DEADLOCK;
  }

  // Whether kernel-reported thread id `tid` (of this process) is the JavaScript thread: a
  // page it waits on must be served by get_native().
  bool is_js_thread(pid_t tid) const { return tid != 0 && tid == js_tid_; }
  // Levels of the stack: native tiers, then (if any) the JavaScript path.
  size_t levels() const { return chain_.size() + (has_js_tiers_ ? 1 : 0); }

  // Writes `n` pages with the stack's write policy. With a native top tier and write-back,
  // the pages go there directly (dirty); when it has no room (TS_E_NO_SPACE) or the stack's
  // policy needs JavaScript, they take the JavaScript path.
  int put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags = TS_PUT_DIRTY) {
    if (write_native_) {
      int rc = chain_.tier(0).put_pages(ns, pages, n, bufs, flags);
      if (rc == TS_OK) return rc;
      if (rc != TS_E_NO_SPACE || !js_writes_) return rc;
    }
    if (!js_writes_) return chain_.empty() ? TS_E_UNSUPPORTED : chain_.tier(0).put_pages(ns, pages, n, bufs, flags);
    Request r{kPut, ns, pages, n, nullptr, bufs, nullptr, flags};
    return submit(r);
  }

  // Forgets pages in every tier.
  int remove(uint64_t ns, const uint64_t *pages, size_t n) {
    if (js_writes_) {  // the JavaScript stack removes from its native tiers too
      Request r{kRemove, ns, pages, n, nullptr, nullptr, nullptr, 0};
      return submit(r);
    }
    int rc = TS_OK;
    for (size_t t = 0; t < chain_.size(); t++) {
      int trc = chain_.tier(t).remove_pages(ns, pages, n);
      if (trc != TS_OK) rc = trc;
    }
    return rc;
  }

  // Makes dirty pages durable in the stack's bottom tier (stack.flush()).
  int flush() {
    if (!js_writes_) return TS_OK;  // a lone native tier has nowhere further to write
    Request r{kFlush, 0, nullptr, 0, nullptr, nullptr, nullptr, 0};
    return submit(r);
  }

  // JS thread. Fails queued and future JavaScript-path requests; native-chain reads go on
  // working until the caller stops its threads.
  void close() {
    std::deque<Request *> failed;
    {
      std::lock_guard<std::mutex> lk(mu_);
      if (closed_) return;
      closed_ = true;
      failed.swap(queue_);
      queued_pages_ = 0;
    }
    for (Request *r : failed) finish(r, TS_E_CLOSED);
    space_.notify_all();
    tsfn_.Release();
  }

  // JS thread: whether a pending hand-off keeps the event loop alive (default: yes).
  void ref(Napi::Env env) { tsfn_.Ref(env); }
  void unref(Napi::Env env) { tsfn_.Unref(env); }

 private:
  // The calling thread's scratch for one call, one per nesting depth: a native tier may itself
  // read through another StackClient on this thread (a copy-on-write layer over its parent's
  // stack), and that inner call must not reuse the scratch of the call it runs inside. Reused
  // across calls (no allocation once grown); deeper than kDepth, a scratch of the call's own.
  template <class S>
  class ScratchLease {
   public:
    ScratchLease() {
      Levels &l = levels();
      if (l.depth < kDepth)
        s_ = &l.scratch[l.depth];
      else
        s_ = (own_ = std::make_unique<S>()).get();
      l.depth++;
    }
    ~ScratchLease() { levels().depth--; }
    ScratchLease(const ScratchLease &) = delete;
    ScratchLease &operator=(const ScratchLease &) = delete;
    S &operator*() { return *s_; }

   private:
    static constexpr size_t kDepth = 4;
    struct Levels {
      S scratch[kDepth];
      size_t depth = 0;
    };
    static Levels &levels() {
      thread_local Levels l;
      return l;
    }
    S *s_;
    std::unique_ptr<S> own_;
  };

  struct GetScratch {  // per thread and depth, reused by get()
    NativeChain::Scratch chain;
    std::vector<uint64_t> rest;
    std::vector<void *> rest_bufs;
    std::vector<size_t> where;
    std::vector<int32_t> rest_status;
  };

  struct Request {
    Request(Op op_, uint64_t ns_, const uint64_t *pages_, size_t n_, void *const *out_, const void *const *in_,
            int32_t *status_, uint32_t flags_)
        : op(op_), ns(ns_), pages(pages_), n(n_), out(out_), in(in_), status(status_), flags(flags_) {}
    Op op;
    uint64_t ns;
    const uint64_t *pages;
    size_t n;
    void *const *out;        // get: destination of each page
    const void *const *in;   // put: source of each page
    int32_t *status;         // get: per-page result
    uint32_t flags;
    int rc = TS_OK;
    bool done = false;
    std::condition_variable cv;
  };

  // One JavaScript hand-off: the requests it carries and the typed arrays JavaScript fills.
  struct Batch {
    std::vector<Request *> requests;
    Napi::Reference<Napi::Buffer<uint8_t>> data;
    Napi::Reference<Napi::Int32Array> status;
    Napi::Reference<Napi::Int32Array> rc;
    size_t pages = 0;
    std::shared_ptr<StackClient> owner;
  };

  StackClient(NativeChain chain, uint32_t page_size, StackClientOptions opts)
      : chain_(std::move(chain)), page_size_(page_size), opts_(opts) {}

  static std::shared_ptr<StackClient> fail(Napi::Env env, const char *msg) {
    make_type_error(env, "TS_ERR_BAD_ARGUMENT", msg).ThrowAsJavaScriptException();
    return nullptr;
  }

  static pid_t current_tid() { return static_cast<pid_t>(syscall(SYS_gettid)); }

  static void deliver_cb(Napi::Env env, Napi::Function fn, StackClient *self) {
    if (env != nullptr && fn != nullptr) {
      self->deliver(env, fn);
      return;
    }
    // The environment is going away: nothing will answer what is queued.
    std::deque<Request *> failed;
    {
      std::lock_guard<std::mutex> lk(self->mu_);
      self->closed_ = true;
      failed.swap(self->queue_);
      self->queued_pages_ = 0;
    }
    for (Request *r : failed) self->finish(r, TS_E_CLOSED);
    self->space_.notify_all();
  }

  static size_t weight(const Request &r) { return r.n == 0 ? 1 : r.n; }

  void finish(Request *r, int rc) {
    std::lock_guard<std::mutex> lk(mu_);
    r->rc = rc;
    r->done = true;
    r->cv.notify_one();
  }

  // Queues a request for JavaScript and waits for its answer.
  int submit(Request &r) {
    if (on_js_thread()) return TS_E_DEADLOCK;
    std::unique_lock<std::mutex> lk(mu_);
    size_t w = weight(r);
    space_.wait(lk, [&] { return closed_ || queued_pages_ == 0 || queued_pages_ + w <= opts_.max_queued_pages; });
    if (closed_) return TS_E_CLOSED;
    queue_.push_back(&r);
    queued_pages_ += w;
    if (!call_scheduled_) {
      call_scheduled_ = true;
      if (tsfn_.NonBlockingCall(this, deliver_cb) != napi_ok) {
        // The TSFN is closing (environment teardown): nothing will ever answer.
        call_scheduled_ = false;
        queue_.pop_back();
        queued_pages_ -= w;
        return TS_E_CLOSED;
      }
    }
    r.cv.wait(lk, [&] { return r.done; });
    return r.rc;
  }

  // JS thread: takes up to max_batch_pages of queued requests and hands them to JavaScript as
  //   handler({ ops, ns, counts, pages, data, status, rc }, done)
  // where request i has ops[i], ns[i] (BigUint64Array), counts[i] pages listed consecutively
  // in `pages`, their bytes consecutively in `data` (put: filled in; get: to fill), per-page
  // `status` (get) and per-request `rc` (TS_* codes) for JavaScript to set before done().
  void deliver(Napi::Env env, Napi::Function handler) {
    auto batch = std::make_unique<Batch>();
    {
      std::lock_guard<std::mutex> lk(mu_);
      call_scheduled_ = false;
      while (!queue_.empty()) {
        Request *r = queue_.front();
        if (!batch->requests.empty() && batch->pages + r->n > opts_.max_batch_pages) break;
        queue_.pop_front();
        queued_pages_ -= weight(*r);
        batch->requests.push_back(r);
        batch->pages += r->n;
      }
      if (!queue_.empty() && !closed_) {  // the rest goes in the next call
        call_scheduled_ = true;
        tsfn_.NonBlockingCall(this, deliver_cb);
      }
    }
    space_.notify_all();
    if (batch->requests.empty()) return;

    size_t nreq = batch->requests.size();
    auto ops = Napi::Uint8Array::New(env, nreq);
    auto nss = Napi::BigUint64Array::New(env, nreq);
    auto counts = Napi::Uint32Array::New(env, nreq);
    auto pages = Napi::Float64Array::New(env, batch->pages);
    auto data = Napi::Buffer<uint8_t>::New(env, batch->pages * page_size_);
    auto status = Napi::Int32Array::New(env, batch->pages);
    auto rc = Napi::Int32Array::New(env, nreq);
    size_t p = 0;
    for (size_t i = 0; i < nreq; i++) {
      Request *r = batch->requests[i];
      ops[i] = r->op;
      nss[i] = r->ns;
      counts[i] = static_cast<uint32_t>(r->n);
      for (size_t k = 0; k < r->n; k++, p++) {
        pages[p] = static_cast<double>(r->pages[k]);
        if (r->op == kPut) std::memcpy(data.Data() + p * page_size_, r->in[k], page_size_);
      }
    }
    Napi::Object arg = Napi::Object::New(env);
    arg.Set("ops", ops);
    arg.Set("ns", nss);
    arg.Set("counts", counts);
    arg.Set("pages", pages);
    arg.Set("data", data);
    arg.Set("status", status);
    arg.Set("rc", rc);
    batch->data = Napi::Persistent(data);
    batch->status = Napi::Persistent(status);
    batch->rc = Napi::Persistent(rc);
    batch->owner = *static_cast<std::shared_ptr<StackClient> *>(tsfn_.GetContext());

    // `done` owns the batch: it lives as long as JavaScript can still call done(). If the
    // handler drops it without calling, its finalizer fails the requests instead of hanging.
    Batch *raw = batch.release();
    Napi::Function done = Napi::Function::New(
        env, [](const Napi::CallbackInfo &info) { static_cast<Batch *>(info.Data())->owner->complete(static_cast<Batch *>(info.Data()), TS_OK); },
        "done", raw);
    done.AddFinalizer(
        [](Napi::Env, Batch *b) {
          if (!b->requests.empty()) b->owner->fail_batch(b, TS_E_IO);
          delete b;
        },
        raw);
#ifdef NAPI_CPP_EXCEPTIONS
    try {
      handler.Call({arg, done});
    } catch (const Napi::Error &) {
      fail_batch(raw, TS_E_IO);  // the handler threw before taking the batch
    }
#else
    handler.Call({arg, done});
    if (env.IsExceptionPending()) {  // the handler threw before taking the batch: fail it
      env.GetAndClearPendingException();
      fail_batch(raw, TS_E_IO);
    }
#endif
  }

  // JS thread: copies results back and wakes the waiting threads. A second done() is a no-op.
  void complete(Batch *b, int batch_rc) {
    if (b->requests.empty()) return;
    Napi::Buffer<uint8_t> data = b->data.Value();
    Napi::Int32Array status = b->status.Value();
    Napi::Int32Array rc = b->rc.Value();
    size_t p = 0;
    for (size_t i = 0; i < b->requests.size(); i++) {
      Request *r = b->requests[i];
      int req_rc = batch_rc != TS_OK ? batch_rc : rc[i];
      if (r->op == kGet && req_rc == TS_OK) {
        for (size_t k = 0; k < r->n; k++) {
          int32_t st = status[p + k];
          r->status[k] = st;
          if (st == TS_PAGE_FOUND) std::memcpy(r->out[k], data.Data() + (p + k) * page_size_, page_size_);
        }
      }
      p += r->n;
      finish(r, req_rc);
    }
    b->requests.clear();
  }

  // Fails every request of a batch without touching JavaScript values (safe in finalizers).
  void fail_batch(Batch *b, int rc) {
    for (Request *r : b->requests) finish(r, rc);
    b->requests.clear();
  }

  NativeChain chain_;
  uint32_t page_size_;
  StackClientOptions opts_;
  bool has_js_tiers_ = true;  // reads: pages missed by the chain may be below it
  bool js_writes_ = true;     // writes/removes/flushes need the JavaScript stack
  bool write_native_ = false;
  pid_t js_tid_ = 0;
  Napi::ThreadSafeFunction tsfn_;

  std::mutex mu_;
  std::condition_variable space_;
  std::deque<Request *> queue_;
  size_t queued_pages_ = 0;
  bool call_scheduled_ = false;
  bool closed_ = false;
};

}  // namespace tierstack
