// The fault engine: regions (address ranges registered with a userfaultfd, each serving one
// namespace of a tier stack), the fault threads that serve them, and the managed-region
// machinery (residency budget, dirty tracking with write-protect, eviction, write-back).
//
// Threads: fault threads (N, configurable) block in epoll_wait over every uffd; they resolve
// pages through tierstack::StackClient (native tiers on the fault thread, the rest through one
// batched JavaScript hand-off) and install them with UFFDIO_COPY. Nothing here calls into
// JavaScript or throws; results for JavaScript (page errors, owner exits) are queued and
// delivered in batches by the addon through a thread-safe function.
#pragma once

#include <sys/types.h>
#include <tierstack/trace_ring.hpp>
#include <tierstack/clock.hpp>
#include <tierstack/stack_client.hpp>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "region_stats.hpp"
#include "snapshot.hpp"
#include "uffd_sys.hpp"

namespace tsuffd {

struct SharedMirror;  // shared_region.hpp

enum class MissingPolicy : uint8_t { kZero, kStrict };

struct RegionConfig {
  uint64_t base = 0;          // page-aligned start address (in the process that owns the mapping)
  uint64_t size = 0;          // bytes, a multiple of the page size
  uint64_t ns = 0;            // namespace id (ts_namespace_id)
  uint64_t page_offset = 0;   // stack page number of the region's first page
  MissingPolicy missing = MissingPolicy::kStrict;
  uint32_t fault_around = 1;  // pages per aligned block installed on a fault (1..64)
  bool zero_after_remove = true;  // faults in ranges dropped by REMOVE/UNMAP get zero pages
  bool managed = false;
  uint64_t budget_pages = 0;  // managed: resident pages allowed
  bool fresh = false;         // managed: the stack holds nothing for this region yet, so a page
                              // never written back is zero without asking the stack
  // A snapshot restore: zero pages, checksums and the working-set recorder, known natively.
  std::shared_ptr<SnapshotMeta> snap;
  // A shared region of another process (shared_region.hpp): its memfd, mapped here too.
  std::shared_ptr<SharedMirror> mirror;
};

// Something JavaScript must hear about, queued by native threads.
struct EngineEvent {
  enum Kind : uint8_t { kPageError, kOwnerExit } kind;
  uint64_t source_id = 0;
  uint32_t region_id = 0;
  uint64_t address = 0;
  uint64_t page = 0;        // stack page number
  int32_t status = 0;       // TS_E_* (page errors) / errno (exits)
  uint32_t tid = 0;
  std::string cause;
};

class Region {
 public:
  Region(uint32_t id, const RegionConfig &cfg, uint32_t page_size);
  const uint32_t id;
  const RegionConfig cfg;
  const uint32_t page_size;
  const size_t npages;
  AtomicBitmap installed;  // pages we installed and have not seen dropped
  AtomicBitmap removed;    // pages dropped by REMOVE/UNMAP: zero on the next fault (zero_after_remove)
  RegionStats stats;
  std::atomic<bool> gone{false};  // unmapped by its owner

  // Managed regions only.
  std::mutex mu;       // installs, write-protect changes and evictions of this region
  AtomicBitmap dirty;
  AtomicBitmap stored;        // fresh regions: pages written back at least once
  std::deque<uint32_t> fifo;  // install order: the eviction queue
  size_t resident = 0;        // installed pages (under mu)
  std::unique_ptr<std::atomic<uint32_t>[]> evict_gen;  // bumped when a page is evicted
  // Dirty pages evicted and not yet written to the stack: reads are served from here.
  std::unordered_map<uint64_t, std::shared_ptr<std::vector<uint8_t>>> writeback;
  // Stack pages with a write-back under way. A page never has two at once (a dirty page whose
  // previous write-back is still running is not evicted), so write-backs cannot land out of order.
  std::unordered_set<uint64_t> wb_inflight;
  std::condition_variable wb_done;

  bool contains(uint64_t addr) const { return addr >= cfg.base && addr < cfg.base + cfg.size; }
  uint64_t index_of(uint64_t addr) const { return (addr - cfg.base) / page_size; }
  uint64_t addr_of(uint64_t idx) const { return cfg.base + idx * page_size; }
};

// One userfaultfd and the regions registered on it (one for an in-process region; those of
// another process for an adopted uffd).
class Source {
 public:
  uint64_t id = 0;
  int fd = -1;
  int pidfd = -1;          // owner process (adopted), to notice its exit
  pid_t owner_pid = 0;
  uint64_t features = 0;   // negotiated uffd features
  bool thread_ids = false; // faults carry the faulting tid (and it is a tid of this process)
  bool owns_mapping = false;  // in-process: munmap on close
  // Where removed ranges are reported as they are read ("REMOVED <tag> <start> <end>" records on
  // a SOCK_SEQPACKET: a restore keeper, which hands them to the next worker). Our own dup; -1: none.
  int remove_sink = -1;
  uint32_t remove_tag = 0;
  std::vector<std::shared_ptr<Region>> regions;
  std::atomic<bool> closing{false};
  std::atomic<bool> dead{false};
  std::atomic<int> busy{0};  // fault threads working on it right now

  Region *find(uint64_t addr) const {
    for (auto &r : regions)
      if (r->contains(addr)) return r.get();
    return nullptr;
  }
};

struct EngineOptions {
  uint32_t fault_threads = 1;
  std::vector<int> cpus;     // pin fault thread i to cpus[i % size] (empty: no pinning)
  uint32_t max_batch_pages = 256;
};

class Engine : public std::enable_shared_from_this<Engine> {
 public:
  Engine(std::shared_ptr<tierstack::StackClient> client, EngineOptions opts);
  ~Engine();
  int start();  // creates epoll and the fault threads; 0 or -errno
  void stop();  // joins the fault threads (JS thread)

  uint32_t page_size() const { return page_size_; }
  uint64_t kernel_features() const { return kernel_features_; }
  tierstack::StackClient *client() const { return client_.get(); }

  // In-process region: mmap + uffd + register. Returns the source or nullptr with *err set.
  std::shared_ptr<Source> create_region(const RegionConfig &cfg, std::string *err, int *err_errno);
  // Adopts an external uffd (ownership of fd passes to the engine).
  // `removed`: [start, end) address ranges removed before this adoption (a previous handler read
  // their REMOVE events): zero-filled on their next fault, as if this engine had read them.
  // `remove_sink` >= 0: a descriptor (duplicated) that receives every removed range from now on.
  std::shared_ptr<Source> adopt(int fd, pid_t pid, uint64_t features, bool api_done,
                                const std::vector<RegionConfig> &cfgs, std::string *err, int *err_errno,
                                const std::vector<std::pair<uint64_t, uint64_t>> &removed = {}, int remove_sink = -1,
                                uint32_t remove_tag = 0);
  // Stops serving the source: later faults are not read. Returns true once no thread uses it.
  void begin_close(const std::shared_ptr<Source> &s);
  // Unregisters, unmaps (in-process), closes fds. Call when begin_close'd and busy == 0.
  void finish_close(const std::shared_ptr<Source> &s);

  // Fetch + install pages of a region from a non-fault thread (prefetch: no wake until the
  // end; ensure: JS thread, native tiers only, fails instead of poisoning). Returns pages
  // installed (>= 0) or a TS_E_* status; `bad` receives the first failing page status.
  // Prefetch installs `idx` (region page indexes, in the order they should arrive) in chunks of
  // `chunk` pages: each chunk is fetched, installed without waking and then woken once, so the
  // first chunks are usable while later ones are fetched; the fault threads keep serving
  // demand faults meanwhile.
  int64_t prefetch(Source &s, Region &r, const std::vector<uint64_t> &idx, size_t chunk = 0);
  int64_t ensure(Source &s, Region &r, uint64_t first, uint64_t count, int32_t *bad_status, uint64_t *bad_page);
  // Managed: writes every dirty page back to the stack, then flushes the stack.
  int flush(Source &s, Region &r);
  // Puts copies of dirty pages (taken under r.mu, their pages in r.wb_inflight) into the stack as
  // dirty, in batches; a copy whose put failed stays in r.writeback for the next flush. Returns
  // TS_OK or the last failing status. Any thread but a fault thread of this region's source.
  int write_back(Source &s, Region &r, std::vector<uint64_t> &pages, std::vector<std::shared_ptr<std::vector<uint8_t>>> &data);
  // Drops installed pages [first, first + count) of an in-process region (the next touch
  // faults again); managed regions write dirty pages back first.
  int discard(Source &s, Region &r, uint64_t first, uint64_t count);

  // Events for JavaScript.
  void set_notifier(std::function<void()> fn) {
    std::lock_guard<std::mutex> lk(ev_mu_);
    notify_ = std::move(fn);
  }
  std::vector<EngineEvent> take_events();

  uint32_t next_region_id() { return next_region_id_.fetch_add(1); }

  // Per-fault trace (off by default): one record per demand fault (op kTraceFault: the faulting
  // page, read-to-answer latency, the level that served it) and per prefetch batch (kTracePrefetch:
  // first page, bytes installed, batch time, deepest level). Offsets are snapshot/stack bytes.
  static constexpr uint8_t kTraceFault = 0;
  static constexpr uint8_t kTracePrefetch = 1;
  tierstack::TraceRing &trace() { return trace_; }

 private:
  struct Scratch;
  enum class Mode { kFault, kPrefetch, kEnsure };
  struct Want {
    uint64_t idx;           // region page index
    int fault = -1;         // index into the fault list when a thread waits on this page
    bool write = false;     // the waiting access is a write (managed: install writable + dirty)
    bool js_thread = false; // the waiting thread is the JS thread
  };
  struct Fault {
    uint64_t addr;
    uint32_t tid;
    bool write;
    bool wp;  // a write-protect fault (managed regions)
    uint64_t t0;
  };

  void thread_main(int index);
  void serve_source(Source &s, Scratch &sc);
  void handle_messages(Source &s, Scratch &sc, size_t n);
  void handle_remove(Source &s, uint64_t start, uint64_t end, bool unmap);
  void serve_faults(Source &s, Scratch &sc);
  void serve_region_faults(Source &s, Region &r, std::vector<Fault> &faults, Scratch &sc);
  void wp_fault(Source &s, Region &r, const Fault &f);
  // Core of every install: fetch `wants` (ascending, unique) and install them.
  int64_t fill(Source &s, Region &r, std::vector<Want> &wants, std::vector<Fault> *faults, Mode mode, Scratch &sc,
               int32_t *bad_status, uint64_t *bad_page);
  int64_t install_run(Source &s, Region &r, uint64_t first_idx, const uint8_t *src, size_t pages, bool zero, bool wp,
                      bool dontwake, Scratch &sc, std::vector<int8_t> &result, size_t result_at);
  void drain_events(Source &s, Scratch &sc);
  // Snapshot regions: checks fetched pages against the snapshot's checksums; a bad copy is
  // dropped from its tier and the page read again from the levels below it.
  void trace_fill(const Region &r, const std::vector<Want> &wants, const std::vector<Fault> *faults, Mode mode,
                  const Scratch &sc, int64_t installed, uint64_t started);
  void verify_snapshot_pages(Region &r, std::vector<Want> &wants, Scratch &sc);
  void evict_if_needed(Source &s, Region &r, Scratch &sc);
  void source_died(const std::shared_ptr<Source> &s, int err);
  void post(EngineEvent ev);
  void page_error(Source &s, Region &r, uint64_t idx, int32_t status, uint32_t tid, const char *cause);
  std::shared_ptr<Source> lookup(uint64_t id);
  int add_to_epoll(Source &s);

  std::shared_ptr<tierstack::StackClient> client_;
  const uint32_t page_size_;
  EngineOptions opts_;
  uint64_t kernel_features_ = 0;
  int epfd_ = -1;
  int stopfd_ = -1;
  std::vector<std::thread> threads_;
  std::atomic<bool> stopping_{false};

  std::mutex mu_;
  std::unordered_map<uint64_t, std::shared_ptr<Source>> sources_;
  uint64_t next_source_id_ = 1;
  std::atomic<uint32_t> next_region_id_{1};
  tierstack::TraceRing trace_;

  std::mutex ev_mu_;
  std::vector<EngineEvent> events_;
  std::function<void()> notify_;
  std::vector<uint8_t> zeros_;
};

using tierstack::now_ns;  // the kit's monotonic clock (tierstack/clock.hpp)

}  // namespace tsuffd
