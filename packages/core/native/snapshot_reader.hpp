// The SnapshotReader class of core's addon (see snapshot_reader.cc).
#pragma once

#include <napi.h>

#include <tierstack/run_on_thread.hpp>

namespace tscore {

// The class's constructor; its reads run on `jobs` (owned by the addon instance, outlives it).
Napi::Function define_snapshot_reader(Napi::Env env, tierstack::JobThreads *jobs);

}  // namespace tscore
