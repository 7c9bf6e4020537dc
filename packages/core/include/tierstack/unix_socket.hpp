// Unix stream sockets for addons that pass descriptors (SCM_RIGHTS) — what Node's `net` cannot
// do: listening (owner-only), connecting, waiting with a timeout, accepting, peer credentials and
// sending one message with a descriptor, receiving messages with descriptors. Blocking calls: run them on a job thread, never the JS
// thread (tierstack/run_on_thread.hpp). Results are >= 0 or -errno; nothing throws.
#pragma once

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace tierstack {

// false when `path` does not fit a sockaddr_un.
inline bool unix_addr(const std::string &path, sockaddr_un *a) {
  std::memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a->sun_path) return false;
  std::memcpy(a->sun_path, path.data(), path.size());
  return true;
}

// Waits up to timeout_ms (< 0: forever) for `fd` to be readable: 0, -ETIMEDOUT or -errno.
inline int wait_readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  for (;;) {
    int n = poll(&p, 1, timeout_ms);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) return -ETIMEDOUT;
    return 0;
  }
}

// Binds and listens on `path` (a stale socket file there is removed first); mode 0600, so only
// the owner (and root) may connect and hand us descriptors. Returns the fd or -errno.
inline int listen_unix(const std::string &path, int backlog) {
  sockaddr_un a;
  if (!unix_addr(path, &a)) return -ENAMETOOLONG;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  struct stat st;
  if (lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path.c_str());
  if (bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0 || listen(fd, backlog) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  chmod(path.c_str(), 0600);
  return fd;
}

inline int connect_unix(const std::string &path) {
  sockaddr_un a;
  if (!unix_addr(path, &a)) return -ENAMETOOLONG;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

// Waits up to timeout_ms for a connection on `listen_fd` and accepts it: the connection's fd or
// -errno (-ETIMEDOUT). `what` (optional) names the failing step.
inline int accept_within(int listen_fd, int timeout_ms, const char **what = nullptr) {
  int w = wait_readable(listen_fd, timeout_ms);
  if (w < 0) {
    if (what) *what = "waiting for a connection";
    return w;
  }
  int conn = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (conn < 0) {
    if (what) *what = "accept";
    return -errno;
  }
  return conn;
}

// The connected peer's pid, uid and gid (SO_PEERCRED); false if the kernel would not say.
inline bool peer_credentials(int conn, pid_t *pid, uid_t *uid, gid_t *gid) {
  ucred cred{};
  socklen_t cl = sizeof cred;
  if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cl) != 0) return false;
  *pid = cred.pid;
  *uid = cred.uid;
  *gid = cred.gid;
  return true;
}

// Sends `msg` with `fd` as SCM_RIGHTS. 0 or -errno (no SIGPIPE).
inline int send_fd(int conn, const void *msg, size_t len, int fd) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))];
  std::memset(control, 0, sizeof control);
  iovec iov{const_cast<void *>(msg), len};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control;
  mh.msg_controllen = sizeof control;
  cmsghdr *c = CMSG_FIRSTHDR(&mh);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  return sendmsg(conn, &mh, MSG_NOSIGNAL) < 0 ? -errno : 0;
}

// Receives up to `len` bytes with the descriptors sent alongside them (SCM_RIGHTS, close-on-exec):
// up to `max_fds` are stored in `fds` (`*nfds` counts them), any beyond are closed, never leaked.
// Returns the bytes received (0: the peer closed) or -errno. Retries EINTR.
inline ssize_t recv_fds(int conn, void *buf, size_t len, int *fds, size_t max_fds, size_t *nfds) {
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
  iovec iov{buf, len};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control;
  mh.msg_controllen = sizeof control;
  *nfds = 0;
  ssize_t n;
  do n = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) return -errno;
  for (cmsghdr *c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (*nfds < max_fds)
        fds[(*nfds)++] = fd;
      else
        close(fd);
    }
  }
  return n;
}

}  // namespace tierstack
