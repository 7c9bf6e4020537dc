/*
 * Baseline for the `uffd` bench suite: the simplest competent userfaultfd handler. One handler
 * thread polls the uffd, reads fault messages and answers each with a single-page UFFDIO_COPY
 * from plain memory (the page's bytes sit in an ordinary malloc'd buffer: no tier, no lookup).
 *
 * Driven over stdin/stdout by the suite, so it runs in the same process tree and the same run:
 *   argv: <region-pages> <handler-cpu> <toucher-cpu>      (cpu -1: no pinning)
 *   stdin:  "run <first> <count> <seq|rand> <touchers>\n"  drop pages [first, first+count)
 *           with MADV_DONTNEED, then touch them (one read per page) from <touchers> threads
 *   stdout: "ready\n" once, then "done <ns>\n" per run (ns: wall time of the touch phase)
 * Build: gcc -O2 -pthread -o uffd_baseline uffd_baseline.c
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define PS 4096

static int uffd;
static uint8_t *region, *source;
static size_t npages;
static int toucher_cpu = -1;

static void pin(int cpu) {
  if (cpu < 0) return;
  cpu_set_t s;
  CPU_ZERO(&s);
  CPU_SET(cpu, &s);
  sched_setaffinity(0, sizeof s, &s);
}

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + t.tv_nsec;
}

static void *handler(void *arg) {
  pin((int)(intptr_t)arg);
  struct uffd_msg msgs[64];
  struct pollfd p = {uffd, POLLIN, 0};
  for (;;) {
    if (poll(&p, 1, -1) < 0 && errno != EINTR) return NULL;
    ssize_t n = read(uffd, msgs, sizeof msgs);
    if (n <= 0) continue;
    for (size_t i = 0; i < (size_t)n / sizeof msgs[0]; i++) {
      if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
      uint64_t addr = msgs[i].arg.pagefault.address & ~(uint64_t)(PS - 1);
      struct uffdio_copy c = {.dst = addr, .src = (uint64_t)(source + (addr - (uint64_t)region)), .len = PS, .mode = 0};
      if (ioctl(uffd, UFFDIO_COPY, &c) != 0 && errno != EEXIST) {
        struct uffdio_range r = {addr, PS};
        ioctl(uffd, UFFDIO_WAKE, &r);
      }
    }
  }
}

struct job {
  size_t *order;
  size_t n;
  volatile uint64_t sink;
};

static void *toucher(void *arg) {
  struct job *j = arg;
  pin(toucher_cpu);
  uint64_t s = 0;
  for (size_t i = 0; i < j->n; i++) s += *(volatile uint64_t *)(region + j->order[i] * PS);
  j->sink = s;
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  npages = strtoul(argv[1], NULL, 10);
  int handler_cpu = atoi(argv[2]);
  toucher_cpu = atoi(argv[3]);
  size_t size = npages * PS;
  source = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  region = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (source == MAP_FAILED || region == MAP_FAILED) return 3;
  madvise(region, size, MADV_NOHUGEPAGE);
  for (size_t i = 0; i < size; i += 8) *(uint64_t *)(source + i) = i * 0x9e3779b97f4a7c15ull;
  uffd = (int)syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (uffd < 0) {
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) uffd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
  }
  if (uffd < 0) { perror("userfaultfd"); return 3; }
  struct uffdio_api api = {.api = UFFD_API};
  struct uffdio_register reg = {.range = {(uint64_t)region, size}, .mode = UFFDIO_REGISTER_MODE_MISSING};
  if (ioctl(uffd, UFFDIO_API, &api) || ioctl(uffd, UFFDIO_REGISTER, &reg)) { perror("uffd setup"); return 3; }
  pthread_t h;
  pthread_create(&h, NULL, handler, (void *)(intptr_t)handler_cpu);

  size_t *order = malloc(npages * sizeof *order);
  uint64_t rng = 0x12345678;
  printf("ready\n");
  fflush(stdout);
  char line[256];
  while (fgets(line, sizeof line, stdin)) {
    size_t first, count;
    char mode[16];
    int touchers;
    if (sscanf(line, "run %zu %zu %15s %d", &first, &count, mode, &touchers) != 4) continue;
    if (first + count > npages || touchers < 1 || touchers > 64) { printf("error\n"); fflush(stdout); continue; }
    madvise(region + first * PS, count * PS, MADV_DONTNEED);
    for (size_t i = 0; i < count; i++) order[i] = first + i;
    if (strcmp(mode, "rand") == 0) {
      for (size_t i = count - 1; i > 0; i--) {
        rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
        size_t k = rng % (i + 1), t = order[i];
        order[i] = order[k];
        order[k] = t;
      }
    }
    struct job jobs[64];
    pthread_t th[64];
    uint64_t t0 = now_ns();
    for (int t = 0; t < touchers; t++) {
      size_t lo = count * t / touchers, hi = count * (t + 1) / touchers;
      jobs[t].order = order + lo;
      jobs[t].n = hi - lo;
      pthread_create(&th[t], NULL, toucher, &jobs[t]);
    }
    for (int t = 0; t < touchers; t++) pthread_join(th[t], NULL);
    printf("done %llu\n", (unsigned long long)(now_ns() - t0));
    fflush(stdout);
  }
  return 0;
}
