// tierstack_core_testing.node: core's test-only addon (never loaded by the library), the native
// half of @tierstack/core/testing (src/testing/native.ts):
//  - the reference store (tierstack/testing/reference_store.hpp) as a handle;
//  - the kit's drivers (tierstack/testing/driver.hpp, conformance.hpp) against any page-store
//    handle, or against a StackClient (a whole stack as a front-end sees it);
//  - StackClient hooks for core's own tests (create/close, a blocking get on the JS thread, a
//    native tier that reads through a client).
// Blocking drivers run on threads of their own (run_on_thread); their promises settle on the JS
// thread.
#include <napi.h>

#include <memory>
#include <string>
#include <variant>
#include <vector>

#include <tierstack/napi_args.hpp>
#include <tierstack/napi_error.hpp>
#include <tierstack/run_on_thread.hpp>
#include <tierstack/stack_client.hpp>
#include <tierstack/testing/conformance.hpp>
#include <tierstack/testing/driver.hpp>
#include <tierstack/testing/reference_store.hpp>

namespace tscore {
namespace {

using tierstack::throw_error;
using tierstack::testing::HandleTarget;
using tierstack::testing::ReferenceStore;
using ClientPtr = std::shared_ptr<tierstack::StackClient>;

// A StackClient as a driver target: `level` says which tier served a page.
struct ClientTarget {
  ClientPtr c;
  uint32_t page_size() const { return c->page_size(); }
  int get(uint64_t ns, const uint64_t *p, size_t n, void *const *b, int32_t *st, uint8_t *level) const {
    return c->get(ns, p, n, b, st, level);
  }
  int put(uint64_t ns, const uint64_t *p, size_t n, const void *const *b, uint32_t flags) const { return c->put(ns, p, n, b, flags); }
  int remove(uint64_t ns, const uint64_t *p, size_t n) const { return c->remove(ns, p, n); }
  int flush() const { return c->flush(); }
};
using Target = std::variant<HandleTarget, ClientTarget>;

constexpr napi_type_tag kClientTag = {0x7469657273746163ULL, 0x636c69656e740000ULL};  // "tierstac" "client"

bool is_client(const Napi::Value &v) { return v.IsExternal() && v.As<Napi::External<ClientPtr>>().CheckTypeTag(&kClientTag); }

// A page-store handle or a client made by createClient(); with a JS exception pending on failure.
bool target_of(Napi::Env env, const Napi::Value &v, Target *out) {
  if (is_client(v)) {
    *out = ClientTarget{*v.As<Napi::External<ClientPtr>>().Data()};
    return true;
  }
  tierstack::StoreRef ref = tierstack::unwrap_page_store(env, v);
  if (!ref) return false;
  *out = HandleTarget{std::move(ref)};
  return true;
}

using tierstack::pages_of;
using tierstack::u64_of;

double num(const Napi::Object &o, const char *key, double dflt) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : dflt;
}

Napi::Object options_of(const Napi::CallbackInfo &info, size_t i) {
  return info.Length() > i && info[i].IsObject() ? info[i].As<Napi::Object>() : Napi::Object::New(info.Env());
}

template <class Fn>
auto visit(const Target &t, Fn &&fn) {
  return std::visit([&](const auto &x) { return fn(x); }, t);
}

// ---- the reference store ----

// createReferenceStore(pageSize, name) → handle
Napi::Value CreateReferenceStore(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint32_t ps = info[0].ToNumber().Uint32Value();
  if (ps < 512 || (ps & (ps - 1)) != 0) return throw_error(env, "TS_ERR_PAGE_SIZE", "bad page size");
  auto *s = new ReferenceStore(ps, info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "native-reference");
  Napi::Value h = tierstack::wrap_page_store(env, s->handle());
  s->release();  // the external holds the only reference now
  return h;
}

// referenceStore(handle, op, ns?, pages?, data?, arg?): op 'get' (fills data, returns the statuses
// as an Int32Array), 'put' (arg: TS_PUT_* flags), 'remove', 'fail' (arg: the TS_E_* status those
// pages answer from now on; 0 clears), 'count', 'close' → number | Int32Array | undefined.
Napi::Value ReferenceStoreOp(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  tierstack::StoreRef ref = tierstack::unwrap_page_store(env, info[0]);
  if (!ref) return env.Undefined();
  ReferenceStore *s = ReferenceStore::from(ref.get());
  if (!s) return throw_error(env, "TS_ERR_BAD_ARGUMENT", "not a reference store handle");
  std::string op = info[1].ToString().Utf8Value();
  if (op == "count") return Napi::Number::New(env, static_cast<double>(s->count()));
  if (op == "close") {
    s->close();
    return env.Undefined();
  }
  uint64_t ns = u64_of(info[2]);
  std::vector<uint64_t> pages;
  if (!pages_of(env, info[3], &pages)) return env.Undefined();
  const size_t n = pages.size(), ps = s->page_size();
  if (op == "remove") return Napi::Number::New(env, ref.remove_pages(ns, pages.data(), n));
  if (op == "fail") {
    int32_t status = info[5].ToNumber().Int32Value();
    for (uint64_t p : pages) s->fail(ns, p, status);
    return env.Undefined();
  }
  if (op != "get" && op != "put") return throw_error(env, "TS_ERR_BAD_ARGUMENT", "unknown reference store op " + op);
  if (!info[4].IsBuffer() || info[4].As<Napi::Buffer<uint8_t>>().Length() < n * ps)
    return throw_error(env, "TS_ERR_BAD_ARGUMENT", "data must be a Buffer of the batch's pages");
  uint8_t *data = info[4].As<Napi::Buffer<uint8_t>>().Data();
  std::vector<void *> bufs(n);
  for (size_t i = 0; i < n; i++) bufs[i] = data + i * ps;
  if (op == "put")
    return Napi::Number::New(env, ref.put_pages(ns, pages.data(), n, const_cast<const void *const *>(bufs.data()),
                                                info.Length() > 5 ? info[5].ToNumber().Uint32Value() : 0));
  auto status = Napi::Int32Array::New(env, n);
  int rc = ref.get_pages(ns, pages.data(), n, bufs.data(), status.Data());
  if (rc != TS_OK) return tierstack::throw_status(env, rc, "reference store get failed");
  return status;
}

// ---- drive (benchmarks) ----

Napi::Object drive_result(Napi::Env env, const tierstack::testing::DriveResult &r) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("status", r.status);
  o.Set("misses", static_cast<double>(r.misses));
  o.Set("calls", static_cast<double>(r.calls));
  o.Set("wallNs", static_cast<double>(r.wall_ns));
  o.Set("cpuNs", static_cast<double>(r.cpu_ns));
  if (!r.latencies.empty()) {
    auto lat = Napi::Float64Array::New(env, r.latencies.size());
    std::memcpy(lat.Data(), r.latencies.data(), r.latencies.size() * sizeof(double));
    o.Set("latencies", lat);
  }
  return o;
}

// (handle, ns, op, pages: Float64Array, batch, calls, { start, latencies, flags, fill }) → spec
bool drive_args(const Napi::CallbackInfo &info, HandleTarget *t, uint64_t *ns, tierstack::testing::DriveSpec *s) {
  Napi::Env env = info.Env();
  tierstack::StoreRef ref = tierstack::unwrap_page_store(env, info[0]);
  if (!ref) return false;
  t->store = std::move(ref);
  *ns = u64_of(info[1]);
  if (!tierstack::testing::parse_op(info[2].ToString().Utf8Value(), &s->op) || s->op == tierstack::testing::Op::kFlush) {
    throw_error(env, "TS_ERR_BAD_ARGUMENT", "op must be 'get', 'put' or 'remove'");
    return false;
  }
  if (!info[3].IsTypedArray() || info[3].As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    throw_error(env, "TS_ERR_BAD_ARGUMENT", "pages must be a Float64Array");
    return false;
  }
  auto arr = info[3].As<Napi::Float64Array>();
  s->pages = arr.Data();
  s->count = arr.ElementLength();
  s->batch = info[4].ToNumber().Uint32Value();
  s->calls = static_cast<uint64_t>(info[5].ToNumber().DoubleValue());
  Napi::Object o = options_of(info, 6);
  s->start = static_cast<size_t>(num(o, "start", 0));
  s->latencies = o.Get("latencies").ToBoolean().Value();
  s->flags = static_cast<uint32_t>(num(o, "flags", 0));
  s->fill = static_cast<uint8_t>(num(o, "fill", 0x5a));
  if (s->batch == 0 || s->count < s->batch) {
    throw_error(env, "TS_ERR_BAD_ARGUMENT", "driveStore: batch must be 1..pages.length");
    return false;
  }
  return true;
}

// driveStoreSync(...): the loop on the calling thread (a tier that never waits for JavaScript).
Napi::Value DriveStoreSync(const Napi::CallbackInfo &info) {
  HandleTarget t;
  uint64_t ns;
  tierstack::testing::DriveSpec s;
  if (!drive_args(info, &t, &ns, &s)) return info.Env().Undefined();
  return drive_result(info.Env(), tierstack::testing::drive(t, ns, s));
}

// driveStore(...) → Promise: the loop on a thread of its own.
Napi::Value DriveStore(const Napi::CallbackInfo &info) {
  auto t = std::make_shared<HandleTarget>();
  uint64_t ns;
  tierstack::testing::DriveSpec s;
  if (!drive_args(info, t.get(), &ns, &s)) return info.Env().Undefined();
  auto r = std::make_shared<tierstack::testing::DriveResult>();
  return tierstack::run_on_thread(
      info.Env(), [t, ns, s, r] { *r = tierstack::testing::drive(*t, ns, s); },
      [r](Napi::Env env, Napi::Promise::Deferred &d) { d.Resolve(drive_result(env, *r)); }, {info[3]});
}

// ---- run_ops / stress / readPages / conformance ----

// runOps(target, ns, op, pages, { threads, batch, rounds, split: 'range'|'deal'|'all', version, versions, flags })
//   → Promise<{ found, misses, mismatches, checksum, errors, lastError, byLevel }>
Napi::Value RunOps(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Target t;
  if (!target_of(env, info[0], &t)) return env.Undefined();
  uint64_t ns = u64_of(info[1]);
  auto s = std::make_shared<tierstack::testing::OpsSpec>();
  if (!tierstack::testing::parse_op(info[2].ToString().Utf8Value(), &s->op))
    return throw_error(env, "TS_ERR_BAD_ARGUMENT", "op must be 'get', 'put', 'remove' or 'flush'");
  if (!pages_of(env, info[3], &s->pages)) return env.Undefined();
  Napi::Object o = options_of(info, 4);
  s->threads = static_cast<uint32_t>(num(o, "threads", 1));
  s->batch = static_cast<uint32_t>(num(o, "batch", 1));
  s->rounds = static_cast<uint32_t>(num(o, "rounds", 1));
  s->version = static_cast<uint64_t>(num(o, "version", 0));
  s->flags = static_cast<uint32_t>(num(o, "flags", TS_PUT_DIRTY));
  std::string split = o.Get("split").IsString() ? o.Get("split").As<Napi::String>().Utf8Value() : "range";
  s->split = split == "deal" ? tierstack::testing::Split::kDeal
             : split == "all" ? tierstack::testing::Split::kAll
                              : tierstack::testing::Split::kRange;
  Napi::Value vs = o.Get("versions");
  if (vs.IsArray())
    for (uint32_t i = 0; i < vs.As<Napi::Array>().Length(); i++)
      s->versions.push_back(static_cast<uint64_t>(vs.As<Napi::Array>().Get(i).ToNumber().DoubleValue()));
  auto r = std::make_shared<tierstack::testing::OpsResult>();
  return tierstack::run_on_thread(
      env, [t, ns, s, r] { visit(t, [&](const auto &x) { tierstack::testing::run_ops(x, ns, *s, *r); }); },
      [r](Napi::Env env, Napi::Promise::Deferred &d) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("found", static_cast<double>(r->found));
        o.Set("misses", static_cast<double>(r->misses));
        o.Set("mismatches", static_cast<double>(r->mismatches));
        o.Set("checksum", static_cast<double>(r->checksum));
        o.Set("errors", static_cast<double>(r->errors));
        o.Set("lastError", r->last_error.load());
        Napi::Array levels = Napi::Array::New(env, 8);
        for (uint32_t i = 0; i < 8; i++) levels.Set(i, static_cast<double>(r->by_level[i]));
        o.Set("byLevel", levels);
        d.Resolve(o);
      });
}

// stressStore(target, ns, { threads, ops, span, maxBatch, dirtyEvery, removeEvery, seed })
//   → Promise<{ puts, gets, hits, removes, mismatches, errors, noSpace, lastError }>
Napi::Value StressStore(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  Target t;
  if (!target_of(env, info[0], &t)) return env.Undefined();
  uint64_t ns = u64_of(info[1]);
  Napi::Object o = options_of(info, 2);
  tierstack::testing::StressSpec s;
  s.threads = static_cast<uint32_t>(num(o, "threads", s.threads));
  s.ops = static_cast<uint64_t>(num(o, "ops", static_cast<double>(s.ops)));
  s.span = static_cast<uint64_t>(num(o, "span", static_cast<double>(s.span)));
  s.max_batch = static_cast<uint32_t>(num(o, "maxBatch", s.max_batch));
  s.dirty_every = static_cast<uint32_t>(num(o, "dirtyEvery", s.dirty_every));
  s.remove_every = static_cast<uint32_t>(num(o, "removeEvery", s.remove_every));
  s.seed = static_cast<uint64_t>(num(o, "seed", static_cast<double>(s.seed)));
  auto r = std::make_shared<tierstack::testing::StressResult>();
  return tierstack::run_on_thread(
      env, [t, ns, s, r] { visit(t, [&](const auto &x) { tierstack::testing::stress(x, ns, s, *r); }); },
      [r](Napi::Env env, Napi::Promise::Deferred &d) {
        Napi::Object o = Napi::Object::New(env);
        o.Set("puts", static_cast<double>(r->puts));
        o.Set("gets", static_cast<double>(r->gets));
        o.Set("hits", static_cast<double>(r->hits));
        o.Set("removes", static_cast<double>(r->removes));
        o.Set("mismatches", static_cast<double>(r->mismatches));
        o.Set("errors", static_cast<double>(r->errors));
        o.Set("noSpace", static_cast<double>(r->no_space));
        o.Set("checksum", static_cast<double>(r->checksum));
        o.Set("lastError", r->last_error.load());
        d.Resolve(o);
      });
}

// readPages(handle, ns, pages, out: Buffer, status: Int32Array, batch, threads) → Promise<rc>
Napi::Value ReadPages(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  tierstack::StoreRef ref = tierstack::unwrap_page_store(env, info[0]);
  if (!ref) return env.Undefined();
  auto t = std::make_shared<HandleTarget>(HandleTarget{std::move(ref)});
  uint64_t ns = u64_of(info[1]);
  auto pages = std::make_shared<std::vector<uint64_t>>();
  if (!pages_of(env, info[2], pages.get())) return env.Undefined();
  if (!info[3].IsBuffer() || !info[4].IsTypedArray() || info[4].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
    return throw_error(env, "TS_ERR_BAD_ARGUMENT", "readPages(handle, ns, pages, out: Buffer, status: Int32Array, batch, threads)");
  auto out = info[3].As<Napi::Buffer<uint8_t>>();
  auto status = info[4].As<Napi::Int32Array>();
  if (out.Length() < pages->size() * t->page_size() || status.ElementLength() < pages->size())
    return throw_error(env, "TS_ERR_BAD_ARGUMENT", "out or status is too small for the pages");
  uint8_t *o = out.Data();
  int32_t *st = status.Data();
  uint32_t batch = info[5].ToNumber().Uint32Value(), threads = info[6].ToNumber().Uint32Value();
  auto rc = std::make_shared<int>(TS_OK);
  return tierstack::run_on_thread(
      env, [t, ns, pages, o, st, batch, threads, rc] { *rc = tierstack::testing::read_into(*t, ns, *pages, o, st, batch, threads); },
      [rc](Napi::Env env, Napi::Promise::Deferred &d) { d.Resolve(Napi::Number::New(env, *rc)); }, {info[3], info[4]});
}

tierstack::testing::ConformanceSpec conformance_spec(const Napi::Object &o) {
  tierstack::testing::ConformanceSpec s;
  s.lossy = o.Get("lossy").ToBoolean().Value();
  s.promotion = o.Get("promotion").ToBoolean().Value();
  s.threads = static_cast<uint32_t>(num(o, "threads", s.threads));
  s.put_flags = static_cast<uint32_t>(num(o, "putFlags", 0));
  s.checksum_on_race = o.Get("checksumOnRace").ToBoolean().Value();
  return s;
}

Napi::Value ConformanceCases(const Napi::CallbackInfo &info) {
  const auto &names = tierstack::testing::conformance_cases();
  Napi::Array a = Napi::Array::New(info.Env(), names.size());
  for (uint32_t i = 0; i < names.size(); i++) a.Set(i, names[i]);
  return a;
}

// conformancePages(name, spec) → Float64Array: the pages the case writes.
Napi::Value ConformancePages(const Napi::CallbackInfo &info) {
  auto pages = tierstack::testing::conformance_pages(info[0].ToString().Utf8Value(), conformance_spec(options_of(info, 1)));
  auto a = Napi::Float64Array::New(info.Env(), pages.size());
  for (size_t i = 0; i < pages.size(); i++) a[i] = static_cast<double>(pages[i]);
  return a;
}

// conformanceCase(handle, ns, ns2, name, spec) → Promise<{ failures, failed, checked, found, misses }>
Napi::Value ConformanceCase(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  tierstack::StoreRef ref = tierstack::unwrap_page_store(env, info[0]);
  if (!ref) return env.Undefined();
  auto t = std::make_shared<HandleTarget>(HandleTarget{std::move(ref)});
  uint64_t ns = u64_of(info[1]), ns2 = u64_of(info[2]);
  std::string name = info[3].ToString().Utf8Value();
  auto spec = conformance_spec(options_of(info, 4));
  auto r = std::make_shared<tierstack::testing::CaseReport>();
  return tierstack::run_on_thread(
      env, [t, ns, ns2, name, spec, r] { *r = tierstack::testing::run_conformance_case(*t, ns, ns2, name, spec); },
      [r](Napi::Env env, Napi::Promise::Deferred &d) {
        Napi::Object o = Napi::Object::New(env);
        Napi::Array f = Napi::Array::New(env, r->failures.size());
        for (uint32_t i = 0; i < r->failures.size(); i++) f.Set(i, r->failures[i]);
        o.Set("failures", f);
        o.Set("failed", static_cast<double>(r->failed));
        o.Set("checked", static_cast<double>(r->checked));
        o.Set("found", static_cast<double>(r->found));
        o.Set("misses", static_cast<double>(r->misses));
        d.Resolve(o);
      });
}

// ---- StackClient hooks ----

// createClient(jsPath, maxBatchPages?) → client
Napi::Value CreateClient(const Napi::CallbackInfo &info) {
  tierstack::StackClientOptions opts;
  if (info.Length() > 1 && info[1].IsNumber()) opts.max_batch_pages = info[1].As<Napi::Number>().Uint32Value();
  ClientPtr c = tierstack::StackClient::create(info.Env(), info[0].As<Napi::Object>(), opts);
  if (!c) return info.Env().Undefined();
  auto ext = Napi::External<ClientPtr>::New(info.Env(), new ClientPtr(c), [](Napi::Env, ClientPtr *p) { delete p; });
  ext.TypeTag(&kClientTag);
  return ext;
}

ClientPtr client_arg(const Napi::CallbackInfo &info) {
  if (!is_client(info[0])) {
    throw_error(info.Env(), "TS_ERR_BAD_ARGUMENT", "expected a client from createClient()");
    return nullptr;
  }
  return *info[0].As<Napi::External<ClientPtr>>().Data();
}

Napi::Value CloseClient(const Napi::CallbackInfo &info) {
  if (ClientPtr c = client_arg(info)) c->close();
  return info.Env().Undefined();
}

// A native tier that reads and writes through a StackClient (another whole stack), as a
// copy-on-write layer over its parent's stack does: its get runs inside the outer client's get,
// on the same thread. For the StackClient re-entrancy test.
class ClientStore : public tierstack::NativeStore<ClientStore> {
 public:
  explicit ClientStore(ClientPtr c) : NativeStore("client-store", c->page_size()), c_(std::move(c)) {}
  int do_get(uint64_t ns, const uint64_t *pages, size_t n, void *const *bufs, int32_t *status) {
    return c_->get(ns, pages, n, bufs, status);
  }
  int do_put(uint64_t ns, const uint64_t *pages, size_t n, const void *const *bufs, uint32_t flags) {
    return c_->put(ns, pages, n, bufs, flags);
  }
  int do_remove(uint64_t ns, const uint64_t *pages, size_t n) { return c_->remove(ns, pages, n); }

 private:
  ClientPtr c_;
};

// createClientStore(client) → handle: a native tier over the client's stack.
Napi::Value CreateClientStore(const Napi::CallbackInfo &info) {
  ClientPtr c = client_arg(info);
  if (!c) return info.Env().Undefined();
  auto *s = new ClientStore(std::move(c));
  Napi::Value h = tierstack::wrap_page_store(info.Env(), s->handle());
  s->release();  // the external holds the only reference now
  return h;
}

// getOnJsThread(client, ns, page) → { rc, status } of a blocking get made on the JS thread.
Napi::Value GetOnJsThread(const Napi::CallbackInfo &info) {
  ClientPtr c = client_arg(info);
  if (!c) return info.Env().Undefined();
  uint64_t ns = u64_of(info[1]);
  uint64_t page = static_cast<uint64_t>(info[2].ToNumber().Int64Value());
  std::vector<uint8_t> buf(c->page_size());
  void *b = buf.data();
  int32_t st = 0;
  int rc = c->get(ns, &page, 1, &b, &st);
  Napi::Object o = Napi::Object::New(info.Env());
  o.Set("rc", rc);
  o.Set("status", st);
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  return tierstack::export_functions(env, exports,
                                     {
                                         {"createReferenceStore", CreateReferenceStore}, {"referenceStore", ReferenceStoreOp},
                                         {"driveStore", DriveStore},                     {"driveStoreSync", DriveStoreSync},
                                         {"runOps", RunOps},                             {"stressStore", StressStore},
                                         {"readPages", ReadPages},                       {"conformanceCases", ConformanceCases},
                                         {"conformancePages", ConformancePages},         {"conformanceCase", ConformanceCase},
                                         {"createClient", CreateClient},                 {"closeClient", CloseClient},
                                         {"getOnJsThread", GetOnJsThread},               {"createClientStore", CreateClientStore},
                                     });
}

}  // namespace
}  // namespace tscore

static Napi::Object InitCoreTesting(Napi::Env env, Napi::Object exports) { return tscore::Init(env, exports); }
NODE_API_MODULE(tierstack_core_testing, InitCoreTesting)
