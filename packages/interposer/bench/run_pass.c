/*
 * The `run` benchmark's program: one array, a sequential and a random pass over it, timed by the
 * program itself (start-up, set-up and the kernel's or server's teardown stay out of the figures).
 *
 *   run_pass malloc <mib> <rand pages> [seed]       the array from malloc (plain, or under tierstack run)
 *   run_pass file <mib> <rand pages> <dir> [seed]   BigMaac's approach: an unlinked file in <dir>,
 *                                       mmap'ed MAP_SHARED (the kernel pages it to disk under a limit)
 *   run_pass small <count>              the pass-through cost: one big allocation (so that a preloaded
 *                                       library is connected), then <count> malloc+write+free of small
 *                                       sizes (16..4096 bytes) and <count>/16 calloc/realloc pairs;
 *                                       prints {"small_ops", "small_ns"}
 *
 * Phases: init (writes every page), seq (every page in order: read its 512 words, write one),
 * rand (<rand pages> pages chosen by xorshift, same work per page). Prints one JSON
 * line: {"pages", "init_ns", "seq_ns", "rand_ns", "check"} — check is a checksum of what the
 * passes read, identical for every way of running the same arguments.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096
#define WORDS (PAGE / 8)

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t touch(uint64_t *p, uint64_t acc) {
  uint64_t s = 0;
  for (int i = 0; i < WORDS; i++) s += p[i];
  p[acc % WORDS] ^= s; /* dirty the page */
  return acc * 31 + s;
}

static int small(size_t count) {
  char *big = malloc(32u << 20);
  if (!big) return perror("malloc"), 1;
  big[0] = 1;
  static void *ring[64];
  uint64_t t0 = now_ns();
  uint64_t sink = 0;
  for (size_t i = 0; i < count; i++) {
    size_t sz = 16u << (i % 9); /* 16 .. 4096 */
    size_t slot = i % 64;
    free(ring[slot]);
    char *p = malloc(sz);
    p[0] = (char)i;
    sink += (uintptr_t)p & 0xff;
    ring[slot] = p;
    if (i % 16 == 0) {
      char *q = calloc(1, 100);
      q = realloc(q, 200);
      sink += (unsigned char)q[0];
      free(q);
    }
  }
  uint64_t t1 = now_ns();
  for (int i = 0; i < 64; i++) free(ring[i]);
  free(big);
  printf("{\"small_ops\":%zu,\"small_ns\":%llu,\"sink\":%llu}\n", count, (unsigned long long)(t1 - t0), (unsigned long long)sink);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 2 && strcmp(argv[1], "small") == 0) return small((size_t)atol(argv[2]));
  int file = argc > 1 && strcmp(argv[1], "file") == 0;
  if (argc < (file ? 5 : 4)) {
    fprintf(stderr, "usage: run_pass malloc <mib> <rand pages> [seed] | run_pass file <mib> <rand pages> <dir> [seed]\n");
    return 64;
  }
  size_t bytes = (size_t)atol(argv[2]) << 20;
  size_t touches = (size_t)atol(argv[3]);
  uint32_t seed = (uint32_t)(argc > (file ? 5 : 4) ? atol(argv[file ? 5 : 4]) : 12345);
  size_t pages = bytes / PAGE;
  uint64_t *a;
  if (file) {
    char path[4096];
    snprintf(path, sizeof path, "%s/run_pass.%d", argv[4], (int)getpid());
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0) return perror("open"), 1;
    unlink(path);
    if (ftruncate(fd, (off_t)bytes) != 0) return perror("ftruncate"), 1;
    a = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (a == MAP_FAILED) return perror("mmap"), 1;
    close(fd);
  } else {
    a = malloc(bytes);
    if (!a) return perror("malloc"), 1;
  }
  uint64_t t0 = now_ns();
  for (size_t p = 0; p < pages; p++) {
    uint64_t *w = a + p * WORDS;
    for (int i = 0; i < WORDS; i++) w[i] = (uint64_t)p * 0x9e3779b97f4a7c15ull + (uint64_t)i;
  }
  uint64_t t1 = now_ns();
  uint64_t acc = 1;
  for (size_t p = 0; p < pages; p++) acc = touch(a + p * WORDS, acc);
  uint64_t t2 = now_ns();
  uint32_t x = seed ? seed : 1;
  for (size_t k = 0; k < touches; k++) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    acc = touch(a + (size_t)(x % pages) * WORDS, acc);
  }
  uint64_t t3 = now_ns();
  printf("{\"pages\":%zu,\"rand_pages\":%zu,\"init_ns\":%llu,\"seq_ns\":%llu,\"rand_ns\":%llu,\"check\":\"%016llx\"}\n", pages, touches,
         (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t1), (unsigned long long)(t3 - t2), (unsigned long long)acc);
  fflush(stdout);
  return 0;
}
