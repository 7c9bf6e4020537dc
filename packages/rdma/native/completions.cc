#include "completions.hpp"

namespace tsrdma {

int CompletionQueue::open(fid_domain *domain, bool rdm, std::string &err) {
  fi_cq_attr cq_attr{};
  cq_attr.format = FI_CQ_FORMAT_CONTEXT;
  cq_attr.size = 4096;
  // RDM endpoints get a CQ without a wait object. ofi_rxm (libfabric 1.17, and still so
  // upstream) puts each endpoint's internal MSG CQ into the wait set of the CQ the endpoint
  // is bound to (ofi_wait_add_fid in rxm_ep_msg_cq_open) and never takes it out again:
  // after fi_close of a lost donor's endpoint, the next fi_cq_sread/fi_trywait on the
  // shared CQ calls rxm_ep_trywait_cq on the freed endpoint (util_wait_fd_try) and crashes.
  // Without a wait object rxm adds nothing there; waiters poll and nap instead (Rma::wait).
  cq_attr.wait_obj = rdm ? FI_WAIT_NONE : FI_WAIT_UNSPEC;
  int rc = fi_cq_open(domain, &cq_attr, &cq_, nullptr);
  wait_ = !rdm;
  if (wait_ && (rc == -FI_ENOSYS || rc == -FI_EINVAL)) {
    // No wait object with this provider: poll (and yield) instead.
    cq_attr.wait_obj = FI_WAIT_NONE;
    wait_ = false;
    rc = fi_cq_open(domain, &cq_attr, &cq_, nullptr);
  }
  if (rc) {
    cq_ = nullptr;
    err = fi_err("fi_cq_open", rc);
  }
  return rc;
}

void CompletionQueue::dispatch_locked(int block_ms) {
  if (!cq_) return;
  fi_cq_entry entries[64];
  for (;;) {
    // Blocking (once): sleep in the provider's wait object until a completion arrives, which
    // leaves the CPU to the donor (on a shared host) instead of spinning.
    ssize_t n = block_ms > 0 ? fi_cq_sread(cq_, entries, 64, nullptr, block_ms) : fi_cq_read(cq_, entries, 64);
    block_ms = 0;
    if (n > 0) {
      for (ssize_t k = 0; k < n; k++) {
        auto *op = static_cast<Op *>(entries[k].op_context);
        if (!op || op->result != kOpPending) continue;
        op->result = 0;
        op->batch->pending.fetch_sub(1, std::memory_order_release);
      }
      if (n == 64) continue;
      // A short read stops either at the end of the queue or before an error entry: look for
      // one (no progress, just a peek) so that the queue is always left empty. Closing a
      // connection and failing its operations (Rma::wait) rely on it: an entry left behind
      // could name an operation its waiter has already failed and freed.
      if (!read_error_locked()) return;
      continue;
    }
    if (n == -FI_EAVAIL) {
      if (!read_error_locked()) return;
      continue;
    }
    return;
  }
}

bool CompletionQueue::read_error_locked() {
  fi_cq_err_entry err{};
  if (fi_cq_readerr(cq_, &err, 0) <= 0) return false;
  auto *op = static_cast<Op *>(err.op_context);
  if (op && op->result == kOpPending) {
    op->result = -(err.err ? err.err : FI_EIO);
    op->batch->pending.fetch_sub(1, std::memory_order_release);
  }
  return true;
}

void CompletionQueue::progress() {
  std::lock_guard<std::mutex> lk(mu_);
  dispatch_locked();
}

void CompletionQueue::try_progress() {
  std::unique_lock<std::mutex> lk(mu_, std::try_to_lock);
  if (lk.owns_lock()) dispatch_locked();
}

void CompletionQueue::close() {
  std::lock_guard<std::mutex> lk(mu_);
  if (cq_) fi_close(&cq_->fid);
  cq_ = nullptr;
}

}  // namespace tsrdma
