/*
 * rdma_raw: the raw libfabric baseline of the `rdma` bench suite. It connects one FI_EP_MSG
 * endpoint to a memd donor's data port and does one-sided fi_read/fi_write of fixed-size
 * blocks against one slab, with `qd` operations in flight per call (post all, reap all), the
 * same access pattern RdmaPoolTier uses for a batch. It reads commands on stdin:
 *     run <read|write> <block bytes> <qd> <milliseconds>
 * and answers each with one JSON line: {"ops":..,"secs":..,"calls":..,"p50_us":..,"p99_us":..}.
 *
 * Build: gcc -O2 -o rdma_raw rdma_raw.c $(pkg-config --cflags --libs libfabric)
 * Usage: rdma_raw <provider> <node> <service> <remote addr> <rkey> <slab bytes>
 */
#include <rdma/fabric.h>
#include <rdma/fi_cm.h>
#include <rdma/fi_domain.h>
#include <rdma/fi_endpoint.h>
#include <rdma/fi_errno.h>
#include <rdma/fi_rma.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <time.h>

#define MAX_QD 256

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static void die(const char *what, int rc) {
  fprintf(stderr, "rdma_raw: %s: %s (%d)\n", what, fi_strerror(rc < 0 ? -rc : rc), rc);
  exit(1);
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static uint64_t rng_state = 88172645463325252ULL;
static uint64_t next_rand(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

int main(int argc, char **argv) {
  if (argc < 7) {
    fprintf(stderr, "usage: rdma_raw <provider> <node> <service> <remote addr> <rkey> <slab bytes>\n");
    return 2;
  }
  setenv("FI_MR_CACHE_MONITOR", "disabled", 0);
  uint64_t raddr = strtoull(argv[4], NULL, 10), rkey = strtoull(argv[5], NULL, 10), slab = strtoull(argv[6], NULL, 10);
  struct fi_info *hints = fi_allocinfo(), *info = NULL;
  hints->ep_attr->type = FI_EP_MSG;
  hints->caps = FI_RMA | FI_READ | FI_WRITE;
  hints->mode = FI_CONTEXT | FI_CONTEXT2;
  hints->domain_attr->mr_mode = FI_MR_LOCAL | FI_MR_VIRT_ADDR | FI_MR_ALLOCATED | FI_MR_PROV_KEY;
  hints->fabric_attr->prov_name = strdup(argv[1]);
  int rc = fi_getinfo(FI_VERSION(1, 9), argv[2], argv[3], 0, hints, &info);
  if (rc) die("fi_getinfo", rc);
  struct fid_fabric *fabric;
  struct fid_domain *domain;
  struct fid_eq *eq;
  struct fid_cq *cq;
  struct fid_ep *ep;
  if ((rc = fi_fabric(info->fabric_attr, &fabric, NULL))) die("fi_fabric", rc);
  if ((rc = fi_domain(fabric, info, &domain, NULL))) die("fi_domain", rc);
  struct fi_eq_attr eq_attr = {.wait_obj = FI_WAIT_UNSPEC};
  if ((rc = fi_eq_open(fabric, &eq_attr, &eq, NULL))) die("fi_eq_open", rc);
  struct fi_cq_attr cq_attr = {.format = FI_CQ_FORMAT_CONTEXT, .wait_obj = FI_WAIT_NONE, .size = 1024};
  if ((rc = fi_cq_open(domain, &cq_attr, &cq, NULL))) die("fi_cq_open", rc);
  if ((rc = fi_endpoint(domain, info, &ep, NULL))) die("fi_endpoint", rc);
  if ((rc = fi_ep_bind(ep, &eq->fid, 0))) die("fi_ep_bind eq", rc);
  if ((rc = fi_ep_bind(ep, &cq->fid, FI_TRANSMIT | FI_RECV))) die("fi_ep_bind cq", rc);
  if ((rc = fi_enable(ep))) die("fi_enable", rc);
  if ((rc = fi_connect(ep, info->dest_addr, NULL, 0))) die("fi_connect", rc);
  struct fi_eq_cm_entry entry;
  uint32_t event;
  ssize_t n = fi_eq_sread(eq, &event, &entry, sizeof entry, 5000, 0);
  if (n < 0 || event != FI_CONNECTED) die("connect", n < 0 ? (int)n : -FI_ECONNREFUSED);
  int mr_local = (info->domain_attr->mr_mode & FI_MR_LOCAL) != 0;

  char line[256];
  while (fgets(line, sizeof line, stdin)) {
    char op[16];
    size_t block, qd;
    long ms;
    if (sscanf(line, "run %15s %zu %zu %ld", op, &block, &qd, &ms) != 4 || qd == 0 || qd > MAX_QD || block == 0 || block > slab) {
      printf("{\"error\":\"bad command\"}\n");
      fflush(stdout);
      continue;
    }
    int write = strcmp(op, "write") == 0;
    char *buf = aligned_alloc(4096, block * qd);
    memset(buf, 0x5a, block * qd);
    struct fid_mr *mr = NULL;
    void *desc = NULL;
    if (mr_local) {
      if ((rc = fi_mr_reg(domain, buf, block * qd, FI_READ | FI_WRITE, 0, 1, 0, &mr, NULL))) die("fi_mr_reg", rc);
      desc = fi_mr_desc(mr);
    }
    struct fi_context2 ctx[MAX_QD];
    size_t cap = 1 << 16, calls = 0;
    double *lat = malloc(cap * sizeof(double));
    const uint64_t blocks = slab / block;
    double start = now_ns(), end = start + ms * 1e6, t = start;
    while (t < end) {
      double t0 = t;
      size_t done = 0;
      for (size_t i = 0; i < qd; i++) {
        uint64_t off = (next_rand() % blocks) * block;
        for (;;) {
          ssize_t r = write ? fi_write(ep, buf + i * block, block, desc, 0, raddr + off, rkey, &ctx[i])
                            : fi_read(ep, buf + i * block, block, desc, 0, raddr + off, rkey, &ctx[i]);
          if (r == 0) break;
          if (r != -FI_EAGAIN) die("post", (int)r);
          struct fi_cq_entry e[16];
          ssize_t got = fi_cq_read(cq, e, 16);
          if (got > 0) done += (size_t)got;
        }
      }
      unsigned spins = 0;
      while (done < qd) {
        struct fi_cq_entry e[64];
        ssize_t got = fi_cq_read(cq, e, 64);
        /* The same waiting policy as the tier: spin, then share the CPU with the donor's
         * progress thread (on a 2-core host a pure spin starves it and slows the baseline). */
        if (got == -FI_EAGAIN && ++spins >= 2048) sched_yield();
        if (got > 0) done += (size_t)got;
        else if (got == -FI_EAVAIL) {
          struct fi_cq_err_entry err = {0};
          fi_cq_readerr(cq, &err, 0);
          die("completion", -err.err);
        }
      }
      t = now_ns();
      if (calls == cap) lat = realloc(lat, (cap *= 2) * sizeof(double));
      lat[calls++] = t - t0;
    }
    double secs = (t - start) / 1e9;
    qsort(lat, calls, sizeof(double), cmp_double);
    printf("{\"ops\":%zu,\"secs\":%.6f,\"calls\":%zu,\"p50_us\":%.3f,\"p99_us\":%.3f}\n", calls * qd, secs, calls,
           lat[calls / 2] / 1e3, lat[(size_t)(calls * 0.99)] / 1e3);
    fflush(stdout);
    free(lat);
    if (mr) fi_close(&mr->fid);
    free(buf);
  }
  fi_close(&ep->fid);
  fi_close(&cq->fid);
  fi_close(&eq->fid);
  fi_close(&domain->fid);
  fi_close(&fabric->fid);
  fi_freeinfo(info);
  fi_freeinfo(hints);
  return 0;
}
