#include "donor.hpp"

#include <sys/mman.h>

#include <cstring>

namespace tsrdma {

bool Donor::open(const std::string &provider, const std::string &node, const std::string &service) {
  if (!fd_.open(provider, node.c_str(), service.c_str(), true)) {
    error_ = fd_.error;
    return false;
  }
  auto fail = [&](const char *what, int rc) {
    error_ = fi_err(what, rc);
    close();
    return false;
  };
  fi_eq_attr eq_attr{};
  eq_attr.wait_obj = FI_WAIT_UNSPEC;
  int rc = fi_eq_open(fd_.fabric, &eq_attr, &eq_, nullptr);
  if (rc) return fail("fi_eq_open", rc);
  fi_cq_attr cq_attr{};
  cq_attr.format = FI_CQ_FORMAT_CONTEXT;
  cq_attr.wait_obj = FI_WAIT_UNSPEC;
  cq_attr.size = 1024;
  rc = fi_cq_open(fd_.domain, &cq_attr, &cq_, nullptr);
  if (rc) return fail("fi_cq_open", rc);
  char addr[256];
  size_t len = sizeof addr;
  if (fd_.rdm()) {
    // Reliable datagrams: one endpoint, clients address it through their address vectors and
    // the provider (ofi_rxm) makes connections underneath. Only progress is needed here.
    fi_av_attr av_attr{};
    av_attr.type = FI_AV_TABLE;
    rc = fi_av_open(fd_.domain, &av_attr, &av_, nullptr);
    if (rc) return fail("fi_av_open", rc);
    rc = open_endpoint(fd_.domain, fd_.info, nullptr, av_, cq_, &rdm_ep_, error_);
    if (rc) {
      close();  // keeps error_
      return false;
    }
    rc = fi_getname(&rdm_ep_->fid, addr, &len);
    if (rc) return fail("fi_getname", rc);
  } else {
    rc = fi_passive_ep(fd_.fabric, fd_.info, &pep_, nullptr);
    if (rc) return fail("fi_passive_ep", rc);
    rc = fi_pep_bind(pep_, &eq_->fid, 0);
    if (rc) return fail("fi_pep_bind", rc);
    rc = fi_listen(pep_);
    if (rc) return fail("fi_listen", rc);
    rc = fi_getname(&pep_->fid, addr, &len);
    if (rc) return fail("fi_getname", rc);
  }
  raw_addr_.assign(addr, len);
  if (!sockaddr_to_strings(addr, len, node_, service_)) {
    // Not an IP address (e.g. efa): clients use the raw address only.
    node_ = "";
    service_ = "";
  }
  if (!fd_.rdm()) eq_thread_ = std::thread([this] { eq_loop(); });
  progress_thread_ = std::thread([this] { progress_loop(); });
  return true;
}

// Accepts connection requests and closes endpoints whose peer went away.
void Donor::eq_loop() {
  alignas(8) char buf[sizeof(fi_eq_cm_entry) + 256];
  while (!stop_.load(std::memory_order_relaxed)) {
    uint32_t event = 0;
    ssize_t n = fi_eq_sread(eq_, &event, buf, sizeof buf, 100, 0);
    if (n == -FI_EAGAIN || n == -FI_ETIMEDOUT || n == -FI_EINTR) continue;
    if (n == -FI_EAVAIL) {
      fi_eq_err_entry err{};
      if (fi_eq_readerr(eq_, &err, 0) > 0 && err.fid) {
        std::lock_guard<std::mutex> lk(eps_mu_);
        auto it = eps_.find(err.fid);
        if (it != eps_.end()) {
          fi_close(&it->second->fid);
          eps_.erase(it);
          connections_.store(eps_.size());
        }
      }
      continue;
    }
    if (n < 0) break;  // the EQ is unusable: the daemon's stats will show no new connections
    auto *entry = reinterpret_cast<fi_eq_cm_entry *>(buf);
    if (event == FI_CONNREQ) {
      fid_ep *ep = nullptr;
      std::string err;  // a refused client sees the rejection; nothing to report here
      int rc = open_endpoint(fd_.domain, entry->info, eq_, nullptr, cq_, &ep, err);
      if (rc == 0) rc = fi_accept(ep, nullptr, 0);
      if (rc == 0) {
        std::lock_guard<std::mutex> lk(eps_mu_);
        eps_[&ep->fid] = ep;
        connections_.store(eps_.size());
      } else {
        if (ep) fi_close(&ep->fid);
        fi_reject(pep_, entry->info->handle, nullptr, 0);
      }
      fi_freeinfo(entry->info);
    } else if (event == FI_SHUTDOWN) {
      std::lock_guard<std::mutex> lk(eps_mu_);
      auto it = eps_.find(entry->fid);
      if (it != eps_.end()) {
        fi_close(&it->second->fid);
        eps_.erase(it);
        connections_.store(eps_.size());
      }
    }
  }
}

// Drives the provider's progress for every accepted endpoint. One-sided operations create no
// completions here; reading the CQ is what moves the bytes.
void Donor::progress_loop() {
  fi_cq_entry entries[16];
  while (!stop_.load(std::memory_order_relaxed)) {
    ssize_t n = fi_cq_sread(cq_, entries, 16, nullptr, 100);
    if (n == -FI_EAVAIL) {
      fi_cq_err_entry err{};
      fi_cq_readerr(cq_, &err, 0);
    }
  }
}

bool Donor::alloc_slab(uint64_t id, size_t size, uint64_t key, DonorSlab &out) {
  std::lock_guard<std::mutex> lk(slabs_mu_);
  if (slabs_.count(id)) {
    error_ = "slab id in use";
    return false;
  }
  error_errno_ = 0;
  void *mem = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) {
    error_errno_ = errno;
    error_ = std::string("mmap: ") + strerror(errno);
    return false;
  }
  fid_mr *mr = nullptr;
  size_t key_size = fd_.info->domain_attr->mr_key_size;
  if (key_size > 0 && key_size < 8) key &= (1ULL << (8 * key_size)) - 1;
  int rc = fi_mr_reg(fd_.domain, mem, size, FI_REMOTE_READ | FI_REMOTE_WRITE, 0, key, 0, &mr, nullptr);
  if (rc) {
    munmap(mem, size);
    error_ = mr_reg_failure(rc, size);
    error_errno_ = rc < 0 ? -rc : rc;
    return false;
  }
  out.mem = mem;
  out.size = size;
  out.mr = mr;
  out.rkey = fi_mr_key(mr);
  out.remote_addr = (fd_.mr_mode() & FI_MR_VIRT_ADDR) ? reinterpret_cast<uint64_t>(mem) : 0;
  slabs_[id] = out;
  return true;
}

bool Donor::free_slab(uint64_t id) {
  std::lock_guard<std::mutex> lk(slabs_mu_);
  auto it = slabs_.find(id);
  if (it == slabs_.end()) return false;
  // Closing the MR first makes any later remote access fail at the provider instead of
  // touching unmapped memory.
  fi_close(&it->second.mr->fid);
  munmap(it->second.mem, it->second.size);
  slabs_.erase(it);
  return true;
}

size_t Donor::slab_count() {
  std::lock_guard<std::mutex> lk(slabs_mu_);
  return slabs_.size();
}

void Donor::close() {
  stop_.store(true);
  if (eq_thread_.joinable()) eq_thread_.join();
  if (progress_thread_.joinable()) progress_thread_.join();
  {
    std::lock_guard<std::mutex> lk(eps_mu_);
    for (auto &kv : eps_) fi_close(&kv.second->fid);
    eps_.clear();
    connections_.store(0);
  }
  {
    std::lock_guard<std::mutex> lk(slabs_mu_);
    for (auto &kv : slabs_) {
      fi_close(&kv.second.mr->fid);
      munmap(kv.second.mem, kv.second.size);
    }
    slabs_.clear();
  }
  if (rdm_ep_) fi_close(&rdm_ep_->fid);
  if (av_) fi_close(&av_->fid);
  rdm_ep_ = nullptr;
  av_ = nullptr;
  if (pep_) fi_close(&pep_->fid);
  if (cq_) fi_close(&cq_->fid);
  if (eq_) fi_close(&eq_->fid);
  pep_ = nullptr;
  cq_ = nullptr;
  eq_ = nullptr;
  fd_.close();
}

}  // namespace tsrdma
