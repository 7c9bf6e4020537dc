/*
 * The physical limit of fault-around on this machine: what it costs a thread to touch pages
 * that are already installed but that it has never touched. Fault-around (and prefetch) install
 * pages with UFFDIO_COPY from the fault thread; the toucher still pays each page's first access.
 * On a VM with shadow or paravirtual paging (PVM, EPT-less setups) that first access traps into
 * the hypervisor, several microseconds per page, so it bounds how many pages per second any
 * handler can deliver, however many it installs per fault.
 *
 * Here the kernel installs the pages (MADV_POPULATE_WRITE: no fault, no handler), then one thread
 * reads one word of each, exactly as the bench's touchers do. Same placement as the suite.
 *   argv: <pages> <cpu> <rounds>     (cpu -1: no pinning)
 *   stdout: one line per round: "<pages> <ns>" (ns: wall time of the touch phase)
 * Build: gcc -O2 -o first_touch first_touch.c
 */
#define _GNU_SOURCE
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc < 4) {
    fprintf(stderr, "usage: first_touch <pages> <cpu> <rounds>\n");
    return 2;
  }
  size_t pages = strtoul(argv[1], NULL, 10);
  int cpu = atoi(argv[2]);
  int rounds = atoi(argv[3]);
  const size_t ps = 4096;
  if (cpu >= 0) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    sched_setaffinity(0, sizeof set, &set);
  }
  char *p = mmap(NULL, pages * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    return 1;
  }
  volatile uint64_t sink = 0;
  for (int r = 0; r < rounds; r++) {
    madvise(p, pages * ps, MADV_DONTNEED);
    if (madvise(p, pages * ps, MADV_POPULATE_WRITE) != 0) {
      perror("madvise(MADV_POPULATE_WRITE)");
      return 1;
    }
    uint64_t t0 = now_ns();
    for (size_t i = 0; i < pages; i++) sink += *(volatile uint64_t *)(p + i * ps);
    printf("%zu %llu\n", pages, (unsigned long long)(now_ns() - t0));
    fflush(stdout);
  }
  return (int)(sink & 0);
}
