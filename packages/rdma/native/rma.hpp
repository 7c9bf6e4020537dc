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

  // Posts one RMA op, progressing the CQ while the provider says EAGAIN. False when the
  // connection is down or the post failed for good (op.result set).
  bool post(bool write, Op &op, int32_t conn, void *buf, size_t len, void *desc, uint64_t addr, uint64_t key);
  // Waits until the batch has no pending op. deadline_ns = 0 waits as long as it takes (giving
  // up donors after the op timeout); otherwise returns false at the deadline, ops still pending.
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
