#include "rma.hpp"

#include <sched.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <vector>

#include <tierstack/clock.hpp>

namespace tsrdma {

namespace {
constexpr int kSpinPosts = 64;  // refused posts retried at full speed before napping between tries
constexpr int kNapUs = 50;  // past the spin phase, a waiter on a CQ without a wait object naps between polls
}

using tierstack::now_ms;
using tierstack::now_ns;

Rma::Posted Rma::post(bool write, Op &op, bool may_wait) {
  Conn *c = conns_.get(op.conn);
  if (!c || !c->up.load()) {
    op.result = -FI_ENOTCONN;
    return Posted::kFailed;
  }
  uint64_t deadline = 0;
  for (int tries = 0;; tries++) {
    ssize_t rc;
    {
      // Shared with other posters; held exclusively only while the connection is closed.
      std::shared_lock<std::shared_mutex> sl(c->use, std::defer_lock);
      if (may_wait) {
        sl.lock();
      } else if (!sl.try_lock()) {
        op.result = kOpUnposted;
        return Posted::kRefused;
      }
      if (c->closed || !c->ep) {
        op.result = -FI_ENOTCONN;
        return Posted::kFailed;
      }
      op.result = kOpPending;
      rc = write ? fi_write(c->ep, op.buf, op.len, op.desc, c->dest, op.addr, op.key, &op.ctx)
                 : fi_read(c->ep, op.buf, op.len, op.desc, c->dest, op.addr, op.key, &op.ctx);
    }
    if (rc == 0) return Posted::kYes;
    if (rc != -FI_EAGAIN) {
      op.result = static_cast<int32_t>(rc);
      return Posted::kFailed;
    }
    // The transmit queue is full: complete some operations (ours or other threads') first.
    if (!may_wait) {
      // The JavaScript thread: one progress (unless another thread is at it) and one more try,
      // then the op is left for a thread that may wait (Pool::advance).
      if (tries >= 1) {
        op.result = kOpUnposted;
        return Posted::kRefused;
      }
      cq_.try_progress();
      continue;
    }
    cq_.progress();
    if (!c->up.load()) {
      op.result = -FI_ENOTCONN;
      return Posted::kFailed;
    }
    // A queue that stays full this long is a slow or dead peer (over rxm a dead one answers
    // EAGAIN for a whole donor timeout): nap between tries instead of burning a CPU that the
    // other job threads and the donors share.
    if (tries >= kSpinPosts) std::this_thread::sleep_for(std::chrono::microseconds(kNapUs));
    uint64_t t = now_ms();
    if (deadline == 0) deadline = t + op_timeout_ms_;
    if (t > deadline) {
      // Refused for a whole donor timeout. Over ofi_rxm this is what a dead peer looks like:
      // rxm keeps reconnecting and answers EAGAIN, never an error. Give the donor up, as wait()
      // does for operations that never complete, so that later posts to it fail at once
      // instead of each waiting out the timeout.
      loss_.conn_lost(op.conn);
      op.result = -FI_ETIMEDOUT;
      return Posted::kFailed;
    }
  }
}

void Rma::fail_closed_locked(Op *ops, size_t n, Batch &b) {
  for (size_t i = 0; i < n; i++) {
    Op &op = ops[i];
    if (op.batch != &b || op.result != kOpPending) continue;
    Conn *c = conns_.get(op.conn);
    if (c && c->closed) {
      op.result = -FI_ECONNABORTED;
      b.pending.fetch_sub(1, std::memory_order_release);
    }
  }
}

bool Rma::wait(Batch &b, Op *ops, size_t n, uint64_t deadline_ns) {
  // ~0: check for closed connections on the first pass. A batch may be resumed here after a
  // connection closed while nobody was waiting on it (the JS thread handed it to a worker).
  uint64_t epoch = ~0ULL;
  uint64_t start = 0;
  uint64_t spin_until = 0;
  unsigned spins = 0;
  while (b.pending.load(std::memory_order_acquire) > 0) {
    {
      // A bounded wait never blocks on the lock: its holder is reading the queue (completing
      // our operations too) or closing a connection; the next spin tries again.
      std::unique_lock<std::mutex> lk(cq_.mutex(), std::defer_lock);
      if (deadline_ns)
        (void)lk.try_lock();
      else
        lk.lock();
      if (lk.owns_lock()) {
        cq_.dispatch_locked();
        uint64_t e = conns_.close_epoch();
        if (e != epoch) {
          epoch = e;
          fail_closed_locked(ops, n, b);
        }
      }
    }
    if (b.pending.load(std::memory_order_acquire) == 0) break;
    ++spins;
    if (deadline_ns) {
      // A bounded wait (the JS thread polling a small batch): spin, never sleep or give up a donor.
      if ((spins & 31) == 0 && now_ns() > deadline_ns) return false;
      continue;
    }
    // Spin first (a donor answers in tens of microseconds, a batch of 32 pages in a few hundred),
    // yielding now and then; a batch that takes longer sleeps in the CQ's wait object, which
    // leaves the CPU to the donor on a shared host instead of burning it. A CQ without a wait
    // object (RDM endpoints, see CompletionQueue::open) naps between polls instead.
    if (spin_until == 0) spin_until = now_ns() + spin_ns_;
    if (spins < 2048 && spin_ns_ > 0) continue;
    if (cq_.has_wait() && ((spins & 15) == 0 || spin_ns_ == 0) && now_ns() > spin_until) {
      std::lock_guard<std::mutex> lk(cq_.mutex());
      if (b.pending.load(std::memory_order_acquire) > 0) cq_.dispatch_locked(1);
    } else if (!cq_.has_wait() && ((spins & 3) == 0 || spin_ns_ == 0) && now_ns() > spin_until) {
      std::this_thread::sleep_for(std::chrono::microseconds(kNapUs));
    } else {
      sched_yield();
    }
    if ((spins & 63) != 0) continue;
    uint64_t t = now_ms();
    if (start == 0) start = t;
    if (t - start > op_timeout_ms_) {
      // A donor that neither answers nor resets the connection: give up on it. Its
      // connection is closed, which fails our operations on it (and everyone else's).
      std::vector<int32_t> stuck;
      {
        std::lock_guard<std::mutex> lk(cq_.mutex());
        for (size_t i = 0; i < n; i++)
          if (ops[i].batch == &b && ops[i].result == kOpPending) stuck.push_back(ops[i].conn);
      }
      std::sort(stuck.begin(), stuck.end());
      stuck.erase(std::unique(stuck.begin(), stuck.end()), stuck.end());
      for (int32_t c : stuck) loss_.conn_lost(c);
      start = t;
    }
  }
  return true;
}

int Rma::transfer_one(bool write, const Replica &r, char *buf, size_t len, void *desc, uint64_t offset) {
  Op op;
  Batch b;
  op.batch = &b;
  b.pending.store(1);
  set(op, r.conn, buf, len, desc, r.addr + offset, r.rkey);
  if (post(write, op, true) != Posted::kYes) b.pending.store(0);
  wait(b, &op, 1);
  return op.result;
}

}  // namespace tsrdma
