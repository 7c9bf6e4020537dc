// What the block handler needs from a tier stack: batched page get/put/remove of one namespace,
// and a flush barrier. Every method is called from native I/O threads (never the JS thread) and
// blocks until done. Statuses are the TS_* codes of page_store.h.
#pragma once

#include <cstddef>
#include <cstdint>

#include <tierstack/page_store.h>

namespace tsublk {

class PageBackend {
 public:
  virtual ~PageBackend() = default;
  // status[i]: TS_PAGE_FOUND (bufs[i] filled), TS_PAGE_MISS (untouched) or a negative per-page error.
  // level[i] (may be null): the stack level that served a found page (StackClient::get).
  virtual int get(const uint64_t *pages, size_t n, void *const *bufs, int32_t *status, uint8_t *level) = 0;
  virtual int put(const uint64_t *pages, size_t n, const void *const *bufs) = 0;
  virtual int remove(const uint64_t *pages, size_t n) = 0;
  // Makes every write that completed before the call durable in the stack's sense (stack.flush()).
  virtual int flush() = 0;
};

}  // namespace tsublk
