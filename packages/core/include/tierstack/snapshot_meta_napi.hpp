// SnapshotMeta across the N-API boundary: built from { pageCount, zeroBitmap, checksums } and
// its counters as a JS object. Shared by the uffd engine's NativeSnapshot and core's SnapshotReader.
#pragma once

#include <napi.h>

#include <memory>
#include <string>

#include "napi_error.hpp"
#include "snapshot_meta.hpp"

namespace tierstack {

// From { pageCount, zeroBitmap: Uint8Array, checksums: Uint32Array } (+ record/maxRecordPages
// when `recorder`). On bad input a JS exception is pending and nullptr is returned.
inline std::shared_ptr<SnapshotMeta> snapshot_meta_from(Napi::Env env, Napi::Object o, bool recorder) {
  Napi::Value zb = o.Get("zeroBitmap"), cs = o.Get("checksums");
  if (!zb.IsTypedArray() || zb.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array || !cs.IsTypedArray() ||
      cs.As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    throw_error(env, "TS_ERR_BAD_ARGUMENT", "a snapshot needs zeroBitmap (Uint8Array) and checksums (Uint32Array)");
    return nullptr;
  }
  double pages = o.Get("pageCount").ToNumber().DoubleValue();
  if (!(pages >= 0) || pages > 4294967295.0) {
    throw_error(env, "TS_ERR_BAD_ARGUMENT", "pageCount out of range");
    return nullptr;
  }
  auto bits = zb.As<Napi::Uint8Array>();
  auto crcs = cs.As<Napi::Uint32Array>();
  const bool record = recorder && o.Get("record").ToBoolean().Value();
  const size_t max_record = recorder ? static_cast<size_t>(o.Get("maxRecordPages").ToNumber().Int64Value()) : 0;
  const char *err = nullptr;
  auto meta = SnapshotMeta::create(static_cast<uint64_t>(pages), bits.Data(), bits.ElementLength(), crcs.Data(),
                                   crcs.ElementLength(), record, max_record, &err);
  if (!meta) throw_error(env, "TS_ERR_CORRUPT", std::string("snapshot manifest: ") + err);
  return meta;
}

// { zeroServed, verified, badCopies, repaired, unrecoverable }
inline Napi::Object snapshot_counters(Napi::Env env, const SnapshotMeta &m) {
  Napi::Object o = Napi::Object::New(env);
  auto num = [&](const char *k, const std::atomic<uint64_t> &v) {
    o.Set(k, Napi::Number::New(env, static_cast<double>(v.load(std::memory_order_relaxed))));
  };
  num("zeroServed", m.zero_served);
  num("verified", m.verified);
  num("badCopies", m.bad_copies);
  num("repaired", m.repaired);
  num("unrecoverable", m.unrecoverable);
  return o;
}

}  // namespace tierstack
