/*
 * A stand-in for Firecracker's side of the UFFD handler protocol, for tests and the demo.
 * It does what Firecracker does on snapshot load with a Uffd memory backend: creates a
 * userfaultfd (non-blocking, with REMOVE events), maps guest memory anonymously, registers each
 * region for missing faults, connects to the handler's Unix socket and sends ONE message: the JSON
 * array of region mappings plus the uffd as SCM_RIGHTS. Then it plays the guest: touches pages
 * (optionally after SIGUSR1: "the VM starts"), madvise(DONTNEED)s a range like a balloon and
 * touches it again (must read zeros), and checks every touched page against the memory file.
 *
 * usage: fc_client <socket> <memfile> [options]
 *   --region <size>:<offset>   a guest region (repeatable; default: the whole file)
 *   --touch <first>:<count>    memory-file pages to touch (repeatable; default: all)
 *   --touch-file <path>        text file of memory-file page numbers, touched in that order
 *   --dontneed <first>:<count> after touching, drop these memory-file pages and touch them again
 *   --dontneed-wait            after the drop, print "dropped" and wait for SIGUSR1 before touching again
 *   --wait-signal              wait for SIGUSR1 after the handshake before touching
 *   --expect-sigbus <page>     touch this page and expect SIGBUS (a poisoned page)
 *   --no-fd                    send the JSON without the descriptor (a broken client)
 *   --handshake-only           after sending, only wait for the handler to hang up
 *   --json <text>              send this instead of the mappings (garbage tests)
 *   --hold-ms <n>              keep the mapping alive n ms before exiting
 *   --threads <n>              touch with n threads (thread t takes every n-th page of the list)
 *   --touch-delay-us <n>       pause n us after each touch (a slow guest: a restore that lasts)
 *   --trace <path>             write each touch's completion time (u64 CLOCK_MONOTONIC ns, list order)
 *   --close-uffd               close our own copy of the uffd after sending it (unlike Firecracker)
 * Prints one JSON line: timings (CLOCK_MONOTONIC ns, comparable with Node's hrtime) and checks.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define PS 4096
#define MAXR 16

struct region { uint64_t size, offset; uint8_t *addr; };
static struct region regions[MAXR];
static int nregions;
static sigjmp_buf bus_jmp;
static volatile sig_atomic_t got_bus;

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}

static void die(const char *what) {
  printf("{\"error\":\"%s: %s\"}\n", what, strerror(errno));
  fflush(stdout);
  exit(2);
}

static uint8_t *page_addr(uint64_t page) {
  uint64_t off = page * PS;
  for (int i = 0; i < nregions; i++)
    if (off >= regions[i].offset && off < regions[i].offset + regions[i].size) return regions[i].addr + (off - regions[i].offset);
  return NULL;
}

struct toucher {
  const uint64_t *list;
  uint64_t n, first, step, *done_ns;
  long delay_us;
  uint64_t sink;
};

static void *touch_main(void *arg) {
  struct toucher *t = arg;
  volatile uint64_t sink = 0;
  for (uint64_t i = t->first; i < t->n; i += t->step) {
    uint8_t *a = page_addr(t->list[i]);
    if (a) sink += a[(t->list[i] * 64) % PS];
    if (t->done_ns) t->done_ns[i] = now_ns();
    if (t->delay_us > 0) usleep((useconds_t)t->delay_us);
  }
  t->sink = sink;
  return NULL;
}

static void on_bus(int sig) {
  (void)sig;
  got_bus = 1;
  siglongjmp(bus_jmp, 1);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: fc_client <socket> <memfile> [options]\n");
    return 2;
  }
  const char *sock_path = argv[1], *mem_path = argv[2];
  uint64_t touch_first[64], touch_count[64];
  int ntouch = 0;
  const char *touch_file = NULL;
  int64_t dn_first = -1, dn_count = 0, sigbus_page = -1;
  int wait_signal = 0, send_fd = 1, handshake_only = 0, dontneed_wait = 0;
  const char *json_override = NULL;
  long hold_ms = 0, delay_us = 0;
  int nthreads = 1, close_uffd = 0;
  const char *trace_path = NULL;
  for (int i = 3; i < argc; i++) {
    if (!strcmp(argv[i], "--region") && i + 1 < argc) {
      sscanf(argv[++i], "%" SCNu64 ":%" SCNu64, &regions[nregions].size, &regions[nregions].offset);
      nregions++;
    } else if (!strcmp(argv[i], "--touch") && i + 1 < argc) {
      sscanf(argv[++i], "%" SCNu64 ":%" SCNu64, &touch_first[ntouch], &touch_count[ntouch]);
      ntouch++;
    } else if (!strcmp(argv[i], "--touch-file") && i + 1 < argc) {
      touch_file = argv[++i];
    } else if (!strcmp(argv[i], "--dontneed") && i + 1 < argc) {
      sscanf(argv[++i], "%" SCNd64 ":%" SCNd64, &dn_first, &dn_count);
    } else if (!strcmp(argv[i], "--wait-signal")) {
      wait_signal = 1;
    } else if (!strcmp(argv[i], "--dontneed-wait")) {
      dontneed_wait = 1;
    } else if (!strcmp(argv[i], "--expect-sigbus") && i + 1 < argc) {
      sigbus_page = atoll(argv[++i]);
    } else if (!strcmp(argv[i], "--no-fd")) {
      send_fd = 0;
    } else if (!strcmp(argv[i], "--handshake-only")) {
      handshake_only = 1;
    } else if (!strcmp(argv[i], "--json") && i + 1 < argc) {
      json_override = argv[++i];
    } else if (!strcmp(argv[i], "--hold-ms") && i + 1 < argc) {
      hold_ms = atol(argv[++i]);
    } else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
      nthreads = atoi(argv[++i]);
      if (nthreads < 1) nthreads = 1;
      if (nthreads > 64) nthreads = 64;
    } else if (!strcmp(argv[i], "--touch-delay-us") && i + 1 < argc) {
      delay_us = atol(argv[++i]);
    } else if (!strcmp(argv[i], "--trace") && i + 1 < argc) {
      trace_path = argv[++i];
    } else if (!strcmp(argv[i], "--close-uffd")) {
      close_uffd = 1;
    }
  }
  int memfd = open(mem_path, O_RDONLY);
  if (memfd < 0) die("open memfile");
  off_t file_size = lseek(memfd, 0, SEEK_END);
  if (nregions == 0) {
    regions[0].size = (file_size + PS - 1) / PS * PS;
    regions[0].offset = 0;
    nregions = 1;
  }
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  sigprocmask(SIG_BLOCK, &usr1, NULL);

  /* Firecracker: uffd with O_NONBLOCK, API handshake asking for REMOVE events. */
  int uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (uffd < 0) die("userfaultfd");
  struct uffdio_api api = {.api = UFFD_API, .features = UFFD_FEATURE_EVENT_REMOVE};
  if (ioctl(uffd, UFFDIO_API, &api)) die("UFFDIO_API");

  char json[8192];
  size_t jl = 0;
  jl += snprintf(json + jl, sizeof json - jl, "[");
  for (int i = 0; i < nregions; i++) {
    regions[i].addr = mmap(NULL, regions[i].size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (regions[i].addr == MAP_FAILED) die("mmap");
    struct uffdio_register reg = {.range = {.start = (uint64_t)regions[i].addr, .len = regions[i].size}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) die("UFFDIO_REGISTER");
    jl += snprintf(json + jl, sizeof json - jl,
                   "%s{\"base_host_virt_addr\":%" PRIu64 ",\"size\":%" PRIu64 ",\"offset\":%" PRIu64 ",\"page_size\":%d,\"page_size_kib\":%d}",
                   i ? "," : "", (uint64_t)regions[i].addr, regions[i].size, regions[i].offset, PS, PS);
  }
  jl += snprintf(json + jl, sizeof json - jl, "]");
  if (json_override) jl = (size_t)snprintf(json, sizeof json, "%s", json_override);

  int sk = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  strncpy(sa.sun_path, sock_path, sizeof sa.sun_path - 1);
  uint64_t t_connect = now_ns();
  if (connect(sk, (struct sockaddr *)&sa, sizeof sa)) die("connect");
  struct iovec iov = {.iov_base = json, .iov_len = jl};
  union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } ctl;
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
  if (send_fd) {
    memset(&ctl, 0, sizeof ctl);
    msg.msg_control = ctl.buf;
    msg.msg_controllen = sizeof ctl.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &uffd, sizeof(int));
  }
  if (sendmsg(sk, &msg, 0) != (ssize_t)jl) die("sendmsg");
  uint64_t t_sent = now_ns();
  if (close_uffd) close(uffd); /* the handler's copies are now the only ones */
  if (!send_fd || handshake_only) {
    /* A broken client: wait for the handler to hang up on us. */
    char b;
    ssize_t r = read(sk, &b, 1);
    printf("{\"closed_by_handler\":%s}\n", r <= 0 ? "true" : "false");
    return 0;
  }
  if (wait_signal) {
    int sig;
    sigwait(&usr1, &sig);
  }
  uint64_t t_start = now_ns();

  /* The pages to touch, in order. */
  uint64_t cap = 1024, n = 0, *list = malloc(cap * sizeof *list);
  if (touch_file) {
    FILE *f = fopen(touch_file, "r");
    if (!f) die("touch-file");
    uint64_t p;
    while (fscanf(f, "%" SCNu64, &p) == 1) {
      if (n == cap) list = realloc(list, (cap *= 2) * sizeof *list);
      list[n++] = p;
    }
    fclose(f);
  }
  for (int t = 0; t < ntouch; t++)
    for (uint64_t p = touch_first[t]; p < touch_first[t] + touch_count[t]; p++) {
      if (n == cap) list = realloc(list, (cap *= 2) * sizeof *list);
      list[n++] = p;
    }
  if (!touch_file && ntouch == 0)
    for (int i = 0; i < nregions; i++)
      for (uint64_t p = regions[i].offset / PS; p < (regions[i].offset + regions[i].size) / PS; p++) {
        if (n == cap) list = realloc(list, (cap *= 2) * sizeof *list);
        list[n++] = p;
      }

  /* The "request": read one byte of every page (each first read is a missing fault). */
  volatile uint64_t sink = 0;
  uint64_t *done_ns = trace_path ? calloc(n ? n : 1, sizeof *done_ns) : NULL;
  {
    struct toucher ts[64];
    pthread_t th[64];
    for (int t = 0; t < nthreads; t++) {
      ts[t] = (struct toucher){.list = list, .n = n, .first = (uint64_t)t, .step = (uint64_t)nthreads, .done_ns = done_ns, .delay_us = delay_us};
      if (t > 0 && pthread_create(&th[t], NULL, touch_main, &ts[t])) die("pthread_create");
    }
    touch_main(&ts[0]);
    for (int t = 1; t < nthreads; t++) pthread_join(th[t], NULL);
    for (int t = 0; t < nthreads; t++) sink += ts[t].sink;
  }
  uint64_t t_done = now_ns();
  if (trace_path) {
    FILE *f = fopen(trace_path, "wb");
    if (!f || fwrite(done_ns, sizeof *done_ns, n, f) != n || fclose(f)) die("trace");
  }

  /* Verify every touched page against the memory file. */
  uint8_t expect[PS];
  static const uint8_t zero[PS];
  uint64_t mismatches = 0, zero_mismatches = 0, first_bad = UINT64_MAX;
  for (uint64_t i = 0; i < n; i++) {
    uint8_t *a = page_addr(list[i]);
    if (!a) continue;
    memset(expect, 0, PS);
    if (pread(memfd, expect, PS, (off_t)(list[i] * PS)) < 0) die("pread");
    if (memcmp(a, expect, PS)) {
      if (first_bad == UINT64_MAX) first_bad = list[i];
      mismatches++;
      if (!memcmp(a, zero, PS)) zero_mismatches++; /* a zero page where data was expected */
    }
  }

  /* Balloon: drop a range and read it again: zero pages. */
  uint64_t dn_nonzero = 0;
  if (dn_first >= 0) {
    for (int64_t p = dn_first; p < dn_first + dn_count; p++) {
      uint8_t *a = page_addr((uint64_t)p);
      if (a && madvise(a, PS, MADV_DONTNEED)) die("madvise");
    }
    if (dontneed_wait) { /* e.g. the handler is replaced between the drop and the next touch */
      printf("dropped\n");
      fflush(stdout);
      int sig;
      sigwait(&usr1, &sig);
    }
    for (int64_t p = dn_first; p < dn_first + dn_count; p++) {
      uint8_t *a = page_addr((uint64_t)p);
      if (!a) continue;
      for (int k = 0; k < PS; k++)
        if (a[k]) {
          dn_nonzero++;
          break;
        }
    }
  }

  int sigbus = 0;
  if (sigbus_page >= 0) {
    struct sigaction act = {.sa_handler = on_bus};
    sigaction(SIGBUS, &act, NULL);
    uint8_t *a = page_addr((uint64_t)sigbus_page);
    if (sigsetjmp(bus_jmp, 1) == 0) {
      if (a) sink += a[0];
    }
    sigbus = got_bus;
  }
  if (hold_ms > 0) usleep(hold_ms * 1000);
  printf("{\"pages\":%" PRIu64 ",\"mismatches\":%" PRIu64 ",\"zero_mismatches\":%" PRIu64 ",\"first_bad\":%" PRId64 ",\"dontneed_nonzero\":%" PRIu64
         ",\"sigbus\":%s,\"t_connect\":%" PRIu64 ",\"t_sent\":%" PRIu64 ",\"t_start\":%" PRIu64 ",\"t_done\":%" PRIu64 "}\n",
         n, mismatches, zero_mismatches, first_bad == UINT64_MAX ? (int64_t)-1 : (int64_t)first_bad, dn_nonzero, sigbus ? "true" : "false",
         t_connect, t_sent, t_start, t_done);
  fflush(stdout);
  (void)sink;
  return mismatches || dn_nonzero ? 1 : 0;
}
