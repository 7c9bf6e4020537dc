#include "connections.hpp"

#include <stdlib.h>

#include <algorithm>

#include <tierstack/clock.hpp>
#include <tierstack/page_store.h>

namespace tsrdma {

namespace {
// Closes what a failed connect opened of a connection (endpoint first: it is bound to the rest).
void close_fids(Conn *c) {
  if (c->ep) fi_close(&c->ep->fid);
  if (c->eq) fi_close(&c->eq->fid);
  if (c->av) fi_close(&c->av->fid);
  c->ep = nullptr;
  c->eq = nullptr;
  c->av = nullptr;
}
}  // namespace

Connections::Connections(CompletionQueue &cq, uint32_t connect_timeout_ms) : cq_(cq), connect_timeout_ms_(connect_timeout_ms) {
  conns_.resize(kMaxConns);
  for (auto &c : conns_) c = std::make_unique<Conn>();
}

int Connections::connect(int32_t idx, const std::string &node, const std::string &service, const std::string &raw_addr, std::string &err) {
  Conn *c = get(idx);
  if (!c) {
    err = "donor index out of range";
    return TS_E_BAD_ARGUMENT;
  }
  std::unique_lock<std::shared_mutex> ul(c->use);
  if (c->up || c->closed) {
    err = "donor index already used";
    return TS_E_BAD_ARGUMENT;
  }
  fi_info *info = nullptr;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (!fd_.domain) {
      // The first donor decides the fabric and domain (the interface that reaches it).
      if (!fd_.open(provider_, node.empty() ? nullptr : node.c_str(), node.empty() ? nullptr : service.c_str(), false)) {
        err = fd_.error;
        return TS_E_UNAVAILABLE;
      }
      mr_local_ = (fd_.mr_mode() & FI_MR_LOCAL) != 0;
      if (cq_.open(fd_.domain, fd_.rdm(), err) != 0) {
        fd_.close();
        return TS_E_UNAVAILABLE;
      }
    }
    if (fd_.rdm()) return connect_rdm(c, raw_addr, err);
    fi_info *hints = fi_dupinfo(fd_.info);
    free(hints->dest_addr);
    hints->dest_addr = nullptr;
    hints->dest_addrlen = 0;
    free(hints->src_addr);
    hints->src_addr = nullptr;
    hints->src_addrlen = 0;
    int rc = fi_getinfo(kFiVersion, node.c_str(), service.c_str(), 0, hints, &info);
    fi_freeinfo(hints);
    if (rc) {
      err = fi_err("fi_getinfo(donor)", rc);
      return TS_E_UNAVAILABLE;
    }
  }
  auto fail = [&](const char *what, int rc) {  // what = nullptr: err is set already
    if (what) err = fi_err(what, rc);
    close_fids(c);
    fi_freeinfo(info);
    return TS_E_UNAVAILABLE;
  };
  fi_eq_attr eq_attr{};
  eq_attr.wait_obj = FI_WAIT_UNSPEC;
  int rc = fi_eq_open(fd_.fabric, &eq_attr, &c->eq, nullptr);
  if (rc) return fail("fi_eq_open", rc);
  rc = open_endpoint(fd_.domain, info, c->eq, nullptr, cq_.cq(), &c->ep, err);
  if (rc) return fail(nullptr, rc);
  rc = fi_connect(c->ep, info->dest_addr, nullptr, 0);
  if (rc) return fail("fi_connect", rc);
  alignas(8) char buf[sizeof(fi_eq_cm_entry) + 256];
  uint32_t event = 0;
  uint64_t deadline = tierstack::now_ms() + std::max<uint32_t>(connect_timeout_ms_, 1000);
  for (;;) {
    ssize_t n = fi_eq_sread(c->eq, &event, buf, sizeof buf, 100, 0);
    if (n >= 0 && event == FI_CONNECTED) break;
    if (n == -FI_EAVAIL) {
      fi_eq_err_entry e{};
      fi_eq_readerr(c->eq, &e, 0);
      return fail("connect to donor", e.err ? -e.err : -FI_ECONNREFUSED);
    }
    if (n >= 0 || n == -FI_EAGAIN || n == -FI_ETIMEDOUT || n == -FI_EINTR) {
      if (tierstack::now_ms() > deadline) return fail("connect to donor", -FI_ETIMEDOUT);
      continue;
    }
    return fail("fi_eq_sread", static_cast<int>(n));
  }
  fi_freeinfo(info);
  c->up.store(true);
  return TS_OK;
}

// Called with mu_ and the connection's `use` lock held.
int Connections::connect_rdm(Conn *c, const std::string &raw_addr, std::string &err) {
  auto fail = [&](const char *what, int rc) {  // what = nullptr: err is set already
    if (what) err = fi_err(what, rc);
    close_fids(c);
    return TS_E_UNAVAILABLE;
  };
  if (raw_addr.empty()) {
    err = "the donor sent no libfabric address";
    return TS_E_UNAVAILABLE;
  }
  fi_av_attr av_attr{};
  av_attr.type = FI_AV_TABLE;
  int rc = fi_av_open(fd_.domain, &av_attr, &c->av, nullptr);
  if (rc) return fail("fi_av_open", rc);
  rc = open_endpoint(fd_.domain, fd_.info, nullptr, c->av, cq_.cq(), &c->ep, err);
  if (rc) return fail(nullptr, rc);
  int n = fi_av_insert(c->av, raw_addr.data(), 1, &c->dest, 0, nullptr);
  if (n != 1) return fail("fi_av_insert", n < 0 ? n : -FI_EINVAL);
  c->up.store(true);
  return TS_OK;
}

bool Connections::close_one(int32_t idx) {
  Conn *c = get(idx);
  if (!c) return false;
  c->up.store(false);
  std::unique_lock<std::shared_mutex> ul(c->use);  // waits for posters on this connection
  if (c->closed || !c->ep) {
    c->closed = true;
    return false;
  }
  {
    // Operations may still be posted on the endpoint (a dead peer never answers them).
    // fi_close either reports them (tcp flushes its queues as error completions into the
    // CQ) or frees them silently (ofi_rxm); after it, nothing of this endpoint ever reaches
    // the CQ again. Reading the CQ empty right here, before the connection counts as
    // closed, dispatches whatever it did report: from then on libfabric holds no context
    // of an operation on this connection, and waiters fail the ones never reported
    // (Rma::wait, under the same lock) and may free them. No CQ read can run during
    // fi_close (the CQ's mutex), and no post (use, exclusive).
    std::lock_guard<std::mutex> lk(cq_.mutex());
    fi_close(&c->ep->fid);
    c->ep = nullptr;
    cq_.dispatch_locked();
    c->closed = true;
    close_epoch_.fetch_add(1);
  }
  if (c->eq) fi_close(&c->eq->fid);
  if (c->av) fi_close(&c->av->fid);
  c->eq = nullptr;
  c->av = nullptr;
  return true;
}

void Connections::close_all() {
  for (auto &cp : conns_) {
    Conn *c = cp.get();
    std::unique_lock<std::shared_mutex> ul(c->use);
    c->up.store(false);
    close_fids(c);
    c->closed = true;
  }
  cq_.close();
  fd_.close();
}

}  // namespace tsrdma
