// node-addon-api glue for the page-store C ABI: hand a ts_page_store to JavaScript as a
// type-tagged external, and take one back (from any addon) with its tag checked.
#pragma once

#include <napi.h>

#include "napi_error.hpp"
#include "page_store.hpp"

namespace tierstack {

inline const napi_type_tag &page_store_type_tag() {
  static constexpr napi_type_tag tag = {TS_PAGE_STORE_TYPE_TAG_LOWER, TS_PAGE_STORE_TYPE_TAG_UPPER};
  return tag;
}

// Wraps `store` in an external that holds one reference (released when JS collects it).
inline Napi::Value wrap_page_store(Napi::Env env, ts_page_store *store) {
  if (store->ops->retain) store->ops->retain(store->self);
  auto ext = Napi::External<ts_page_store>::New(env, store, [](Napi::Env, ts_page_store *s) {
    if (s->ops->release) s->ops->release(s->self);
  });
  ext.TypeTag(&page_store_type_tag());
  return ext;
}

// Returns a new reference to the store inside `value`, or an empty StoreRef with a JS
// TypeError thrown (code TS_ERR_BAD_ARGUMENT) if it is not a compatible page-store handle.
inline StoreRef unwrap_page_store(Napi::Env env, Napi::Value value) {
  auto fail = [&](const char *msg) {
    make_type_error(env, "TS_ERR_BAD_ARGUMENT", msg).ThrowAsJavaScriptException();
    return StoreRef();
  };
  if (!value.IsExternal()) return fail("expected a native page-store handle (an external)");
  auto ext = value.As<Napi::External<ts_page_store>>();
  if (!ext.CheckTypeTag(&page_store_type_tag())) return fail("the external is not a tierstack page-store handle");
  ts_page_store *s = ext.Data();
  if (!ts_page_store_compatible(s)) return fail("the page-store handle has an incompatible ABI version");
  return StoreRef(s);
}

}  // namespace tierstack
