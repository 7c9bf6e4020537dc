// libfabric plumbing shared by the donor and the pool client: opening a fabric/domain for a
// named provider with FI_EP_MSG endpoints and RMA capabilities, error strings, addresses.
#pragma once

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include <atomic>
#include <string>
#include <vector>

namespace tsrdma {

// libfabric API version this code is written against (Debian 12 ships 1.17).
constexpr uint32_t kFiVersion = FI_VERSION(1, 9);

// The mr_mode bits we know how to handle. FI_MR_ENDPOINT is not among them: a donor's slab is
// read by many endpoints, so an MR bound to one endpoint does not fit.
constexpr int kSupportedMrMode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;

// One libfabric setting taken from the environment, and whether this process chose it.
struct EnvSetting {
  std::string name, value;
  bool ours;  // false: the user had set it (kept as it was)
};

// Environment defaults for `provider`, set unless the user set the variable already. libfabric
// reads them once, at its initialisation (the process's first fi_getinfo), so this runs before
// that. Always: FI_MR_CACHE_MONITOR=disabled (the MR cache's userfaultfd monitor would collide
// with tierstack's uffd front-end). For ofi_rxm over verbs: FI_UNIVERSE_SIZE=16 and rxm's MSG
// queue sizes, because rxm sizes the completion queue of every endpoint as universe size x
// (tx + rx queue size), and the default universe (256) asks more entries than rxe (and many
// HCAs) allow: fi_enable then fails with -FI_EINVAL. Returns what applies (for the logs).
std::vector<EnvSetting> apply_provider_defaults(const std::string &provider);

// Why fi_mr_reg failed, for the operator: the errno, and for ENOMEM/EPERM/EAGAIN the process's
// RLIMIT_MEMLOCK (every registered slab stays pinned) with what to raise.
std::string mr_reg_failure(int rc, size_t bytes);

// The endpoint sequence every side uses: fi_endpoint for `info`, bound to an event queue (MSG
// endpoints: connection events) or an address vector (RDM endpoints), and to `cq` for transmit
// and receive completions, then enabled. On failure the endpoint is closed, `err` says which
// call failed, and the libfabric status is returned.
int open_endpoint(fid_domain *domain, fi_info *info, fid_eq *eq, fid_av *av, fid_cq *cq, fid_ep **ep, std::string &err);

// RDM-only providers (utility provider ofi_rxm over a core provider, or efa) get reliable
// datagram endpoints addressed through an address vector; everything else gets connected
// message endpoints (FI_EP_MSG).
fi_ep_type ep_type_for(const std::string &provider);

struct FabricDomain {
  fi_info *info = nullptr;  // owned
  fid_fabric *fabric = nullptr;
  fid_domain *domain = nullptr;
  std::string error;  // set when open() fails

  fi_ep_type ep_type = FI_EP_MSG;
  // Opens the provider for node/service. `source` = passive side (FI_SOURCE).
  bool open(const std::string &provider, const char *node, const char *service, bool source);
  bool rdm() const { return ep_type == FI_EP_RDM; }
  void close();
  int mr_mode() const { return info ? info->domain_attr->mr_mode : 0; }
  ~FabricDomain() { close(); }
};

// Registrations of local buffers for providers whose RMA needs a descriptor of them
// (FI_MR_LOCAL, e.g. verbs); nothing at all for the others (tcp). A batch or a replica copy
// keeps one for as long as its operations may touch the buffers; they are closed with it.
class LocalRegs {
 public:
  LocalRegs() = default;
  LocalRegs(const LocalRegs &) = delete;
  LocalRegs &operator=(const LocalRegs &) = delete;
  ~LocalRegs() { release(); }
  // `key_seq` hands out requested keys (ignored by FI_MR_PROV_KEY providers, unique otherwise).
  void bind(fid_domain *domain, bool needed, std::atomic<uint64_t> *key_seq) {
    domain_ = domain;
    needed_ = needed;
    key_seq_ = key_seq;
  }
  // The descriptor to pass with an operation on buf[0, len): nullptr when none is needed, or
  // when the registration failed (the operation then fails at the provider).
  void *desc(const void *buf, size_t len);
  void release();

 private:
  fid_domain *domain_ = nullptr;
  bool needed_ = false;
  std::atomic<uint64_t> *key_seq_ = nullptr;
  std::vector<fid_mr *> mrs_;
};

std::string fi_err(const char *what, int rc);
// "ip:port" of a sockaddr (IPv4/IPv6) as node and service strings.
bool sockaddr_to_strings(const void *addr, size_t len, std::string &node, std::string &service);

}  // namespace tsrdma
