/*
 * tierstack-keeper: holds the descriptors a restore worker must not take to its grave.
 *
 * The keeper does no page work. It binds the Firecracker listening socket (or the CRIU page-server
 * TCP port), receives every handshake (the JSON mappings and the userfaultfd, SCM_RIGHTS) and keeps
 * the uffd, the message and the connection for as long as the VM lives; it creates the memfds the
 * workers' DRAM cache lives in; it spawns the page-serving worker and hands it every descriptor over
 * a SOCK_SEQPACKET socket pair (SCM_RIGHTS). When the worker dies (kill -9, abort, OOM) it wakes every
 * thread blocked on a fault the dead worker read but never answered (UFFDIO_WAKE), starts the next
 * worker (a warm standby when there is one, with back-off when workers keep dying) and sends it
 * everything again. CRIU connections are relayed: the keeper is the TCP endpoint and replays the
 * requests a dead worker had not answered to the next one, dropping the answer bytes the client
 * already has (the answers are a pure function of the requests).
 *
 * No static mutable state: everything lives in one struct keeper that main() allocates.
 */
#ifndef TIERSTACK_KEEPER_H
#define TIERSTACK_KEEPER_H

#define _GNU_SOURCE
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <poll.h>
#include <sys/types.h>

#define KEEPER_MAX_MEMFDS 4
#define KEEPER_MAX_RANGES 32
/* Removed ranges remembered per VM (merged as they come): enough for a balloon's worth of
 * scattered drops, small enough that the UFFD record handing them over stays well under the
 * channel's message limit. */
#define KEEPER_MAX_REMOVED 1024
/* Largest handshake message kept (Firecracker's JSON for a handful of regions is < 1 KiB). The
 * message is forwarded base64-encoded in one SEQPACKET record that must stay under 64 KiB. */
#define KEEPER_MAX_HANDSHAKE (32 * 1024)
#define KEEPER_RECORD_MAX (64 * 1024)

struct buf {
  char *p;
  size_t len, cap;
};

enum inst_state { INST_HELD = 0, INST_SENT, INST_ADOPTED };

/* One VM (Firecracker) whose uffd the keeper holds. */
struct instance {
  uint32_t id;
  int uffd, conn, pidfd;
  pid_t pid;
  uid_t uid;
  gid_t gid;
  char *msg;
  size_t msglen;
  enum inst_state state;
  uint32_t sent_gen;  /* worker generation it was last sent to */
  uint32_t resumed;   /* workers that died while serving it */
  uint64_t start;     /* the VM process's start time (/proc/<pid>/stat), for --state-dir */
  uint32_t nranges;
  uint64_t range_start[KEEPER_MAX_RANGES], range_len[KEEPER_MAX_RANGES];
  /* Ranges [start, end) the serving worker saw removed (REMOVE events): the next worker zero-fills
   * them too. Sorted, disjoint, not adjacent. removed_overflow: more came than fit (logged). */
  uint64_t *removed_start, *removed_end;
  uint32_t nremoved;
  bool removed_overflow;
  /* --state-dir: vm-<pid>.removed, the removed ranges written down as they come (state.c); -1
   * without a state dir or once it could not be written (then a successor refuses this VM). */
  int rlog_fd;
  uint32_t rlog_records; /* records in it after the header */
  int64_t since_ms;
};

/* A connection whose handshake is being received. */
struct pending {
  int conn;
  int64_t deadline_ms;
};

/* A CRIU client connection relayed to the worker. The answers are a pure function of the requests,
 * so a dead worker's connection is resumed by replaying the requests after the last checkpoint (a
 * point where every request before it was answered and those answers were handed to the kernel)
 * to the next worker and dropping the first answer bytes the client already has. */
struct relay {
  uint32_t id;
  int client;          /* TCP connection to the CRIU lazy-pages client */
  int worker;          /* our end of the socket pair whose other end the worker serves; -1 */
  uint32_t sent_gen;
  bool worker_eof;     /* the worker's end hung up */
  bool worker_closed;  /* the worker said it ended the connection on purpose (CLOSED) */
  bool finishing;      /* flush what is buffered to the client, then close it */
  struct buf in_log;   /* client bytes since the last checkpoint (replayed to a new worker) */
  size_t in_fwd;       /* of in_log, bytes written to the current worker */
  uint64_t in_base;    /* client stream offset of in_log[0] (the checkpoint) */
  uint64_t out_base;   /* answer stream offset of the checkpoint */
  uint64_t out_recv;   /* answer bytes received from workers (stream offset) */
  uint64_t wk_in0, wk_out0; /* stream offsets the current worker's input/output start at */
  uint64_t skip;       /* bytes of the current worker's output the client already has */
  struct buf out;      /* answer bytes received, not yet written to the client */
  char layout[8];      /* header layout decided at the checkpoint ("" = as configured) */
  uint64_t replays;
};

enum worker_state { W_NONE = 0, W_BOOTING, W_IDLE, W_STARTING, W_READY, W_STOPPING };

struct send_item {
  int kind;     /* SEND_MEMFD, SEND_START, SEND_UFFD, SEND_CRIU */
  uint32_t ref; /* memfd index, instance id or relay id */
};
enum { SEND_MEMFD = 1, SEND_START, SEND_UFFD, SEND_CRIU };

struct worker {
  pid_t pid;
  int ctl;
  uint32_t gen;
  enum worker_state state;
  int64_t spawned_ms, ready_ms;
  bool awaiting_ack;
  struct send_item *queue;
  size_t qlen, qcap;
  char *stats; /* last STATS json from the worker */
};

struct memfd {
  char name[32];
  int fd;
  uint64_t size;
};

struct options {
  const char *firecracker;
  const char *criu_host;
  int criu_port; /* -1: none */
  const char *status;
  const char *label;
  const char *state_dir;
  bool standby;
  int handshake_timeout_ms;
  int max_pending;
  int64_t stable_ms, backoff_base_ms, backoff_max_ms;
  uint32_t give_up_after; /* 0: never */
  int stop_grace_ms;
  char **worker_argv;
};

struct keeper {
  struct options o;
  pid_t pid;
  int64_t started_ms;
  int sigfd, listen_fd, status_fd, devnull;
  dev_t listen_dev, status_dev;
  ino_t listen_ino, status_ino;
  int bound_port;
  uint64_t min_addr;
  struct memfd memfds[KEEPER_MAX_MEMFDS];
  int nmemfds;

  struct instance **inst;
  size_t ninst, capinst;
  uint32_t next_inst_id;
  struct pending *pend;
  size_t npend, cappend;
  struct relay **relays;
  size_t nrelays, caprelays;

  struct worker active, standby;
  uint32_t next_gen;
  uint32_t failures, standby_failures;
  int64_t next_start_ms, standby_next_ms;
  uint64_t restarts, replaced_printed;
  pid_t last_pid;
  char last_exit[96];
  int64_t last_exit_ms;
  bool printed_first, stopping;
  int64_t stop_deadline_ms;
  int exit_code;

  bool orphans_killed; /* state_init killed live workers of a dead keeper (state.c) */
  uint64_t handshakes, rejected, vms_ended, relays_total, relay_replays, wakes, wake_errors, recovered;
  char last_error[256];
};

/* keeper.c */
int64_t now_ms(void);
void klog(struct keeper *k, int level, const char *extra_json, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
void set_error(struct keeper *k, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool buf_append(struct buf *b, const void *p, size_t n);
void buf_consume(struct buf *b, size_t n);
void buf_free(struct buf *b);
bool buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void json_str(struct buf *b, const char *s);
void worker_enqueue(struct keeper *k, struct worker *w, int kind, uint32_t ref);
int send_record(int sock, const char *msg, size_t len, int fd);
void wake_vm(struct keeper *k, struct instance *in);
/* inst_add_removed: what changed in the VM's removed ranges */
enum { REMOVED_SAME = 0, REMOVED_ADDED, REMOVED_OVERFLOW };
int inst_add_removed(struct keeper *k, struct instance *in, uint64_t start, uint64_t end);

/* state.c: --state-dir, what the next keeper needs to take live VMs back */
uint64_t proc_start_time(pid_t pid);
int state_init(struct keeper *k);
void state_workers(struct keeper *k);
void state_vm_saved(struct keeper *k, struct instance *in);
void state_vm_removed(struct keeper *k, struct instance *in);
void state_removed_append(struct keeper *k, struct instance *in, int what, uint64_t start, uint64_t end);
void state_close(struct keeper *k);

/* relay.c: CRIU page-server connections */
void relay_accept(struct keeper *k);
int relay_poll_fill(struct keeper *k, struct pollfd *pfd, struct relay **owner, int *what, int max);
void relay_event(struct keeper *k, struct relay *r, int what, short revents);
bool relay_send(struct keeper *k, struct worker *w, uint32_t id);
void relay_acked(struct keeper *k, uint32_t id);
void relay_checkpoint(struct keeper *k, const char *args);
void relay_closed_by_worker(struct keeper *k, uint32_t id);
void relay_worker_died(struct keeper *k, uint32_t gen);
void relay_worker_ready(struct keeper *k, struct worker *w);
void relay_close_all(struct keeper *k);
void relay_status(struct keeper *k, struct buf *b);
struct relay *relay_find(struct keeper *k, uint32_t id);

#endif
