// Mapping a backing (memfd, file, devdax device) and formatting / validating the layout in it.
#pragma once

#include <cstdint>
#include <string>

#include <tierstack/page_store.h>

#include "layout.hpp"

namespace tscxl {

// The outcome of an operation that can fail: a TS_E_* code, a message and the errno if any.
struct Status {
  int code = TS_OK;
  std::string message;
  int sys_errno = 0;
  static Status ok() { return {}; }
  static Status fail(int code, std::string message, int sys_errno = 0) { return {code, std::move(message), sys_errno}; }
  bool is_ok() const { return code == TS_OK; }
};

enum class BackingKind { Memfd, File, Devdax };

struct OpenOptions {
  BackingKind kind = BackingKind::Memfd;
  std::string path;          // file or device
  uint64_t size = 0;         // region bytes; 0 = the existing region's / the device's
  bool create = false;       // file: create (and size) it if missing or empty
  bool format = false;       // re-format even over a valid region
  uint32_t page_size = 0;    // 0 = the existing region's (4096 for a new one)
  uint32_t ways = 0;         // 0 = the existing region's (kDefaultWays for a new one)
  uint32_t ns_entries = 0;   // 0 = the existing region's (kDefaultNsEntries for a new one)
  int numa_node = -1;        // memfd: bind its memory to this node (mbind)
  uint64_t device_size = 0;  // devdax: the device's size (sysfs), read by the caller
  uint64_t device_align = 0; // devdax: its mapping alignment (sysfs), read by the caller
};

// A mapped region with its layout resolved. Move-only; unmaps on destruction.
class Region {
 public:
  Region() = default;
  Region(const Region &) = delete;
  Region &operator=(const Region &) = delete;
  ~Region();

  Status open(const OpenOptions &options);

  const Header &header() const { return *reinterpret_cast<const Header *>(base_); }
  uint8_t *base() const { return base_; }
  uint64_t mapped_bytes() const { return map_bytes_; }
  int fd() const { return fd_; }
  bool formatted_now() const { return formatted_now_; }
  bool recovered_after_reboot() const { return recovered_; }
  uint64_t *counter(Counter c) const { return reinterpret_cast<uint64_t *>(base_ + kCountersOffset + c * kCounterStride); }

 private:
  Status map(uint64_t bytes, int numa_node);
  Status format(const OpenOptions &options, uint64_t bytes);
  Status validate(const OpenOptions &options, uint64_t backing_bytes);

  int fd_ = -1;
  uint8_t *base_ = nullptr;
  uint64_t map_bytes_ = 0;
  bool formatted_now_ = false;
  bool recovered_ = false;
};

// The geometry a region of `bytes` would get; fails if not even one set fits.
struct Geometry {
  uint32_t page_size, ways, ns_entries, set_bytes;
  uint64_t set_count, ns_offset, sets_offset, data_offset, region_bytes;
};
Status plan_geometry(uint64_t bytes, uint32_t page_size, uint32_t ways, uint32_t ns_entries, Geometry &out);

uint32_t header_checksum(const Header &h);

}  // namespace tscxl
