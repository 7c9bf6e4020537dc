// The pool's connections to its donors: the fabric and domain (decided by the first donor that
// connects), one endpoint per donor bound to the shared completion queue, and closing one
// safely while operations may still be posted on it. Indexes are the control plane's: a donor
// that comes back gets a new index, so replicas of the old session are never reused.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "completions.hpp"
#include "fabric.hpp"

namespace tsrdma {

struct Conn {
  fid_ep *ep = nullptr;
  fid_eq *eq = nullptr;      // MSG endpoints: connection events
  fid_av *av = nullptr;      // RDM endpoints: the donor's address
  fi_addr_t dest = 0;        // RDM: the donor in `av`; MSG: unused (0)
  std::shared_mutex use;     // posters hold it shared; closing holds it exclusively
  std::atomic<bool> up{false};
  bool closed = false;  // guarded by use (exclusive) and read under the CQ's mutex by waiters
};

class Connections {
 public:
  static constexpr size_t kMaxConns = 256;
  Connections(CompletionQueue &cq, uint32_t connect_timeout_ms);
  ~Connections() { close_all(); }
  void set_provider(const std::string &provider) { provider_ = provider; }

  // MSG providers connect to node:service; RDM providers insert `raw_addr` (the donor's
  // fi_getname) into a per-donor address vector. Opens the domain and the CQ on first use.
  int connect(int32_t idx, const std::string &node, const std::string &service, const std::string &raw_addr, std::string &err);
  // Closes a connection's endpoint (see the .cc for the ordering with the CQ). True if it was
  // open: the caller then treats every replica on it as lost.
  bool close_one(int32_t idx);
  Conn *get(int32_t idx) {
    return idx < 0 || static_cast<size_t>(idx) >= conns_.size() ? nullptr : conns_[idx].get();
  }
  bool up(int32_t idx) {
    Conn *c = get(idx);
    return c && c->up.load();
  }
  // Bumped whenever a connection closes: waiters check their operations on closed connections.
  uint64_t close_epoch() const { return close_epoch_.load(); }
  fid_domain *domain() const { return fd_.domain; }
  bool mr_local() const { return mr_local_; }
  void close_all();  // every endpoint, the CQ, the domain

 private:
  int connect_rdm(Conn *c, const std::string &raw_addr, std::string &err);

  CompletionQueue &cq_;
  const uint32_t connect_timeout_ms_;
  std::string provider_;
  FabricDomain fd_;
  bool mr_local_ = false;
  std::mutex mu_;  // opening the domain, fi_getinfo for a donor
  std::vector<std::unique_ptr<Conn>> conns_;
  std::atomic<uint64_t> close_epoch_{0};
};

}  // namespace tsrdma
