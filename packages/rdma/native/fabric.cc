#include "fabric.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

namespace tsrdma {

void set_mr_cache_monitor_default() { setenv("FI_MR_CACHE_MONITOR", "disabled", 0); }

std::string fi_err(const char *what, int rc) {
  return std::string(what) + ": " + fi_strerror(rc < 0 ? -rc : rc) + " (" + std::to_string(rc) + ")";
}

fi_ep_type ep_type_for(const std::string &provider) {
  return provider.find("ofi_rxm") != std::string::npos || provider == "efa" ? FI_EP_RDM : FI_EP_MSG;
}

bool FabricDomain::open(const std::string &provider, const char *node, const char *service, bool source) {
  set_mr_cache_monitor_default();
  fi_info *hints = fi_allocinfo();
  if (!hints) {
    error = "fi_allocinfo failed";
    return false;
  }
  ep_type = ep_type_for(provider);
  hints->ep_attr->type = ep_type;
  hints->caps = FI_RMA | FI_READ | FI_WRITE | FI_REMOTE_READ | FI_REMOTE_WRITE;
  // Our operation contexts start with a struct fi_context2, so both context modes are fine.
  hints->mode = FI_CONTEXT | FI_CONTEXT2;
  hints->domain_attr->mr_mode = kSupportedMrMode;
  hints->domain_attr->threading = FI_THREAD_SAFE;
  hints->addr_format = FI_FORMAT_UNSPEC;
  hints->fabric_attr->prov_name = strdup(provider.c_str());
  int rc = fi_getinfo(kFiVersion, node, service, source ? FI_SOURCE : 0, hints, &info);
  fi_freeinfo(hints);
  if (rc != 0) {
    info = nullptr;
    error = fi_err(("fi_getinfo(provider " + provider + ")").c_str(), rc);
    return false;
  }
  if (info->domain_attr->mr_mode & ~kSupportedMrMode & (FI_MR_ENDPOINT | FI_MR_RAW | FI_MR_MMU_NOTIFY)) {
    error = "provider " + provider + " needs an unsupported mr_mode (FI_MR_ENDPOINT/RAW/MMU_NOTIFY)";
    close();
    return false;
  }
  rc = fi_fabric(info->fabric_attr, &fabric, nullptr);
  if (rc != 0) {
    error = fi_err("fi_fabric", rc);
    close();
    return false;
  }
  rc = fi_domain(fabric, info, &domain, nullptr);
  if (rc != 0) {
    error = fi_err("fi_domain", rc);
    close();
    return false;
  }
  return true;
}

void FabricDomain::close() {
  if (domain) fi_close(&domain->fid);
  if (fabric) fi_close(&fabric->fid);
  if (info) fi_freeinfo(info);
  domain = nullptr;
  fabric = nullptr;
  info = nullptr;
}

bool sockaddr_to_strings(const void *addr, size_t len, std::string &node, std::string &service) {
  char buf[INET6_ADDRSTRLEN] = {0};
  auto *sa = static_cast<const sockaddr *>(addr);
  if (sa->sa_family == AF_INET && len >= sizeof(sockaddr_in)) {
    auto *in = static_cast<const sockaddr_in *>(addr);
    inet_ntop(AF_INET, &in->sin_addr, buf, sizeof buf);
    node = buf;
    service = std::to_string(ntohs(in->sin_port));
    return true;
  }
  if (sa->sa_family == AF_INET6 && len >= sizeof(sockaddr_in6)) {
    auto *in6 = static_cast<const sockaddr_in6 *>(addr);
    inet_ntop(AF_INET6, &in6->sin6_addr, buf, sizeof buf);
    node = buf;
    service = std::to_string(ntohs(in6->sin6_port));
    return true;
  }
  return false;
}

}  // namespace tsrdma
