/*
 * libtierstack_run.so: an LD_PRELOAD allocator front that serves a program's big allocations
 * from the tier stack (the `tierstack run` server) and passes everything else to the real
 * allocator.
 *
 * - Allocations of at least TIERSTACK_RUN_MIN_SIZE bytes (default 16 MiB) are carved out of one
 *   arena: a memfd of TIERSTACK_RUN_ARENA bytes (default 32 GiB, sparse) mapped MAP_SHARED at a
 *   fixed range of this process. Ownership is one unsigned comparison against that range.
 * - At the first big allocation the library connects to the server (TIERSTACK_RUN_SOCKET) and
 *   hands it the memfd and a userfaultfd: the server registers the range, serves its missing
 *   faults from the stack and keeps at most TIERSTACK_RUN_BUDGET bytes of it resident (it evicts
 *   by punching pages out of the memfd after writing dirty ones to the stack).
 * - free() tells the server to forget the pages (dropped, removed from every tier), so arena
 *   memory is always zero when handed out again: calloc needs no memset.
 * - Everything the library cannot do (no server, no userfaultfd, arena full) falls back to the
 *   real allocator; TIERSTACK_RUN_DEBUG=1 logs why on stderr. Nothing here aborts the program.
 *
 * Fork: see the atfork handlers at the end. Plain C, no C++ runtime, no allocation of its own
 * (metadata lives in private anonymous mappings).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "protocol.h"

#define EXPORT __attribute__((visibility("default")))
#define LIKELY(x) __builtin_expect(!!(x), 1)
#define UNLIKELY(x) __builtin_expect(!!(x), 0)

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/* ---- the real allocator ---- */

typedef void *(*malloc_fn)(size_t);
typedef void (*free_fn)(void *);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef int (*posix_memalign_fn)(void **, size_t, size_t);
typedef void *(*aligned_alloc_fn)(size_t, size_t);
typedef void *(*memalign_fn)(size_t, size_t);
typedef void *(*valloc_fn)(size_t);
typedef size_t (*usable_fn)(void *);
typedef void *(*reallocarray_fn)(void *, size_t, size_t);

static struct {
  malloc_fn malloc;
  free_fn free;
  calloc_fn calloc;
  realloc_fn realloc;
  posix_memalign_fn posix_memalign;
  aligned_alloc_fn aligned_alloc;
  memalign_fn memalign;
  valloc_fn valloc;
  usable_fn usable;
  reallocarray_fn reallocarray;
} real;

/* 0: not resolved, 1: a thread is resolving (dlsym), 2: resolved. */
static atomic_int resolve_state;
static atomic_long resolver_tid;

/* Bootstrap: dlsym may allocate (calloc) while the real functions are not known yet; such
 * requests are served from this static buffer, never freed (free() ignores it). */
#define BOOT_BYTES (256 * 1024)
static _Alignas(64) unsigned char boot_buf[BOOT_BYTES];
static atomic_size_t boot_used;

static int in_boot(const void *p) {
  return (const unsigned char *)p >= boot_buf && (const unsigned char *)p < boot_buf + BOOT_BYTES;
}

static void *boot_alloc(size_t n, size_t align) {
  if (align < 16) align = 16;
  if (n > BOOT_BYTES || (align & (align - 1)) != 0) return NULL;
  size_t cur = atomic_load(&boot_used);
  for (;;) {
    /* 16 bytes of header (the size) before an aligned start. */
    size_t start = (cur + 16 + align - 1) & ~(align - 1);
    size_t end = start + ((n + 15) & ~(size_t)15);
    if (end > BOOT_BYTES) return NULL;
    if (atomic_compare_exchange_weak(&boot_used, &cur, end)) {
      memcpy(boot_buf + start - sizeof(size_t), &n, sizeof n);
      return boot_buf + start; /* static storage: already zero */
    }
  }
}

static size_t boot_size(const void *p) {
  size_t n;
  memcpy(&n, (const unsigned char *)p - sizeof(size_t), sizeof n);
  return n;
}

static long my_tid(void) { return (long)syscall(SYS_gettid); }

/* Returns 1 when the real functions can be used, 0 when the caller must use the boot buffer
 * (it is the thread resolving them, re-entered from dlsym). */
static int resolve(void) {
  int st = atomic_load_explicit(&resolve_state, memory_order_acquire);
  if (LIKELY(st == 2)) return 1;
  int expected = 0;
  if (atomic_compare_exchange_strong(&resolve_state, &expected, 1)) {
    atomic_store(&resolver_tid, my_tid());
    real.malloc = (malloc_fn)dlsym(RTLD_NEXT, "malloc");
    real.free = (free_fn)dlsym(RTLD_NEXT, "free");
    real.calloc = (calloc_fn)dlsym(RTLD_NEXT, "calloc");
    real.realloc = (realloc_fn)dlsym(RTLD_NEXT, "realloc");
    real.posix_memalign = (posix_memalign_fn)dlsym(RTLD_NEXT, "posix_memalign");
    real.aligned_alloc = (aligned_alloc_fn)dlsym(RTLD_NEXT, "aligned_alloc");
    real.memalign = (memalign_fn)dlsym(RTLD_NEXT, "memalign");
    real.valloc = (valloc_fn)dlsym(RTLD_NEXT, "valloc");
    real.usable = (usable_fn)dlsym(RTLD_NEXT, "malloc_usable_size");
    real.reallocarray = (reallocarray_fn)dlsym(RTLD_NEXT, "reallocarray");
    atomic_store_explicit(&resolve_state, 2, memory_order_release);
    return 1;
  }
  if (atomic_load(&resolver_tid) == my_tid()) return 0; /* re-entered from dlsym */
  while (atomic_load_explicit(&resolve_state, memory_order_acquire) != 2) sched_yield();
  return 1;
}

/* ---- configuration and logging ---- */

enum { ST_OFF = 0, ST_CONFIGURED = 1, ST_CONNECTED = 2, ST_DISABLED = 3 };

static struct {
  size_t min_size;   /* SIZE_MAX until the constructor ran: everything passes through */
  uint64_t budget;   /* bytes; 0: the server's default */
  uint64_t arena_size;
  int debug;
  const char *socket_path;
} cfg = {SIZE_MAX, 0, 0, 0, NULL};

static atomic_int state;

static void put_str(char *buf, size_t *at, size_t cap, const char *s) {
  while (*s && *at + 1 < cap) buf[(*at)++] = *s++;
}

static void put_uint(char *buf, size_t *at, size_t cap, unsigned long long v, unsigned base) {
  char tmp[32];
  int n = 0;
  do {
    unsigned d = (unsigned)(v % base);
    tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
    v /= base;
  } while (v && n < 32);
  while (n > 0 && *at + 1 < cap) buf[(*at)++] = tmp[--n];
}

/* A tiny formatter (%s %d %u %x %p %zu %llu %lld): no stdio, no allocation. */
static void debug_log(const char *fmt, ...) {
  if (!cfg.debug) return;
  char buf[512];
  size_t at = 0;
  put_str(buf, &at, sizeof buf, "tierstack-run[");
  put_uint(buf, &at, sizeof buf, (unsigned long long)getpid(), 10);
  put_str(buf, &at, sizeof buf, "]: ");
  va_list ap;
  va_start(ap, fmt);
  for (const char *f = fmt; *f && at + 1 < sizeof buf; f++) {
    if (*f != '%') {
      buf[at++] = *f;
      continue;
    }
    f++;
    int lng = 0;
    while (*f == 'l' || *f == 'z') {
      lng = 1;
      f++;
    }
    switch (*f) {
      case 's': put_str(buf, &at, sizeof buf, va_arg(ap, const char *)); break;
      case 'd': {
        long long v = lng ? va_arg(ap, long long) : va_arg(ap, int);
        if (v < 0) {
          put_str(buf, &at, sizeof buf, "-");
          v = -v;
        }
        put_uint(buf, &at, sizeof buf, (unsigned long long)v, 10);
        break;
      }
      case 'u': put_uint(buf, &at, sizeof buf, lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned), 10); break;
      case 'x': put_uint(buf, &at, sizeof buf, lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned), 16); break;
      case 'p':
        put_str(buf, &at, sizeof buf, "0x");
        put_uint(buf, &at, sizeof buf, (unsigned long long)(uintptr_t)va_arg(ap, void *), 16);
        break;
      case '%': buf[at++] = '%'; break;
      default: break;
    }
  }
  va_end(ap);
  if (at + 1 < sizeof buf) buf[at++] = '\n';
  ssize_t w = write(2, buf, at);
  (void)w;
}

/* "123", "64k", "16M", "2g", "1T" (powers of 1024). 0 on a bad value. */
static uint64_t parse_size(const char *s) {
  if (!s || !*s) return 0;
  uint64_t v = 0;
  const char *p = s;
  while (*p >= '0' && *p <= '9') {
    v = v * 10 + (uint64_t)(*p - '0');
    p++;
  }
  if (p == s) return 0;
  switch (*p) {
    case 'k': case 'K': v <<= 10; p++; break;
    case 'm': case 'M': v <<= 20; p++; break;
    case 'g': case 'G': v <<= 30; p++; break;
    case 't': case 'T': v <<= 40; p++; break;
    default: break;
  }
  if (*p == 'i' || *p == 'I') p++;
  if (*p == 'b' || *p == 'B') p++;
  return *p == '\0' ? v : 0;
}

/* ---- the arena ---- */

#define PS 4096ull
#define DEFAULT_MIN_SIZE (16ull << 20)
#define DEFAULT_ARENA (32ull << 30)
#define TABLE_BYTES (4ull << 20)

struct ext {
  uint64_t start; /* arena page */
  uint64_t pages;
  uint64_t size; /* bytes asked for (live extents) */
};

static struct {
  pthread_mutex_t mu;      /* the tables below, connecting, state changes */
  pthread_mutex_t sock_mu; /* one request at a time on the socket */
  atomic_uintptr_t base;   /* arena start (0: none yet) */
  uint64_t size;           /* arena bytes */
  struct ext *live;        /* sorted by start */
  size_t nlive, cap_live;
  struct ext *free;        /* sorted by start, coalesced */
  size_t nfree, cap_free;
  int sock;
  int uffd;
  uint64_t server_page;
  dev_t sock_dev; /* identity of our socket: a program may close it and reuse the number */
  ino_t sock_ino;
} A = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, 0, 0, NULL, 0, 0, NULL, 0, 0, -1, -1, 0, 0, 0};

static inline int in_arena(const void *p) {
  uintptr_t b = atomic_load_explicit(&A.base, memory_order_relaxed);
  return b != 0 && (uintptr_t)p - b < A.size;
}

static size_t find_live(uint64_t start) {
  size_t lo = 0, hi = A.nlive;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (A.live[mid].start < start)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static int live_insert(uint64_t start, uint64_t pages, uint64_t size) {
  if (A.nlive == A.cap_live) return -1;
  size_t at = find_live(start);
  memmove(&A.live[at + 1], &A.live[at], (A.nlive - at) * sizeof(struct ext));
  A.live[at].start = start;
  A.live[at].pages = pages;
  A.live[at].size = size;
  A.nlive++;
  return 0;
}

/* Index of the live extent starting at `start`, or -1. */
static long live_lookup(uint64_t start) {
  size_t at = find_live(start);
  return at < A.nlive && A.live[at].start == start ? (long)at : -1;
}

static void live_remove(size_t at) {
  memmove(&A.live[at], &A.live[at + 1], (A.nlive - at - 1) * sizeof(struct ext));
  A.nlive--;
}

/* Gives pages back to the free list (coalescing). Returns -1 when the table is full (the pages
 * are then lost to the arena, which is harmless). */
static int free_insert(uint64_t start, uint64_t pages) {
  size_t lo = 0, hi = A.nfree;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (A.free[mid].start < start)
      lo = mid + 1;
    else
      hi = mid;
  }
  size_t at = lo;
  int join_prev = at > 0 && A.free[at - 1].start + A.free[at - 1].pages == start;
  int join_next = at < A.nfree && start + pages == A.free[at].start;
  if (join_prev && join_next) {
    A.free[at - 1].pages += pages + A.free[at].pages;
    memmove(&A.free[at], &A.free[at + 1], (A.nfree - at - 1) * sizeof(struct ext));
    A.nfree--;
  } else if (join_prev) {
    A.free[at - 1].pages += pages;
  } else if (join_next) {
    A.free[at].start = start;
    A.free[at].pages += pages;
  } else {
    if (A.nfree == A.cap_free) return -1;
    memmove(&A.free[at + 1], &A.free[at], (A.nfree - at) * sizeof(struct ext));
    A.free[at].start = start;
    A.free[at].pages = pages;
    A.free[at].size = 0;
    A.nfree++;
  }
  return 0;
}

/* First fit with alignment (in pages). Returns the start page or UINT64_MAX. */
static uint64_t free_take(uint64_t pages, uint64_t align) {
  for (size_t i = 0; i < A.nfree; i++) {
    uint64_t s = A.free[i].start, e = s + A.free[i].pages;
    uint64_t a = (s + align - 1) / align * align;
    if (a + pages > e) continue;
    /* Split: [s, a) stays free, [a, a + pages) is taken, [a + pages, e) stays free. */
    if (a == s) {
      A.free[i].start += pages;
      A.free[i].pages -= pages;
      if (A.free[i].pages == 0) {
        memmove(&A.free[i], &A.free[i + 1], (A.nfree - i - 1) * sizeof(struct ext));
        A.nfree--;
      }
    } else {
      A.free[i].pages = a - s;
      if (a + pages < e && free_insert(a + pages, e - a - pages) != 0) {
        A.free[i].pages = e - s; /* could not split: undo */
        continue;
      }
    }
    return a;
  }
  return UINT64_MAX;
}

/* Takes `pages` right after `start + have` if they are free (realloc in place). */
static int free_take_at(uint64_t at, uint64_t pages) {
  for (size_t i = 0; i < A.nfree; i++) {
    if (A.free[i].start != at) continue;
    if (A.free[i].pages < pages) return -1;
    A.free[i].start += pages;
    A.free[i].pages -= pages;
    if (A.free[i].pages == 0) {
      memmove(&A.free[i], &A.free[i + 1], (A.nfree - i - 1) * sizeof(struct ext));
      A.nfree--;
    }
    return 0;
  }
  return -1;
}

/* ---- talking to the server ---- */

static int send_all(int fd, const void *buf, size_t n, const int *fds, int nfds) {
  struct iovec iov = {(void *)buf, n};
  struct msghdr mh;
  memset(&mh, 0, sizeof mh);
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  _Alignas(struct cmsghdr) char control[CMSG_SPACE(2 * sizeof(int))];
  if (nfds > 0) {
    memset(control, 0, sizeof control);
    mh.msg_control = control;
    mh.msg_controllen = CMSG_SPACE((size_t)nfds * sizeof(int));
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN((size_t)nfds * sizeof(int));
    memcpy(CMSG_DATA(c), fds, (size_t)nfds * sizeof(int));
  }
  ssize_t w;
  do w = sendmsg(fd, &mh, MSG_NOSIGNAL);
  while (w < 0 && errno == EINTR);
  if (w < 0) return -errno;
  size_t done = (size_t)w;
  while (done < n) { /* the rest, without descriptors */
    do w = send(fd, (const char *)buf + done, n - done, MSG_NOSIGNAL);
    while (w < 0 && errno == EINTR);
    if (w <= 0) return w < 0 ? -errno : -EPIPE;
    done += (size_t)w;
  }
  return 0;
}

static int recv_all(int fd, void *buf, size_t n) {
  size_t done = 0;
  while (done < n) {
    ssize_t r = recv(fd, (char *)buf + done, n - done, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return r < 0 ? -errno : -EPIPE;
    done += (size_t)r;
  }
  return 0;
}

static void msg_init(struct tsr_msg *m, int op) {
  memset(m, 0, sizeof *m);
  m->magic = TSR_MAGIC;
  m->version = TSR_VERSION;
  m->op = (uint16_t)op;
  m->pid = (uint32_t)getpid();
}

/* One request/answer on the socket (callers hold sock_mu). */
static int request(struct tsr_msg *req, struct tsr_msg *ans, int want_op) {
  struct stat st;
  if (A.sock < 0) return -EPIPE;
  if (fstat(A.sock, &st) != 0 || !S_ISSOCK(st.st_mode) || st.st_dev != A.sock_dev || st.st_ino != A.sock_ino) {
    /* The program closed our connection (a daemon closing every descriptor), maybe reusing the
     * number: never write to it again. The server keeps serving the arena until we exit. */
    debug_log("the connection to the server was closed by the program: frees are no longer reported");
    A.sock = -1;
    return -EPIPE;
  }
  int rc = send_all(A.sock, req, sizeof *req, NULL, 0);
  if (rc == 0) rc = recv_all(A.sock, ans, sizeof *ans);
  if (rc != 0) return rc;
  if (ans->magic != TSR_MAGIC || ans->op != want_op) return -EPROTO;
  return 0;
}

static int move_high(int fd) {
  /* Out of the way of programs that reuse low descriptor numbers. */
  int hi = fcntl(fd, F_DUPFD_CLOEXEC, 512);
  if (hi < 0) return fd;
  close(fd);
  return hi;
}

static int open_uffd(void) {
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev >= 0) {
    int fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    close(dev);
    if (fd >= 0) return fd;
  }
#ifdef SYS_userfaultfd
  /* Not UFFD_USER_MODE_ONLY: a read(2) into a big buffer must fault to the server too. */
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (fd >= 0) return fd;
#endif
  return -1;
}

/* Maps a new memfd over [base, base + size) (base == 0: anywhere), opens a uffd, and says HELLO.
 * On success A.sock, A.uffd are set and the mapping is in place. Returns 0 or -errno. */
static int hello(uintptr_t at, uint64_t size, uint64_t token, uintptr_t *base_out) {
  int memfd = -1, uffd = -1, sock = -1, rc;
  void *m = MAP_FAILED;
  const char *why = "";
  memfd = (int)syscall(SYS_memfd_create, "tierstack-run", MFD_CLOEXEC);
  if (memfd < 0) {
    rc = -errno;
    why = "memfd_create";
    goto fail;
  }
  if (ftruncate(memfd, (off_t)size) != 0) {
    rc = -errno;
    why = "ftruncate of the arena memfd";
    goto fail;
  }
  m = mmap((void *)at, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE | (at ? MAP_FIXED : 0), memfd, 0);
  if (m == MAP_FAILED) {
    rc = -errno;
    why = "mmap of the arena";
    goto fail;
  }
  madvise(m, size, MADV_NOHUGEPAGE);
  uffd = open_uffd();
  if (uffd < 0) {
    rc = -errno;
    why = "no userfaultfd (needs access to /dev/userfaultfd or vm.unprivileged_userfaultfd=1)";
    goto fail;
  }
  sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (sock < 0) {
    rc = -errno;
    why = "socket";
    goto fail;
  }
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  size_t len = strlen(cfg.socket_path);
  if (len >= sizeof sa.sun_path) {
    rc = -ENAMETOOLONG;
    why = "socket path too long";
    goto fail;
  }
  memcpy(sa.sun_path, cfg.socket_path, len);
  int c;
  do c = connect(sock, (struct sockaddr *)&sa, sizeof sa);
  while (c != 0 && errno == EINTR);
  if (c != 0) {
    rc = -errno;
    why = "connecting to the server";
    goto fail;
  }
  struct tsr_msg req, ans;
  msg_init(&req, TSR_HELLO);
  req.a = (uint64_t)(uintptr_t)m;
  req.b = size;
  req.c = cfg.budget;
  req.d = token;
  req.e = cfg.min_size;
  int fds[2] = {uffd, memfd};
  rc = send_all(sock, &req, sizeof req, fds, 2);
  if (rc == 0) rc = recv_all(sock, &ans, sizeof ans);
  if (rc != 0) {
    why = "HELLO";
    goto fail;
  }
  if (ans.magic != TSR_MAGIC || ans.op != TSR_READY) {
    rc = -EPROTO;
    why = "the server's answer";
    goto fail;
  }
  if (ans.status != 0) {
    rc = -EPROTO;
    debug_log("the server refused the arena (status %d)", ans.status);
    why = "the server refused the arena";
    goto fail;
  }
  if (ans.a != PS) {
    rc = -EINVAL;
    why = "the server's page size differs";
    goto fail;
  }
  close(memfd); /* the mapping keeps it; the server has its own */
  A.sock = move_high(sock);
  struct stat st;
  if (fstat(A.sock, &st) == 0) {
    A.sock_dev = st.st_dev;
    A.sock_ino = st.st_ino;
  }
  /* Keep our uffd: if the server dies, a touch of a page that is not resident then waits instead
   * of silently reading zeros (which is what happens once the last uffd reference is gone). */
  A.uffd = move_high(uffd);
  A.server_page = ans.a;
  *base_out = (uintptr_t)m;
  return 0;
fail:
  debug_log("cannot use the tier stack (%s, errno %d): big allocations use the real allocator", why, -rc);
  if (sock >= 0) close(sock);
  if (uffd >= 0) close(uffd);
  if (m != MAP_FAILED && !at) munmap(m, size);
  if (memfd >= 0) close(memfd);
  return rc ? rc : -EIO;
}

static int ensure_tables(void) {
  if (A.live) return 0;
  void *l = mmap(NULL, TABLE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  void *f = mmap(NULL, TABLE_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (l == MAP_FAILED || f == MAP_FAILED) {
    if (l != MAP_FAILED) munmap(l, TABLE_BYTES);
    if (f != MAP_FAILED) munmap(f, TABLE_BYTES);
    return -1;
  }
  A.live = l;
  A.free = f;
  A.cap_live = A.cap_free = TABLE_BYTES / sizeof(struct ext);
  return 0;
}

/* Connects (first big allocation). Caller holds A.mu. */
static void connect_server(void) {
  if (ensure_tables() != 0) {
    debug_log("cannot map the allocation tables: big allocations use the real allocator");
    atomic_store(&state, ST_DISABLED);
    return;
  }
  uintptr_t base = 0;
  if (hello(0, cfg.arena_size, 0, &base) != 0) {
    atomic_store(&state, ST_DISABLED);
    return;
  }
  A.size = cfg.arena_size;
  A.nlive = 0;
  A.nfree = 0;
  free_insert(0, A.size / PS);
  atomic_store(&A.base, base);
  atomic_store(&state, ST_CONNECTED);
  debug_log("serving allocations >= %zu bytes from the tier stack (arena %p, %llu bytes, budget %llu)", cfg.min_size, (void *)base,
            (unsigned long long)A.size, (unsigned long long)cfg.budget);
}

/* An arena block of at least n bytes, aligned to `align` bytes (>= a page), or NULL. */
static void *arena_alloc(size_t n, size_t align) {
  if (n == 0 || n > (1ull << 52)) return NULL;
  int st = atomic_load(&state);
  if (st != ST_CONNECTED && st != ST_CONFIGURED) return NULL;
  uint64_t pages = (n + PS - 1) / PS;
  uint64_t align_pages = align > PS ? align / PS : 1;
  void *out = NULL;
  pthread_mutex_lock(&A.mu);
  if (atomic_load(&state) == ST_CONFIGURED) connect_server();
  if (atomic_load(&state) == ST_CONNECTED) {
    uint64_t start = free_take(pages, align_pages);
    if (start == UINT64_MAX) {
      debug_log("arena full (%zu bytes asked): using the real allocator", n);
    } else if (live_insert(start, pages, n) != 0) {
      free_insert(start, pages);
      debug_log("allocation table full: using the real allocator");
    } else {
      out = (void *)(atomic_load(&A.base) + start * PS);
    }
  }
  pthread_mutex_unlock(&A.mu);
  return out;
}

/* Tells the server to forget pages [first, first + count); returns 0 when it did. */
static int server_forget(uint64_t first, uint64_t count) {
  if (count == 0) return 0;
  struct tsr_msg req, ans;
  msg_init(&req, TSR_FREE);
  req.a = first;
  req.b = count;
  pthread_mutex_lock(&A.sock_mu);
  int rc = request(&req, &ans, TSR_ACK);
  pthread_mutex_unlock(&A.sock_mu);
  if (rc != 0 || ans.status != 0) {
    debug_log("the server could not take back %llu pages (errno %d, status %d): they stay out of use", (unsigned long long)count, -rc,
              rc ? 0 : ans.status);
    return -1;
  }
  return 0;
}

/* Frees an arena pointer. */
static void arena_free(void *p) {
  uintptr_t b = atomic_load(&A.base);
  uint64_t off = (uintptr_t)p - b;
  if (off % PS != 0) {
    debug_log("free(%p): not the start of a big allocation; ignored", p);
    return;
  }
  pthread_mutex_lock(&A.mu);
  long at = live_lookup(off / PS);
  if (at < 0) {
    pthread_mutex_unlock(&A.mu);
    debug_log("free(%p): not a live big allocation; ignored", p);
    return;
  }
  uint64_t start = A.live[at].start, pages = A.live[at].pages;
  live_remove((size_t)at);
  int connected = atomic_load(&state) == ST_CONNECTED;
  pthread_mutex_unlock(&A.mu);
  if (!connected) return; /* the arena is gone (a child that lost the server): nothing to reuse */
  /* The pages go back to the free list only once the server forgot them (they read as zeros). */
  if (server_forget(start, pages) != 0) return;
  pthread_mutex_lock(&A.mu);
  free_insert(start, pages);
  pthread_mutex_unlock(&A.mu);
}

/* The live extent of an arena pointer (copied out), or 0. */
static int arena_info(const void *p, struct ext *out) {
  uintptr_t b = atomic_load(&A.base);
  uint64_t off = (uintptr_t)p - b;
  if (off % PS != 0) return 0;
  pthread_mutex_lock(&A.mu);
  long at = live_lookup(off / PS);
  if (at >= 0) *out = A.live[at];
  pthread_mutex_unlock(&A.mu);
  return at >= 0;
}

static inline int wants_arena(size_t n) { return n >= cfg.min_size && atomic_load_explicit(&state, memory_order_relaxed) != ST_OFF; }

/* ---- the interposed functions ----
 * Each has a fast path for what passes through — a size comparison (allocations) or one range
 * comparison (free) and a tail jump to the real function — and a slow path, kept out of line, for
 * big sizes, arena pointers and the bootstrap. */

static inline int resolved(void) { return atomic_load_explicit(&resolve_state, memory_order_acquire) == 2; }
/* One unsigned comparison each (the arena range is 0..0 until there is an arena). */
static inline int in_arena_fast(const void *p) {
  return (uintptr_t)p - atomic_load_explicit(&A.base, memory_order_relaxed) < A.size;
}
static inline int in_boot_fast(const void *p) { return (uintptr_t)p - (uintptr_t)boot_buf < BOOT_BYTES; }

__attribute__((noinline)) static void *malloc_slow(size_t n) {
  if (!resolve()) return boot_alloc(n, 16);
  if (wants_arena(n)) {
    void *p = arena_alloc(n, PS);
    if (p) return p;
  }
  return real.malloc(n);
}

EXPORT void *malloc(size_t n) {
  if (LIKELY(n < cfg.min_size) && LIKELY(resolved())) return real.malloc(n);
  return malloc_slow(n);
}

__attribute__((noinline)) static void free_slow(void *p) {
  if (p == NULL) return;
  if (in_arena(p)) {
    arena_free(p);
    return;
  }
  if (in_boot(p)) return;
  if (!resolve()) return; /* cannot happen for a real pointer; be safe */
  real.free(p);
}

EXPORT void free(void *p) {
  if (LIKELY(!in_arena_fast(p)) && LIKELY(!in_boot_fast(p)) && LIKELY(resolved())) {
    real.free(p);
    return;
  }
  free_slow(p);
}

__attribute__((noinline)) static void *calloc_slow(size_t n, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(n, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  if (!resolve()) return boot_alloc(total, 16);
  if (wants_arena(total)) {
    void *p = arena_alloc(total, PS); /* arena memory handed out is always zero */
    if (p) return p;
  }
  return real.calloc(n, size);
}

EXPORT void *calloc(size_t n, size_t size) {
  size_t total;
  if (LIKELY(!__builtin_mul_overflow(n, size, &total)) && LIKELY(total < cfg.min_size) && LIKELY(resolved()))
    return real.calloc(n, size);
  return calloc_slow(n, size);
}

static size_t real_usable(void *p) {
  if (real.usable) return real.usable(p);
  return 0;
}

__attribute__((noinline)) static void *realloc_slow(void *p, size_t n);

EXPORT void *realloc(void *p, size_t n) {
  if (LIKELY(p != NULL) && LIKELY(n < cfg.min_size) && LIKELY(!in_arena_fast(p)) && LIKELY(!in_boot_fast(p)) && LIKELY(resolved()))
    return real.realloc(p, n);
  return realloc_slow(p, n);
}

__attribute__((noinline)) static void *realloc_slow(void *p, size_t n) {
  if (p == NULL) return malloc(n);
  if (UNLIKELY(!resolve()) || UNLIKELY(in_boot(p))) {
    if (!in_boot(p)) return NULL; /* cannot happen */
    size_t old = boot_size(p);
    void *q = malloc(n);
    if (q) memcpy(q, p, old < n ? old : n);
    return q;
  }
  if (UNLIKELY(in_arena(p))) {
    if (n == 0) { /* like glibc: frees and returns NULL */
      arena_free(p);
      return NULL;
    }
    struct ext e;
    if (!arena_info(p, &e)) {
      debug_log("realloc(%p): not a live big allocation", p);
      errno = EINVAL;
      return NULL;
    }
    uint64_t pages = (n + PS - 1) / PS;
    if (n >= cfg.min_size) {
      if (pages <= e.pages) { /* shrink in place: the tail goes back */
        pthread_mutex_lock(&A.mu);
        long at = live_lookup(e.start);
        if (at >= 0) {
          A.live[at].pages = pages;
          A.live[at].size = n;
        }
        pthread_mutex_unlock(&A.mu);
        if (at >= 0 && pages < e.pages && server_forget(e.start + pages, e.pages - pages) == 0) {
          pthread_mutex_lock(&A.mu);
          free_insert(e.start + pages, e.pages - pages);
          pthread_mutex_unlock(&A.mu);
        }
        return p;
      }
      /* Grow in place when the pages after it are free. */
      pthread_mutex_lock(&A.mu);
      int grown = 0;
      long at = live_lookup(e.start);
      if (at >= 0 && free_take_at(e.start + e.pages, pages - e.pages) == 0) {
        A.live[at].pages = pages;
        A.live[at].size = n;
        grown = 1;
      }
      pthread_mutex_unlock(&A.mu);
      if (grown) return p;
    }
    /* Move: to a new arena block, or to the real allocator below the threshold (or arena full). */
    void *q = n >= cfg.min_size ? arena_alloc(n, PS) : NULL;
    if (q == NULL) q = real.malloc(n);
    if (q == NULL) return NULL;
    size_t keep = e.size < n ? e.size : n;
    memcpy(q, p, keep);
    arena_free(p);
    return q;
  }
  if (UNLIKELY(wants_arena(n))) { /* from the real allocator into the arena */
    size_t old = real_usable(p);
    void *q = arena_alloc(n, PS);
    if (q) {
      memcpy(q, p, old < n ? old : n);
      real.free(p);
      return q;
    }
  }
  return real.realloc(p, n);
}

EXPORT void *reallocarray(void *p, size_t n, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(n, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return realloc(p, total);
}

static int valid_align(size_t a) { return a != 0 && (a & (a - 1)) == 0; }

EXPORT int posix_memalign(void **out, size_t align, size_t n) {
  if (!valid_align(align) || align % sizeof(void *) != 0) return EINVAL;
  if (UNLIKELY(!resolve())) {
    void *p = boot_alloc(n, align);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
  }
  if (UNLIKELY(wants_arena(n))) {
    void *p = arena_alloc(n, align > PS ? align : PS);
    if (p) {
      *out = p;
      return 0;
    }
  }
  return real.posix_memalign(out, align, n);
}

EXPORT void *aligned_alloc(size_t align, size_t n) {
  if (!valid_align(align)) {
    errno = EINVAL;
    return NULL;
  }
  if (UNLIKELY(!resolve())) return boot_alloc(n, align);
  if (UNLIKELY(wants_arena(n))) {
    void *p = arena_alloc(n, align > PS ? align : PS);
    if (p) return p;
  }
  if (real.aligned_alloc) return real.aligned_alloc(align, n);
  return real.memalign(align, n);
}

EXPORT void *memalign(size_t align, size_t n) {
  if (UNLIKELY(!resolve())) return boot_alloc(n, align);
  if (UNLIKELY(wants_arena(n)) && valid_align(align)) {
    void *p = arena_alloc(n, align > PS ? align : PS);
    if (p) return p;
  }
  return real.memalign(align, n);
}

EXPORT void *valloc(size_t n) {
  if (UNLIKELY(!resolve())) return boot_alloc(n, PS);
  if (UNLIKELY(wants_arena(n))) {
    void *p = arena_alloc(n, PS);
    if (p) return p;
  }
  return real.valloc(n);
}

EXPORT size_t malloc_usable_size(void *p) {
  if (p == NULL) return 0;
  if (UNLIKELY(in_boot(p))) return boot_size(p);
  if (UNLIKELY(in_arena(p))) {
    struct ext e;
    return arena_info(p, &e) ? e.pages * PS : 0;
  }
  if (UNLIKELY(!resolve())) return 0;
  return real_usable(p);
}

/* ---- fork ----
 * The child gets its own copy of the big allocations, as with any memory (fork semantics):
 * - prepare (parent, before fork): the server writes the arena's dirty pages to the stack and
 *   records a copy-on-write snapshot of the arena (the stack's pages of it), naming it by a token.
 * - child: the inherited mapping is the parent's memfd (shared, not a copy): it is replaced at the
 *   same addresses by a new memfd, registered with a new uffd, and the child says HELLO with the
 *   token. Its pages then fault in from the snapshot; what the parent writes afterwards never
 *   reaches the child (the server copies a snapshot page aside before the parent's newer copy
 *   replaces it) and the other way round.
 * - If the child cannot reach the server, its pre-fork big allocations are made inaccessible
 *   (PROT_NONE: touching one faults) rather than silently reading zeros, and later big
 *   allocations use the real allocator.
 * vfork()/posix_spawn() run no handlers (the child execs or exits right away), and exec drops
 * the arena: the server notices the closed connection and releases it. */

static uint64_t fork_token;

static void at_prepare(void) {
  pthread_mutex_lock(&A.mu);
  pthread_mutex_lock(&A.sock_mu);
  fork_token = 0;
  if (atomic_load(&state) == ST_CONNECTED) {
    struct tsr_msg req, ans;
    msg_init(&req, TSR_FORK);
    if (request(&req, &ans, TSR_ACK) == 0 && ans.status == 0) fork_token = ans.a;
    else debug_log("fork: the server could not snapshot the arena; the child loses access to big allocations");
  }
}

static void at_parent(void) {
  pthread_mutex_unlock(&A.sock_mu);
  pthread_mutex_unlock(&A.mu);
}

static void at_child(void) {
  if (atomic_load(&state) == ST_CONNECTED) {
    uintptr_t base = atomic_load(&A.base);
    struct stat st;
    /* The parent's connection and uffd: never speak on them (closed unless the program already did). */
    if (A.sock >= 0 && fstat(A.sock, &st) == 0 && st.st_dev == A.sock_dev && st.st_ino == A.sock_ino) close(A.sock);
    if (A.uffd >= 0) {
      char link[64], path[64];
      size_t at = 0;
      put_str(path, &at, sizeof path, "/proc/self/fd/");
      put_uint(path, &at, sizeof path, (unsigned long long)A.uffd, 10);
      path[at] = '\0';
      ssize_t n = readlink(path, link, sizeof link - 1);
      if (n > 0) {
        link[n] = '\0';
        if (strcmp(link, "anon_inode:[userfaultfd]") == 0) close(A.uffd);
      }
    }
    A.sock = A.uffd = -1;
    uintptr_t got = 0;
    if (fork_token == 0 || hello(base, A.size, fork_token, &got) != 0) {
      mmap((void *)base, A.size, PROT_NONE, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      atomic_store(&state, ST_DISABLED);
      debug_log("fork child: no access to the parent's big allocations");
    }
  }
  fork_token = 0;
  pthread_mutex_unlock(&A.sock_mu);
  pthread_mutex_unlock(&A.mu);
}

__attribute__((constructor)) static void tierstack_run_init(void) {
  resolve();
  const char *dbg = getenv("TIERSTACK_RUN_DEBUG");
  cfg.debug = dbg && *dbg && *dbg != '0';
  const char *sock = getenv("TIERSTACK_RUN_SOCKET");
  uint64_t min = parse_size(getenv("TIERSTACK_RUN_MIN_SIZE"));
  uint64_t arena = parse_size(getenv("TIERSTACK_RUN_ARENA"));
  cfg.budget = parse_size(getenv("TIERSTACK_RUN_BUDGET"));
  cfg.arena_size = arena ? (arena + PS - 1) / PS * PS : DEFAULT_ARENA;
  if (sysconf(_SC_PAGESIZE) != (long)PS) {
    debug_log("page size is not 4096: passing everything through");
    return;
  }
  if (!sock || !*sock) {
    debug_log("TIERSTACK_RUN_SOCKET is not set: passing everything through");
    return;
  }
  cfg.socket_path = sock;
  pthread_atfork(at_prepare, at_parent, at_child);
  atomic_store(&state, ST_CONFIGURED);
  cfg.min_size = min ? (size_t)min : (size_t)DEFAULT_MIN_SIZE; /* last: from here on big allocations go to the arena */
}
