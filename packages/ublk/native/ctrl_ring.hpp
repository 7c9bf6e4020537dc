// Commands to /dev/ublk-control: one URING_CMD at a time on a small SQE128 ring, waited for.
// Used by the transport (add, start, stop, delete) and by user recovery (recovery.cc).
#pragma once

#include <liburing.h>

#include <cerrno>
#include <cstring>

#include "ublk_uapi.hpp"

namespace tsublk {

constexpr const char *kUblkControl = "/dev/ublk-control";

class CtrlRing {
 public:
  ~CtrlRing() {
    if (ok_) io_uring_queue_exit(&ring_);
  }
  int init() {
    int rc = io_uring_queue_init(4, &ring_, IORING_SETUP_SQE128);
    ok_ = rc == 0;
    return rc;
  }
  // Returns the command's result (>= 0) or -errno.
  int run(int fd, uint32_t op, ublksrv_ctrl_cmd &cmd) {
    io_uring_sqe *sqe = io_uring_get_sqe(&ring_);
    if (!sqe) return -EBUSY;
    std::memset(sqe, 0, 2 * sizeof(io_uring_sqe));
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fd;
    sqe->cmd_op = op;
    std::memcpy(sqe->cmd, &cmd, sizeof cmd);
    int rc = io_uring_submit(&ring_);
    if (rc < 0) return rc;
    io_uring_cqe *cqe;
    do rc = io_uring_wait_cqe(&ring_, &cqe);
    while (rc == -EINTR);
    if (rc < 0) return rc;
    int res = cqe->res;
    io_uring_cqe_seen(&ring_, cqe);
    return res;
  }

 private:
  io_uring ring_;
  bool ok_ = false;
};

// A control command for device `dev_id` (all queues), with an optional buffer and data[0].
inline ublksrv_ctrl_cmd ctrl_cmd(int dev_id, void *addr = nullptr, uint16_t len = 0, uint64_t data0 = 0) {
  ublksrv_ctrl_cmd c;
  std::memset(&c, 0, sizeof c);
  c.dev_id = static_cast<uint32_t>(dev_id);
  c.queue_id = static_cast<uint16_t>(-1);
  c.addr = reinterpret_cast<uint64_t>(addr);
  c.len = len;
  c.data[0] = data0;
  return c;
}

}  // namespace tsublk
