// Shared regions: a managed (budgeted, write-back) region of ANOTHER process whose memory is a
// memfd mapped MAP_SHARED both there and here (the "mirror"). This is what `tierstack run` serves:
// the interposer in the program maps its big allocations from a memfd and hands the memfd and its
// userfaultfd to the server.
//
// Why shared memory: eviction needs to read a page and drop it, and neither can be done on another
// process's private memory (memcpy and MADV_DONTNEED act on the caller's address space). With a
// shared memfd the server reads the page from the memfd (pread: no mapping, so no page fault and
// no page-table entry to set up and tear down per page) and drops it with fallocate(PUNCH_HOLE), which removes it from the page cache and so from the owner's page tables
// too; the owner's next touch is a missing fault again. Dirty tracking is userfaultfd write-protect
// on shmem (UFFD_FEATURE_WP_HUGETLBFS_SHMEM, Linux 5.19+), driven through the owner's uffd, which
// works from any process. Missing faults are served with UFFDIO_COPY as for any region.
//
// Everything else (fetching, installing, eviction order, write-back) is the engine's managed-region
// machinery (fill.cc, managed.cc); managed.cc asks read_page()/drop_pages() to read a page's bytes
// and to drop it.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tsuffd {

class Engine;
class Source;
class Region;
struct RegionConfig;

// This process's handle on a shared region's memfd.
struct SharedMirror {
  int memfd = -1;
  uint64_t size = 0;
  uint64_t file_offset = 0;
  // Dirty tracking policy (install_writable): recent pages installed clean (write-protected) that
  // were then written, and that left clean; halved as they grow, so they follow the workload.
  std::atomic<uint32_t> clean_then_written{0};
  std::atomic<uint32_t> clean_dropped{0};
  std::atomic<uint32_t> fills{0};
  // Sequential readahead (readahead()): the end of the last fault's block, the end of what was read ahead.
  std::atomic<uint64_t> seq_end{~uint64_t{0}};
  std::atomic<uint64_t> ra_end{0};
  SharedMirror() = default;
  SharedMirror(const SharedMirror &) = delete;
  SharedMirror &operator=(const SharedMirror &) = delete;
  ~SharedMirror() { release(); }
  // Closes the memfd (the shmem pages are freed once the owner is gone too). Only once no thread
  // can evict from the region any more.
  void release();
};

// Copies page `idx` of a region into `dst` (page_size bytes): from the memfd for shared regions
// (a page nobody can read any more reads as zeros), from the region's memory otherwise.
void read_page(const Region &r, uint64_t idx, void *dst);
// Drops resident pages [first, first + count) of a region: MADV_DONTNEED for in-process memory,
// a hole punched in the memfd for shared regions (which unmaps them in the owner too).
void drop_pages(const Region &r, uint64_t first, uint64_t count);

// Dirty tracking of shared regions. Pages are normally installed write-protected (clean) and a
// write costs a write-protect fault (a round trip to the fault thread) that marks them dirty. When
// most pages installed clean get written soon after (a read-modify-write pass), that round trip per
// page dominates: install_writable() then says to install pages writable and dirty right away
// (they are written back when evicted, written or not). One fill in 32 still installs clean, to see
// whether the workload changed. In-process regions: always false (unchanged behaviour).
void note_clean_written(const Region &r);
void note_clean_dropped(const Region &r, uint64_t pages);
bool install_writable(const Region &r);

// Sequential readahead of shared regions, called by the fault path for each fault before its block
// is filled: when faults walk the region block after block, the next pages (8 fault-around blocks,
// at most 256 pages and a quarter of the budget) are installed first, so that a sequential pass
// faults once per window instead of once per block. No-op for other regions and for random faults.
void readahead(Engine &e, Source &s, Region &r, uint64_t idx);

// The kernel's support for shared regions, probed once: 0, or -ENOTSUP / -errno with *why set.
int shared_regions_supported(std::string *why);

// Adopts the uffd of process `pid` (not yet API'd: done here) whose range [cfg.base, +cfg.size)
// maps `memfd` at `file_offset` MAP_SHARED. Keeps the memfd, negotiates WP on shmem + REMOVE events
// + POISON, registers the range MISSING|WP and serves it as a managed, fresh region (cfg.managed,
// cfg.fresh are forced; cfg.budget_pages as given). Takes ownership of both descriptors (closed on
// failure too). Returns the source or nullptr with *err / *err_errno set.
std::shared_ptr<Source> adopt_shared(Engine &e, int uffd, int memfd, uint64_t file_offset, pid_t pid, RegionConfig cfg,
                                     std::string *err, int *err_errno);

// The owner freed pages [first, first + count): they are dropped without write-back (punched out
// of the memfd), forgotten by the region (the next touch is a fresh zero page) and removed from the
// stack. Waits for write-backs of those pages under way first (they would re-create them). Blocks
// on the stack (JS path): never call on the JS thread. Returns TS_OK or a TS_E_* status.
int forget_pages(Engine &e, Source &s, Region &r, uint64_t first, uint64_t count);

// Writes every dirty page back to the stack (they stay resident, clean and write-protected) and
// waits until no write-back of the region is under way. Unlike Engine::flush it does not flush
// the stack. Off the JS thread. Returns TS_OK or a TS_E_* status.
int write_back_dirty(Engine &e, Source &s, Region &r);

// The set of region pages written to the stack at least once and not forgotten since ("stored"),
// as a bitmap of ceil(npages / 64) words. Waits for write-backs under way.
std::vector<uint64_t> stored_bitmap(Region &r);
// Marks pages stored (a region created with pages the stack already holds, e.g. a fork child).
// Before the region serves its first fault.
void mark_stored(Region &r, const std::vector<uint64_t> &bitmap);

// The owner is gone: removes every stored page of the region from the stack (waiting for
// write-backs under way), then releases the mirror. Off the JS thread. Returns pages removed (>= 0)
// or a TS_E_* status.
int64_t release_shared(Engine &e, Source &s, Region &r);

}  // namespace tsuffd
