// The pool's one completion queue, shared by every donor connection, and the dispatch of what
// it reports: each RMA operation carries an Op (its fi_context2 first) that belongs to a Batch;
// whichever thread reads the queue completes the operations it finds, for every batch. All
// reads happen under mutex(): a connection being closed (connections.cc) holds it so that no
// read runs during fi_close and the queue is left empty right after.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "fabric.hpp"

namespace tsrdma {

struct Batch {
  std::atomic<size_t> pending{0};
};

// Op::result: kOpPending (posted, not completed), 0 (done), < 0 (-errno), or kOpUnposted: the
// provider refused the post (EAGAIN) on a thread that may not wait for room — the JavaScript
// thread —, so it is still to be posted (Pool::advance posts it). Only pending ops are ever in
// the CQ or counted in Batch::pending.
constexpr int32_t kOpPending = 1;
constexpr int32_t kOpUnposted = 2;

struct Op {
  fi_context2 ctx;  // must stay first: the CQ returns its address
  Batch *batch = nullptr;
  int32_t result = kOpPending;
  int32_t conn = -1;
  // The transfer (kept so that a refused post can be made again later).
  uint32_t len = 0;
  void *buf = nullptr;
  void *desc = nullptr;
  uint64_t addr = 0;
  uint64_t key = 0;
};

class CompletionQueue {
 public:
  ~CompletionQueue() { close(); }
  // Opens the queue on the domain the first donor decided; `rdm`: RDM endpoints will bind it.
  int open(fid_domain *domain, bool rdm, std::string &err);
  bool is_open() const { return cq_ != nullptr; }
  fid_cq *cq() const { return cq_; }
  // The queue has a wait object (fi_cq_sread can sleep in it).
  bool has_wait() const { return wait_; }
  std::mutex &mutex() { return mu_; }

  // Reads the queue until it is empty (or blocks once for up to block_ms first) and completes
  // the operations it names. Called with mutex() held.
  void dispatch_locked(int block_ms = 0);
  // dispatch_locked under the lock.
  void progress();
  // progress() unless another thread holds the lock (then it is progressing the queue itself).
  void try_progress();
  void close();

 private:
  bool read_error_locked();  // dispatches one error entry; false if none is at the head

  fid_cq *cq_ = nullptr;
  bool wait_ = false;
  std::mutex mu_;
};

}  // namespace tsrdma
