// Test addon for core's native headers: a small in-memory tier implementing the page-store C ABI
// (a reference implementation of its rules), and a driver that runs native threads against a
// StackClient so the tests can check what front-ends rely on: native hits, the batched JS
// path, writes, removes, flushes, and the JS-thread deadlock guard.
#include <napi.h>

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

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("createMapStore", Napi::Function::New(env, CreateMapStore));
  exports.Set("mapStoreOp", Napi::Function::New(env, MapStoreOp));
  exports.Set("createClient", Napi::Function::New(env, CreateClient));
  exports.Set("closeClient", Napi::Function::New(env, CloseClient));
  exports.Set("runWorkers", Napi::Function::New(env, RunWorkers));
  exports.Set("getOnJsThread", Napi::Function::New(env, GetOnJsThread));
  return exports;
}

NODE_API_MODULE(stack_client_test, Init)
