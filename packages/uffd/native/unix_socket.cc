#include "unix_socket.hpp"

#include <tierstack/unix_socket.hpp>

#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace tsuffd {

using tierstack::wait_readable;

int listen_unix(const std::string &path, int backlog) { return tierstack::listen_unix(path, backlog); }

Received receive_fd(int conn, int timeout_ms) {
  Received r;
  r.conn = conn;
  tierstack::peer_credentials(conn, &r.pid, &r.uid, &r.gid);
  int w = wait_readable(conn, timeout_ms);
  if (w < 0) {
    r.err = -w;
    r.what = "waiting for the message";
    return r;
  }
  std::vector<uint8_t> buf(64 * 1024);
  int fd = -1;
  size_t nfds = 0;
  ssize_t n = tierstack::recv_fds(conn, buf.data(), buf.size(), &fd, 1, &nfds);  // one descriptor is expected
  if (n < 0) {
    r.err = static_cast<int>(-n);
    r.what = "recvmsg";
    return r;
  }
  if (nfds == 1) r.fd = fd;
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
  const char *what = nullptr;
  int conn = tierstack::accept_within(listen_fd, timeout_ms, &what);
  if (conn < 0) {
    r.err = -conn;
    r.what = what;
    return r;
  }
  r = receive_fd(conn, timeout_ms);
  if (r.err != 0 && r.fd < 0) {
    close(conn);
    r.conn = -1;
  }
  return r;
}

int send_fd(int conn, const void *msg, size_t len, int fd) { return tierstack::send_fd(conn, msg, len, fd); }
int connect_unix(const std::string &path) { return tierstack::connect_unix(path); }

}  // namespace tsuffd
