// Receiving a userfaultfd from another process: a Unix stream socket carrying one message and
// the descriptor as SCM_RIGHTS ancillary data (the Firecracker UFFD handler protocol, and what
// any external client of the engine does). Node's `net` cannot receive descriptors, so this is
// native. Blocking functions; the addon runs them on their own threads.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace tsuffd {

struct Received {
  int fd = -1;         // the descriptor passed (first one; any others are closed)
  int conn = -1;       // the connection it came on (kept open: some senders watch it)
  pid_t pid = 0;       // peer credentials (SO_PEERCRED)
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<uint8_t> message;
  int err = 0;         // errno on failure
  std::string what;    // failing step
};

// Binds and listens on `path` (removing a stale socket file first). Returns fd or -errno.
int listen_unix(const std::string &path, int backlog);
// Waits up to timeout_ms (< 0: forever) for a connection on `listen_fd`, then receives from it.
Received accept_and_receive(int listen_fd, int timeout_ms);
// Receives one message + descriptor from a connected socket.
Received receive_fd(int conn_fd, int timeout_ms);
// Sends `msg` and `fd` (test helper and for chaining handlers). Returns 0 or -errno.
int send_fd(int conn_fd, const void *msg, size_t len, int fd);
int connect_unix(const std::string &path);

}  // namespace tsuffd
