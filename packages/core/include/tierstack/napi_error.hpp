// Errors from native code into JavaScript, one shape for every addon: an Error whose `code` is a
// TS_ERR_* string (core's ErrorCode; JavaScript tests `err.code`), with
//   `status`  the TS_E_* status it came from (page_store.h), when it came from one;
//   `errno`   the system error number, when a system call failed;
//   `syscall` the failed call, when the caller names it.
// Codes come from the two tables in page_store.h: ts_status_code() for statuses and
// ts_errno_code() for errno values (its comment is the policy: EPERM → TS_ERR_PERMISSION, ...).
//
//   throw_status(env, rc, "CXL get failed");                  // code from a TS_E_* status
//   throw_errno(env, errno, "cannot open /dev/ublk-control"); // message + ": " + strerror, code from the table
//   throw_error(env, "TS_ERR_CLOSED", "the engine is closed"); // a code the caller chose
// Each throw_* returns env.Undefined() (return it from the binding); the make_* / *_error
// variants return the Napi::Error, to reject a promise with. export_functions() is an addon's Init.
#pragma once

#include <napi.h>

#include <cstring>
#include <initializer_list>
#include <string>
#include <utility>

#include "page_store.h"

namespace tierstack {

inline Napi::Error make_error(Napi::Env env, const char *code, const std::string &message, int err_no = 0,
                              const char *syscall = nullptr) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  if (err_no) e.Set("errno", Napi::Number::New(env, err_no < 0 ? -err_no : err_no));
  if (syscall) e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

// A TypeError (a value of the wrong kind was passed), with its code.
inline Napi::Error make_type_error(Napi::Env env, const char *code, const std::string &message) {
  Napi::Error e = Napi::TypeError::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

// From a TS_E_* status.
inline Napi::Error status_error(Napi::Env env, int status, const std::string &message, int err_no = 0) {
  Napi::Error e = make_error(env, ts_status_code(status), message, err_no);
  e.Set("status", Napi::Number::New(env, status));
  return e;
}

// From an errno (either sign): "<what>: <strerror>", code from ts_errno_code() unless `code` is given.
inline Napi::Error errno_error(Napi::Env env, int err_no, const std::string &what, const char *code = nullptr,
                               const char *syscall = nullptr) {
  int e = err_no < 0 ? -err_no : err_no;
  return make_error(env, code ? code : ts_errno_code(e), e ? what + ": " + std::strerror(e) : what, e, syscall);
}

inline Napi::Value throw_error(Napi::Env env, const char *code, const std::string &message, int err_no = 0,
                               const char *syscall = nullptr) {
  make_error(env, code, message, err_no, syscall).ThrowAsJavaScriptException();
  return env.Undefined();
}

inline Napi::Value throw_status(Napi::Env env, int status, const std::string &message, int err_no = 0) {
  status_error(env, status, message, err_no).ThrowAsJavaScriptException();
  return env.Undefined();
}

inline Napi::Value throw_errno(Napi::Env env, int err_no, const std::string &what, const char *code = nullptr,
                               const char *syscall = nullptr) {
  errno_error(env, err_no, what, code, syscall).ThrowAsJavaScriptException();
  return env.Undefined();
}

// An addon's Init: sets each function on `exports` under its name.
//   return tierstack::export_functions(env, exports, {{"open", Open}, {"close", Close}});
using NapiFunction = Napi::Value (*)(const Napi::CallbackInfo &);
inline Napi::Object export_functions(Napi::Env env, Napi::Object exports,
                                     std::initializer_list<std::pair<const char *, NapiFunction>> functions) {
  for (const auto &f : functions) exports.Set(f.first, Napi::Function::New(env, f.second, f.first));
  return exports;
}

}  // namespace tierstack
