// Arguments from JavaScript, the way every addon takes them: 64-bit ids (namespace ids,
// addresses, keys) as a bigint or a number, page lists as a Float64Array.
#pragma once

#include <napi.h>
#include <sys/socket.h>
#include <unistd.h>

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

// Sets obj[name] to a function that calls m(info, ref): methods over a shared native object
// without an ObjectWrap class (the object handed out is a plain one). The function holds its own
// copy of `ref` (a shared_ptr), released when the function is collected.
template <class Ref>
void set_method(Napi::Env env, Napi::Object obj, const char *name, Napi::Value (*m)(const Napi::CallbackInfo &, const Ref &), const Ref &ref) {
  struct Data {
    Napi::Value (*m)(const Napi::CallbackInfo &, const Ref &);
    Ref ref;
  };
  auto *d = new Data{m, ref};
  Napi::Function fn = Napi::Function::New(
      env, [](const Napi::CallbackInfo &info) -> Napi::Value {
        auto *data = static_cast<Data *>(info.Data());
        return data->m(info, data->ref);
      },
      name, d);
  fn.AddFinalizer([](Napi::Env, Data *p) { delete p; }, d);
  obj.Set(name, fn);
}

// shutdownFd(fd): wakes a thread waiting in poll/accept on a listening socket. closeFd(fd).
inline Napi::Value shutdown_fd(const Napi::CallbackInfo &info) {
  int fd = info[0].ToNumber().Int32Value();
  if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
  return info.Env().Undefined();
}
inline Napi::Value close_fd(const Napi::CallbackInfo &info) {
  int fd = info[0].ToNumber().Int32Value();
  if (fd >= 0) ::close(fd);
  return info.Env().Undefined();
}

}  // namespace tierstack
