// N-API surface of shared regions (see shared_region.hpp), used by addon.cc.
#pragma once

#include <napi.h>

#include <memory>

namespace tsuffd {

class Engine;
class Source;

// The JS object of an adopted shared region: { forget(first, count), writeBackDirty(),
// storedBitmap(), markStored(bitmap), release(), residentPages() } (promises for the blocking ones,
// which run on their own threads: they may wait for the stack's JS path).
Napi::Object shared_region_object(Napi::Env env, std::shared_ptr<Engine> engine, std::shared_ptr<Source> source);

// sharedRegionsSupported() → { supported, reason? }
Napi::Value SharedRegionsSupported(const Napi::CallbackInfo &info);

}  // namespace tsuffd
