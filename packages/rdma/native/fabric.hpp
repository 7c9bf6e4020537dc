// libfabric plumbing shared by the donor and the pool client: opening a fabric/domain for a
// named provider with FI_EP_MSG endpoints and RMA capabilities, error strings, addresses.
#pragma once

#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>

#include <string>

namespace tsrdma {

// libfabric API version this code is written against (Debian 12 ships 1.17).
constexpr uint32_t kFiVersion = FI_VERSION(1, 9);

// The mr_mode bits we know how to handle. FI_MR_ENDPOINT is not among them: a donor's slab is
// read by many endpoints, so an MR bound to one endpoint does not fit.
constexpr int kSupportedMrMode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;

// Must run before the first fi_getinfo of the process: libfabric's MR cache may otherwise
// install a userfaultfd-based memory monitor, which would collide with tierstack's uffd
// front-end. Respects a value the user already set.
void set_mr_cache_monitor_default();

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

std::string fi_err(const char *what, int rc);
// "ip:port" of a sockaddr (IPv4/IPv6) as node and service strings.
bool sockaddr_to_strings(const void *addr, size_t len, std::string &node, std::string &service);

}  // namespace tsrdma
