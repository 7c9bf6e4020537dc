// CRC-32 (the zlib polynomial) of a page, from native code: the same value as core's
// pageChecksum() in JavaScript (node:zlib crc32), so native readers can verify pages against
// checksums written by JavaScript (FileTier meta files, snapshot manifests).
//
// It calls zlib's crc32_z as exported by the Node.js binary itself (Node bundles zlib and
// exports its symbols to addons; node-gyp puts its zlib.h on the include path). Node's zlib
// has a SIMD (PCLMUL) CRC-32 with runtime CPU detection, so this costs well under a
// microsecond per 4 KiB page. No library to link: the symbol resolves against the running node.
#pragma once

#include <zlib.h>

#include <cstddef>
#include <cstdint>

namespace tierstack {

inline uint32_t crc32(const void *data, size_t n) {
  return static_cast<uint32_t>(::crc32_z(0, static_cast<const Bytef *>(data), n));
}

}  // namespace tierstack
