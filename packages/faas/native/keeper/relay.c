/*
 * CRIU page-server connections, relayed. The keeper is the TCP endpoint of every lazy-pages
 * connection; the worker serves the other end of a Unix socket pair. Client bytes are kept from
 * the last checkpoint on (a worker reports one after each GET whose whole answer the kernel took:
 * "CKPT <id> <in> <out> <layout>", offsets within what that worker was given and produced), and
 * answer bytes are counted. When the worker dies, what it wrote before dying is read to the end,
 * then the next worker gets the requests from the checkpoint on (with the layout decided there)
 * and the keeper drops the first (received - checkpoint) bytes of its answers: the client sees
 * one unbroken answer stream. A connection the worker ends on purpose (CLOSE answered, bad input,
 * idle) is reported "CLOSED <id>" and closed after its last bytes.
 */
#include "keeper.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define RELAY_OUT_MAX (4u << 20)  /* answer bytes buffered toward a slow client */
#define RELAY_AHEAD (1u << 20)    /* client bytes buffered ahead of the worker */
#define RELAY_LOG_MAX (16u << 20) /* client bytes kept between checkpoints */
#define RELAY_CHUNK (128u << 10)

struct relay *relay_find(struct keeper *k, uint32_t id) {
  for (size_t i = 0; i < k->nrelays; i++)
    if (k->relays[i]->id == id) return k->relays[i];
  return NULL;
}

static void relay_free(struct keeper *k, struct relay *r, const char *why) {
  for (size_t i = 0; i < k->nrelays; i++) {
    if (k->relays[i] != r) continue;
    char extra[160];
    snprintf(extra, sizeof extra, "\"conn\":%u,\"answerBytes\":%" PRIu64 ",\"replays\":%" PRIu64, r->id, r->out_recv, r->replays);
    klog(k, 30, extra, "CRIU connection %u closed: %s", r->id, why);
    if (r->client >= 0) close(r->client);
    if (r->worker >= 0) close(r->worker);
    buf_free(&r->in_log);
    buf_free(&r->out);
    free(r);
    k->relays[i] = k->relays[--k->nrelays];
    return;
  }
}

void relay_accept(struct keeper *k) {
  for (;;) {
    int c = accept4(k->listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (c < 0) {
      if (errno == EINTR) continue;
      return;
    }
    int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct relay *r = calloc(1, sizeof *r);
    if (r && k->nrelays == k->caprelays) {
      size_t cap = k->caprelays ? k->caprelays * 2 : 16;
      struct relay **q = realloc(k->relays, cap * sizeof *q);
      if (!q) {
        free(r);
        r = NULL;
      } else {
        k->relays = q;
        k->caprelays = cap;
      }
    }
    if (!r) {
      klog(k, 50, NULL, "out of memory: refusing a CRIU connection");
      close(c);
      continue;
    }
    r->id = ++k->next_inst_id;
    r->client = c;
    r->worker = -1;
    k->relays[k->nrelays++] = r;
    k->relays_total++;
    if (k->active.state == W_READY) worker_enqueue(k, &k->active, SEND_CRIU, r->id);
  }
}

/* Hands the worker its end of a new socket pair; the requests from the checkpoint on follow. */
bool relay_send(struct keeper *k, struct worker *w, uint32_t id) {
  struct relay *r = relay_find(k, id);
  if (!r || r->worker >= 0 || r->finishing) return false;
  if (r->out_recv < r->out_base) {
    klog(k, 50, NULL, "CRIU connection %u cannot be resumed (checkpoint beyond the answers received); closing it", r->id);
    relay_free(k, r, "cannot be resumed");
    return false;
  }
  int sp[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sp) != 0) {
    set_error(k, "socketpair: %s", strerror(errno));
    return false;
  }
  char msg[160];
  int n = snprintf(msg, sizeof msg, "CRIU {\"id\":%u,\"layout\":\"%s\",\"replayBytes\":%zu,\"resumed\":%" PRIu64 "}", r->id, r->layout, r->in_log.len,
                   r->replays);
  int rc = send_record(w->ctl, msg, (size_t)n, sp[1]);
  close(sp[1]);
  if (rc < 0) {
    close(sp[0]);
    if (rc == -EAGAIN || rc == -EWOULDBLOCK) worker_enqueue(k, w, SEND_CRIU, id);
    return false;
  }
  int fl = fcntl(sp[0], F_GETFL);
  fcntl(sp[0], F_SETFL, fl | O_NONBLOCK);
  r->worker = sp[0];
  r->sent_gen = w->gen;
  r->worker_eof = r->worker_closed = false;
  r->in_fwd = 0;
  r->wk_in0 = r->in_base;
  r->wk_out0 = r->out_base;
  r->skip = r->out_recv - r->out_base;
  return true;
}

void relay_acked(struct keeper *k, uint32_t id) {
  (void)k;
  (void)id;
}

void relay_checkpoint(struct keeper *k, const char *args) {
  unsigned id;
  unsigned long long in, out;
  char layout[8] = "";
  if (sscanf(args, "%u %llu %llu %7s", &id, &in, &out, layout) < 3) return;
  struct relay *r = relay_find(k, id);
  if (!r || r->worker < 0) return;
  uint64_t in_abs = r->wk_in0 + in, out_abs = r->wk_out0 + out;
  if (in_abs < r->in_base || in_abs > r->in_base + r->in_fwd || out_abs < r->out_base) return; /* not ours to believe */
  size_t drop = (size_t)(in_abs - r->in_base);
  buf_consume(&r->in_log, drop);
  r->in_fwd -= drop;
  r->in_base = in_abs;
  r->out_base = out_abs;
  if (!strcmp(layout, "v42") || !strcmp(layout, "legacy")) snprintf(r->layout, sizeof r->layout, "%s", layout);
}

/* Reads what the worker wrote (skipping what the client already has). Returns false on EOF. */
static bool relay_read_worker(struct keeper *k, struct relay *r) {
  char *tmp = malloc(RELAY_CHUNK);
  if (!tmp) return true;
  bool open = true;
  while (r->out.len < RELAY_OUT_MAX) {
    ssize_t n = recv(r->worker, tmp, RELAY_CHUNK, MSG_DONTWAIT);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    if (n <= 0) {
      open = false;
      break;
    }
    size_t d = 0;
    if (r->skip > 0) {
      d = (size_t)n < r->skip ? (size_t)n : (size_t)r->skip;
      r->skip -= d;
    }
    if ((size_t)n > d) {
      if (!buf_append(&r->out, tmp + d, (size_t)n - d)) {
        klog(k, 50, NULL, "out of memory relaying CRIU connection %u", r->id);
        break;
      }
      r->out_recv += (size_t)n - d;
    }
  }
  free(tmp);
  return open;
}

static void relay_write_worker(struct relay *r) {
  while (r->worker >= 0 && r->in_fwd < r->in_log.len) {
    ssize_t n = send(r->worker, r->in_log.p + r->in_fwd, r->in_log.len - r->in_fwd, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return; /* EAGAIN, or the worker is gone (handled when it is reaped) */
    r->in_fwd += (size_t)n;
  }
}

/* Returns false when the client is gone. */
static bool relay_write_client(struct relay *r) {
  while (r->out.len > 0) {
    ssize_t n = send(r->client, r->out.p, r->out.len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    if (n <= 0) return false;
    buf_consume(&r->out, (size_t)n);
  }
  return true;
}

static void relay_maybe_finish(struct keeper *k, struct relay *r) {
  if (r->finishing && r->out.len == 0) {
    shutdown(r->client, SHUT_WR);
    relay_free(k, r, "ended by the page server");
  }
}

void relay_closed_by_worker(struct keeper *k, uint32_t id) {
  struct relay *r = relay_find(k, id);
  if (!r) return;
  r->worker_closed = true;
  if (r->worker_eof) {
    r->finishing = true;
    relay_maybe_finish(k, r);
  }
}

void relay_event(struct keeper *k, struct relay *r, int what, short revents) {
  if (what == 0) {
    if (revents & (POLLIN | POLLRDHUP | POLLHUP | POLLERR)) {
      char *tmp = malloc(RELAY_CHUNK);
      bool gone = false;
      while (tmp && !r->finishing && r->in_log.len - r->in_fwd < RELAY_AHEAD && r->in_log.len < RELAY_LOG_MAX) {
        ssize_t n = recv(r->client, tmp, RELAY_CHUNK, MSG_DONTWAIT);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        if (n <= 0) {
          gone = true;
          break;
        }
        if (!buf_append(&r->in_log, tmp, (size_t)n)) break;
      }
      free(tmp);
      if (gone) {
        relay_free(k, r, "the client hung up");
        return;
      }
      relay_write_worker(r);
    }
    if (revents & POLLOUT) {
      if (!relay_write_client(r)) {
        relay_free(k, r, "the client hung up");
        return;
      }
      relay_maybe_finish(k, r);
    }
    return;
  }
  if (r->worker < 0) return;
  if (revents & POLLOUT) relay_write_worker(r);
  if (revents & (POLLIN | POLLHUP | POLLERR)) {
    if (!relay_read_worker(k, r)) {
      r->worker_eof = true;
      if (r->worker_closed) r->finishing = true;
    }
    if (!relay_write_client(r)) {
      relay_free(k, r, "the client hung up");
      return;
    }
    relay_maybe_finish(k, r);
  }
}

int relay_poll_fill(struct keeper *k, struct pollfd *pfd, struct relay **owner, int *what, int max) {
  int n = 0;
  for (size_t i = 0; i < k->nrelays && n + 2 <= max; i++) {
    struct relay *r = k->relays[i];
    short ev = 0;
    if (!r->finishing && r->in_log.len - r->in_fwd < RELAY_AHEAD && r->in_log.len < RELAY_LOG_MAX) ev |= POLLIN | POLLRDHUP;
    if (r->out.len > 0) ev |= POLLOUT;
    if (ev) {
      pfd[n] = (struct pollfd){.fd = r->client, .events = ev};
      owner[n] = r;
      what[n] = 0;
      n++;
    }
    if (r->worker >= 0 && !r->worker_eof) {
      short wev = 0;
      if (r->out.len < RELAY_OUT_MAX) wev |= POLLIN;
      if (r->in_fwd < r->in_log.len) wev |= POLLOUT;
      if (wev) {
        pfd[n] = (struct pollfd){.fd = r->worker, .events = wev};
        owner[n] = r;
        what[n] = 1;
        n++;
      }
    }
  }
  return n;
}

void relay_worker_died(struct keeper *k, uint32_t gen) {
  for (size_t i = 0; i < k->nrelays;) {
    struct relay *r = k->relays[i];
    if (r->worker < 0 || r->sent_gen != gen) {
      i++;
      continue;
    }
    /* What it wrote before dying is in our socket's queue: take what fits (bytes left unread are
     * not counted as received, so the next worker produces them again). */
    relay_read_worker(k, r);
    close(r->worker);
    r->worker = -1;
    if (r->worker_closed) {
      r->finishing = true;
      size_t before = k->nrelays;
      relay_maybe_finish(k, r);
      if (k->nrelays < before) continue; /* freed: the slot now holds another relay */
    } else {
      r->replays++;
      k->relay_replays++;
      char extra[160];
      snprintf(extra, sizeof extra, "\"conn\":%u,\"replayBytes\":%zu,\"answerBytes\":%" PRIu64 ",\"resumeAt\":%" PRIu64, r->id, r->in_log.len, r->out_recv,
               r->out_base);
      klog(k, 40, extra, "CRIU connection %u lost its worker: its requests since the last checkpoint go to the next one", r->id);
    }
    i++;
  }
}

void relay_worker_ready(struct keeper *k, struct worker *w) {
  for (size_t i = 0; i < k->nrelays; i++)
    if (k->relays[i]->worker < 0 && !k->relays[i]->finishing) worker_enqueue(k, w, SEND_CRIU, k->relays[i]->id);
}

void relay_close_all(struct keeper *k) {
  while (k->nrelays > 0) relay_free(k, k->relays[0], "the keeper stopped");
}

void relay_status(struct keeper *k, struct buf *b) {
  if (k->o.criu_port < 0) return;
  buf_printf(b, ",\"criu\":{\"connections\":%" PRIu64 ",\"open\":%zu,\"replays\":%" PRIu64 ",\"conns\":[", k->relays_total, k->nrelays, k->relay_replays);
  for (size_t i = 0; i < k->nrelays && i < 256; i++) {
    struct relay *r = k->relays[i];
    buf_printf(b, "%s{\"id\":%u,\"answerBytes\":%" PRIu64 ",\"requestBytesKept\":%zu,\"replays\":%" PRIu64 ",\"served\":%s}", i ? "," : "", r->id, r->out_recv,
               r->in_log.len, r->replays, r->worker >= 0 ? "true" : "false");
  }
  buf_printf(b, "]}");
}
