// Arguments from JavaScript, the way every addon takes them: 64-bit ids (namespace ids,
// addresses, keys) as a bigint or a number, page lists as a Float64Array.
#pragma once

#include <napi.h>

#include <cstdint>
#include <vector>

#include "napi_error.hpp"

namespace tierstack {

// A bigint (its low 64 bits), or a number (truncated to an integer).
inline uint64_t u64_of(const Napi::Value &v) {
  if (v.IsBigInt()) {
    bool lossless;
    return v.As<Napi::BigInt>().Uint64Value(&lossless);
  }
  return static_cast<uint64_t>(v.ToNumber().Int64Value());
}

// The page numbers of a Float64Array; false with a TS_ERR_BAD_ARGUMENT TypeError thrown otherwise.
inline bool pages_of(Napi::Env env, const Napi::Value &v, std::vector<uint64_t> *out) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    make_type_error(env, "TS_ERR_BAD_ARGUMENT", "page numbers must be a Float64Array").ThrowAsJavaScriptException();
    return false;
  }
  auto arr = v.As<Napi::Float64Array>();
  out->resize(arr.ElementLength());
  for (size_t i = 0; i < out->size(); i++) (*out)[i] = static_cast<uint64_t>(arr[i]);
  return true;
}

}  // namespace tierstack
