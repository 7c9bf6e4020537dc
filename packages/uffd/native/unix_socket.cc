#include "unix_socket.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace tsuffd {

namespace {
bool fill_addr(const std::string &path, sockaddr_un *a) {
  std::memset(a, 0, sizeof *a);
  a->sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof a->sun_path) return false;
  std::memcpy(a->sun_path, path.data(), path.size());
  return true;
}

int wait_readable(int fd, int timeout_ms) {
  pollfd p{fd, POLLIN, 0};
  for (;;) {
    int n = poll(&p, 1, timeout_ms);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) return -ETIMEDOUT;
    return 0;
  }
}
}  // namespace

int listen_unix(const std::string &path, int backlog) {
  sockaddr_un a;
  if (!fill_addr(path, &a)) return -ENAMETOOLONG;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  struct stat st;
  if (lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path.c_str());
  if (bind(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0 || listen(fd, backlog) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  chmod(path.c_str(), 0600);  // only the owner (and root) may hand us descriptors
  return fd;
}

Received receive_fd(int conn, int timeout_ms) {
  Received r;
  r.conn = conn;
  ucred cred{};
  socklen_t cl = sizeof cred;
  if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0) {
    r.pid = cred.pid;
    r.uid = cred.uid;
    r.gid = cred.gid;
  }
  int w = wait_readable(conn, timeout_ms);
  if (w < 0) {
    r.err = -w;
    r.what = "waiting for the message";
    return r;
  }
  std::vector<uint8_t> buf(64 * 1024);
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 8)];
  iovec iov{buf.data(), buf.size()};
  msghdr mh{};
  mh.msg_iov = &iov;
  mh.msg_iovlen = 1;
  mh.msg_control = control;
  mh.msg_controllen = sizeof control;
  ssize_t n;
  do n = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    r.err = errno;
    r.what = "recvmsg";
    return r;
  }
  for (cmsghdr *c = CMSG_FIRSTHDR(&mh); c != nullptr; c = CMSG_NXTHDR(&mh, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (size_t i = 0; i < count; i++) {
      int fd;
      std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
      if (r.fd < 0)
        r.fd = fd;
      else
        close(fd);  // one descriptor is expected; never leak extras
    }
  }
  r.message.assign(buf.begin(), buf.begin() + n);
  // A sender may split its message: take whatever else is already there.
  for (;;) {
    ssize_t m = recv(conn, buf.data(), buf.size(), MSG_DONTWAIT);
    if (m <= 0) break;
    r.message.insert(r.message.end(), buf.begin(), buf.begin() + m);
  }
  if (r.fd < 0) {
    r.err = EBADMSG;
    r.what = "the message carried no descriptor";
  }
  return r;
}

Received accept_and_receive(int listen_fd, int timeout_ms) {
  Received r;
  int w = wait_readable(listen_fd, timeout_ms);
  if (w < 0) {
    r.err = -w;
    r.what = "waiting for a connection";
    return r;
  }
  int conn = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (conn < 0) {
    r.err = errno;
    r.what = "accept";
    return r;
  }
  r = receive_fd(conn, timeout_ms);
  if (r.err != 0 && r.fd < 0) {
    close(conn);
    r.conn = -1;
  }
  return r;
}

int send_fd(int conn, const void *msg, size_t len, int fd) {
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

int connect_unix(const std::string &path) {
  sockaddr_un a;
  if (!fill_addr(path, &a)) return -ENAMETOOLONG;
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -errno;
  if (connect(fd, reinterpret_cast<sockaddr *>(&a), sizeof a) != 0) {
    int e = errno;
    close(fd);
    return -e;
  }
  return fd;
}

}  // namespace tsuffd
