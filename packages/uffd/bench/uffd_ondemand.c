/*
 * The restore anchor of the `restore` bench suite: a userfaultfd page-fault handler that works
 * the way Firecracker's example "on_demand" handler does (written here from the protocol, not
 * copied). It is what a Firecracker user runs today instead of tierstack.
 *
 *   - binds a Unix stream socket and waits for a VM (one connection at a time, served to its end);
 *   - receives ONE message: a JSON array of guest region mappings
 *     {base_host_virt_addr, size, offset, page_size, page_size_kib} plus the VM's userfaultfd as
 *     SCM_RIGHTS ancillary data;
 *   - mmaps the memory file MAP_PRIVATE (read-only) and answers every missing fault with one
 *     UFFDIO_COPY of one page from that mapping (file offset = addr - base + offset), so the
 *     bytes come from the page cache;
 *   - a REMOVE event (balloon madvise(DONTNEED)) marks its range: later faults there get
 *     UFFDIO_ZEROPAGE; EAGAIN from a copy (a mapping change pending) reads the events, then retries;
 *   - the VM's end is its socket hanging up.
 *
 * Driven by the bench (and the demo) over stdio:
 *   usage: uffd_ondemand <socket-path> <memory-file> [cpu]      (cpu: pin to it; -1: no pinning)
 *   stdout: "ready" once listening; per VM "serving <pid> <regions>" after the handshake, then
 *           "done faults=N copies=N zeropages=N removes=N eexist=N eagain=N" when it hangs up,
 *           or "rejected <reason>" for a bad handshake (the handler keeps running).
 *   stdin: closing it stops the handler (so does the parent's death).
 * Build: gcc -O2 -o uffd_ondemand uffd_ondemand.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_REGIONS 32
#define EVENTS_PER_READ 64

struct mapping {
  uint64_t base, size, offset, page_size;
  uint8_t *removed; /* one bit per page: a REMOVE event covered it since it was last served */
};

struct vm {
  int uffd, conn;
  int nregions;
  struct mapping r[MAX_REGIONS];
  const uint8_t *file; /* the memory file, MAP_PRIVATE */
  size_t file_size;
  unsigned long faults, copies, zeropages, removes, eexist, eagain;
};

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vprintf(fmt, ap);
  va_end(ap);
  putchar('\n');
  fflush(stdout);
}

/* ---- the handshake: a JSON array of flat objects with unsigned integer fields ---- */

static const char *skip_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

/* Parses [ {"k": n, ...}, ... ]. Returns the number of mappings, or -1 with *why set. */
static int parse_mappings(const char *p, const char *end, struct mapping *out, const char **why) {
  int n = 0;
  p = skip_ws(p, end);
  if (p >= end || *p != '[') return *why = "not a JSON array", -1;
  p = skip_ws(p + 1, end);
  if (p < end && *p == ']') return *why = "no regions", -1;
  for (;;) {
    if (n == MAX_REGIONS) return *why = "too many regions", -1;
    if (p >= end || *p != '{') return *why = "expected an object", -1;
    struct mapping m = {0};
    int have_base = 0, have_size = 0, have_offset = 0, have_ps = 0;
    uint64_t ps_kib = 0;
    p = skip_ws(p + 1, end);
    while (p < end && *p != '}') {
      if (*p != '"') return *why = "expected a key", -1;
      const char *k = ++p;
      while (p < end && *p != '"') p++;
      if (p >= end) return *why = "unterminated key", -1;
      size_t klen = (size_t)(p - k);
      p = skip_ws(p + 1, end);
      if (p >= end || *p != ':') return *why = "expected ':'", -1;
      p = skip_ws(p + 1, end);
      if (p >= end || *p < '0' || *p > '9') return *why = "expected an unsigned integer", -1;
      uint64_t v = 0;
      while (p < end && *p >= '0' && *p <= '9') {
        uint64_t d = (uint64_t)(*p++ - '0');
        if (v > (UINT64_MAX - d) / 10) return *why = "number too large", -1;
        v = v * 10 + d;
      }
#define KEY(s) (klen == sizeof(s) - 1 && memcmp(k, s, klen) == 0)
      if (KEY("base_host_virt_addr")) m.base = v, have_base = 1;
      else if (KEY("size")) m.size = v, have_size = 1;
      else if (KEY("offset")) m.offset = v, have_offset = 1;
      else if (KEY("page_size")) m.page_size = v, have_ps = 1;
      else if (KEY("page_size_kib")) ps_kib = v; /* deprecated; holds bytes too */
#undef KEY
      p = skip_ws(p, end);
      if (p < end && *p == ',') p = skip_ws(p + 1, end);
    }
    if (p >= end) return *why = "unterminated object", -1;
    if (!have_ps && ps_kib) m.page_size = ps_kib, have_ps = 1;
    if (!have_base || !have_size || !have_offset || !have_ps) return *why = "a mapping lacks a field", -1;
    out[n++] = m;
    p = skip_ws(p + 1, end);
    if (p < end && *p == ',') {
      p = skip_ws(p + 1, end);
      continue;
    }
    if (p < end && *p == ']') return n;
    return *why = "expected ',' or ']'", -1;
  }
}

/* ---- serving one VM ---- */

static struct mapping *find(struct vm *vm, uint64_t addr) {
  for (int i = 0; i < vm->nregions; i++)
    if (addr >= vm->r[i].base && addr - vm->r[i].base < vm->r[i].size) return &vm->r[i];
  return NULL;
}

static void mark_removed(struct vm *vm, uint64_t start, uint64_t end) {
  vm->removes++;
  for (int i = 0; i < vm->nregions; i++) {
    struct mapping *m = &vm->r[i];
    uint64_t lo = start > m->base ? start : m->base, hi = end < m->base + m->size ? end : m->base + m->size;
    for (uint64_t a = lo & ~(m->page_size - 1); a < hi; a += m->page_size) {
      uint64_t pg = (a - m->base) / m->page_size;
      m->removed[pg / 8] |= (uint8_t)(1u << (pg % 8));
    }
  }
}

static void wake(struct vm *vm, uint64_t addr, uint64_t len) {
  struct uffdio_range r = {.start = addr, .len = len};
  ioctl(vm->uffd, UFFDIO_WAKE, &r);
}

/* Installs the faulting page. Returns 0, or -EAGAIN when events must be read first. */
static int serve_fault(struct vm *vm, uint64_t addr) {
  struct mapping *m = find(vm, addr);
  if (!m) return 0; /* not ours: nothing sensible to install */
  uint64_t page = addr & ~(m->page_size - 1);
  uint64_t pg = (page - m->base) / m->page_size;
  int rc;
  if (m->removed[pg / 8] & (1u << (pg % 8))) {
    struct uffdio_zeropage z = {.range = {.start = page, .len = m->page_size}, .mode = 0};
    rc = ioctl(vm->uffd, UFFDIO_ZEROPAGE, &z);
    if (rc == 0) {
      vm->zeropages++;
      m->removed[pg / 8] &= (uint8_t)~(1u << (pg % 8));
    }
  } else {
    struct uffdio_copy c = {.dst = page, .src = (uint64_t)(uintptr_t)(vm->file + m->offset + (page - m->base)), .len = m->page_size, .mode = 0};
    rc = ioctl(vm->uffd, UFFDIO_COPY, &c);
    if (rc == 0) vm->copies++;
  }
  if (rc == 0) return 0;
  if (errno == EAGAIN) return vm->eagain++, -EAGAIN;
  if (errno == EEXIST) vm->eexist++;
  /* Already there (EEXIST) or the VM is going away: make sure the faulting thread runs on. */
  wake(vm, page, m->page_size);
  return 0;
}

/* Reads and handles every pending event. Faults that got EAGAIN are kept in `deferred`. */
static void drain_events(struct vm *vm, uint64_t *deferred, size_t *ndeferred, size_t cap) {
  struct uffd_msg msgs[EVENTS_PER_READ];
  for (;;) {
    ssize_t n = read(vm->uffd, msgs, sizeof msgs);
    if (n <= 0) return; /* EAGAIN: empty (the VM created the uffd non-blocking) */
    for (size_t i = 0; i < (size_t)n / sizeof msgs[0]; i++) {
      struct uffd_msg *e = &msgs[i];
      if (e->event == UFFD_EVENT_PAGEFAULT) {
        vm->faults++;
        uint64_t addr = e->arg.pagefault.address;
        if (serve_fault(vm, addr) == -EAGAIN && *ndeferred < cap) deferred[(*ndeferred)++] = addr;
      } else if (e->event == UFFD_EVENT_REMOVE) {
        mark_removed(vm, e->arg.remove.start, e->arg.remove.end);
      }
    }
  }
}

static void serve_vm(struct vm *vm) {
  uint64_t deferred[1024];
  size_t ndeferred = 0;
  struct pollfd p[2] = {{vm->uffd, POLLIN, 0}, {vm->conn, POLLIN, 0}};
  for (;;) {
    if (poll(p, 2, ndeferred ? 0 : -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (p[0].revents & POLLIN) drain_events(vm, deferred, &ndeferred, sizeof deferred / sizeof deferred[0]);
    /* Retry faults that met a pending mapping change, after its events were read. */
    if (ndeferred) {
      uint64_t again[1024];
      size_t n = ndeferred;
      memcpy(again, deferred, n * sizeof again[0]);
      ndeferred = 0;
      for (size_t i = 0; i < n; i++)
        if (serve_fault(vm, again[i]) == -EAGAIN) deferred[ndeferred++] = again[i];
      if (ndeferred) drain_events(vm, deferred, &ndeferred, sizeof deferred / sizeof deferred[0]);
    }
    if (p[0].revents & (POLLERR | POLLHUP | POLLNVAL)) p[0].fd = -1; /* the VM's memory is gone */
    if (p[1].revents) {
      char b[256];
      ssize_t n = recv(vm->conn, b, sizeof b, MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return; /* the VM hung up */
    }
  }
}

/* Receives the handshake on `conn` and serves that VM until it hangs up. */
static void handle_connection(int conn, const char *mem_path) {
  char buf[65536];
  union {
    struct cmsghdr h;
    char b[CMSG_SPACE(sizeof(int) * 8)];
  } ctl;
  struct iovec iov = {.iov_base = buf, .iov_len = sizeof buf - 1};
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.b, .msg_controllen = sizeof ctl.b};
  ssize_t n = recvmsg(conn, &msg, MSG_CMSG_CLOEXEC);
  int uffd = -1;
  for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    int nfd = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
    for (int i = 0; i < nfd; i++) {
      int fd;
      memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (uffd < 0) uffd = fd;
      else close(fd);
    }
  }
  struct ucred cred = {0};
  socklen_t cl = sizeof cred;
  getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cl);

  static struct vm vm;
  memset(&vm, 0, sizeof vm);
  const char *why = NULL;
  const uint8_t *file = MAP_FAILED;
  size_t file_size = 0;
  if (n <= 0) why = "no message";
  else if (uffd < 0) why = "no userfaultfd attached";
  else {
    /* Like Firecracker's handler: map the memory file once the handshake is in, per VM. */
    int fd = open(mem_path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd >= 0 && fstat(fd, &st) == 0 && st.st_size > 0) {
      file_size = (size_t)st.st_size;
      file = mmap(NULL, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    }
    if (fd >= 0) close(fd);
    if (file == MAP_FAILED) why = "cannot map the memory file";
  }
  if (!why) {
    int nr = parse_mappings(buf, buf + n, vm.r, &why);
    if (nr > 0) {
      vm.nregions = nr;
      for (int i = 0; i < nr && !why; i++) {
        struct mapping *m = &vm.r[i];
        if (m->page_size < 4096 || (m->page_size & (m->page_size - 1))) why = "bad page size";
        else if (m->size == 0 || m->size % m->page_size || m->base % m->page_size || m->offset % m->page_size) why = "a mapping is not page-aligned";
        else if (m->offset > file_size || m->size > file_size - m->offset) why = "a mapping does not fit the memory file";
        else if (!(m->removed = calloc(m->size / m->page_size / 8 + 1, 1))) why = "out of memory";
      }
    }
  }
  if (why) {
    say("rejected %s", why);
  } else {
    vm.uffd = uffd;
    vm.conn = conn;
    vm.file = file;
    vm.file_size = file_size;
    say("serving %d %d", (int)cred.pid, vm.nregions);
    serve_vm(&vm);
    say("done faults=%lu copies=%lu zeropages=%lu removes=%lu eexist=%lu eagain=%lu", vm.faults, vm.copies, vm.zeropages, vm.removes, vm.eexist, vm.eagain);
  }
  for (int i = 0; i < vm.nregions; i++) free(vm.r[i].removed);
  if (file != MAP_FAILED) munmap((void *)file, file_size);
  if (uffd >= 0) close(uffd);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: uffd_ondemand <socket-path> <memory-file> [cpu]\n");
    return 2;
  }
  prctl(PR_SET_PDEATHSIG, SIGTERM);
  signal(SIGPIPE, SIG_IGN);
  int cpu = argc > 3 ? atoi(argv[3]) : -1;
  if (cpu >= 0) {
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    if (sched_setaffinity(0, sizeof s, &s)) {
      perror("sched_setaffinity");
      return 3;
    }
  }
  int lsk = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(argv[1]) >= sizeof sa.sun_path) {
    fprintf(stderr, "socket path too long\n");
    return 2;
  }
  strcpy(sa.sun_path, argv[1]);
  unlink(argv[1]);
  if (lsk < 0 || bind(lsk, (struct sockaddr *)&sa, sizeof sa) || listen(lsk, 16)) {
    perror("bind");
    return 3;
  }
  say("ready");
  for (;;) {
    struct pollfd p[2] = {{lsk, POLLIN, 0}, {0, POLLIN, 0}};
    if (poll(p, 2, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    if (p[1].revents) {
      char b[64];
      if (read(0, b, sizeof b) <= 0) break; /* stdin closed: stop */
    }
    if (!(p[0].revents & POLLIN)) continue;
    int conn = accept4(lsk, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0) continue;
    handle_connection(conn, argv[2]);
    close(conn);
  }
  unlink(argv[1]);
  return 0;
}
