// Native benchmark drivers: a loop over a page store's C ABI ops (exactly as a front-end thread
// calls them) and a plain memcpy loop over the same page numbers, for a baseline in the same run.
#pragma once

#include <napi.h>

namespace cxl {
void register_bench(Napi::Env env, Napi::Object exports);
void register_selftest(Napi::Env env, Napi::Object exports);
}
