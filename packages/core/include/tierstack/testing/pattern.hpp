// Page contents that check themselves, byte for byte the pattern of @tierstack/core/testing
// fillPage(): every byte depends on (namespace id, page, version), and the first 24 bytes spell
// the key (u64 namespace id, f64 page, f64 version, little-endian), so a page read back is
// checked without a copy of what was written, and one served for the wrong key, from an older
// write or torn between two writes is caught.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace tierstack {
namespace testing {

inline void fill_page(uint8_t *buf, size_t size, uint64_t ns_id, uint64_t page, uint64_t version) {
  uint64_t x = ns_id ^ (page * 0x9e3779b97f4a7c15ULL) ^ (version << 48);
  if (x == 0) x = 0x1234567;
  for (size_t i = 0; i < size / 8; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(buf + i * 8, &x, 8);
  }
  double p = static_cast<double>(page), v = static_cast<double>(version);
  std::memcpy(buf, &ns_id, 8);
  std::memcpy(buf + 8, &p, 8);
  std::memcpy(buf + 16, &v, 8);
}

// True if `buf` is exactly the pattern of (ns_id, page, version). `scratch` is reused.
inline bool page_matches(const uint8_t *buf, size_t size, uint64_t ns_id, uint64_t page, uint64_t version,
                         std::vector<uint8_t> &scratch) {
  scratch.resize(size);
  fill_page(scratch.data(), size, ns_id, page, version);
  return std::memcmp(scratch.data(), buf, size) == 0;
}

// The version a page claims to be, if it is a whole pattern page of (ns_id, page); -1 if not
// (another key, or bytes of two writes).
inline int64_t page_version(const uint8_t *buf, size_t size, uint64_t ns_id, uint64_t page, std::vector<uint8_t> &scratch) {
  uint64_t id;
  double p, v;
  std::memcpy(&id, buf, 8);
  std::memcpy(&p, buf + 8, 8);
  std::memcpy(&v, buf + 16, 8);
  if (id != ns_id || p != static_cast<double>(page) || !(v >= 0) || v > 9007199254740991.0) return -1;
  return page_matches(buf, size, ns_id, page, static_cast<uint64_t>(v), scratch) ? static_cast<int64_t>(v) : -1;
}

}  // namespace testing
}  // namespace tierstack
