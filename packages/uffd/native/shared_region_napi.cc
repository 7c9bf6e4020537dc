// N-API surface of shared regions (shared_region.hpp): the object adoptShared() returns next to
// the region's NativeSource, and the kernel probe.
#include "shared_region_napi.hpp"

#include <tierstack/napi_args.hpp>

#include "engine.hpp"
#include "napi_util.hpp"
#include "shared_region.hpp"

namespace tsuffd {

namespace {

struct Holder {
  std::shared_ptr<Engine> engine;
  std::shared_ptr<Source> source;
  Region &region() const { return *source->regions[0]; }
};
using HolderRef = std::shared_ptr<Holder>;

using Method = Napi::Value (*)(const Napi::CallbackInfo &, const HolderRef &);


Napi::Value status_promise(Napi::Env env, std::function<int64_t()> work, const char *what) {
  auto rc = std::make_shared<int64_t>(0);
  std::string msg = what;
  return run_on_thread(
      env, [rc, work] { *rc = work(); },
      [rc, msg](Napi::Env env, Napi::Promise::Deferred &d) {
        if (*rc >= 0)
          d.Resolve(Napi::Number::New(env, static_cast<double>(*rc)));
        else
          d.Reject(make_error(env, code_of_status(static_cast<int>(*rc)), msg).Value());
      });
}

// forget(firstPage, count) → Promise<0>
Napi::Value Forget(const Napi::CallbackInfo &info, const HolderRef &h) {
  uint64_t first = static_cast<uint64_t>(info[0].ToNumber().Int64Value());
  uint64_t count = static_cast<uint64_t>(info[1].ToNumber().Int64Value());
  return status_promise(
      info.Env(), [h, first, count] { return static_cast<int64_t>(forget_pages(*h->engine, *h->source, h->region(), first, count)); },
      "forgetting freed pages failed");
}

// writeBackDirty() → Promise<0>
Napi::Value WriteBackDirty(const Napi::CallbackInfo &info, const HolderRef &h) {
  return status_promise(
      info.Env(), [h] { return static_cast<int64_t>(write_back_dirty(*h->engine, *h->source, h->region())); },
      "writing dirty pages back failed");
}

// storedBitmap() → Promise<BigUint64Array>
Napi::Value StoredBitmap(const Napi::CallbackInfo &info, const HolderRef &h) {
  auto words = std::make_shared<std::vector<uint64_t>>();
  return run_on_thread(
      info.Env(), [h, words] { *words = stored_bitmap(h->region()); },
      [words](Napi::Env env, Napi::Promise::Deferred &d) {
        auto out = Napi::BigUint64Array::New(env, words->size());
        for (size_t i = 0; i < words->size(); i++) out[i] = (*words)[i];
        d.Resolve(out);
      });
}

// markStored(BigUint64Array)
Napi::Value MarkStored(const Napi::CallbackInfo &info, const HolderRef &h) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array)
    return throw_error(env, "TS_ERR_BAD_ARGUMENT", "markStored needs a BigUint64Array bitmap");
  auto a = info[0].As<Napi::BigUint64Array>();
  std::vector<uint64_t> words(a.ElementLength());
  for (size_t i = 0; i < words.size(); i++) words[i] = a[i];
  mark_stored(h->region(), words);
  return env.Undefined();
}

// release() → Promise<pages removed from the stack>
Napi::Value Release(const Napi::CallbackInfo &info, const HolderRef &h) {
  return status_promise(
      info.Env(), [h] { return release_shared(*h->engine, *h->source, h->region()); }, "releasing the region's pages failed");
}

// residentPages() → number (the region's own count, under its lock)
Napi::Value Resident(const Napi::CallbackInfo &info, const HolderRef &h) {
  Region &r = h->region();
  std::lock_guard<std::mutex> lk(r.mu);
  return Napi::Number::New(info.Env(), static_cast<double>(r.resident));
}

}  // namespace

Napi::Object shared_region_object(Napi::Env env, std::shared_ptr<Engine> engine, std::shared_ptr<Source> source) {
  auto h = std::make_shared<Holder>(Holder{std::move(engine), std::move(source)});
  Napi::Object o = Napi::Object::New(env);
  tierstack::set_method(env, o, "forget", Forget, h);
  tierstack::set_method(env, o, "writeBackDirty", WriteBackDirty, h);
  tierstack::set_method(env, o, "storedBitmap", StoredBitmap, h);
  tierstack::set_method(env, o, "markStored", MarkStored, h);
  tierstack::set_method(env, o, "release", Release, h);
  tierstack::set_method(env, o, "residentPages", Resident, h);
  return o;
}

Napi::Value SharedRegionsSupported(const Napi::CallbackInfo &info) {
  Napi::Env env = info.Env();
  std::string why;
  int rc = shared_regions_supported(&why);
  Napi::Object o = Napi::Object::New(env);
  o.Set("supported", rc == 0);
  if (rc != 0) o.Set("reason", why);
  return o;
}

}  // namespace tsuffd
