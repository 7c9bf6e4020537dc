// The donor side of the data plane (used by the memd daemon): a passive endpoint accepting
// connections from pool clients, slabs of anonymous memory registered for remote read/write,
// and the two threads a TCP provider needs on the target side — one accepting connection
// requests from the event queue, one driving progress on the completion queue (without it the
// initiators' one-sided reads and writes never complete).
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "fabric.hpp"

namespace tsrdma {

struct DonorSlab {
  void *mem = nullptr;
  size_t size = 0;
  fid_mr *mr = nullptr;
  uint64_t remote_addr = 0;
  uint64_t rkey = 0;
};

class Donor {
 public:
  ~Donor() { close(); }
  // Opens the provider and listens on node:service ("0" = an ephemeral port).
  bool open(const std::string &provider, const std::string &node, const std::string &service);
  void close();
  const std::string &error() const { return error_; }
  // The errno behind the last alloc_slab failure (0: not a system error, e.g. an id in use).
  int error_errno() const { return error_errno_; }
  const std::string &node() const { return node_; }
  const std::string &service() const { return service_; }
  int mr_mode() const { return fd_.mr_mode(); }
  bool rdm() const { return fd_.rdm(); }
  // The endpoint's raw libfabric address (what a client inserts into its address vector).
  const std::string &raw_address() const { return raw_addr_; }

  // Maps and registers a slab under `id`. `key` is the requested MR key (cut to the domain's
  // key size) unless the provider picks keys itself (FI_MR_PROV_KEY): the daemon passes a random
  // one, so that a slab's key cannot be guessed from its id.
  bool alloc_slab(uint64_t id, size_t size, uint64_t key, DonorSlab &out);
  bool free_slab(uint64_t id);
  size_t slab_count();
  size_t connection_count() const { return connections_.load(); }

 private:
  void eq_loop();
  void progress_loop();

  FabricDomain fd_;
  fid_eq *eq_ = nullptr;
  fid_cq *cq_ = nullptr;
  fid_pep *pep_ = nullptr;
  fid_ep *rdm_ep_ = nullptr;  // RDM providers: one endpoint serves every client
  fid_av *av_ = nullptr;
  std::string raw_addr_;
  std::string error_, node_, service_;
  int error_errno_ = 0;
  std::atomic<bool> stop_{false};
  std::thread eq_thread_, progress_thread_;
  std::mutex eps_mu_;
  std::unordered_map<fid_t, fid_ep *> eps_;  // accepted endpoints, by fid
  std::atomic<size_t> connections_{0};
  std::mutex slabs_mu_;
  std::unordered_map<uint64_t, DonorSlab> slabs_;
};

}  // namespace tsrdma
