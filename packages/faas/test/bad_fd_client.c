/*
 * A hostile Firecracker stand-in for the handshake tests: sends a valid mappings JSON with a
 * descriptor that is NOT a usable userfaultfd, then (for a pipe or an eventfd) makes that
 * descriptor readable with fake uffd messages, and waits for the handler to hang up.
 *
 * usage: bad_fd_client <socket> <pipe|eventfd|uffd-noapi|devnull> <json>
 * Prints one JSON line: {"closed_by_handler": true|false} (false: still open after 10 s).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

int main(int argc, char **argv) {
  if (argc < 4) return 2;
  const char *kind = argv[2], *json = argv[3];
  int fd = -1, feed = -1;
  if (!strcmp(kind, "pipe")) {
    int p[2];
    if (pipe(p)) return 3;
    fd = p[0];
    feed = p[1];
  } else if (!strcmp(kind, "eventfd")) {
    fd = eventfd(0, 0);
  } else if (!strcmp(kind, "uffd-noapi")) {
    fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK); /* no UFFDIO_API, nothing registered */
  } else {
    fd = open("/dev/null", O_RDWR);
  }
  if (fd < 0) return 4;
  int sk = socket(AF_UNIX, SOCK_STREAM, 0);
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  strncpy(sa.sun_path, argv[1], sizeof sa.sun_path - 1);
  signal(SIGPIPE, SIG_IGN); /* a handler that refused us early must not kill us mid-send */
  /* A loaded handler may not have accepted the backlog yet: retry a full backlog for 10 s. */
  int tries = 0;
  while (connect(sk, (struct sockaddr *)&sa, sizeof sa)) {
    if ((errno != EAGAIN && errno != ECONNREFUSED) || ++tries > 1000) {
      printf("{\"error\":\"connect: %s\"}\n", strerror(errno));
      return 5;
    }
    usleep(10000);
  }
  struct iovec iov = {.iov_base = (void *)json, .iov_len = strlen(json)};
  union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } ctl;
  memset(&ctl, 0, sizeof ctl);
  struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl.buf, .msg_controllen = sizeof ctl.buf};
  struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &fd, sizeof(int));
  if (sendmsg(sk, &msg, 0) < 0) {
    /* EPIPE/ECONNRESET: the handler already closed the connection, i.e. refused us. */
    printf(errno == EPIPE || errno == ECONNRESET ? "{\"closed_by_handler\":true}\n" : "{\"error\":\"sendmsg: %s\"}\n", strerror(errno));
    return errno == EPIPE || errno == ECONNRESET ? 0 : 6;
  }
  /* Fake "page fault" messages: what made the old handler spin. */
  char fake[32 * 64];
  memset(fake, 0x12, sizeof fake);
  if (feed >= 0 && write(feed, fake, sizeof fake) < 0) return 7;
  if (!strcmp(kind, "eventfd")) {
    unsigned long long one = 1;
    if (write(fd, &one, sizeof one) < 0) return 8;
  }
  struct pollfd pf = {.fd = sk, .events = POLLIN};
  int n = poll(&pf, 1, 10000);
  char b;
  int closed = n > 0 && read(sk, &b, 1) <= 0;
  printf("{\"closed_by_handler\":%s}\n", closed ? "true" : "false");
  return 0;
}
