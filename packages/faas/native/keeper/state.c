/*
 * What a keeper writes down (--state-dir) so that the next keeper can take its VMs back after it
 * died — or after it was stopped — with every process of ours gone:
 *   keeper.json   {"pid","start","workers":[[pid,start],...]}: this keeper and its workers
 *   vm-<pid>.json {"pid","start","dev","ino","uid","gid","msg","removedLog":1}: a VM held (its pid
 *                 and start time, the identity of its uffd: the anon inode's device and number — each
 *                 userfaultfd has its own inode — and the handshake, base64). Written once, at the
 *                 handshake, after its removed log exists.
 *   vm-<pid>.removed  the ranges the VM removed (REMOVE events: balloon, MADV_DONTNEED), which every
 *                 later worker must zero-fill: an append-only log of fixed 32-byte records (below)
 * A new keeper on the same directory refuses to run while the recorded keeper lives; otherwise it
 * kills the recorded workers still alive (they would be a second reader of the uffds it takes
 * over), then, for each VM whose process still runs (same start time), finds the uffd among the
 * VM's descriptors (/proc/<pid>/fd/N of the same inode), duplicates it with pidfd_getfd (which
 * needs ptrace rights over the VM: the same user and a permissive ptrace_scope, or
 * CAP_SYS_PTRACE), wakes its blocked faults and serves it like any VM whose worker died. Its
 * connection is gone with the old keeper (Firecracker does not use it after the handshake).
 */
#include "keeper.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

/* The removed log. Every REMOVED record from a worker changes the VM's set (keeper.c,
 * inst_add_removed: sorted, merged, up to KEEPER_MAX_REMOVED ranges) and is appended here as it is
 * read — one 32-byte write() at the end of the file — before the keeper reads the next record.
 * A balloon can send thousands of REMOVE events, one per madvise: an append costs one small write,
 * where rewriting vm-<pid>.json (handshake up to 32 KiB + up to 1,024 ranges) through a temporary
 * file and rename() would cost a create, up to ~80 KiB of writes and a rename per event — and while
 * the keeper's loop is busy the worker's non-blocking REMOVED sends can find the channel full.
 * When the log holds more than twice the records the merged set needs (+256) it is compacted:
 * the merged set is written to a temporary file that is renamed over the log (amortised: one
 * record written per record appended; the file stays under ~74 KiB).
 *
 * Crash safety (kill -9 of the keeper at any point): an append is a single write() of one record
 * at a 32-byte-aligned offset, so it never spans a page and a fatal signal cannot cut it (the
 * kernel checks for one only between page-sized chunks of a write): the log holds the old set or
 * the new one. A compaction is a complete new file renamed over the old one: the old file or the
 * new one. Each record carries a checksum chained to the header, so anything else (a short write
 * on a full disk, a damaged or foreign file) is detected, and a keeper that cannot append
 * truncates the log to nothing, which its successor detects the same way. No fsync: a process's
 * death does not lose the page cache; only a crash of the whole machine does, and that ends the
 * VMs too.
 *
 * Taking a VM back, its log is read and replayed through the same merge; a log that is missing,
 * truncated or fails a checksum means the set is unknown — serving the VM could then hand it the
 * snapshot's old bytes in a range it dropped, so the VM is not taken back (logged at level 60,
 * the records are kept for the operator; its next fault blocks as it would without a state dir). */
#define RLOG_MAGIC "TSRMLOG1"
#define RLOG_REC 32
#define RLOG_KIND_RANGE 0x52u    /* 'R': [start, end) removed */
#define RLOG_KIND_OVERFLOW 0x4fu /* 'O': a range did not fit in KEEPER_MAX_REMOVED (later ones not kept) */
#define RLOG_SLACK 256
#define RLOG_MAX_RECORDS 16384 /* past this (compactions failing) the log is given up */

struct rlog_head {
  char magic[8];
  uint32_t pid, zero;
  uint64_t start; /* the VM's start time: a log of an earlier VM with the same pid does not match */
  uint64_t sum;
};
struct rlog_rec {
  uint32_t kind, zero;
  uint64_t start, end;
  uint64_t sum; /* FNV-1a 64 of the 24 bytes before, seeded with the header's sum */
};
_Static_assert(sizeof(struct rlog_head) == RLOG_REC && sizeof(struct rlog_rec) == RLOG_REC, "32-byte records");

static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
  const unsigned char *c = p;
  for (size_t i = 0; i < n; i++) h = (h ^ c[i]) * 0x100000001b3ull;
  return h;
}
#define FNV_SEED 0xcbf29ce484222325ull

static struct rlog_head rlog_header(pid_t pid, uint64_t start) {
  struct rlog_head h;
  memset(&h, 0, sizeof h);
  memcpy(h.magic, RLOG_MAGIC, 8);
  h.pid = (uint32_t)pid;
  h.start = start;
  h.sum = fnv1a(FNV_SEED, &h, offsetof(struct rlog_head, sum));
  return h;
}

static struct rlog_rec rlog_record(uint64_t seed, uint32_t kind, uint64_t start, uint64_t end) {
  struct rlog_rec r;
  memset(&r, 0, sizeof r);
  r.kind = kind;
  r.start = start;
  r.end = end;
  r.sum = fnv1a(seed, &r, offsetof(struct rlog_rec, sum));
  return r;
}

/* Start time of a process (clock ticks since boot, /proc/<pid>/stat field 22); 0 if it is gone. */
uint64_t proc_start_time(pid_t pid) {
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* the command may hold spaces and parentheses */
  if (!p || p[1] != ' ') return 0;
  if (p[2] == 'Z' || p[2] == 'X') return 0; /* a zombie serves no one */
  p += 2;
  for (int field = 3; field < 22; field++) {
    p = strchr(p, ' ');
    if (!p) return 0;
    p++;
  }
  return strtoull(p, NULL, 10);
}

static int write_atomic(struct keeper *k, const char *name, const char *data, size_t len) {
  char path[4096], tmp[4200];
  snprintf(path, sizeof path, "%s/%s", k->o.state_dir, name);
  snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)k->pid);
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return -errno;
  ssize_t w = write(fd, data, len);
  int e = w == (ssize_t)len ? 0 : (w < 0 ? errno : EIO);
  close(fd);
  if (e == 0 && rename(tmp, path) != 0) e = errno;
  if (e != 0) unlink(tmp);
  return -e;
}

static char *read_file(const char *path, size_t max) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  char *b = malloc(max + 1);
  size_t n = 0;
  while (b && n < max) {
    ssize_t r = read(fd, b + n, max - n);
    if (r <= 0) break;
    n += (size_t)r;
  }
  close(fd);
  if (b) b[n] = 0;
  return b;
}

static int b64val(int c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}

static unsigned char *unbase64(const char *s, size_t n, size_t *out_len) {
  unsigned char *out = malloc(n / 4 * 3 + 3);
  if (!out) return NULL;
  size_t o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    int v = b64val((unsigned char)s[i]);
    if (v < 0) break; /* '=' or the closing quote */
    acc = acc << 6 | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (unsigned char)(acc >> bits);
    }
  }
  *out_len = o;
  return out;
}

static void rlog_path(struct keeper *k, pid_t pid, char *out, size_t n) {
  snprintf(out, n, "%s/vm-%d.removed", k->o.state_dir, (int)pid);
}

/* The log can no longer follow the VM's set: empty it (a successor then refuses the VM rather
 * than serve it with a set that misses ranges) and stop writing. */
static void rlog_give_up(struct keeper *k, struct instance *in, const char *what, int err) {
  char extra[96];
  snprintf(extra, sizeof extra, "\"vm\":%u,\"vmPid\":%d", in->id, (int)in->pid);
  klog(k, 50, extra, "VM %u: cannot write its removed ranges to %s/vm-%d.removed (%s: %s); a keeper taking this VM back will refuse it", in->id,
       k->o.state_dir, (int)in->pid, what, strerror(err));
  set_error(k, "VM %u: removed ranges not recorded: %s: %s", in->id, what, strerror(err));
  if (in->rlog_fd >= 0) {
    if (ftruncate(in->rlog_fd, 0) != 0) {
      char path[4096];
      rlog_path(k, in->pid, path, sizeof path);
      unlink(path); /* missing reads as unknown too */
    }
    close(in->rlog_fd);
  }
  in->rlog_fd = -1;
}

/* Writes the VM's whole set (and its overflow mark) to a new log that replaces the old one; the
 * new log's descriptor becomes in->rlog_fd. False (the old log left as it was) if it could not. */
static bool rlog_rewrite(struct keeper *k, struct instance *in, int *err) {
  char path[4096], tmp[4200];
  rlog_path(k, in->pid, path, sizeof path);
  snprintf(tmp, sizeof tmp, "%s.%d.tmp", path, (int)k->pid);
  size_t n = 1 + in->nremoved + (in->removed_overflow ? 1 : 0);
  char *b = malloc(n * RLOG_REC);
  if (!b) {
    *err = ENOMEM;
    return false;
  }
  struct rlog_head h = rlog_header(in->pid, in->start);
  memcpy(b, &h, RLOG_REC);
  size_t o = 1;
  for (uint32_t i = 0; i < in->nremoved; i++, o++) {
    struct rlog_rec r = rlog_record(h.sum, RLOG_KIND_RANGE, in->removed_start[i], in->removed_end[i]);
    memcpy(b + o * RLOG_REC, &r, RLOG_REC);
  }
  if (in->removed_overflow) {
    struct rlog_rec r = rlog_record(h.sum, RLOG_KIND_OVERFLOW, 0, 0);
    memcpy(b + o * RLOG_REC, &r, RLOG_REC);
  }
  int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
  int e = fd < 0 ? errno : 0;
  size_t done = 0;
  while (!e && done < n * RLOG_REC) {
    ssize_t w = write(fd, b + done, n * RLOG_REC - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) e = w < 0 ? errno : EIO;
    else done += (size_t)w;
  }
  free(b);
  if (!e && rename(tmp, path) != 0) e = errno;
  if (e) {
    if (fd >= 0) close(fd);
    unlink(tmp);
    *err = e;
    return false;
  }
  if (in->rlog_fd >= 0) close(in->rlog_fd);
  in->rlog_fd = fd;
  in->rlog_records = (uint32_t)(n - 1);
  return true;
}

void state_removed_append(struct keeper *k, struct instance *in, int what, uint64_t start, uint64_t end) {
  if (!k->o.state_dir || in->rlog_fd < 0) return; /* none, or given up (logged then) */
  struct rlog_head h = rlog_header(in->pid, in->start);
  struct rlog_rec r = what == REMOVED_OVERFLOW ? rlog_record(h.sum, RLOG_KIND_OVERFLOW, 0, 0) : rlog_record(h.sum, RLOG_KIND_RANGE, start, end);
  ssize_t w;
  do w = write(in->rlog_fd, &r, sizeof r);
  while (w < 0 && errno == EINTR);
  if (w != (ssize_t)sizeof r) {
    rlog_give_up(k, in, "append", w < 0 ? errno : ENOSPC);
    return;
  }
  in->rlog_records++;
  if (in->rlog_records <= 2 * in->nremoved + RLOG_SLACK) return;
  int e = 0;
  if (!rlog_rewrite(k, in, &e) && in->rlog_records >= RLOG_MAX_RECORDS) rlog_give_up(k, in, "compaction", e);
}

/* Reads a VM's removed log into in (its pid and start set): NULL, or why it cannot be trusted. */
static const char *rlog_load(struct keeper *k, struct instance *in, char *why, size_t whyn) {
  char path[4096];
  rlog_path(k, in->pid, path, sizeof path);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(why, whyn, "its removed-ranges log %s cannot be read: %s", path, strerror(errno));
    return why;
  }
  size_t max = (size_t)(RLOG_MAX_RECORDS + 2) * RLOG_REC, n = 0;
  char *b = malloc(max + 1);
  while (b && n <= max) {
    ssize_t r = read(fd, b + n, max + 1 - n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    n += (size_t)r;
  }
  close(fd);
  if (!b) {
    snprintf(why, whyn, "out of memory reading %s", path);
    return why;
  }
  const char *bad = NULL;
  struct rlog_head want = rlog_header(in->pid, in->start), h;
  if (n > max) bad = "longer than any log a keeper writes";
  else if (n < RLOG_REC) bad = n == 0 ? "empty (a keeper could not write it)" : "truncated header";
  else if (memcpy(&h, b, RLOG_REC), memcmp(&h, &want, RLOG_REC) != 0)
    bad = memcmp(h.magic, RLOG_MAGIC, 8) ? "not a removed-ranges log" : h.sum != fnv1a(FNV_SEED, &h, offsetof(struct rlog_head, sum)) ? "header checksum mismatch" : "written for another VM (pid or start time differ)";
  else if (n % RLOG_REC) bad = "truncated record";
  size_t nrec = bad ? 0 : n / RLOG_REC - 1, i = 0;
  for (; !bad && i < nrec; i++) {
    struct rlog_rec r;
    memcpy(&r, b + (i + 1) * RLOG_REC, RLOG_REC);
    if (r.sum != fnv1a(want.sum, &r, offsetof(struct rlog_rec, sum)) || r.zero != 0) bad = "record checksum mismatch";
    else if (r.kind == RLOG_KIND_OVERFLOW) in->removed_overflow = true;
    else if (r.kind == RLOG_KIND_RANGE && r.end > r.start) inst_add_removed(k, in, r.start, r.end);
    else bad = "bad record";
  }
  free(b);
  if (bad) {
    if (i > 0) snprintf(why, whyn, "its removed-ranges log %s is corrupt: %s (record %zu of %zu)", path, bad, i, nrec);
    else snprintf(why, whyn, "its removed-ranges log %s is corrupt: %s (%zu bytes)", path, bad, n);
    return why;
  }
  in->rlog_records = (uint32_t)nrec;
  return NULL;
}

void state_workers(struct keeper *k) {
  if (!k->o.state_dir) return;
  struct buf b = {0};
  buf_printf(&b, "{\"pid\":%d,\"start\":%" PRIu64 ",\"workers\":[", (int)k->pid, proc_start_time(k->pid));
  int n = 0;
  struct worker *ws[2] = {&k->active, &k->standby};
  for (int i = 0; i < 2; i++)
    if (ws[i]->state != W_NONE && ws[i]->pid > 0) buf_printf(&b, "%s[%d,%" PRIu64 "]", n++ ? "," : "", (int)ws[i]->pid, proc_start_time(ws[i]->pid));
  buf_printf(&b, "]}\n");
  if (b.p && write_atomic(k, "keeper.json", b.p, b.len) < 0) klog(k, 40, NULL, "cannot write %s/keeper.json: %s", k->o.state_dir, strerror(errno));
  buf_free(&b);
}

void state_vm_saved(struct keeper *k, struct instance *in) {
  if (!k->o.state_dir) return;
  struct stat st;
  if (fstat(in->uffd, &st) != 0) return;
  in->start = proc_start_time(in->pid);
  /* The log first: a VM record always has one (a record without it is refused, not served). */
  int e = 0;
  if (!rlog_rewrite(k, in, &e)) rlog_give_up(k, in, "create", e);
  char *msg = NULL;
  {
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = (const unsigned char *)in->msg;
    size_t n = in->msglen;
    msg = malloc(4 * ((n + 2) / 3) + 1);
    if (!msg) return;
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
      uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
      msg[o++] = tbl[(v >> 18) & 63];
      msg[o++] = tbl[(v >> 12) & 63];
      msg[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
      msg[o++] = i + 2 < n ? tbl[v & 63] : '=';
    }
    msg[o] = 0;
  }
  struct buf b = {0};
  buf_printf(&b, "{\"pid\":%d,\"start\":%" PRIu64 ",\"dev\":%" PRIu64 ",\"ino\":%" PRIu64 ",\"uid\":%u,\"gid\":%u,\"msg\":\"%s\",\"removedLog\":1}\n", (int)in->pid, in->start,
             (uint64_t)st.st_dev, (uint64_t)st.st_ino, (unsigned)in->uid, (unsigned)in->gid, msg);
  free(msg);
  char name[64];
  snprintf(name, sizeof name, "vm-%d.json", (int)in->pid);
  if (b.p && write_atomic(k, name, b.p, b.len) < 0) klog(k, 40, NULL, "cannot write %s/%s: %s", k->o.state_dir, name, strerror(errno));
  buf_free(&b);
}

/* The VM ended: its record, then its removed log (a log left alone by a crash in between is
 * removed by the next keeper). */
void state_vm_removed(struct keeper *k, struct instance *in) {
  if (!k->o.state_dir) return;
  char path[4096];
  snprintf(path, sizeof path, "%s/vm-%d.json", k->o.state_dir, (int)in->pid);
  unlink(path);
  rlog_path(k, in->pid, path, sizeof path);
  unlink(path);
  if (in->rlog_fd >= 0) close(in->rlog_fd);
  in->rlog_fd = -1;
}

void state_close(struct keeper *k) {
  if (!k->o.state_dir) return;
  char path[4096];
  snprintf(path, sizeof path, "%s/keeper.json", k->o.state_dir);
  unlink(path);
}

/* The uffd of a recorded VM, duplicated from the VM's own descriptors; -1 (errno set) if not found. */
static int take_uffd(pid_t pid, int pidfd, uint64_t dev, uint64_t ino) {
  char dpath[64];
  snprintf(dpath, sizeof dpath, "/proc/%d/fd", (int)pid);
  DIR *d = opendir(dpath);
  if (!d) return -1;
  int found = -1;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char p[512];
    if (snprintf(p, sizeof p, "%s/%s", dpath, e->d_name) >= (int)sizeof p) continue;
    struct stat st;
    if (stat(p, &st) != 0 || (uint64_t)st.st_dev != dev || (uint64_t)st.st_ino != ino) continue;
    found = atoi(e->d_name);
    break;
  }
  closedir(d);
  if (found < 0) {
    errno = ENOENT;
    return -1;
  }
  int fd = (int)syscall(SYS_pidfd_getfd, pidfd, found, 0);
  if (fd >= 0) fcntl(fd, F_SETFD, FD_CLOEXEC);
  return fd;
}

static void unlink_vm_files(struct keeper *k, pid_t pid) {
  char path[4096];
  snprintf(path, sizeof path, "%s/vm-%d.json", k->o.state_dir, (int)pid);
  unlink(path);
  rlog_path(k, pid, path, sizeof path);
  unlink(path);
}

static void recover_vm(struct keeper *k, const char *dir, const char *name) {
  char path[4096];
  if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path) return;
  char *txt = read_file(path, KEEPER_MAX_HANDSHAKE * 2 + 1024);
  if (!txt) return;
  int pid = 0, off = 0;
  unsigned long long start = 0, dev = 0, ino = 0;
  unsigned uid = 0, gid = 0;
  int got = sscanf(txt, "{\"pid\":%d,\"start\":%llu,\"dev\":%llu,\"ino\":%llu,\"uid\":%u,\"gid\":%u,\"msg\":\"%n", &pid, &start, &dev, &ino, &uid, &gid, &off);
  const char *why = NULL;
  int fd = -1, pidfd = -1;
  char extra[96];
  snprintf(extra, sizeof extra, "\"vmPid\":%d", pid);
  if (got < 6 || off == 0) why = "unreadable record";
  else if (proc_start_time(pid) != start) why = "the VM is gone";
  const char *m = why ? NULL : txt + off;
  const char *q = m ? strchr(m, '"') : NULL;
  if (!why && !q) why = "unreadable record";
  struct instance *in = why ? NULL : calloc(1, sizeof *in);
  if (!why && !in) why = "out of memory";
  if (!why) {
    in->id = ++k->next_inst_id;
    in->uffd = in->conn = in->pidfd = in->rlog_fd = -1;
    in->pid = pid;
    in->start = start;
    if (!strncmp(q, "\",\"removedLog\":1", 15)) {
      char bad[4600];
      if (rlog_load(k, in, bad, sizeof bad)) {
        /* The ranges it dropped are unknown: a worker could serve the snapshot's old bytes there.
         * Leave the VM alone (its next fault blocks, as without a state dir) and its records too. */
        klog(k, 60, extra, "refusing to take back VM %d: %s; serving it could return old bytes in a range it dropped (its next fault blocks; records kept in %s)",
             pid, bad, dir);
        set_error(k, "refused to take back VM %d: removed-ranges log corrupt", pid);
        free(in->removed_start);
        free(in->removed_end);
        free(in);
        free(txt);
        return;
      }
    } else {
      klog(k, 50, extra, "VM %d was recorded by a keeper that did not write removed ranges down: a range it dropped before may be served with old bytes", pid);
    }
  }
  if (!why) {
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) why = "pidfd_open failed";
  }
  if (!why) {
    fd = take_uffd(pid, pidfd, dev, ino);
    if (fd < 0) why = errno == ENOENT ? "the VM no longer holds its uffd" : "pidfd_getfd failed (no ptrace rights over the VM?)";
  }
  if (why) {
    klog(k, why[0] == 't' ? 30 : 40, extra, "not taking back VM %d: %s", pid, why);
    if (pidfd >= 0) close(pidfd);
    if (in) {
      free(in->removed_start);
      free(in->removed_end);
      free(in);
    }
    free(txt);
    if (pid > 0 && got >= 6) unlink_vm_files(k, pid);
    unlink(path);
    return;
  }
  fcntl(pidfd, F_SETFD, FD_CLOEXEC);
  size_t mlen = 0;
  unsigned char *msg = unbase64(m, (size_t)(q - m), &mlen);
  struct instance **arr = k->ninst == k->capinst ? realloc(k->inst, (k->capinst ? k->capinst * 2 : 16) * sizeof *arr) : k->inst;
  if (!msg || !arr) {
    free(msg);
    free(in->removed_start);
    free(in->removed_end);
    free(in);
    if (arr) k->inst = arr;
    close(fd);
    close(pidfd);
    free(txt);
    return;
  }
  if (arr != k->inst || k->capinst == 0) {
    k->inst = arr;
    k->capinst = k->capinst ? k->capinst * 2 : 16;
  }
  in->uffd = fd;
  in->pidfd = pidfd;
  in->uid = uid;
  in->gid = gid;
  in->msg = (char *)msg;
  in->msglen = mlen;
  in->resumed = 1;
  in->since_ms = now_ms();
  k->inst[k->ninst++] = in;
  k->recovered++;
  /* Our log from here on: the set just read, compacted into a new file (the old one stays if that
   * fails, appended to). */
  int e = 0;
  if (!rlog_rewrite(k, in, &e)) {
    char rp[4096];
    rlog_path(k, pid, rp, sizeof rp);
    in->rlog_fd = open(rp, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (in->rlog_fd < 0) rlog_give_up(k, in, "reopen", errno);
  }
  /* Faults a dead worker read and never answered: fault again, into our next worker. */
  wake_vm(k, in);
  char extra2[160];
  snprintf(extra2, sizeof extra2, "\"vm\":%u,\"vmPid\":%d,\"bytes\":%zu,\"removedRanges\":%u,\"removedOverflow\":%s", in->id, pid, mlen, in->nremoved,
           in->removed_overflow ? "true" : "false");
  klog(k, 40, extra2, "took back VM %d from a dead keeper (pidfd_getfd), %u removed ranges handed on", pid, in->nremoved);
  if (k->orphans_killed)
    klog(k, 40, extra2, "VM %d: a worker of the dead keeper served on without it; ranges the VM removed meanwhile never reached a keeper (a worker may serve old bytes there)",
         pid);
  if (in->removed_overflow)
    klog(k, 50, extra2, "VM %d: more than %d separate removed ranges came under an earlier keeper; later ones were not remembered (a worker may serve old bytes there)",
         pid, KEEPER_MAX_REMOVED);
  free(txt);
}

int state_init(struct keeper *k) {
  if (!k->o.state_dir) return 0;
  if (mkdir(k->o.state_dir, 0700) != 0 && errno != EEXIST) {
    fprintf(stderr, "tierstack-keeper: cannot create %s: %s\n", k->o.state_dir, strerror(errno));
    return -1;
  }
  char path[4096];
  snprintf(path, sizeof path, "%s/keeper.json", k->o.state_dir);
  char *txt = read_file(path, 4096);
  if (txt) {
    int pid = 0, off = 0;
    unsigned long long start = 0;
    if (sscanf(txt, "{\"pid\":%d,\"start\":%llu,\"workers\":[%n", &pid, &start, &off) >= 2 && off > 0) {
      if (pid != k->pid && start != 0 && proc_start_time(pid) == start) {
        fprintf(stderr, "tierstack-keeper: keeper %d still serves %s\n", pid, k->o.state_dir);
        free(txt);
        return -1;
      }
      /* Its workers still running hold uffds we are about to take: they go first. */
      const char *p = txt + off;
      pid_t victims[8];
      int nv = 0;
      while (*p == '[' || *p == ',') {
        if (*p == ',') p++;
        int wp = 0, n2 = 0;
        unsigned long long ws = 0;
        if (sscanf(p, "[%d,%llu]%n", &wp, &ws, &n2) < 2 || n2 == 0) break;
        p += n2;
        if (wp > 0 && ws != 0 && proc_start_time(wp) == ws && nv < 8) {
          kill(wp, SIGKILL);
          victims[nv++] = wp;
          k->orphans_killed = true;
          klog(k, 40, NULL, "killed worker %d of the dead keeper %d (it would read the uffds we take back)", wp, pid);
        }
      }
      for (int t = 0; t < 100; t++) {
        int alive = 0;
        for (int i = 0; i < nv; i++) alive += proc_start_time(victims[i]) != 0;
        if (!alive) break;
        usleep(50000);
      }
    }
    free(txt);
  }
  DIR *d = opendir(k->o.state_dir);
  if (d) {
    struct dirent *e;
    char names[256][64];
    int n = 0;
    while ((e = readdir(d)) != NULL && n < 256) {
      size_t l = strlen(e->d_name);
      int vp = 0, end = 0;
      if (l > 4 && !strcmp(e->d_name + l - 4, ".tmp") && l < 4096 - strlen(k->o.state_dir) - 2) {
        /* A file a dead keeper was writing (write_atomic, a compaction): never renamed, never used. */
        char tp[4096];
        snprintf(tp, sizeof tp, "%s/%s", k->o.state_dir, e->d_name);
        unlink(tp);
      } else if (sscanf(e->d_name, "vm-%d.json%n", &vp, &end) == 1 && end == (int)l && l < 64) {
        snprintf(names[n++], 64, "%s", e->d_name);
      }
    }
    closedir(d);
    for (int i = 0; i < n; i++) recover_vm(k, k->o.state_dir, names[i]);
    /* Removed logs whose VM record is gone (a keeper died between the two unlinks). */
    d = opendir(k->o.state_dir);
    while (d && (e = readdir(d)) != NULL) {
      int vp = 0, end = 0;
      if (sscanf(e->d_name, "vm-%d.removed%n", &vp, &end) != 1 || end != (int)strlen(e->d_name)) continue;
      char jp[4096];
      struct stat st;
      snprintf(jp, sizeof jp, "%s/vm-%d.json", k->o.state_dir, vp);
      if (stat(jp, &st) == 0) continue;
      snprintf(jp, sizeof jp, "%s/%s", k->o.state_dir, e->d_name);
      unlink(jp);
    }
    if (d) closedir(d);
  }
  state_workers(k);
  return 0;
}
