// The engine's snapshot metadata lives in core's kit (tierstack/snapshot_meta.hpp): the CRIU
// page server's native reader shares it.
#pragma once

#include <tierstack/snapshot_meta.hpp>

namespace tsuffd {
using tierstack::SnapshotMeta;
}  // namespace tsuffd
