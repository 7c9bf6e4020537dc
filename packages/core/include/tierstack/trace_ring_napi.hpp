// A TraceRing (trace_ring.hpp) across the N-API boundary, the same for every front-end:
//   traceEnable(capacity) -> capacity          traceDisable()
//   traceDrain(max) -> { records: Float64Array of n x [atNs, offset, length, latencyNs, op, level, ok], lost }
#pragma once

#include <napi.h>

#include <vector>

#include "napi_error.hpp"
#include "trace_ring.hpp"

namespace tierstack {

constexpr size_t kTraceFields = 7;

// Starts a fresh trace of `ring` with the capacity in info[0] (default 65536); returns the
// capacity, or throws TS_ERR_BAD_ARGUMENT.
inline Napi::Value trace_enable(const Napi::CallbackInfo &info, TraceRing &ring) {
  double cap = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().DoubleValue() : 65536;
  if (!(cap >= 1 && cap <= (1 << 24))) return throw_error(info.Env(), "TS_ERR_BAD_ARGUMENT", "trace capacity must be 1..16777216 records");
  ring.enable(static_cast<size_t>(cap));
  return Napi::Number::New(info.Env(), static_cast<double>(ring.capacity()));
}

// Drains up to info[0] records (default 65536). `scratch` is the caller's reusable buffer (JS thread).
inline Napi::Value trace_drain(const Napi::CallbackInfo &info, TraceRing &ring, std::vector<TraceRing::Record> &scratch) {
  Napi::Env env = info.Env();
  size_t max = info.Length() > 0 && info[0].IsNumber() ? static_cast<size_t>(info[0].As<Napi::Number>().Int64Value()) : 65536;
  scratch.clear();
  uint64_t lost = ring.drain(scratch, max);
  Napi::Float64Array a = Napi::Float64Array::New(env, scratch.size() * kTraceFields);
  for (size_t i = 0; i < scratch.size(); i++) {
    const TraceRing::Record &r = scratch[i];
    double *d = a.Data() + i * kTraceFields;
    d[0] = static_cast<double>(r.at_ns);
    d[1] = static_cast<double>(r.offset);
    d[2] = static_cast<double>(r.length);
    d[3] = static_cast<double>(r.latency_ns);
    d[4] = r.op;
    d[5] = r.level;
    d[6] = r.ok ? 1 : 0;
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("records", a);
  out.Set("lost", static_cast<double>(lost));
  return out;
}

}  // namespace tierstack
