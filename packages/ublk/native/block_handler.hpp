// The transport-independent block handler: block requests (byte ranges of a device) mapped onto
// 4 KiB pages of the device's namespace and served by a PageBackend in batches.
//
//  - read: every page the range touches is fetched in one get; whole pages land directly in the
//    request's buffer, partial ones go through scratch pages. A page no tier holds reads as zeros.
//  - write: whole pages are put straight from the request's buffer; a partial page is
//    read-modify-written under a striped lock (so two partial writes of one page cannot lose each
//    other's bytes).
//  - discard / write-zeroes: whole pages are removed (they read back as zeros), partial edges zeroed.
//  - flush: the backend's flush (the stack's flush()).
// A batch (all requests a transport has in hand) becomes one get and one put per run of reads
// and writes; discards and flushes are barriers between runs, so the batch keeps request order
// where the block layer would see it.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

#include "backend.hpp"
#include "stats.hpp"

namespace tsublk {

struct BlockRequest {
  BlockOp op;
  uint64_t offset;  // bytes
  uint64_t length;  // bytes
  uint8_t *buf;     // read: filled; write: source; unused otherwise
  int32_t result;   // out: bytes done, or -errno
  // out (reads): the deepest stack level that served one of its pages (StackClient levels), or
  // kLevelMiss when no tier held any; kLevelStack for everything else. Only the trace reads it.
  uint8_t level = kLevelStack;
};

class BlockHandler {
 public:
  static constexpr uint32_t kPageSize = 4096;
  static constexpr uint32_t kSectorSize = 512;

  BlockHandler(PageBackend *backend, uint64_t size_bytes) : backend_(backend), size_(size_bytes) {}

  uint64_t size() const { return size_; }

  // Per-thread scratch, reused across calls.
  struct Scratch {
    std::vector<uint64_t> pages;
    std::vector<void *> bufs;
    std::vector<const void *> cbufs;
    std::vector<int32_t> status;
    std::vector<uint8_t> levels;  // serving level of each get entry
    std::vector<int32_t> owner;  // request index of each get entry, -1 for RMW slots
    std::vector<std::unique_ptr<uint8_t[]>> pool;  // scratch pages
    size_t pool_used = 0;
    struct PartialRead {
      uint32_t req;
      uint8_t *src;
      uint8_t *dst;
      uint32_t len;
    };
    std::vector<PartialRead> partial_reads;
    std::unordered_map<uint64_t, uint32_t> rmw;   // page -> slot index
    std::vector<uint64_t> rmw_pages;
    std::vector<uint8_t *> rmw_bufs;
    std::vector<uint8_t> rmw_bad;
    std::vector<std::pair<uint64_t, const void *>> puts;  // whole pages written from request buffers, in order
    std::vector<uint32_t> stripes;
    std::vector<uint8_t> zero_page;
    uint8_t *page();
  };

  // Serves `n` requests; sets each request's result.
  void process(BlockRequest *reqs, size_t n, Scratch &s);

 private:
  void process_rw(BlockRequest *reqs, size_t n, Scratch &s);
  void process_discard(BlockRequest &r, Scratch &s);
  static int32_t errno_of(int ts_status);

  static constexpr size_t kStripes = 1024;
  PageBackend *backend_;
  uint64_t size_;
  std::array<std::mutex, kStripes> stripes_;
};

}  // namespace tsublk
