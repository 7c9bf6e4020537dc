/*
 * tierstack-keeper — see keeper.h for what it is and README.md ("Restarts: the keeper") for why.
 *
 * usage: tierstack-keeper [options] -- <worker command> [args...]
 *   --firecracker <path>       bind this Unix socket (mode 0600) and keep every handshake received on it
 *   --criu-port <port>         listen on this TCP port and relay CRIU page-server connections
 *   --criu-host <addr>         address for --criu-port (default 127.0.0.1)
 *   --status <path>            a Unix socket answering every connection with one JSON line of status
 *   --memfd <name>:<bytes>     a memfd the workers share (their DRAM cache); repeatable
 *   --standby                  keep a booted spare worker, promoted the moment the serving one dies
 *   --handshake-timeout-ms <n> a connected peer has this long to send its handshake (default 5000)
 *   --max-pending <n>          handshakes received at once (default 64)
 *   --stable-ms <n>            a worker that served this long before dying restarts at once (default 5000)
 *   --backoff-base-ms <n>      first delay after repeated deaths (default 100), doubling ...
 *   --backoff-max-ms <n>       ... up to this (default 10000)
 *   --give-up-after <n>        exit 1 when n workers in a row died before any served and nothing is held
 *   --label <text>             for log lines
 *   --state-dir <dir>          write down what a successor needs to take live VMs back (state.c); on
 *                              start, take back the VMs a dead keeper recorded there
 * stdout: one JSON line each time a worker starts serving ({"keeperPid","workerPid",...}), the
 * worker's first human-readable line after the first, and the worker's final stats on shutdown.
 * stderr: JSON log lines (pino's shape). SIGINT/SIGTERM: stop (workers get SIGTERM, then SIGKILL).
 */
#include "keeper.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

/* The top of a 4-level-paging x86-64/arm64 user address space: a UFFDIO_WAKE over
 * [mmap_min_addr, this) covers every range any uffd can have registered there. */
#define KEEPER_WAKE_END 0x7ffffffff000ull

/* ------------------------------------------------------------------------------------------ */
/* small utilities                                                                             */

int64_t now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static int64_t wall_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

bool buf_append(struct buf *b, const void *p, size_t n) {
  if (n == 0) return true;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) return false;
    b->p = q;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
  return true;
}

void buf_consume(struct buf *b, size_t n) {
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->p, b->p + n, b->len - n);
  b->len -= n;
}

void buf_free(struct buf *b) {
  free(b->p);
  b->p = NULL;
  b->len = b->cap = 0;
}

bool buf_printf(struct buf *b, const char *fmt, ...) {
  char tmp[1024];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  if (n < 0) return false;
  if ((size_t)n < sizeof tmp) return buf_append(b, tmp, (size_t)n);
  char *big = malloc((size_t)n + 1);
  if (!big) return false;
  va_start(ap, fmt);
  vsnprintf(big, (size_t)n + 1, fmt, ap);
  va_end(ap);
  bool ok = buf_append(b, big, (size_t)n);
  free(big);
  return ok;
}

/* A JSON string literal (quotes included). */
void json_str(struct buf *b, const char *s) {
  buf_append(b, "\"", 1);
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if (*c == '"' || *c == '\\') {
      char e[2] = {'\\', (char)*c};
      buf_append(b, e, 2);
    } else if (*c < 0x20) {
      char e[8];
      snprintf(e, sizeof e, "\\u%04x", *c);
      buf_append(b, e, 6);
    } else {
      buf_append(b, c, 1);
    }
  }
  buf_append(b, "\"", 1);
}

static void write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return; /* stdout/stderr gone: nothing to do about it */
    p += w;
    n -= (size_t)w;
  }
}

/* One log line on stderr, pino's shape: {"level":30,"time":...,"pid":...,"name":"tierstack-keeper","msg":...}. */
void klog(struct keeper *k, int level, const char *extra_json, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  struct buf b = {0};
  buf_printf(&b, "{\"level\":%d,\"time\":%" PRId64 ",\"pid\":%d,\"name\":\"tierstack-keeper\"", level, wall_ms(), (int)k->pid);
  if (k->o.label) {
    buf_printf(&b, ",\"label\":");
    json_str(&b, k->o.label);
  }
  if (extra_json && *extra_json) buf_printf(&b, ",%s", extra_json);
  buf_printf(&b, ",\"msg\":");
  json_str(&b, msg);
  buf_append(&b, "}\n", 2);
  if (b.p) write_all(2, b.p, b.len);
  buf_free(&b);
}

void set_error(struct keeper *k, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(k->last_error, sizeof k->last_error, fmt, ap);
  va_end(ap);
}

static void out_line(const char *s, size_t n) {
  write_all(1, s, n);
}

static char *base64(const unsigned char *p, size_t n) {
  static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char *out = malloc(4 * ((n + 2) / 3) + 1);
  if (!out) return NULL;
  size_t o = 0;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0) | (i + 2 < n ? p[i + 2] : 0);
    out[o++] = tbl[(v >> 18) & 63];
    out[o++] = tbl[(v >> 12) & 63];
    out[o++] = i + 1 < n ? tbl[(v >> 6) & 63] : '=';
    out[o++] = i + 2 < n ? tbl[v & 63] : '=';
  }
  out[o] = 0;
  return out;
}

static void describe_status(int st, char *out, size_t n) {
  if (WIFSIGNALED(st)) {
    const char *abbrev = sigabbrev_np(WTERMSIG(st));
    snprintf(out, n, "{\"signal\":\"SIG%s\",\"code\":null%s}", abbrev ? abbrev : "?", WCOREDUMP(st) ? ",\"core\":true" : "");
  } else {
    snprintf(out, n, "{\"signal\":null,\"code\":%d}", WEXITSTATUS(st));
  }
}

static int set_nonblock(int fd) {
  int fl = fcntl(fd, F_GETFL);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* ------------------------------------------------------------------------------------------ */
/* records on the worker channel (SOCK_SEQPACKET: one record per message)                      */

int send_record(int sock, const char *msg, size_t len, int fd) {
  struct iovec iov = {.iov_base = (void *)msg, .iov_len = len};
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(sizeof(int))];
  } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
  if (fd >= 0) {
    mh.msg_control = ctl.buf;
    mh.msg_controllen = sizeof ctl.buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  for (;;) {
    ssize_t n = sendmsg(sock, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) return 0;
    if (errno == EINTR) continue;
    return -errno;
  }
}

/* ------------------------------------------------------------------------------------------ */
/* instances                                                                                   */

static struct instance *inst_find(struct keeper *k, uint32_t id) {
  for (size_t i = 0; i < k->ninst; i++)
    if (k->inst[i]->id == id) return k->inst[i];
  return NULL;
}

/* Closes what a VM record holds and frees it. */
static void inst_free(struct instance *in) {
  if (in->uffd >= 0) close(in->uffd);
  if (in->conn >= 0) close(in->conn);
  if (in->pidfd >= 0) close(in->pidfd);
  if (in->rlog_fd >= 0) close(in->rlog_fd);
  free(in->msg);
  free(in->removed_start);
  free(in->removed_end);
  free(in);
}

static void inst_remove(struct keeper *k, struct instance *in, const char *why) {
  for (size_t i = 0; i < k->ninst; i++) {
    if (k->inst[i] != in) continue;
    state_vm_removed(k, in);
    char extra[128];
    snprintf(extra, sizeof extra, "\"vm\":%u,\"vmPid\":%d,\"workersLost\":%u", in->id, (int)in->pid, in->resumed);
    klog(k, 30, extra, "VM %u (pid %d) released: %s", in->id, (int)in->pid, why);
    inst_free(in);
    k->inst[i] = k->inst[--k->ninst];
    k->vms_ended++;
    return;
  }
}

/* Adds [start, end) to the VM's removed ranges (kept sorted and merged). REMOVED_ADDED: the set
 * grew; REMOVED_SAME: it already held the range (or the range is empty), or it overflowed before;
 * REMOVED_OVERFLOW: this range is the first that did not fit (logged). */
int inst_add_removed(struct keeper *k, struct instance *in, uint64_t start, uint64_t end) {
  if (end <= start) return REMOVED_SAME;
  if (!in->removed_start) {
    in->removed_start = calloc(KEEPER_MAX_REMOVED, sizeof *in->removed_start);
    in->removed_end = calloc(KEEPER_MAX_REMOVED, sizeof *in->removed_end);
    if (!in->removed_start || !in->removed_end) {
      free(in->removed_start);
      free(in->removed_end);
      in->removed_start = in->removed_end = NULL;
      bool first = !in->removed_overflow;
      in->removed_overflow = true;
      return first ? REMOVED_OVERFLOW : REMOVED_SAME;
    }
  }
  /* First range that ends at or after start (touching counts: adjacent ranges merge). */
  uint32_t i = 0;
  while (i < in->nremoved && in->removed_end[i] < start) i++;
  uint32_t j = i;
  while (j < in->nremoved && in->removed_start[j] <= end) {
    if (in->removed_start[j] < start) start = in->removed_start[j];
    if (in->removed_end[j] > end) end = in->removed_end[j];
    j++;
  }
  if (j == i + 1 && in->removed_start[i] == start && in->removed_end[i] == end) return REMOVED_SAME; /* inside one already held */
  if (i == j && in->nremoved == KEEPER_MAX_REMOVED) {
    if (in->removed_overflow) return REMOVED_SAME;
    char extra[64];
    snprintf(extra, sizeof extra, "\"vm\":%u", in->id);
    klog(k, 50, extra, "VM %u: more than %d separate removed ranges; later ones are not remembered (a replaced worker may serve old bytes there)", in->id, KEEPER_MAX_REMOVED);
    in->removed_overflow = true;
    return REMOVED_OVERFLOW;
  }
  /* Replace ranges i..j-1 by the merged one. */
  uint32_t tail = in->nremoved - j;
  uint32_t at = i + 1;
  memmove(in->removed_start + at, in->removed_start + j, tail * sizeof *in->removed_start);
  memmove(in->removed_end + at, in->removed_end + j, tail * sizeof *in->removed_end);
  in->removed_start[i] = start;
  in->removed_end[i] = end;
  in->nremoved = at + tail;
  return REMOVED_ADDED;
}

/* Wakes every thread of the VM blocked on a fault of this uffd: one whose fault message a dead
 * worker read and never answered faults again, into the next worker. Waking a thread whose
 * message is still queued only makes it fault once more (harmless: the answer is EEXIST). */
void wake_vm(struct keeper *k, struct instance *in) {
  struct uffdio_range r = {.start = k->min_addr, .len = KEEPER_WAKE_END - k->min_addr};
  if (ioctl(in->uffd, UFFDIO_WAKE, &r) == 0) {
    k->wakes++;
    return;
  }
  int e = errno;
  bool ok = in->nranges > 0;
  for (uint32_t i = 0; i < in->nranges; i++) {
    struct uffdio_range q = {.start = in->range_start[i], .len = in->range_len[i]};
    if (ioctl(in->uffd, UFFDIO_WAKE, &q) != 0) ok = false;
  }
  if (ok) {
    k->wakes++;
    return;
  }
  k->wake_errors++;
  set_error(k, "UFFDIO_WAKE on VM %u failed: %s", in->id, strerror(e));
  klog(k, 50, NULL, "UFFDIO_WAKE on VM %u failed: %s", in->id, strerror(e));
}

static void reject_conn(struct keeper *k, int conn, int fd, pid_t pid, const char *why) {
  char extra[64];
  snprintf(extra, sizeof extra, "\"peerPid\":%d,\"code\":\"TS_ERR_PROTOCOL\"", (int)pid);
  klog(k, 40, extra, "handshake rejected: %s", why);
  set_error(k, "handshake rejected: %s", why);
  k->rejected++;
  if (fd >= 0) close(fd);
  if (conn >= 0) close(conn);
}

static bool is_userfaultfd(int fd, char *what, size_t n) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  ssize_t l = readlink(path, what, n - 1);
  if (l < 0) {
    snprintf(what, n, "unknown (%s)", strerror(errno));
    return false;
  }
  what[l] = 0;
  return strcmp(what, "anon_inode:[userfaultfd]") == 0;
}

static void pending_remove(struct keeper *k, size_t i) {
  k->pend[i] = k->pend[--k->npend];
}

/* A pending connection is readable: its one message + descriptor. */
static void pending_read(struct keeper *k, size_t i) {
  int conn = k->pend[i].conn;
  char *data = malloc(KEEPER_MAX_HANDSHAKE + 1);
  if (!data) {
    pending_remove(k, i);
    reject_conn(k, conn, -1, 0, "out of memory");
    return;
  }
  union {
    struct cmsghdr h;
    char buf[CMSG_SPACE(sizeof(int) * 8)];
  } ctl;
  struct iovec iov = {.iov_base = data, .iov_len = KEEPER_MAX_HANDSHAKE + 1};
  struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
  ssize_t n;
  do n = recvmsg(conn, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
    free(data);
    return;
  }
  pending_remove(k, i);
  int fd = -1;
  if (n >= 0) {
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      size_t cnt = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t j = 0; j < cnt; j++) {
        int f;
        memcpy(&f, CMSG_DATA(c) + j * sizeof(int), sizeof f);
        if (fd < 0)
          fd = f;
        else
          close(f); /* one descriptor is expected; never keep extras */
      }
    }
  }
  struct ucred cred = {0};
  socklen_t cl = sizeof cred;
  getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cl);
  if (n < 0) {
    char why[128];
    snprintf(why, sizeof why, "receiving the handshake failed: %s", strerror(errno));
    free(data);
    reject_conn(k, conn, fd, cred.pid, why);
    return;
  }
  if (fd < 0) {
    free(data);
    reject_conn(k, conn, -1, cred.pid, n == 0 ? "the peer hung up without a handshake" : "the message carried no descriptor (SCM_RIGHTS)");
    return;
  }
  size_t len = (size_t)n;
  /* A sender may split its message: take whatever else is already there. */
  while (len <= KEEPER_MAX_HANDSHAKE) {
    ssize_t m = recv(conn, data + len, KEEPER_MAX_HANDSHAKE + 1 - len, MSG_DONTWAIT);
    if (m <= 0) break;
    len += (size_t)m;
  }
  if (len > KEEPER_MAX_HANDSHAKE) {
    free(data);
    reject_conn(k, conn, fd, cred.pid, "the handshake message is longer than 32 KiB");
    return;
  }
  char what[128];
  if (!is_userfaultfd(fd, what, sizeof what)) {
    char why[200];
    snprintf(why, sizeof why, "the descriptor passed is not a userfaultfd (it is %s)", what);
    free(data);
    reject_conn(k, conn, fd, cred.pid, why);
    return;
  }
  struct instance *in = calloc(1, sizeof *in);
  if (!in || (k->ninst == k->capinst && !({
        size_t cap = k->capinst ? k->capinst * 2 : 16;
        struct instance **q = realloc(k->inst, cap * sizeof *q);
        if (q) {
          k->inst = q;
          k->capinst = cap;
        }
        q != NULL;
      }))) {
    free(in);
    free(data);
    reject_conn(k, conn, fd, cred.pid, "out of memory");
    return;
  }
  in->id = ++k->next_inst_id;
  in->uffd = fd;
  in->conn = conn;
  in->pid = cred.pid;
  in->uid = cred.uid;
  in->gid = cred.gid;
  in->msg = data;
  in->msglen = len;
  in->rlog_fd = -1;
  in->since_ms = now_ms();
  in->pidfd = cred.pid > 0 ? (int)syscall(SYS_pidfd_open, cred.pid, 0) : -1;
  if (in->pidfd >= 0) fcntl(in->pidfd, F_SETFD, FD_CLOEXEC);
  k->inst[k->ninst++] = in;
  k->handshakes++;
  state_vm_saved(k, in);
  char extra[96];
  snprintf(extra, sizeof extra, "\"vm\":%u,\"vmPid\":%d,\"bytes\":%zu", in->id, (int)in->pid, len);
  klog(k, 30, extra, "holding the uffd of VM %u (pid %d)", in->id, (int)in->pid);
  if (k->active.state == W_READY) worker_enqueue(k, &k->active, SEND_UFFD, in->id);
}

static void listen_accept(struct keeper *k) {
  for (;;) {
    int c = accept4(k->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) klog(k, 40, NULL, "accept on %s failed: %s", k->o.firecracker, strerror(errno));
      return;
    }
    if ((int)k->npend >= k->o.max_pending) {
      char why[96];
      snprintf(why, sizeof why, "%d handshakes are already waiting (max pending); refusing another connection", k->o.max_pending);
      reject_conn(k, c, -1, 0, why);
      continue;
    }
    if (k->npend == k->cappend) {
      size_t cap = k->cappend ? k->cappend * 2 : 16;
      struct pending *q = realloc(k->pend, cap * sizeof *q);
      if (!q) {
        reject_conn(k, c, -1, 0, "out of memory");
        continue;
      }
      k->pend = q;
      k->cappend = cap;
    }
    k->pend[k->npend].conn = c;
    k->pend[k->npend].deadline_ms = now_ms() + k->o.handshake_timeout_ms;
    k->npend++;
  }
}

/* ------------------------------------------------------------------------------------------ */
/* workers                                                                                     */

static const char *wstate_name(enum worker_state s) {
  switch (s) {
    case W_NONE: return "none";
    case W_BOOTING: return "booting";
    case W_IDLE: return "standby";
    case W_STARTING: return "starting";
    case W_READY: return "serving";
    case W_STOPPING: return "stopping";
  }
  return "?";
}

static void worker_reset(struct worker *w) {
  if (w->ctl >= 0) close(w->ctl);
  free(w->queue);
  free(w->stats);
  memset(w, 0, sizeof *w);
  w->ctl = -1;
}

void worker_enqueue(struct keeper *k, struct worker *w, int kind, uint32_t ref) {
  (void)k;
  if (w->qlen == w->qcap) {
    size_t cap = w->qcap ? w->qcap * 2 : 16;
    struct send_item *q = realloc(w->queue, cap * sizeof *q);
    if (!q) return; /* sent again by the next worker */
    w->queue = q;
    w->qcap = cap;
  }
  w->queue[w->qlen].kind = kind;
  w->queue[w->qlen].ref = ref;
  w->qlen++;
}

/* Sends queued messages, one at a time: the next only after the worker acknowledged (the worker
 * receives one record and its descriptor per read). */
static void worker_pump(struct keeper *k, struct worker *w) {
  while (!w->awaiting_ack && w->qlen > 0 && w->ctl >= 0) {
    struct send_item it = w->queue[0];
    struct buf b = {0};
    int fd = -1;
    bool skip = false;
    if (it.kind == SEND_MEMFD) {
      struct memfd *m = &k->memfds[it.ref];
      buf_printf(&b, "MEMFD {\"index\":%u,\"name\":", it.ref);
      json_str(&b, m->name);
      buf_printf(&b, ",\"size\":%" PRIu64 "}", m->size);
      fd = m->fd;
    } else if (it.kind == SEND_START) {
      buf_printf(&b, "START {\"keeperPid\":%d,\"gen\":%u,\"memfds\":%d,\"restarts\":%" PRIu64 "}", (int)k->pid, w->gen, k->nmemfds, k->restarts);
      fd = k->devnull;
    } else if (it.kind == SEND_UFFD) {
      struct instance *in = inst_find(k, it.ref);
      if (!in || in->state != INST_HELD) {
        skip = true;
      } else {
        char *b64 = base64((const unsigned char *)in->msg, in->msglen);
        if (!b64) {
          skip = true;
        } else {
          buf_printf(&b, "UFFD {\"id\":%u,\"pid\":%d,\"uid\":%u,\"gid\":%u,\"resumed\":%u,\"msg\":\"%s\",\"removed\":[", in->id, (int)in->pid,
                     (unsigned)in->uid, (unsigned)in->gid, in->resumed, b64);
          for (uint32_t r = 0; r < in->nremoved; r++)
            buf_printf(&b, "%s[%" PRIu64 ",%" PRIu64 "]", r ? "," : "", in->removed_start[r], in->removed_end[r] - in->removed_start[r]);
          buf_printf(&b, "]}");
          free(b64);
          fd = in->uffd;
        }
      }
    } else if (it.kind == SEND_CRIU) {
      skip = !relay_send(k, w, it.ref);
    }
    if (skip || it.kind == SEND_CRIU) {
      buf_free(&b);
      memmove(w->queue, w->queue + 1, (w->qlen - 1) * sizeof *w->queue);
      w->qlen--;
      if (!skip) w->awaiting_ack = true;
      continue;
    }
    if (!b.p) return; /* out of memory: try again on the next turn */
    int rc = send_record(w->ctl, b.p, b.len, fd);
    buf_free(&b);
    if (rc == -EAGAIN || rc == -EWOULDBLOCK) return;
    if (rc < 0) {
      klog(k, 40, NULL, "sending to worker %d failed: %s", (int)w->pid, strerror(-rc));
      return; /* it is dying: its exit is handled when reaped */
    }
    if (it.kind == SEND_UFFD) {
      struct instance *in = inst_find(k, it.ref);
      if (in) {
        in->state = INST_SENT;
        in->sent_gen = w->gen;
      }
    }
    memmove(w->queue, w->queue + 1, (w->qlen - 1) * sizeof *w->queue);
    w->qlen--;
    w->awaiting_ack = true;
  }
}

static bool worker_spawn(struct keeper *k, struct worker *w, bool standby) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) {
    set_error(k, "socketpair: %s", strerror(errno));
    klog(k, 50, NULL, "cannot create the worker channel: %s", strerror(errno));
    return false;
  }
  pid_t pid = fork();
  if (pid < 0) {
    set_error(k, "fork: %s", strerror(errno));
    klog(k, 50, NULL, "cannot start a worker: fork: %s", strerror(errno));
    close(sv[0]);
    close(sv[1]);
    return false;
  }
  if (pid == 0) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    signal(SIGPIPE, SIG_DFL);
    setpgid(0, 0); /* a terminal's Ctrl-C reaches the keeper, which stops the workers itself */
    if (sv[1] == 3)
      fcntl(3, F_SETFD, 0);
    else if (dup2(sv[1], 3) < 0)
      _exit(126);
    dup2(2, 1); /* stdout is the keeper's: a worker writes its lines to stderr */
    char pidbuf[32];
    snprintf(pidbuf, sizeof pidbuf, "%d", (int)k->pid);
    setenv("TIERSTACK_KEEPER_PID", pidbuf, 1);
    setenv("TIERSTACK_KEEPER_CTL_FD", "3", 1);
    setenv("TIERSTACK_KEEPER_ROLE", standby ? "standby" : "worker", 1);
    execvp(k->o.worker_argv[0], k->o.worker_argv);
    fprintf(stderr, "tierstack-keeper: cannot run %s: %s\n", k->o.worker_argv[0], strerror(errno));
    _exit(127);
  }
  close(sv[1]);
  set_nonblock(sv[0]);
  worker_reset(w);
  w->pid = pid;
  w->ctl = sv[0];
  w->gen = ++k->next_gen;
  w->state = W_BOOTING;
  w->spawned_ms = now_ms();
  char extra[64];
  snprintf(extra, sizeof extra, "\"workerPid\":%d,\"gen\":%u", (int)pid, w->gen);
  klog(k, 30, extra, "started %s worker %d", standby ? "a standby" : "a", (int)pid);
  state_workers(k);
  return true;
}

static void worker_start_serving(struct keeper *k, struct worker *w) {
  w->state = W_STARTING;
  for (int i = 0; i < k->nmemfds; i++) worker_enqueue(k, w, SEND_MEMFD, (uint32_t)i);
  worker_enqueue(k, w, SEND_START, 0);
  worker_pump(k, w);
}

/* Puts a worker in the serving slot when none is there and the back-off allows it. */
static void start_active(struct keeper *k) {
  if (k->stopping || k->active.state != W_NONE || now_ms() < k->next_start_ms) return;
  if (k->standby.state == W_IDLE) {
    k->active = k->standby;
    memset(&k->standby, 0, sizeof k->standby);
    k->standby.ctl = -1;
    k->standby_next_ms = now_ms() + 1000; /* the next spare boots once this one serves */
    char extra[64];
    snprintf(extra, sizeof extra, "\"workerPid\":%d", (int)k->active.pid);
    klog(k, 30, extra, "promoting standby worker %d", (int)k->active.pid);
    worker_start_serving(k, &k->active);
    return;
  }
  if (k->standby.state == W_BOOTING) return; /* promoted when its HELLO arrives */
  worker_spawn(k, &k->active, false);
}

static void maybe_spawn_standby(struct keeper *k) {
  if (!k->o.standby || k->stopping || k->standby.state != W_NONE || k->active.state != W_READY) return;
  if (now_ms() < k->standby_next_ms) return;
  worker_spawn(k, &k->standby, true);
}

static int64_t backoff_ms(struct keeper *k, uint32_t failures) {
  if (failures <= 1) return 0;
  int64_t d = k->o.backoff_base_ms;
  for (uint32_t i = 2; i < failures && d < k->o.backoff_max_ms; i++) d *= 2;
  return d < k->o.backoff_max_ms ? d : k->o.backoff_max_ms;
}

static void print_worker_line(struct keeper *k, struct worker *w, const char *human) {
  struct buf b = {0};
  buf_printf(&b, "{\"keeperPid\":%d,\"workerPid\":%d,\"gen\":%u,\"restarts\":%" PRIu64, (int)k->pid, (int)w->pid, w->gen, k->restarts);
  if (k->restarts > 0 && k->last_pid > 0) buf_printf(&b, ",\"replaced\":%d,\"exit\":%s,\"consecutiveFailures\":%u", (int)k->last_pid, k->last_exit, k->failures);
  if (k->o.firecracker) {
    buf_printf(&b, ",\"socket\":");
    json_str(&b, k->o.firecracker);
  }
  if (k->o.criu_port >= 0) buf_printf(&b, ",\"port\":%d", k->bound_port);
  if (k->o.status) {
    buf_printf(&b, ",\"status\":");
    json_str(&b, k->o.status);
  }
  buf_printf(&b, ",\"vms\":%zu,\"connections\":%zu}\n", k->ninst, k->nrelays);
  if (!k->printed_first && human && *human) {
    /* "%PORT%" stands for the port bound (a worker asked for port 0 cannot know it). */
    const char *p = strstr(human, "%PORT%");
    if (p && k->o.criu_port >= 0)
      buf_printf(&b, "%.*s%d%s\n", (int)(p - human), human, k->bound_port, p + 6);
    else
      buf_printf(&b, "%s\n", human);
  }
  k->printed_first = true;
  if (b.p) out_line(b.p, b.len);
  buf_free(&b);
}

static void begin_stop(struct keeper *k, const char *why);

/* A worker (active or standby) was reaped. */
static void worker_died(struct keeper *k, struct worker *w, int st) {
  char exit_desc[96];
  describe_status(st, exit_desc, sizeof exit_desc);
  int64_t now = now_ms();
  bool active = w == &k->active;
  bool was_ready = w->state == W_READY;
  pid_t pid = w->pid;
  uint32_t gen = w->gen;
  int64_t served_ms = w->ready_ms ? now - w->ready_ms : -1;
  if (k->stopping) {
    char extra[160];
    snprintf(extra, sizeof extra, "\"workerPid\":%d,\"exit\":%s", (int)pid, exit_desc);
    klog(k, 30, extra, "worker %d stopped", (int)pid);
    worker_reset(w);
    return;
  }
  if (!active) {
    k->standby_failures++;
    k->standby_next_ms = now + (backoff_ms(k, k->standby_failures + 1) ?: k->o.backoff_base_ms);
    char extra[160];
    snprintf(extra, sizeof extra, "\"workerPid\":%d,\"exit\":%s,\"standbyFailures\":%u", (int)pid, exit_desc, k->standby_failures);
    klog(k, 40, extra, "standby worker %d died", (int)pid);
    set_error(k, "standby worker %d died: %s", (int)pid, exit_desc);
    worker_reset(w);
    return;
  }
  bool stable = was_ready && served_ms >= k->o.stable_ms;
  k->failures = stable ? 1 : k->failures + 1;
  int64_t delay = backoff_ms(k, k->failures);
  k->next_start_ms = now + delay;
  k->restarts++;
  k->last_pid = pid;
  k->last_exit_ms = now;
  snprintf(k->last_exit, sizeof k->last_exit, "%s", exit_desc);
  set_error(k, "worker %d died: %s", (int)pid, exit_desc);
  worker_reset(w);
  /* Every VM it served: held again, and woken so that faults it read and never answered are
   * faulted again (they queue up on the uffd until the next worker reads them). */
  size_t vms = 0;
  for (size_t i = 0; i < k->ninst; i++) {
    struct instance *in = k->inst[i];
    if (in->state == INST_HELD || in->sent_gen != gen) continue;
    in->state = INST_HELD;
    in->resumed++;
    wake_vm(k, in);
    vms++;
  }
  relay_worker_died(k, gen);
  char extra[256];
  snprintf(extra, sizeof extra, "\"workerPid\":%d,\"exit\":%s,\"servedMs\":%" PRId64 ",\"vms\":%zu,\"consecutiveFailures\":%u,\"nextStartInMs\":%" PRId64, (int)pid,
           exit_desc, served_ms, vms, k->failures, delay);
  klog(k, k->failures >= 3 ? 50 : 40, extra, "worker %d died; %s", (int)pid,
       delay > 0 ? "it keeps dying: backing off before the next one" : "replacing it now");
  if (k->o.give_up_after > 0 && !k->printed_first && k->failures >= k->o.give_up_after && k->ninst == 0 && k->nrelays == 0) {
    klog(k, 60, NULL, "no worker could start (%u died in a row before serving); giving up", k->failures);
    k->exit_code = 1;
    begin_stop(k, "no worker could start");
  }
}

static void reap(struct keeper *k) {
  for (;;) {
    int st;
    pid_t p = waitpid(-1, &st, WNOHANG);
    if (p <= 0) return;
    if (p == k->active.pid)
      worker_died(k, &k->active, st);
    else if (p == k->standby.pid)
      worker_died(k, &k->standby, st);
    state_workers(k);
  }
}

static void handle_record(struct keeper *k, struct worker *w, char *rec) {
  char *sp = strchr(rec, ' ');
  char *args = sp ? sp + 1 : rec + strlen(rec);
  if (sp) *sp = 0;
  if (!strcmp(rec, "HELLO")) {
    if (w == &k->standby) {
      w->state = W_IDLE;
      k->standby_failures = 0;
      start_active(k);
    } else if (w->state == W_BOOTING) {
      worker_start_serving(k, w);
    }
  } else if (!strcmp(rec, "ACK")) {
    w->awaiting_ack = false;
    if (*args == 'C') relay_acked(k, (uint32_t)strtoul(args + 1, NULL, 10));
    worker_pump(k, w);
  } else if (!strcmp(rec, "READY")) {
    if (w != &k->active) return;
    w->state = W_READY;
    w->ready_ms = now_ms();
    k->standby_next_ms = now_ms() + (k->restarts > 0 ? 200 : 0);
    print_worker_line(k, w, args);
    char extra[64];
    snprintf(extra, sizeof extra, "\"workerPid\":%d,\"gen\":%u", (int)w->pid, w->gen);
    klog(k, 30, extra, "worker %d serves; %zu VMs and %zu connections handed over", (int)w->pid, k->ninst, k->nrelays);
    for (size_t i = 0; i < k->ninst; i++)
      if (k->inst[i]->state == INST_HELD) worker_enqueue(k, w, SEND_UFFD, k->inst[i]->id);
    relay_worker_ready(k, w);
    worker_pump(k, w);
  } else if (!strcmp(rec, "ADOPTED")) {
    char *end;
    uint32_t id = (uint32_t)strtoul(args, &end, 10);
    struct instance *in = inst_find(k, id);
    if (!in) return;
    in->state = INST_ADOPTED;
    in->nranges = 0;
    while (*end == ' ' || *end == ',') {
      char *e2;
      uint64_t s = strtoull(end + 1, &e2, 10);
      if (*e2 != ':' || in->nranges >= KEEPER_MAX_RANGES) break;
      uint64_t l = strtoull(e2 + 1, &end, 10);
      in->range_start[in->nranges] = s;
      in->range_len[in->nranges] = l;
      in->nranges++;
    }
    /* The new worker reads this uffd now: wake whatever still waits on an answer of the old one. */
    if (in->resumed > 0) wake_vm(k, in);
  } else if (!strcmp(rec, "REMOVED")) {
    /* REMOVED <id> <start> <end>: sent by a fault thread as it reads a REMOVE event. */
    char *end;
    uint32_t id = (uint32_t)strtoul(args, &end, 10);
    struct instance *in = inst_find(k, id);
    if (!in) return;
    uint64_t a = strtoull(end, &end, 10);
    uint64_t b = strtoull(end, &end, 10);
    /* Written down (--state-dir) before the next record is read: a keeper killed after this line
     * leaves the range to its successor. */
    int what = inst_add_removed(k, in, a, b);
    if (what != REMOVED_SAME) state_removed_append(k, in, what, a, b);
  } else if (!strcmp(rec, "REJECT")) {
    char *end;
    uint32_t id = (uint32_t)strtoul(args, &end, 10);
    struct instance *in = inst_find(k, id);
    if (!in) return;
    while (*end == ' ') end++;
    char extra[64];
    snprintf(extra, sizeof extra, "\"vm\":%u,\"peerPid\":%d", in->id, (int)in->pid);
    klog(k, 40, extra, "the worker refused VM %u: %s", in->id, end);
    set_error(k, "the worker refused VM %u: %s", in->id, end);
    k->rejected++;
    inst_remove(k, in, "refused by the worker");
  } else if (!strcmp(rec, "END")) {
    struct instance *in = inst_find(k, (uint32_t)strtoul(args, NULL, 10));
    if (!in) return;
    struct pollfd p = {.fd = in->pidfd, .events = POLLIN};
    if (in->pidfd < 0 || poll(&p, 1, 0) == 1) {
      inst_remove(k, in, "the VM exited");
    } else {
      /* The worker stopped serving a VM that still runs: keep holding it for the next worker. */
      in->state = INST_HELD;
      klog(k, 50, NULL, "worker %d ended the restore of VM %u while the VM runs; holding it for the next worker", (int)w->pid, in->id);
      set_error(k, "worker %d ended the restore of running VM %u", (int)w->pid, in->id);
    }
  } else if (!strcmp(rec, "STATS")) {
    size_t n = strlen(args);
    if (n > 0 && args[0] == '{' && args[n - 1] == '}' && !strchr(args, '\n')) {
      free(w->stats);
      w->stats = strdup(args);
    }
  } else if (!strcmp(rec, "FINAL")) {
    size_t n = strlen(args);
    if (n > 0 && !strchr(args, '\n')) {
      out_line(args, n);
      out_line("\n", 1);
    }
  } else if (!strcmp(rec, "CKPT")) {
    relay_checkpoint(k, args);
  } else if (!strcmp(rec, "CLOSED")) {
    relay_closed_by_worker(k, (uint32_t)strtoul(args, NULL, 10));
  } else if (!strcmp(rec, "ERROR")) {
    set_error(k, "worker %d: %s", (int)w->pid, args);
    klog(k, 50, NULL, "worker %d: %s", (int)w->pid, args);
  }
}

static void worker_readable(struct keeper *k, struct worker *w) {
  char *rec = malloc(KEEPER_RECORD_MAX + 1);
  if (!rec) return;
  for (int i = 0; i < 64 && w->ctl >= 0; i++) {
    ssize_t n = recv(w->ctl, rec, KEEPER_RECORD_MAX, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) break;
    if (n == 0) {
      /* Its end closed: it is exiting (reaped soon) or it dropped the channel — useless either way. */
      close(w->ctl);
      w->ctl = -1;
      if (w->pid > 0) kill(w->pid, SIGKILL);
      break;
    }
    rec[n] = 0;
    handle_record(k, w, rec);
  }
  free(rec);
}

/* ------------------------------------------------------------------------------------------ */
/* status                                                                                      */

static void status_json(struct keeper *k, struct buf *b) {
  int64_t now = now_ms();
  const char *state = k->stopping ? "stopping"
                      : k->active.state == W_READY ? "serving"
                      : k->active.state != W_NONE ? "starting"
                      : now < k->next_start_ms ? "backoff"
                                               : "starting";
  buf_printf(b, "{\"keeperPid\":%d,\"uptimeMs\":%" PRId64 ",\"state\":\"%s\",\"healthy\":%s", (int)k->pid, now - k->started_ms, state,
             k->active.state == W_READY && !k->stopping ? "true" : "false");
  if (k->o.firecracker) {
    buf_printf(b, ",\"socket\":");
    json_str(b, k->o.firecracker);
  }
  if (k->o.criu_port >= 0) buf_printf(b, ",\"port\":%d", k->bound_port);
  struct worker *ws[2] = {&k->active, &k->standby};
  const char *names[2] = {"worker", "standby"};
  for (int i = 0; i < 2; i++) {
    struct worker *w = ws[i];
    if (w->state == W_NONE) {
      buf_printf(b, ",\"%s\":null", names[i]);
      continue;
    }
    buf_printf(b, ",\"%s\":{\"pid\":%d,\"gen\":%u,\"state\":\"%s\",\"upMs\":%" PRId64 ",\"servingMs\":%" PRId64, names[i], (int)w->pid, w->gen,
               wstate_name(w->state), now - w->spawned_ms, w->ready_ms ? now - w->ready_ms : 0);
    if (w->stats) buf_printf(b, ",\"stats\":%s", w->stats);
    buf_printf(b, "}");
  }
  int64_t next = k->active.state == W_NONE && k->next_start_ms > now ? k->next_start_ms - now : 0;
  buf_printf(b, ",\"restarts\":%" PRIu64 ",\"consecutiveFailures\":%u,\"backoffMs\":%" PRId64 ",\"nextStartInMs\":%" PRId64, k->restarts, k->failures,
             backoff_ms(k, k->failures), next);
  if (k->last_pid > 0)
    buf_printf(b, ",\"lastExit\":{\"pid\":%d,\"exit\":%s,\"agoMs\":%" PRId64 "}", (int)k->last_pid, k->last_exit, now - k->last_exit_ms);
  else
    buf_printf(b, ",\"lastExit\":null");
  buf_printf(b, ",\"handshakes\":{\"accepted\":%" PRIu64 ",\"rejected\":%" PRIu64 ",\"pending\":%zu}", k->handshakes, k->rejected, k->npend);
  buf_printf(b, ",\"wakes\":%" PRIu64 ",\"wakeErrors\":%" PRIu64 ",\"vmsEnded\":%" PRIu64 ",\"recovered\":%" PRIu64, k->wakes, k->wake_errors,
             k->vms_ended, k->recovered);
  buf_printf(b, ",\"vms\":[");
  for (size_t i = 0; i < k->ninst && i < 256; i++) {
    struct instance *in = k->inst[i];
    buf_printf(b, "%s{\"id\":%u,\"pid\":%d,\"state\":\"%s\",\"workersLost\":%u,\"ranges\":%u}", i ? "," : "", in->id, (int)in->pid,
               in->state == INST_HELD ? "held" : in->state == INST_SENT ? "sent" : "served", in->resumed, in->nranges);
  }
  buf_printf(b, "]");
  relay_status(k, b);
  buf_printf(b, ",\"memfds\":[");
  for (int i = 0; i < k->nmemfds; i++) {
    buf_printf(b, "%s{\"name\":", i ? "," : "");
    json_str(b, k->memfds[i].name);
    buf_printf(b, ",\"bytes\":%" PRIu64 ",\"fd\":%d}", k->memfds[i].size, k->memfds[i].fd);
  }
  buf_printf(b, "],\"lastError\":");
  if (k->last_error[0])
    json_str(b, k->last_error);
  else
    buf_printf(b, "null");
  buf_printf(b, "}\n");
}

static void status_accept(struct keeper *k) {
  for (;;) {
    int c = accept4(k->status_fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) {
      if (errno == EINTR) continue;
      return;
    }
    struct timeval tv = {.tv_sec = 1};
    setsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct buf b = {0};
    status_json(k, &b);
    if (b.p) {
      const char *p = b.p;
      size_t n = b.len;
      while (n > 0) {
        ssize_t w = send(c, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) break;
        p += w;
        n -= (size_t)w;
      }
    }
    buf_free(&b);
    close(c);
  }
}

/* ------------------------------------------------------------------------------------------ */
/* setup                                                                                       */

/* Removes a socket file we bound, unless another process bound a new one at that path since. */
static void unlink_ours(const char *path, dev_t dev, ino_t ino) {
  struct stat st;
  if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_dev == dev && st.st_ino == ino) unlink(path);
}

static int listen_unix(const char *path, int backlog, dev_t *dev, ino_t *ino) {
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof a.sun_path) {
    errno = ENAMETOOLONG;
    return -1;
  }
  strcpy(a.sun_path, path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  struct stat st;
  if (lstat(path, &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, backlog) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  chmod(path, 0600); /* only the owner (and root) may hand us descriptors or read our status */
  if (lstat(path, &st) == 0) {
    *dev = st.st_dev;
    *ino = st.st_ino;
  }
  return fd;
}

static int listen_tcp(const char *host, int port, int *bound) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
    errno = EINVAL;
    return -1;
  }
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(fd, (struct sockaddr *)&a, sizeof a) != 0 || listen(fd, 128) != 0) {
    int e = errno;
    close(fd);
    errno = e;
    return -1;
  }
  socklen_t l = sizeof a;
  getsockname(fd, (struct sockaddr *)&a, &l);
  *bound = ntohs(a.sin_port);
  return fd;
}

static uint64_t parse_size(const char *s, bool *ok) {
  char *e;
  errno = 0;
  unsigned long long v = strtoull(s, &e, 10);
  *ok = errno == 0 && e != s && *e == 0 && v > 0;
  return v;
}

static void usage(void) {
  fprintf(stderr,
          "usage: tierstack-keeper [--firecracker <socket> | --criu-port <port> [--criu-host <addr>]] [--status <socket>]\n"
          "                        [--memfd <name>:<bytes>]... [--standby] [--handshake-timeout-ms n] [--max-pending n]\n"
          "                        [--stable-ms n] [--backoff-base-ms n] [--backoff-max-ms n] [--give-up-after n] [--label text]\n"
          "                        -- <worker command> [args...]\n");
}

static int parse_args(struct keeper *k, int argc, char **argv) {
  struct options *o = &k->o;
  o->criu_port = -1;
  o->criu_host = "127.0.0.1";
  o->handshake_timeout_ms = 5000;
  o->max_pending = 64;
  o->stable_ms = 5000;
  o->backoff_base_ms = 100;
  o->backoff_max_ms = 10000;
  o->stop_grace_ms = 5000;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    bool ok = true;
    if (!strcmp(a, "--")) {
      if (i + 1 >= argc) break;
      o->worker_argv = argv + i + 1;
      break;
    } else if (!strcmp(a, "--standby")) {
      o->standby = true;
      continue;
    } else if (!strcmp(a, "--no-standby")) {
      o->standby = false;
      continue;
    }
    if (!v) {
      fprintf(stderr, "tierstack-keeper: %s needs a value\n", a);
      return -1;
    }
    i++;
    if (!strcmp(a, "--firecracker"))
      o->firecracker = v;
    else if (!strcmp(a, "--criu-port")) {
      char *e;
      long p = strtol(v, &e, 10);
      ok = e != v && *e == 0 && p >= 0 && p <= 65535;
      o->criu_port = (int)p;
    }
    else if (!strcmp(a, "--criu-host"))
      o->criu_host = v;
    else if (!strcmp(a, "--status"))
      o->status = v;
    else if (!strcmp(a, "--label"))
      o->label = v;
    else if (!strcmp(a, "--state-dir"))
      o->state_dir = v;
    else if (!strcmp(a, "--handshake-timeout-ms"))
      o->handshake_timeout_ms = (int)parse_size(v, &ok);
    else if (!strcmp(a, "--max-pending"))
      o->max_pending = (int)parse_size(v, &ok);
    else if (!strcmp(a, "--stable-ms"))
      o->stable_ms = (int64_t)parse_size(v, &ok);
    else if (!strcmp(a, "--backoff-base-ms"))
      o->backoff_base_ms = (int64_t)parse_size(v, &ok);
    else if (!strcmp(a, "--backoff-max-ms"))
      o->backoff_max_ms = (int64_t)parse_size(v, &ok);
    else if (!strcmp(a, "--give-up-after"))
      o->give_up_after = (uint32_t)parse_size(v, &ok);
    else if (!strcmp(a, "--memfd")) {
      const char *colon = strrchr(v, ':');
      if (!colon || colon == v || (size_t)(colon - v) >= sizeof k->memfds[0].name || k->nmemfds >= KEEPER_MAX_MEMFDS) {
        ok = false;
      } else {
        struct memfd *m = &k->memfds[k->nmemfds];
        memcpy(m->name, v, (size_t)(colon - v));
        m->name[colon - v] = 0;
        m->size = parse_size(colon + 1, &ok);
        m->fd = -1;
        if (ok) k->nmemfds++;
      }
    } else {
      fprintf(stderr, "tierstack-keeper: unknown option %s\n", a);
      usage();
      return -1;
    }
    if (!ok) {
      fprintf(stderr, "tierstack-keeper: bad value for %s: %s\n", a, v);
      return -1;
    }
  }
  if (!o->worker_argv || !o->worker_argv[0]) {
    fprintf(stderr, "tierstack-keeper: no worker command (after --)\n");
    usage();
    return -1;
  }
  if (!o->firecracker && o->criu_port < 0) {
    fprintf(stderr, "tierstack-keeper: give --firecracker <socket> or --criu-port <port>\n");
    usage();
    return -1;
  }
  if (o->firecracker && o->criu_port >= 0) {
    fprintf(stderr, "tierstack-keeper: give only one of --firecracker and --criu-port\n");
    return -1;
  }
  return 0;
}

static uint64_t read_min_addr(void) {
  uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
  uint64_t v = 65536;
  FILE *f = fopen("/proc/sys/vm/mmap_min_addr", "re");
  if (f) {
    unsigned long long x;
    if (fscanf(f, "%llu", &x) == 1) v = x;
    fclose(f);
  }
  v = (v + page - 1) / page * page;
  return v < page ? page : v;
}

/* ------------------------------------------------------------------------------------------ */
/* the loop                                                                                    */

enum { P_SIG = 1, P_LISTEN, P_STATUS, P_PEND, P_INST, P_ACTIVE, P_STANDBY, P_CRIU_LISTEN, P_RELAY };

struct slot {
  int kind;
  uint32_t id;
  int what;
  struct relay *relay;
  int pend_conn;
};

static void begin_stop(struct keeper *k, const char *why) {
  if (k->stopping) return;
  k->stopping = true;
  k->stop_deadline_ms = now_ms() + k->o.stop_grace_ms;
  klog(k, 30, NULL, "stopping (%s)", why);
  if (k->listen_fd >= 0) {
    close(k->listen_fd);
    k->listen_fd = -1;
    if (k->o.firecracker) unlink_ours(k->o.firecracker, k->listen_dev, k->listen_ino);
  }
  struct worker *ws[2] = {&k->active, &k->standby};
  for (int i = 0; i < 2; i++)
    if (ws[i]->state != W_NONE && ws[i]->pid > 0) {
      kill(ws[i]->pid, SIGTERM);
      ws[i]->state = W_STOPPING;
    }
}

int main(int argc, char **argv) {
  struct keeper *k = calloc(1, sizeof *k);
  if (!k) return 1;
  k->pid = getpid();
  k->started_ms = now_ms();
  k->listen_fd = k->status_fd = k->sigfd = k->devnull = -1;
  k->active.ctl = k->standby.ctl = -1;
  if (parse_args(k, argc, argv) != 0) return 2;
  k->min_addr = read_min_addr();
  if (state_init(k) != 0) return 1;

  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGCHLD);
  sigaddset(&mask, SIGTERM);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGHUP);
  sigprocmask(SIG_BLOCK, &mask, NULL);
  signal(SIGPIPE, SIG_IGN);
  k->sigfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
  k->devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (k->sigfd < 0 || k->devnull < 0) {
    fprintf(stderr, "tierstack-keeper: setup failed: %s\n", strerror(errno));
    return 1;
  }
  for (int i = 0; i < k->nmemfds; i++) {
    struct memfd *m = &k->memfds[i];
    char name[64];
    snprintf(name, sizeof name, "tierstack-%s", m->name);
    m->fd = memfd_create(name, MFD_CLOEXEC);
    if (m->fd < 0 || ftruncate(m->fd, (off_t)m->size) != 0) {
      fprintf(stderr, "tierstack-keeper: memfd %s of %" PRIu64 " bytes: %s\n", m->name, m->size, strerror(errno));
      return 1;
    }
  }
  if (k->o.firecracker) {
    k->listen_fd = listen_unix(k->o.firecracker, 128, &k->listen_dev, &k->listen_ino);
    if (k->listen_fd < 0) {
      fprintf(stderr, "tierstack-keeper: cannot listen on %s: %s\n", k->o.firecracker, strerror(errno));
      return 1;
    }
  } else {
    k->listen_fd = listen_tcp(k->o.criu_host, k->o.criu_port, &k->bound_port);
    if (k->listen_fd < 0) {
      fprintf(stderr, "tierstack-keeper: cannot listen on %s:%d: %s\n", k->o.criu_host, k->o.criu_port, strerror(errno));
      return 1;
    }
  }
  if (k->o.status) {
    k->status_fd = listen_unix(k->o.status, 16, &k->status_dev, &k->status_ino);
    if (k->status_fd < 0) {
      fprintf(stderr, "tierstack-keeper: cannot listen on %s: %s\n", k->o.status, strerror(errno));
      return 1;
    }
  }
  {
    char extra[256];
    snprintf(extra, sizeof extra, "\"standby\":%s,\"memfds\":%d,\"wakeRange\":[%" PRIu64 ",%llu]", k->o.standby ? "true" : "false", k->nmemfds, k->min_addr,
             KEEPER_WAKE_END);
    if (k->o.firecracker)
      klog(k, 30, extra, "keeper listening on %s", k->o.firecracker);
    else
      klog(k, 30, extra, "keeper listening on %s:%d", k->o.criu_host, k->bound_port);
  }

  struct pollfd *pfd = NULL;
  struct slot *slots = NULL;
  size_t cap = 0;
  for (;;) {
    if (k->stopping && k->active.state == W_NONE && k->standby.state == W_NONE) break;
    start_active(k);
    maybe_spawn_standby(k);
    size_t need = 8 + k->npend + k->ninst + 2 * k->nrelays;
    if (need > cap) {
      size_t c2 = need * 2;
      struct pollfd *p2 = realloc(pfd, c2 * sizeof *p2);
      if (p2) pfd = p2;
      struct slot *s2 = realloc(slots, c2 * sizeof *s2);
      if (s2) slots = s2;
      if (p2 && s2) cap = c2;
      if (cap < need) {
        klog(k, 50, NULL, "out of memory building the poll set");
        sleep(1);
        continue;
      }
    }
    size_t n = 0;
#define ADD(fd_, ev_, kind_, id_)                                 \
  do {                                                           \
    pfd[n] = (struct pollfd){.fd = (fd_), .events = (short)(ev_)}; \
    slots[n] = (struct slot){.kind = (kind_), .id = (id_)};       \
    n++;                                                          \
  } while (0)
    ADD(k->sigfd, POLLIN, P_SIG, 0);
    if (k->listen_fd >= 0 && !k->stopping) ADD(k->listen_fd, POLLIN, k->o.firecracker ? P_LISTEN : P_CRIU_LISTEN, 0);
    if (k->status_fd >= 0) ADD(k->status_fd, POLLIN, P_STATUS, 0);
    for (size_t i = 0; i < k->npend; i++) {
      ADD(k->pend[i].conn, POLLIN, P_PEND, 0);
      slots[n - 1].pend_conn = k->pend[i].conn;
    }
    for (size_t i = 0; i < k->ninst; i++) {
      struct instance *in = k->inst[i];
      if (in->pidfd >= 0)
        ADD(in->pidfd, POLLIN, P_INST, in->id);
      else
        ADD(in->conn, POLLRDHUP, P_INST, in->id);
    }
    if (k->active.ctl >= 0) ADD(k->active.ctl, POLLIN | (k->active.qlen && !k->active.awaiting_ack ? POLLOUT : 0), P_ACTIVE, 0);
    if (k->standby.ctl >= 0) ADD(k->standby.ctl, POLLIN, P_STANDBY, 0);
    {
      struct relay *owners[1024];
      int whats[1024];
      int m = relay_poll_fill(k, pfd + n, owners, whats, (int)((cap - n) < 1024 ? cap - n : 1024));
      for (int j = 0; j < m; j++) {
        slots[n + (size_t)j] = (struct slot){.kind = P_RELAY, .relay = owners[j], .what = whats[j], .id = owners[j]->id};
      }
      n += (size_t)m;
    }
#undef ADD
    int64_t now = now_ms();
    int64_t wake_at = -1;
#define AT(t_)                                          \
  do {                                                  \
    int64_t t__ = (t_);                                 \
    if (wake_at < 0 || t__ < wake_at) wake_at = t__;    \
  } while (0)
    for (size_t i = 0; i < k->npend; i++) AT(k->pend[i].deadline_ms);
    if (!k->stopping && k->active.state == W_NONE) AT(k->next_start_ms);
    if (k->o.standby && !k->stopping && k->standby.state == W_NONE && k->active.state == W_READY) AT(k->standby_next_ms);
    if (k->stopping) AT(k->stop_deadline_ms);
#undef AT
    int timeout = wake_at < 0 ? -1 : wake_at <= now ? 0 : (int)(wake_at - now > 60000 ? 60000 : wake_at - now);
    int r = poll(pfd, n, timeout);
    if (r < 0 && errno != EINTR) {
      klog(k, 50, NULL, "poll failed: %s", strerror(errno));
      sleep(1);
      continue;
    }
    for (size_t i = 0; r > 0 && i < n; i++) {
      if (!pfd[i].revents) continue;
      struct slot *s = &slots[i];
      switch (s->kind) {
        case P_SIG: {
          struct signalfd_siginfo si;
          while (read(k->sigfd, &si, sizeof si) == (ssize_t)sizeof si) {
            if (si.ssi_signo == SIGCHLD)
              reap(k);
            else
              begin_stop(k, si.ssi_signo == SIGINT ? "SIGINT" : si.ssi_signo == SIGHUP ? "SIGHUP" : "SIGTERM");
          }
          break;
        }
        case P_LISTEN:
          listen_accept(k);
          break;
        case P_CRIU_LISTEN:
          relay_accept(k);
          break;
        case P_STATUS:
          status_accept(k);
          break;
        case P_PEND:
          for (size_t j = 0; j < k->npend; j++)
            if (k->pend[j].conn == s->pend_conn) {
              pending_read(k, j);
              break;
            }
          break;
        case P_INST: {
          struct instance *in = inst_find(k, s->id);
          if (in) inst_remove(k, in, in->pidfd >= 0 ? "the VM exited" : "the VM hung up");
          break;
        }
        case P_ACTIVE:
          if (pfd[i].revents & POLLOUT) worker_pump(k, &k->active);
          if (pfd[i].revents & (POLLIN | POLLHUP | POLLERR)) worker_readable(k, &k->active);
          break;
        case P_STANDBY:
          worker_readable(k, &k->standby);
          break;
        case P_RELAY:
          if (relay_find(k, s->id) == s->relay) relay_event(k, s->relay, s->what, pfd[i].revents);
          break;
      }
    }
    now = now_ms();
    for (size_t j = 0; j < k->npend;) {
      if (k->pend[j].deadline_ms > now) {
        j++;
        continue;
      }
      int c = k->pend[j].conn;
      pending_remove(k, j);
      char why[96];
      snprintf(why, sizeof why, "no handshake message within %d ms", k->o.handshake_timeout_ms);
      char extra[64];
      snprintf(extra, sizeof extra, "\"code\":\"TS_ERR_TIMEOUT\"");
      klog(k, 40, extra, "handshake dropped: %s", why);
      set_error(k, "handshake dropped: %s", why);
      k->rejected++;
      close(c);
    }
    if (k->stopping && now >= k->stop_deadline_ms) {
      struct worker *ws[2] = {&k->active, &k->standby};
      for (int i = 0; i < 2; i++)
        if (ws[i]->state != W_NONE && ws[i]->pid > 0) kill(ws[i]->pid, SIGKILL);
      k->stop_deadline_ms = now + 1000;
    }
  }
  relay_close_all(k);
  /* VMs still running stay recorded in --state-dir: a keeper started on it takes them back. */
  while (k->ninst > 0) {
    inst_free(k->inst[--k->ninst]);
  }
  state_close(k);
  for (size_t i = 0; i < k->npend; i++) close(k->pend[i].conn);
  if (k->status_fd >= 0) {
    close(k->status_fd);
    unlink_ours(k->o.status, k->status_dev, k->status_ino);
  }
  for (int i = 0; i < k->nmemfds; i++) close(k->memfds[i].fd);
  klog(k, 30, NULL, "keeper stopped");
  free(pfd);
  free(slots);
  free(k->inst);
  free(k->pend);
  free(k->relays);
  int code = k->exit_code;
  free(k);
  return code;
}
