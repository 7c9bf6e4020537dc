/*
 * The wire protocol between libtierstack_run.so (in the program) and the `tierstack run` server,
 * over a Unix stream socket. Every message is one fixed-size little-endian record; the first one
 * (HELLO) carries two descriptors as SCM_RIGHTS: the program's userfaultfd (not yet API'd: the
 * server negotiates and registers it) and the memfd its arena maps MAP_SHARED.
 *
 *   client -> server                               server -> client
 *   HELLO  a=arena base  b=arena bytes             READY status=0 | TS_E_*, a=page size
 *          c=budget bytes (0: server default)
 *          d=fork token (0: a new program)
 *          e=min size (informational)
 *   FREE   a=first arena page  b=pages             ACK   status=0 | TS_E_*
 *   FORK   (before fork(): snapshot for the child) ACK   status, a=fork token for the child's HELLO
 *
 * One request at a time per connection; every request is answered in order. The connection's
 * end (close, exit, exec: it is close-on-exec) ends the program's session: the server releases
 * the arena's pages from every tier.
 */
#ifndef TIERSTACK_RUN_PROTOCOL_H
#define TIERSTACK_RUN_PROTOCOL_H

#include <stdint.h>

#define TSR_MAGIC 0x52535425u /* "%TSR" */
#define TSR_VERSION 1u

enum tsr_op {
  TSR_HELLO = 1,
  TSR_READY = 2,
  TSR_FREE = 3,
  TSR_FORK = 4,
  TSR_ACK = 5,
};

struct tsr_msg {
  uint32_t magic;
  uint16_t version;
  uint16_t op;
  int32_t status;
  uint32_t pid;
  uint64_t a, b, c, d, e, f;
};

#define TSR_MSG_SIZE 64

#ifdef __cplusplus
static_assert(sizeof(tsr_msg) == TSR_MSG_SIZE, "tsr_msg layout");
#else
_Static_assert(sizeof(struct tsr_msg) == TSR_MSG_SIZE, "tsr_msg layout");
#endif

#endif
