// Test addon for core's native headers: a small in-memory tier implementing the page-store C ABI
// (a reference implementation of its rules), and a driver that runs native threads against a
// StackClient so the tests can check what front-ends rely on: native hits, the batched JS
// path, writes, removes, flushes, and the JS-thread deadlock guard. Also drivers that call any
// page-store handle (e.g. FileTier's) straight from native threads: readPages, hammer, benchGet.
#include <napi.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

#include <tierstack/stack_client.hpp>

namespace {

// ---- the pattern of @tierstack/core/testing fillPage(), in C++ ----
void fill_page(uint8_t *buf, size_t size, uint64_t ns_id, uint64_t page, uint64_t version) {
  uint64_t x = ns_id ^ (page * 0x9e3779b97f4a7c15ULL) ^ (version << 48);
  if (x == 0) x = 0x1234567;
  for (size_t i = 0; i < size / 8; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(buf + i * 8, &x, 8);
  }
  double p = static_cast<double>(page), v = static_cast<double>(version);
  std::memcpy(buf, &ns_id, 8);
  std::memcpy(buf + 8, &p, 8);
  std::memcpy(buf + 16, &v, 8);
}

// ---- MapStore: the smallest correct C ABI tier ----
struct MapStore {
  struct Key {
    uint64_t ns, page;
    bool operator==(const Key &o) const { return ns == o.ns && page == o.page; }
  };
  struct KeyHash {
    size_t operator()(const Key &k) const { return std::hash<uint64_t>()(k.ns * 31 + k.page); }
  };
  ts_page_store store{};
  std::atomic<int> refs{1};
  std::atomic<bool> closed{false};
  std::mutex mu;
  std::unordered_map<Key, std::vector<uint8_t>, KeyHash> pages;
  std::string name;

  static MapStore *of(void *self) { return static_cast<MapStore *>(self); }
  static int get(void *self, uint64_t ns, const uint64_t *pg, size_t n, void *const *bufs, int32_t *st) {
    MapStore *m = of(self);
    if (m->closed) return TS_E_CLOSED;
    std::lock_guard<std::mutex> lk(m->mu);
    for (size_t i = 0; i < n; i++) {
      auto it = m->pages.find({ns, pg[i]});
      if (it == m->pages.end()) {
        st[i] = TS_PAGE_MISS;
      } else {
        std::memcpy(bufs[i], it->second.data(), it->second.size());
        st[i] = TS_PAGE_FOUND;
      }
    }
    return TS_OK;
  }
  static int put(void *self, uint64_t ns, const uint64_t *pg, size_t n, const void *const *bufs, uint32_t) {
    MapStore *m = of(self);
    if (m->closed) return TS_E_CLOSED;
    std::lock_guard<std::mutex> lk(m->mu);
    for (size_t i = 0; i < n; i++) {
      auto *b = static_cast<const uint8_t *>(bufs[i]);
      m->pages[{ns, pg[i]}].assign(b, b + m->store.page_size);
    }
    return TS_OK;
  }
  static int remove(void *self, uint64_t ns, const uint64_t *pg, size_t n) {
    MapStore *m = of(self);
    if (m->closed) return TS_E_CLOSED;
    std::lock_guard<std::mutex> lk(m->mu);
    for (size_t i = 0; i < n; i++) m->pages.erase({ns, pg[i]});
    return TS_OK;
  }
  static void retain(void *self) { of(self)->refs++; }
  static void release(void *self) {
    if (--of(self)->refs == 0) delete of(self);
  }
  static const ts_page_store_ops *ops() {
    static const ts_page_store_ops o = {TS_PAGE_STORE_ABI_VERSION, sizeof(ts_page_store_ops), get, put, remove, retain, release};
    return &o;
  }
};

ts_page_store *store_of(Napi::Value v) { return v.As<Napi::External<ts_page_store>>().Data(); }

Napi::Value CreateMapStore(const Napi::CallbackInfo &info) {
  auto *m = new MapStore();
  m->name = info[1].As<Napi::String>().Utf8Value();
  m->store = {TS_PAGE_STORE_ABI_VERSION, info[0].As<Napi::Number>().Uint32Value(), m->name.c_str(), MapStore::ops(), m};
  Napi::Value handle = tierstack::wrap_page_store(info.Env(), &m->store);
  MapStore::release(m);  // the external holds the only reference now
  return handle;
}

// mapStoreOp(handle, op, nsId, pages: Float64Array, buf: Buffer, found: Uint8Array) → rc
Napi::Value MapStoreOp(const Napi::CallbackInfo &info) {
  ts_page_store *s = store_of(info[0]);
  int op = info[1].As<Napi::Number>().Int32Value();
  bool lossless = false;
  uint64_t ns = info[2].As<Napi::BigInt>().Uint64Value(&lossless);
  auto pagesArr = info[3].As<Napi::Float64Array>();
  size_t n = pagesArr.ElementLength();
  std::vector<uint64_t> pages(n);
  for (size_t i = 0; i < n; i++) pages[i] = static_cast<uint64_t>(pagesArr[i]);
  if (op == 2) return Napi::Number::New(info.Env(), s->ops->remove(s->self, ns, pages.data(), n));
  if (op == 3) {  // close
    MapStore::of(s->self)->closed = true;
    return Napi::Number::New(info.Env(), 0);
  }
  auto buf = info[4].As<Napi::Buffer<uint8_t>>();
  std::vector<void *> bufs(n);
  for (size_t i = 0; i < n; i++) bufs[i] = buf.Data() + i * s->page_size;
  if (op == 1) return Napi::Number::New(info.Env(), s->ops->put(s->self, ns, pages.data(), n, bufs.data(), TS_PUT_DIRTY));
  auto found = info[5].As<Napi::Uint8Array>();
  std::vector<int32_t> st(n);
  int rc = s->ops->get(s->self, ns, pages.data(), n, bufs.data(), st.data());
  for (size_t i = 0; i < n; i++) found[i] = st[i] == TS_PAGE_FOUND ? 1 : 0;
  return Napi::Number::New(info.Env(), rc);
}

// ---- StackClient driver ----
using ClientPtr = std::shared_ptr<tierstack::StackClient>;

Napi::Value CreateClient(const Napi::CallbackInfo &info) {
  tierstack::StackClientOptions opts;
  if (info.Length() > 1 && info[1].IsNumber()) opts.max_batch_pages = info[1].As<Napi::Number>().Uint32Value();
  ClientPtr c = tierstack::StackClient::create(info.Env(), info[0].As<Napi::Object>(), opts);
  if (!c) return info.Env().Undefined();
  return Napi::External<ClientPtr>::New(info.Env(), new ClientPtr(c), [](Napi::Env, ClientPtr *p) { delete p; });
}

ClientPtr client_of(Napi::Value v) { return *v.As<Napi::External<ClientPtr>>().Data(); }

Napi::Value CloseClient(const Napi::CallbackInfo &info) {
  client_of(info[0])->close();
  return info.Env().Undefined();
}

struct WorkResult {
  std::atomic<uint64_t> mismatches{0}, misses{0}, errors{0}, found{0};
  std::atomic<uint64_t> by_level[8] = {};
  std::atomic<int> last_error{0};
};

// Native threads doing put / get+verify / remove / flush through the client.
class Workers : public Napi::AsyncWorker {
 public:
  Workers(Napi::Env env, ClientPtr c, std::string mode, uint64_t ns, uint32_t threads, uint32_t per_thread,
          uint32_t batch, uint32_t version)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), c_(std::move(c)), mode_(std::move(mode)),
        ns_(ns), threads_(threads), per_thread_(per_thread), batch_(batch), version_(version) {}

  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    std::vector<std::thread> ts;
    for (uint32_t t = 0; t < threads_; t++) ts.emplace_back([this, t] { run(t); });
    for (auto &t : ts) t.join();
  }

  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("mismatches", Napi::Number::New(env, static_cast<double>(r_.mismatches)));
    o.Set("misses", Napi::Number::New(env, static_cast<double>(r_.misses)));
    o.Set("errors", Napi::Number::New(env, static_cast<double>(r_.errors)));
    o.Set("found", Napi::Number::New(env, static_cast<double>(r_.found)));
    o.Set("lastError", Napi::Number::New(env, r_.last_error));
    Napi::Array levels = Napi::Array::New(env, 8);
    for (uint32_t i = 0; i < 8; i++) levels.Set(i, Napi::Number::New(env, static_cast<double>(r_.by_level[i])));
    o.Set("byLevel", levels);
    deferred_.Resolve(o);
  }

 private:
  void run(uint32_t t) {
    const uint32_t ps = c_->page_size();
    std::vector<uint8_t> data(static_cast<size_t>(batch_) * ps), expect(ps);
    std::vector<uint64_t> pages(batch_);
    std::vector<void *> bufs(batch_);
    std::vector<int32_t> st(batch_);
    std::vector<uint8_t> level(batch_);
    for (uint32_t i = 0; i < batch_; i++) bufs[i] = data.data() + static_cast<size_t>(i) * ps;
    uint64_t first = static_cast<uint64_t>(t) * per_thread_;
    for (uint32_t done = 0; done < per_thread_; done += batch_) {
      uint32_t n = std::min(batch_, per_thread_ - done);
      for (uint32_t i = 0; i < n; i++) pages[i] = first + done + i;
      int rc = TS_OK;
      if (mode_ == "put") {
        for (uint32_t i = 0; i < n; i++) fill_page(data.data() + static_cast<size_t>(i) * ps, ps, ns_, pages[i], version_);
        rc = c_->put(ns_, pages.data(), n, bufs.data());
      } else if (mode_ == "get") {
        rc = c_->get(ns_, pages.data(), n, bufs.data(), st.data(), level.data());
        if (rc == TS_OK) {
          for (uint32_t i = 0; i < n; i++) {
            if (st[i] == TS_PAGE_MISS) {
              r_.misses++;
            } else if (st[i] == TS_PAGE_FOUND) {
              r_.found++;
              r_.by_level[std::min<uint8_t>(level[i], 7)]++;
              fill_page(expect.data(), ps, ns_, pages[i], version_);
              if (std::memcmp(expect.data(), bufs[i], ps) != 0) r_.mismatches++;
            } else {
              r_.errors++;
              r_.last_error = st[i];
            }
          }
        }
      } else if (mode_ == "remove") {
        rc = c_->remove(ns_, pages.data(), n);
      } else if (mode_ == "flush") {
        rc = c_->flush();
      }
      if (rc != TS_OK) {
        r_.errors++;
        r_.last_error = rc;
      }
    }
  }

  Napi::Promise::Deferred deferred_;
  ClientPtr c_;
  std::string mode_;
  uint64_t ns_;
  uint32_t threads_, per_thread_, batch_, version_;
  WorkResult r_;
};

// runWorkers(client, mode, nsId, threads, perThread, batch, version) → Promise<result>
Napi::Value RunWorkers(const Napi::CallbackInfo &info) {
  bool lossless = false;
  auto *w = new Workers(info.Env(), client_of(info[0]), info[1].As<Napi::String>().Utf8Value(),
                        info[2].As<Napi::BigInt>().Uint64Value(&lossless), info[3].As<Napi::Number>().Uint32Value(),
                        info[4].As<Napi::Number>().Uint32Value(), info[5].As<Napi::Number>().Uint32Value(),
                        info[6].As<Napi::Number>().Uint32Value());
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// getOnJsThread(client, nsId, page) → rc of a blocking get made on the JS thread.
Napi::Value GetOnJsThread(const Napi::CallbackInfo &info) {
  ClientPtr c = client_of(info[0]);
  bool lossless = false;
  uint64_t ns = info[1].As<Napi::BigInt>().Uint64Value(&lossless);
  uint64_t page = static_cast<uint64_t>(info[2].As<Napi::Number>().Int64Value());
  std::vector<uint8_t> buf(c->page_size());
  void *b = buf.data();
  int32_t st = 0;
  int rc = c->get(ns, &page, 1, &b, &st);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("rc", rc);
  o.Set("status", st);
  return o;
}

// ---- drivers of a bare page-store handle, on native threads ----

// readPages(handle, nsId, pages: Float64Array, out: Buffer, status: Int32Array, batch, threads)
//   → Promise<rc>: thread t reads batches t, t+threads, ... of `pages` into `out`, statuses into `status`.
class ReadPages : public Napi::AsyncWorker {
 public:
  ReadPages(Napi::Env env, tierstack::StoreRef store, uint64_t ns, std::vector<uint64_t> pages, Napi::Buffer<uint8_t> out,
            Napi::Int32Array status, uint32_t batch, uint32_t threads)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), store_(std::move(store)), ns_(ns),
        pages_(std::move(pages)), out_(out.Data()), status_(status.Data()), batch_(std::max(1u, batch)),
        threads_(std::max(1u, threads)) {
    out_ref_ = Napi::Persistent(out);
    status_ref_ = Napi::Persistent(status);
  }
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    const uint32_t ps = store_->page_size;
    std::vector<std::thread> ts;
    for (uint32_t t = 0; t < threads_; t++)
      ts.emplace_back([this, t, ps] {
        std::vector<void *> bufs(batch_);
        for (size_t start = static_cast<size_t>(t) * batch_; start < pages_.size(); start += static_cast<size_t>(threads_) * batch_) {
          size_t n = std::min<size_t>(batch_, pages_.size() - start);
          for (size_t i = 0; i < n; i++) bufs[i] = out_ + (start + i) * ps;
          int rc = store_.get_pages(ns_, pages_.data() + start, n, bufs.data(), status_ + start);
          if (rc != TS_OK) rc_ = rc;
        }
      });
    for (auto &t : ts) t.join();
  }
  void OnOK() override { deferred_.Resolve(Napi::Number::New(Env(), rc_.load())); }

 private:
  Napi::Promise::Deferred deferred_;
  tierstack::StoreRef store_;
  uint64_t ns_;
  std::vector<uint64_t> pages_;
  uint8_t *out_;
  int32_t *status_;
  Napi::Reference<Napi::Buffer<uint8_t>> out_ref_;
  Napi::Reference<Napi::Int32Array> status_ref_;
  uint32_t batch_, threads_;
  std::atomic<int> rc_{TS_OK};
};

std::vector<uint64_t> page_list(const Napi::Value &v) {
  auto arr = v.As<Napi::Float64Array>();
  std::vector<uint64_t> pages(arr.ElementLength());
  for (size_t i = 0; i < pages.size(); i++) pages[i] = static_cast<uint64_t>(arr[i]);
  return pages;
}

Napi::Value ReadPagesFn(const Napi::CallbackInfo &info) {
  tierstack::StoreRef store = tierstack::unwrap_page_store(info.Env(), info[0]);
  if (!store) return info.Env().Undefined();
  bool lossless = false;
  auto *w = new ReadPages(info.Env(), std::move(store), info[1].As<Napi::BigInt>().Uint64Value(&lossless), page_list(info[2]),
                          info[3].As<Napi::Buffer<uint8_t>>(), info[4].As<Napi::Int32Array>(),
                          info[5].As<Napi::Number>().Uint32Value(), info[6].As<Napi::Number>().Uint32Value());
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// hammer(handle, nsId, pages, batch, threads, rounds, versionA, versionB) → Promise<counts>:
// every thread reads every page `rounds` times; a FOUND page must hold the pattern of version A
// or B (checked byte for byte); anything else counts as a mismatch.
class Hammer : public Napi::AsyncWorker {
 public:
  Hammer(Napi::Env env, tierstack::StoreRef store, uint64_t ns, std::vector<uint64_t> pages, uint32_t batch, uint32_t threads,
         uint32_t rounds, uint32_t va, uint32_t vb)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), store_(std::move(store)), ns_(ns),
        pages_(std::move(pages)), batch_(std::max(1u, batch)), threads_(std::max(1u, threads)), rounds_(rounds), va_(va), vb_(vb) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    const uint32_t ps = store_->page_size;
    std::vector<std::thread> ts;
    for (uint32_t t = 0; t < threads_; t++)
      ts.emplace_back([this, ps] {
        std::vector<uint8_t> data(static_cast<size_t>(batch_) * ps), a(ps), b(ps);
        std::vector<void *> bufs(batch_);
        std::vector<int32_t> st(batch_);
        for (uint32_t i = 0; i < batch_; i++) bufs[i] = data.data() + static_cast<size_t>(i) * ps;
        for (uint32_t r = 0; r < rounds_; r++) {
          for (size_t start = 0; start < pages_.size(); start += batch_) {
            size_t n = std::min<size_t>(batch_, pages_.size() - start);
            int rc = store_.get_pages(ns_, pages_.data() + start, n, bufs.data(), st.data());
            if (rc != TS_OK) {
              errors_++;
              continue;
            }
            for (size_t i = 0; i < n; i++) {
              if (st[i] == TS_PAGE_MISS) {
                misses_++;
              } else if (st[i] == TS_PAGE_FOUND) {
                found_++;
                fill_page(a.data(), ps, ns_, pages_[start + i], va_);
                fill_page(b.data(), ps, ns_, pages_[start + i], vb_);
                if (std::memcmp(bufs[i], a.data(), ps) != 0 && std::memcmp(bufs[i], b.data(), ps) != 0) mismatches_++;
              } else if (st[i] == TS_E_CHECKSUM) {
                checksum_++;
              } else {
                errors_++;
              }
            }
          }
        }
      });
    for (auto &t : ts) t.join();
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("found", Napi::Number::New(env, static_cast<double>(found_)));
    o.Set("misses", Napi::Number::New(env, static_cast<double>(misses_)));
    o.Set("mismatches", Napi::Number::New(env, static_cast<double>(mismatches_)));
    o.Set("checksum", Napi::Number::New(env, static_cast<double>(checksum_)));
    o.Set("errors", Napi::Number::New(env, static_cast<double>(errors_)));
    deferred_.Resolve(o);
  }

 private:
  Napi::Promise::Deferred deferred_;
  tierstack::StoreRef store_;
  uint64_t ns_;
  std::vector<uint64_t> pages_;
  uint32_t batch_, threads_, rounds_, va_, vb_;
  std::atomic<uint64_t> found_{0}, misses_{0}, mismatches_{0}, checksum_{0}, errors_{0};
};

Napi::Value HammerFn(const Napi::CallbackInfo &info) {
  tierstack::StoreRef store = tierstack::unwrap_page_store(info.Env(), info[0]);
  if (!store) return info.Env().Undefined();
  bool lossless = false;
  auto *w = new Hammer(info.Env(), std::move(store), info[1].As<Napi::BigInt>().Uint64Value(&lossless), page_list(info[2]),
                       info[3].As<Napi::Number>().Uint32Value(), info[4].As<Napi::Number>().Uint32Value(),
                       info[5].As<Napi::Number>().Uint32Value(), info[6].As<Napi::Number>().Uint32Value(),
                       info[7].As<Napi::Number>().Uint32Value());
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// benchGet(handle, nsId, pages, batch, iterations) → Promise<{ nsPerCall, found }>: one native
// thread calls get() on consecutive batches of `pages` (wrapping around) `iterations` times.
class BenchGet : public Napi::AsyncWorker {
 public:
  BenchGet(Napi::Env env, tierstack::StoreRef store, uint64_t ns, std::vector<uint64_t> pages, uint32_t batch, uint32_t iterations)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), store_(std::move(store)), ns_(ns),
        pages_(std::move(pages)), batch_(std::max(1u, batch)), iterations_(iterations) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    const uint32_t ps = store_->page_size;
    std::vector<uint8_t> data(static_cast<size_t>(batch_) * ps);
    std::vector<void *> bufs(batch_);
    std::vector<int32_t> st(batch_);
    for (uint32_t i = 0; i < batch_; i++) bufs[i] = data.data() + static_cast<size_t>(i) * ps;
    size_t groups = std::max<size_t>(1, pages_.size() / batch_);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint32_t it = 0; it < iterations_; it++) {
      const uint64_t *p = pages_.data() + (it % groups) * batch_;
      store_.get_pages(ns_, p, batch_, bufs.data(), st.data());
      for (uint32_t i = 0; i < batch_; i++) found_ += st[i] == TS_PAGE_FOUND;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ns_total_ = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
  }
  void OnOK() override {
    Napi::Env env = Env();
    Napi::Object o = Napi::Object::New(env);
    o.Set("nsPerCall", Napi::Number::New(env, iterations_ ? ns_total_ / iterations_ : 0));
    o.Set("found", Napi::Number::New(env, static_cast<double>(found_)));
    deferred_.Resolve(o);
  }

 private:
  Napi::Promise::Deferred deferred_;
  tierstack::StoreRef store_;
  uint64_t ns_;
  std::vector<uint64_t> pages_;
  uint32_t batch_, iterations_;
  double ns_total_ = 0;
  uint64_t found_ = 0;
};

Napi::Value BenchGetFn(const Napi::CallbackInfo &info) {
  tierstack::StoreRef store = tierstack::unwrap_page_store(info.Env(), info[0]);
  if (!store) return info.Env().Undefined();
  bool lossless = false;
  std::vector<uint64_t> pages = page_list(info[2]);
  uint32_t batch = info[3].As<Napi::Number>().Uint32Value();
  if (batch == 0 || pages.size() < batch) {
    Napi::TypeError::New(info.Env(), "benchGet: need at least `batch` pages").ThrowAsJavaScriptException();
    return info.Env().Undefined();
  }
  auto *w = new BenchGet(info.Env(), std::move(store), info[1].As<Napi::BigInt>().Uint64Value(&lossless), std::move(pages), batch,
                         info[4].As<Napi::Number>().Uint32Value());
  Napi::Promise p = w->promise();
  w->Queue();
  return p;
}

// storeOp(handle, op: 'put' | 'remove', nsId, pages) → rc of put (zero pages) / remove through the ABI.
Napi::Value StoreOpFn(const Napi::CallbackInfo &info) {
  tierstack::StoreRef store = tierstack::unwrap_page_store(info.Env(), info[0]);
  if (!store) return info.Env().Undefined();
  std::string op = info[1].As<Napi::String>().Utf8Value();
  bool lossless = false;
  uint64_t ns = info[2].As<Napi::BigInt>().Uint64Value(&lossless);
  std::vector<uint64_t> pages = page_list(info[3]);
  if (op == "remove") return Napi::Number::New(info.Env(), store.remove_pages(ns, pages.data(), pages.size()));
  std::vector<uint8_t> data(pages.size() * store->page_size);
  std::vector<const void *> bufs(pages.size());
  for (size_t i = 0; i < pages.size(); i++) bufs[i] = data.data() + i * store->page_size;
  return Napi::Number::New(info.Env(), store.put_pages(ns, pages.data(), pages.size(), bufs.data(), TS_PUT_DIRTY));
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("readPages", Napi::Function::New(env, ReadPagesFn));
  exports.Set("hammer", Napi::Function::New(env, HammerFn));
  exports.Set("benchGet", Napi::Function::New(env, BenchGetFn));
  exports.Set("storeOp", Napi::Function::New(env, StoreOpFn));
  exports.Set("createMapStore", Napi::Function::New(env, CreateMapStore));
  exports.Set("mapStoreOp", Napi::Function::New(env, MapStoreOp));
  exports.Set("createClient", Napi::Function::New(env, CreateClient));
  exports.Set("closeClient", Napi::Function::New(env, CloseClient));
  exports.Set("runWorkers", Napi::Function::New(env, RunWorkers));
  exports.Set("getOnJsThread", Napi::Function::New(env, GetOnJsThread));
  return exports;
}

NODE_API_MODULE(stack_client_test, Init)
