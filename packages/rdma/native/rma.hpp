// The data path's one-sided operations: posting an fi_read/fi_write on a donor's connection
// (progressing the shared completion queue while the provider says EAGAIN) and waiting for a
// set of operations — spinning first, then sleeping on the queue's wait object or napping —
// completing other threads' operations on the way. A donor that stops answering is given up
// through the ConnLoss callback (the pool closes the connection and loses its replicas).
#pragma once

#include <cstdint>

#include "completions.hpp"
#include "connections.hpp"
#include "slab_map.hpp"

namespace tsrdma {

// Told when the data path gives a donor up (no answer, or posts refused for a whole timeout).
class ConnLoss {
 public:
  virtual void conn_lost(int32_t conn) = 0;

 protected:
  ~ConnLoss() = default;
};

class Rma {
 public:
  Rma(Connections &conns, CompletionQueue &cq, ConnLoss &loss, uint32_t op_timeout_ms, uint64_t spin_ns)
      : conns_(conns), cq_(cq), loss_(loss), op_timeout_ms_(op_timeout_ms), spin_ns_(spin_ns) {}

  enum class Posted {
    kYes,      // in flight (op.result = kOpPending): it completes through the CQ
    kRefused,  // may_wait false and the provider said EAGAIN: op.result = kOpUnposted, post it again later
    kFailed,   // connection down, or the post failed for good (op.result < 0)
  };
  // Sets the transfer of `op` (what post() sends, and sends again after a refusal).
  static void set(Op &op, int32_t conn, void *buf, size_t len, void *desc, uint64_t addr, uint64_t key) {
    op.conn = conn;
    op.buf = buf;
    op.len = static_cast<uint32_t>(len);
    op.desc = desc;
    op.addr = addr;
    op.key = key;
  }
  // Posts `op` (its transfer set). When the provider says EAGAIN (transmit queue full) and
  // may_wait: progresses the CQ and tries again, giving the donor up after the op timeout (over
  // ofi_rxm a dead peer answers nothing else). Without may_wait (the JavaScript thread) it
  // waits for nothing: one progress of the CQ if free, one more try, then kRefused. A
  // connection being closed counts as refused too (its lock is busy for the close).
  Posted post(bool write, Op &op, bool may_wait);
  // Waits until the batch has no pending op. deadline_ns = 0 waits as long as it takes (giving
  // up donors after the op timeout); otherwise returns false at the deadline, ops still pending,
  // and never blocks on the CQ's lock (the JavaScript thread polling a small batch).
  bool wait(Batch &b, Op *ops, size_t n, uint64_t deadline_ns = 0);
  // One transfer of `len` bytes between `buf` and a replica at `offset`, waited for; its result.
  int transfer_one(bool write, const Replica &r, char *buf, size_t len, void *desc, uint64_t offset);

 private:
  // Fails the batch's pending ops on connections closed meanwhile (under the CQ's mutex).
  void fail_closed_locked(Op *ops, size_t n, Batch &b);

  Connections &conns_;
  CompletionQueue &cq_;
  ConnLoss &loss_;
  const uint32_t op_timeout_ms_;
  const uint64_t spin_ns_;
};

}  // namespace tsrdma
