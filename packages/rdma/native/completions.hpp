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

struct Op {
  fi_context2 ctx;  // must stay first: the CQ returns its address
  Batch *batch = nullptr;
  int32_t result = 1;  // 1 pending, 0 done, < 0 -errno
  int32_t conn = -1;
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
  void close();

 private:
  bool read_error_locked();  // dispatches one error entry; false if none is at the head

  fid_cq *cq_ = nullptr;
  bool wait_ = false;
  std::mutex mu_;
};

}  // namespace tsrdma
