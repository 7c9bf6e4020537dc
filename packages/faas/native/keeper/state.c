/*
 * What a keeper writes down (--state-dir) so that the next keeper can take its VMs back after it
 * died — or after it was stopped — with every process of ours gone:
 *   keeper.json   {"pid","start","workers":[[pid,start],...]}: this keeper and its workers
 *   vm-<pid>.json {"pid","start","dev","ino","uid","gid","msg"}: a VM held (its pid and start time,
 *                 the identity of its uffd: the anon inode's device and number — each userfaultfd has
 *                 its own inode — and the handshake, base64)
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
  buf_printf(&b, "{\"pid\":%d,\"start\":%" PRIu64 ",\"dev\":%" PRIu64 ",\"ino\":%" PRIu64 ",\"uid\":%u,\"gid\":%u,\"msg\":\"%s\"}\n", (int)in->pid, in->start,
             (uint64_t)st.st_dev, (uint64_t)st.st_ino, (unsigned)in->uid, (unsigned)in->gid, msg);
  free(msg);
  char name[64];
  snprintf(name, sizeof name, "vm-%d.json", (int)in->pid);
  if (b.p && write_atomic(k, name, b.p, b.len) < 0) klog(k, 40, NULL, "cannot write %s/%s: %s", k->o.state_dir, name, strerror(errno));
  buf_free(&b);
}

void state_vm_removed(struct keeper *k, struct instance *in) {
  if (!k->o.state_dir) return;
  char path[4096];
  snprintf(path, sizeof path, "%s/vm-%d.json", k->o.state_dir, (int)in->pid);
  unlink(path);
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
  if (got < 6 || off == 0) why = "unreadable record";
  else if (proc_start_time(pid) != start) why = "the VM is gone";
  if (!why) {
    pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) why = "pidfd_open failed";
  }
  if (!why) {
    fd = take_uffd(pid, pidfd, dev, ino);
    if (fd < 0) why = errno == ENOENT ? "the VM no longer holds its uffd" : "pidfd_getfd failed (no ptrace rights over the VM?)";
  }
  if (why) {
    char extra[64];
    snprintf(extra, sizeof extra, "\"vmPid\":%d", pid);
    klog(k, why[0] == 't' ? 30 : 40, extra, "not taking back VM %d: %s", pid, why);
    if (pidfd >= 0) close(pidfd);
    free(txt);
    unlink(path);
    return;
  }
  fcntl(pidfd, F_SETFD, FD_CLOEXEC);
  const char *m = txt + off;
  const char *q = strchr(m, '"');
  size_t mlen = 0;
  unsigned char *msg = unbase64(m, q ? (size_t)(q - m) : strlen(m), &mlen);
  struct instance *in = calloc(1, sizeof *in);
  struct instance **arr = k->ninst == k->capinst ? realloc(k->inst, (k->capinst ? k->capinst * 2 : 16) * sizeof *arr) : k->inst;
  if (!msg || !in || !arr) {
    free(msg);
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
  in->id = ++k->next_inst_id;
  in->uffd = fd;
  in->conn = -1;
  in->pidfd = pidfd;
  in->pid = pid;
  in->uid = uid;
  in->gid = gid;
  in->msg = (char *)msg;
  in->msglen = mlen;
  in->start = start;
  in->resumed = 1;
  in->since_ms = now_ms();
  k->inst[k->ninst++] = in;
  k->recovered++;
  /* Faults a dead worker read and never answered: fault again, into our next worker. */
  wake_vm(k, in);
  char extra[96];
  snprintf(extra, sizeof extra, "\"vm\":%u,\"vmPid\":%d,\"bytes\":%zu", in->id, pid, mlen);
  klog(k, 40, extra, "took back VM %d from a dead keeper (pidfd_getfd)", pid);
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
    while ((e = readdir(d)) != NULL && n < 256)
      if (!strncmp(e->d_name, "vm-", 3) && strstr(e->d_name, ".json") && strlen(e->d_name) < 64) snprintf(names[n++], 64, "%s", e->d_name);
    closedir(d);
    for (int i = 0; i < n; i++) recover_vm(k, k->o.state_dir, names[i]);
  }
  state_workers(k);
  return 0;
}
