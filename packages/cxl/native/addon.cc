// The JavaScript face of the CXL tier: one native call per batch, copying straight between the
// region and the caller's Buffers. Arguments are validated by the TypeScript layer (CxlTier);
// the checks here only keep a bad call from crashing the process.
#include <napi.h>

#include <string>
#include <vector>

#include <tierstack/napi_error.hpp>
#include <tierstack/page_store_napi.hpp>

#include "store.hpp"

namespace tscxl {
namespace {

// Errors carry `code` (TS_ERR_*), `status` (TS_E_*) and `errno` when a system call failed.
using tierstack::throw_status;

// The JS-held reference to a store; the external's finalizer drops it if close() was not called.
struct JsHandle {
  CxlStore *store = nullptr;
};

CxlStore *store_arg(const Napi::CallbackInfo &info, bool allow_closed = false) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsExternal()) {
    throw_status(env, TS_E_BAD_ARGUMENT, "expected a CXL store handle");
    return nullptr;
  }
  JsHandle *h = info[0].As<Napi::External<JsHandle>>().Data();
  if (!h->store && !allow_closed) {
    throw_status(env, TS_E_CLOSED, "the CXL store is closed");
    return nullptr;
  }
  return h->store;
}

bool u64_arg(const Napi::CallbackInfo &info, size_t i, uint64_t *out) {
  if (info.Length() <= i || !info[i].IsBigInt()) {
    throw_status(info.Env(), TS_E_BAD_ARGUMENT, "expected a bigint namespace id");
    return false;
  }
  bool lossless = true;
  *out = info[i].As<Napi::BigInt>().Uint64Value(&lossless);
  return true;
}

template <typename T, napi_typedarray_type Type>
bool typed_arg(const Napi::CallbackInfo &info, size_t i, T **data, size_t *len, const char *what) {
  if (info.Length() <= i || !info[i].IsTypedArray() || info[i].As<Napi::TypedArray>().TypedArrayType() != Type) {
    throw_status(info.Env(), TS_E_BAD_ARGUMENT, std::string("expected ") + what);
    return false;
  }
  auto arr = info[i].As<Napi::TypedArrayOf<T>>();
  *data = arr.Data();
  *len = arr.ElementLength();
  return true;
}

bool pages_arg(const Napi::CallbackInfo &info, size_t i, std::vector<uint64_t> *pages) {
  double *p;
  size_t n;
  if (!typed_arg<double, napi_float64_array>(info, i, &p, &n, "a Float64Array of page numbers")) return false;
  pages->resize(n);
  for (size_t k = 0; k < n; k++) (*pages)[k] = static_cast<uint64_t>(p[k]);
  return true;
}

bool bytes_arg(const Napi::CallbackInfo &info, size_t i, uint8_t **data, size_t *len) {
  return typed_arg<uint8_t, napi_uint8_array>(info, i, data, len, "a Buffer");
}

double num_opt(Napi::Object o, const char *key, double dflt) {
  Napi::Value v = o.Get(key);
  return v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : dflt;
}

// open({ kind, path, size, create, format, pageSize, ways, nsEntries, numaNode, deviceSize, deviceAlign, name })
Napi::Value Open(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) return throw_status(env, TS_E_BAD_ARGUMENT, "expected open options");
  Napi::Object o = info[0].As<Napi::Object>();
  OpenOptions opt;
  std::string kind = o.Get("kind").IsString() ? o.Get("kind").As<Napi::String>().Utf8Value() : "memfd";
  if (kind == "memfd")
    opt.kind = BackingKind::Memfd;
  else if (kind == "file")
    opt.kind = BackingKind::File;
  else if (kind == "devdax")
    opt.kind = BackingKind::Devdax;
  else
    return throw_status(env, TS_E_BAD_ARGUMENT, "unknown backing kind " + kind);
  if (o.Get("path").IsString()) opt.path = o.Get("path").As<Napi::String>().Utf8Value();
  opt.size = uint64_t(num_opt(o, "size", 0));
  opt.create = o.Get("create").ToBoolean().Value();
  opt.format = o.Get("format").ToBoolean().Value();
  opt.page_size = uint32_t(num_opt(o, "pageSize", 0));
  opt.ways = uint32_t(num_opt(o, "ways", 0));
  opt.ns_entries = uint32_t(num_opt(o, "nsEntries", 0));
  opt.numa_node = int(num_opt(o, "numaNode", -1));
  opt.device_size = uint64_t(num_opt(o, "deviceSize", 0));
  opt.device_align = uint64_t(num_opt(o, "deviceAlign", 0));
  std::string name = o.Get("name").IsString() ? o.Get("name").As<Napi::String>().Utf8Value() : "cxl";
  Status st;
  CxlStore *store = CxlStore::open(opt, name, &st);
  if (!store) return throw_status(env, st.code, st.message, st.sys_errno);
  auto *h = new JsHandle{store};
  return Napi::External<JsHandle>::New(env, h, [](Napi::Env, JsHandle *jh) {
    if (jh->store) jh->store->release();
    delete jh;
  });
}

Napi::Value Close(const Napi::CallbackInfo &info) {
  CxlStore *s = store_arg(info, true);
  if (!s) return info.Env().Undefined();
  s->close();
  info[0].As<Napi::External<JsHandle>>().Data()->store = nullptr;
  s->release();
  return info.Env().Undefined();
}

Napi::Object counters_of(Napi::Env env, const Cache &c) {
  static const char *names[] = {"hits", "misses", "puts", "removes", "evictions", "dirtyEvictions",
                                "checksumErrors", "lockSteals", "noSpace", "validPages", "dirtyPages"};
  static_assert(sizeof(names) / sizeof(names[0]) == kCounterCount, "a name per counter");
  Napi::Object counters = Napi::Object::New(env);
  for (unsigned k = 0; k < kCounterCount; k++) counters.Set(names[k], double(c.counter(Counter(k))));
  // Occupancy counters are signed deltas summed in a u64; clamp what drift may leave below zero.
  for (Counter k : {kValidPages, kDirtyPages})
    counters.Set(names[k], double(int64_t(c.counter(k)) < 0 ? 0 : int64_t(c.counter(k))));
  return counters;
}

Napi::Value Info(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CxlStore *s = store_arg(info);
  if (!s) return env.Undefined();
  const Header &h = s->region().header();
  Cache &c = s->cache();
  Napi::Object o = Napi::Object::New(env);
  o.Set("version", h.version);
  o.Set("pageSize", h.page_size);
  o.Set("ways", h.ways);
  o.Set("sets", double(h.set_count));
  o.Set("slots", double(h.slot_count));
  o.Set("regionBytes", double(h.region_bytes));
  o.Set("mappedBytes", double(s->region().mapped_bytes()));
  o.Set("nsEntries", h.ns_entries);
  o.Set("setBytes", h.set_bytes);
  o.Set("dataOffset", double(h.data_offset));
  o.Set("indexBytesPerPage", index_bytes_per_page(h.ways));
  o.Set("checksum", c.crc_kind());
  o.Set("createdUnixMs", double(h.created_unix_ns / 1000000ULL));
  o.Set("creatorPid", h.creator_pid);
  o.Set("creatorHost", std::string(h.creator_host, strnlen(h.creator_host, sizeof h.creator_host)));
  o.Set("formattedNow", s->region().formatted_now());
  o.Set("recoveredAfterReboot", s->region().recovered_after_reboot());
  o.Set("setsOffset", double(h.sets_offset));
  o.Set("fd", s->region().fd());
  Occupancy occ = c.occupancy();
  o.Set("validPages", double(occ.valid));
  o.Set("dirtyPages", double(occ.dirty));
  o.Set("lockedSets", double(occ.locked_sets));
  o.Set("counters", counters_of(env, c));
  return o;
}

// counters(h): the region's shared counters only (no scan of the index: cheap enough for metrics).
Napi::Value Counters(const Napi::CallbackInfo &info) {
  CxlStore *s = store_arg(info);
  if (!s) return info.Env().Undefined();
  return counters_of(info.Env(), s->cache());
}

// get(h, nsId, pages, out, found) -> { hits, checksumErrors }: found[i] = 1 on a hit, 2 when the
// page's bytes failed their checksum (never handed out).
Napi::Value Get(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CxlStore *s = store_arg(info);
  uint64_t ns;
  std::vector<uint64_t> pages;
  uint8_t *out, *found;
  size_t out_len, found_len;
  if (!s || !u64_arg(info, 1, &ns) || !pages_arg(info, 2, &pages) || !bytes_arg(info, 3, &out, &out_len) ||
      !bytes_arg(info, 4, &found, &found_len))
    return env.Undefined();
  const size_t n = pages.size(), ps = s->cache().page_size();
  if (out_len != n * ps || found_len != n) return throw_status(env, TS_E_BAD_ARGUMENT, "buffer sizes do not match the batch");
  std::vector<void *> bufs(n);
  std::vector<int32_t> status(n);
  for (size_t i = 0; i < n; i++) bufs[i] = out + i * ps;
  int rc = s->cache().get(ns, pages.data(), n, bufs.data(), status.data());
  if (rc != TS_OK) return throw_status(env, rc, "CXL get failed");
  double hits = 0, bad = 0;
  for (size_t i = 0; i < n; i++) {
    if (status[i] == TS_PAGE_FOUND) {
      found[i] = 1;
      hits++;
    } else {
      found[i] = status[i] == TS_E_CHECKSUM ? 2 : 0;
      if (status[i] < 0) bad++;
    }
  }
  Napi::Object r = Napi::Object::New(env);
  r.Set("hits", hits);
  r.Set("checksumErrors", bad);
  return r;
}

// put(h, nsId, pages, data, dirty) -> { status, evicted?: { ns: BigUint64Array, pages: Float64Array, data: Buffer } }
Napi::Value Put(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CxlStore *s = store_arg(info);
  uint64_t ns;
  std::vector<uint64_t> pages;
  uint8_t *data;
  size_t len;
  if (!s || !u64_arg(info, 1, &ns) || !pages_arg(info, 2, &pages) || !bytes_arg(info, 3, &data, &len)) return env.Undefined();
  const size_t n = pages.size(), ps = s->cache().page_size();
  if (len != n * ps) return throw_status(env, TS_E_BAD_ARGUMENT, "data length does not match the batch");
  const bool dirty = info.Length() > 4 && info[4].ToBoolean().Value();
  std::vector<const void *> bufs(n);
  for (size_t i = 0; i < n; i++) bufs[i] = data + i * ps;
  // Room for one dirty victim per page; the data buffer is allocated only when a victim shows up.
  std::vector<uint64_t> ev_ns(n), ev_pages(n);
  auto *ev_data = new std::vector<uint8_t>();
  EvictionOut ev{ev_data, ev_ns.data(), ev_pages.data(), n, 0};
  const bool promotion = info.Length() > 5 && info[5].ToBoolean().Value();
  int rc = s->cache().put(ns, pages.data(), n, bufs.data(), (dirty ? TS_PUT_DIRTY : 0) | (promotion ? TS_PUT_PROMOTION : 0), &ev);
  Napi::Object r = Napi::Object::New(env);
  r.Set("status", rc);
  if (ev.count == 0) {
    delete ev_data;
    return r;
  }
  Napi::Object e = Napi::Object::New(env);
  auto nsArr = Napi::BigUint64Array::New(env, ev.count);
  auto pgArr = Napi::Float64Array::New(env, ev.count);
  for (size_t i = 0; i < ev.count; i++) {
    nsArr[i] = ev_ns[i];
    pgArr[i] = double(ev_pages[i]);
  }
  e.Set("ns", nsArr);
  e.Set("pages", pgArr);
  e.Set("data", Napi::Buffer<uint8_t>::New(env, ev_data->data(), ev.count * ps,
                                           [](Napi::Env, uint8_t *, std::vector<uint8_t> *v) { delete v; }, ev_data));
  r.Set("evicted", e);
  return r;
}

Napi::Value Remove(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CxlStore *s = store_arg(info);
  uint64_t ns;
  std::vector<uint64_t> pages;
  if (!s || !u64_arg(info, 1, &ns) || !pages_arg(info, 2, &pages)) return env.Undefined();
  int rc = s->cache().remove(ns, pages.data(), pages.size());
  if (rc != TS_OK) return throw_status(env, rc, "CXL remove failed");
  return env.Undefined();
}

Napi::Value RegisterNamespace(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CxlStore *s = store_arg(info);
  uint64_t ns;
  if (!s || !u64_arg(info, 1, &ns)) return env.Undefined();
  if (info.Length() < 3 || !info[2].IsString()) return throw_status(env, TS_E_BAD_ARGUMENT, "expected a namespace name");
  std::string name = info[2].As<Napi::String>().Utf8Value();
  return Napi::Number::New(env, s->cache().register_namespace(ns, name.data(), name.size()));
}

Napi::Value NamespaceName(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CxlStore *s = store_arg(info);
  uint64_t ns;
  if (!s || !u64_arg(info, 1, &ns)) return env.Undefined();
  std::string name;
  if (!s->cache().namespace_name(ns, &name)) return env.Undefined();
  return Napi::String::New(env, name);
}

Napi::Value Namespaces(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CxlStore *s = store_arg(info);
  if (!s) return env.Undefined();
  auto list = s->cache().namespaces();
  Napi::Array arr = Napi::Array::New(env, list.size());
  for (size_t i = 0; i < list.size(); i++) {
    Napi::Object e = Napi::Object::New(env);
    e.Set("id", Napi::BigInt::New(env, list[i].first));
    e.Set("name", list[i].second);
    arr.Set(uint32_t(i), e);
  }
  return arr;
}

// collectDirty(h, cursor, max) -> { cursor, ns, pages, data, slots, seqs }
Napi::Value CollectDirty(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CxlStore *s = store_arg(info);
  if (!s) return env.Undefined();
  uint64_t cursor = uint64_t(info[1].As<Napi::Number>().DoubleValue());
  size_t max = size_t(info[2].As<Napi::Number>().DoubleValue());
  const size_t ps = s->cache().page_size();
  std::vector<uint64_t> ns(max), pages(max);
  std::vector<DirtyRef> refs(max);
  auto *data = new std::vector<uint8_t>(max * ps);
  uint64_t unnamed = 0, damaged = 0;
  size_t got = s->cache().collect_dirty(&cursor, max, data->data(), ns.data(), pages.data(), refs.data(), &unnamed, &damaged);
  data->resize(got * ps);
  Napi::Object r = Napi::Object::New(env);
  r.Set("cursor", double(cursor));
  r.Set("done", cursor >= s->cache().slot_count());
  r.Set("unnamed", double(unnamed));
  r.Set("damaged", double(damaged));
  auto nsArr = Napi::BigUint64Array::New(env, got);
  auto pgArr = Napi::Float64Array::New(env, got);
  auto slotArr = Napi::Float64Array::New(env, got);
  auto seqArr = Napi::Uint32Array::New(env, got);
  for (size_t i = 0; i < got; i++) {
    nsArr[i] = ns[i];
    pgArr[i] = double(pages[i]);
    slotArr[i] = double(refs[i].slot);
    seqArr[i] = refs[i].seq;
  }
  r.Set("ns", nsArr);
  r.Set("pages", pgArr);
  r.Set("slots", slotArr);
  r.Set("seqs", seqArr);
  r.Set("data", Napi::Buffer<uint8_t>::New(env, data->data(), got * ps, [](Napi::Env, uint8_t *, std::vector<uint8_t> *v) { delete v; }, data));
  return r;
}

Napi::Value MarkClean(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  CxlStore *s = store_arg(info);
  double *slots;
  uint32_t *seqs;
  size_t n1, n2;
  if (!s || !typed_arg<double, napi_float64_array>(info, 1, &slots, &n1, "a Float64Array of slots") ||
      !typed_arg<uint32_t, napi_uint32_array>(info, 2, &seqs, &n2, "a Uint32Array of seqs"))
    return env.Undefined();
  if (n1 != n2) return throw_status(env, TS_E_BAD_ARGUMENT, "slots and seqs differ in length");
  std::vector<DirtyRef> refs(n1);
  for (size_t i = 0; i < n1; i++) refs[i] = {uint64_t(slots[i]), seqs[i]};
  return Napi::Number::New(env, double(s->cache().mark_clean(refs.data(), n1)));
}

Napi::Value NativeHandle(const Napi::CallbackInfo &info) {
  CxlStore *s = store_arg(info);
  if (!s) return info.Env().Undefined();
  return tierstack::wrap_page_store(info.Env(), s->handle());
}

Napi::Value LayoutInfo(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  uint32_t ways = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Uint32Value() : kDefaultWays;
  Napi::Object o = Napi::Object::New(env);
  o.Set("defaultWays", kDefaultWays);
  o.Set("setBytes", double(set_record_bytes(ways)));
  o.Set("indexBytesPerPage", index_bytes_per_page(ways));
  o.Set("headerBytes", double(kHeaderBytes));
  o.Set("nsEntryBytes", double(sizeof(NsEntry)));
  o.Set("defaultNsEntries", kDefaultNsEntries);
  return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  return tierstack::export_functions(env, exports, {
      {"open", Open},
      {"close", Close},
      {"info", Info},
      {"counters", Counters},
      {"get", Get},
      {"put", Put},
      {"remove", Remove},
      {"registerNamespace", RegisterNamespace},
      {"namespaceName", NamespaceName},
      {"namespaces", Namespaces},
      {"collectDirty", CollectDirty},
      {"markClean", MarkClean},
      {"nativeHandle", NativeHandle},
      {"layoutInfo", LayoutInfo},
  });
}

}  // namespace
}  // namespace tscxl

static Napi::Object InitCxlAddon(Napi::Env env, Napi::Object exports) { return tscxl::Init(env, exports); }

NODE_API_MODULE(cxl, InitCxlAddon)
