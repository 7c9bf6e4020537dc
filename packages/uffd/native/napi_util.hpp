// The kit's N-API helpers (tierstack/napi_error.hpp, tierstack/run_on_thread.hpp) under the names
// uffd's sources use: typed errors, and blocking work on a thread of its own with the result
// settled on a promise on the JS thread (never the libuv pool: a job may wait for the JS path).
#pragma once

#include <tierstack/napi_error.hpp>
#include <tierstack/run_on_thread.hpp>

namespace tsuffd {

using tierstack::errno_error;
using tierstack::make_error;
using tierstack::run_on_thread;
using tierstack::throw_errno;
using tierstack::throw_error;
inline const char *code_of_status(int status) { return ts_status_code(status); }

}  // namespace tsuffd
