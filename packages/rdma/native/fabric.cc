#include "fabric.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

namespace tsrdma {

namespace {
// Sets name=value unless the environment has it; records which one applies.
void env_default(std::vector<EnvSetting> &out, const char *name, const char *value) {
  const char *have = getenv(name);
  if (have && *have) {
    out.push_back({name, have, false});
    return;
  }
  setenv(name, value, 1);
  out.push_back({name, value, true});
}

std::string bytes_text(uint64_t n) {
  if (n == RLIM_INFINITY) return "unlimited";
  if (n >= (1ULL << 20) && n % (1ULL << 20) == 0) return std::to_string(n >> 20) + " MiB";
  if (n >= 1024 && n % 1024 == 0) return std::to_string(n >> 10) + " KiB";
  return std::to_string(n) + " bytes";
}
}  // namespace

std::vector<EnvSetting> apply_provider_defaults(const std::string &provider) {
  std::vector<EnvSetting> out;
  env_default(out, "FI_MR_CACHE_MONITOR", "disabled");
  if (provider.find("ofi_rxm") != std::string::npos && provider.find("verbs") != std::string::npos) {
    // 16 x (128 + 128) = 4096 entries per endpoint's CQ: within soft-RoCE's limit. The universe
    // size is a sizing hint, not a cap on peers: a donor still serves more clients than that,
    // and a pool client has one rxm endpoint per donor (one peer each).
    env_default(out, "FI_UNIVERSE_SIZE", "16");
    env_default(out, "FI_OFI_RXM_MSG_TX_SIZE", "128");
    env_default(out, "FI_OFI_RXM_MSG_RX_SIZE", "128");
  }
  return out;
}

std::string mr_reg_failure(int rc, size_t bytes) {
  int e = rc < 0 ? -rc : rc;
  std::string msg = "fi_mr_reg of " + bytes_text(bytes) + ": " + fi_strerror(e) + " (errno " + std::to_string(e) + ")";
  if (e == FI_ENOMEM || e == EPERM || e == EAGAIN) {
    rlimit lim{};
    if (getrlimit(RLIMIT_MEMLOCK, &lim) == 0) {
      msg += "; RLIMIT_MEMLOCK of this process is " + bytes_text(lim.rlim_cur) + " (hard limit " + bytes_text(lim.rlim_max) +
             ") and a registered slab stays locked in memory: raise the limit to at least the donated capacity " +
             "(ulimit -l, LimitMEMLOCK= in a systemd unit, memlock in limits.conf) or give the process CAP_IPC_LOCK";
    }
  }
  return msg;
}

int open_endpoint(fid_domain *domain, fi_info *info, fid_eq *eq, fid_av *av, fid_cq *cq, fid_ep **ep, std::string &err) {
  *ep = nullptr;
  const char *what = "fi_endpoint";
  int rc = fi_endpoint(domain, info, ep, nullptr);
  if (rc == 0 && eq) {
    what = "fi_ep_bind(eq)";
    rc = fi_ep_bind(*ep, &eq->fid, 0);
  }
  if (rc == 0 && av) {
    what = "fi_ep_bind(av)";
    rc = fi_ep_bind(*ep, &av->fid, 0);
  }
  if (rc == 0) {
    what = "fi_ep_bind(cq)";
    rc = fi_ep_bind(*ep, &cq->fid, FI_TRANSMIT | FI_RECV);
  }
  if (rc == 0) {
    what = "fi_enable";
    rc = fi_enable(*ep);
  }
  if (rc == 0) return 0;
  err = fi_err(what, rc);
  if (rc == -FI_EINVAL && std::string(what) == "fi_enable" && info->fabric_attr && info->fabric_attr->prov_name &&
      strstr(info->fabric_attr->prov_name, "ofi_rxm") && strstr(info->fabric_attr->prov_name, "verbs"))
    err += " (ofi_rxm sizes its completion queues as FI_UNIVERSE_SIZE x queue sizes; FI_UNIVERSE_SIZE=" +
           std::string(getenv("FI_UNIVERSE_SIZE") ? getenv("FI_UNIVERSE_SIZE") : "unset") +
           " here: lower it, before the process's first libfabric call)";
  if (*ep) fi_close(&(*ep)->fid);
  *ep = nullptr;
  return rc;
}

std::string fi_err(const char *what, int rc) {
  return std::string(what) + ": " + fi_strerror(rc < 0 ? -rc : rc) + " (" + std::to_string(rc) + ")";
}

fi_ep_type ep_type_for(const std::string &provider) {
  return provider.find("ofi_rxm") != std::string::npos || provider == "efa" ? FI_EP_RDM : FI_EP_MSG;
}

bool FabricDomain::open(const std::string &provider, const char *node, const char *service, bool source) {
  apply_provider_defaults(provider);
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

void *LocalRegs::desc(const void *buf, size_t len) {
  if (!needed_ || !domain_) return nullptr;
  fid_mr *mr = nullptr;
  if (fi_mr_reg(domain_, buf, len, FI_READ | FI_WRITE, 0, key_seq_->fetch_add(1), 0, &mr, nullptr) != 0) return nullptr;
  mrs_.push_back(mr);
  return fi_mr_desc(mr);
}

void LocalRegs::release() {
  for (auto *mr : mrs_) fi_close(&mr->fid);
  mrs_.clear();
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
