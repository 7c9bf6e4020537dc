// The takeover of a ublk device whose server died (see recovery.hpp): UblkTransport::recover_start
// and UblkTransport::abandon. The control commands go through the transport's CtrlRing (ctrl_ring.hpp).
#include "recovery.hpp"

#include <fcntl.h>
#include <liburing.h>
#include <signal.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <tierstack/clock.hpp>

#include "ctrl_ring.hpp"
#include "ublk_transport.hpp"
#include "ublk_uapi.hpp"

namespace tsublk {

int UblkTransport::recover_start(TransportInfo &info, std::string &error) {
  if (opts_.dev_id < 0) {
    error = "recovering a ublk device needs its id";
    return -EINVAL;
  }
  CtrlRing r;
  int rc = open_control(r, error);
  if (rc < 0) {
    abandon();
    return rc;
  }
  const int id = opts_.dev_id;
  // What the device is: its geometry, flags and state (ioctl-encoded command first).
  ublksrv_ctrl_dev_info di;
  std::memset(&di, 0, sizeof di);
  ublksrv_ctrl_cmd c = ctrl_cmd(id, &di, sizeof di);
  rc = r.run(ctrl_fd_, UBLK_U_CMD_GET_DEV_INFO, c);
  if (rc == -EOPNOTSUPP || rc == -EINVAL) rc = r.run(ctrl_fd_, UBLK_CMD_GET_DEV_INFO, c);
  if (rc < 0) {
    error = "GET_DEV_INFO of ublk device " + std::to_string(id) + ": " + strerror(-rc);
    abandon();
    return rc;
  }
  if (!(di.flags & UBLK_F_USER_RECOVERY)) {
    error = "ublk device " + std::to_string(id) + " was not added with user recovery: it cannot outlive its server";
    abandon();
    return -EINVAL;
  }
  legacy_ = !(di.flags & UBLK_F_CMD_IOCTL_ENCODE);
  auto op = [&](uint32_t lop, uint32_t iop) { return legacy_ ? lop : iop; };
  if (di.state == UBLK_S_DEV_LIVE && di.ublksrv_pid > 0 && kill(di.ublksrv_pid, 0) == 0) {
    error = "ublk device " + std::to_string(id) + " is served by pid " + std::to_string(di.ublksrv_pid);
    abandon();
    return -EBUSY;
  }
  ublk_params p;
  std::memset(&p, 0, sizeof p);
  p.len = sizeof p;
  c = ctrl_cmd(id, &p, sizeof p);
  rc = r.run(ctrl_fd_, op(UBLK_CMD_GET_PARAMS, UBLK_U_CMD_GET_PARAMS), c);
  if (rc < 0) {
    error = std::string("GET_PARAMS: ") + strerror(-rc);
    abandon();
    return rc;
  }
  if ((static_cast<uint64_t>(p.basic.dev_sectors) << 9) != handler_->size()) {
    error = "ublk device " + std::to_string(id) + " has " + std::to_string(static_cast<uint64_t>(p.basic.dev_sectors) << 9) +
            " bytes, not " + std::to_string(handler_->size());
    abandon();
    return -EINVAL;
  }
  opts_.queues = di.nr_hw_queues;
  opts_.depth = di.queue_depth;
  opts_.max_io_bytes = di.max_io_buf_bytes;
  dev_id_ = id;

  // The driver accepts the takeover once the dead server's /dev/ublkcN is released and the disk
  // is quiesced (its requests requeued); until then START_USER_RECOVERY answers -EBUSY.
  int64_t deadline = static_cast<int64_t>(tierstack::now_ms()) + kRecoverWaitMs;
  for (;;) {
    c = ctrl_cmd(id);
    rc = r.run(ctrl_fd_, op(UBLK_CMD_START_USER_RECOVERY, UBLK_U_CMD_START_USER_RECOVERY), c);
    if (rc != -EBUSY || static_cast<int64_t>(tierstack::now_ms()) > deadline) break;
    usleep(20000);
  }
  if (rc < 0) {
    error = std::string("START_USER_RECOVERY: ") + strerror(-rc) +
            (rc == -EBUSY ? " (the old server still holds the device, or the driver did not quiesce it)" : "");
    dev_id_ = -1;
    abandon();
    return rc;
  }

  rc = open_queues(id, error);
  if (rc < 0) {
    dev_id_ = -1;
    abandon();
    return rc;
  }
  // Every tag is fetched again: the disk runs, the requeued requests come to this process.
  c = ctrl_cmd(id, nullptr, 0, static_cast<uint64_t>(getpid()));
  rc = r.run(ctrl_fd_, op(UBLK_CMD_END_USER_RECOVERY, UBLK_U_CMD_END_USER_RECOVERY), c);
  if (rc < 0) {
    error = std::string("END_USER_RECOVERY: ") + strerror(-rc);
    dev_id_ = -1;
    abandon();
    return rc;
  }
  return serving(info);
}

// Lets go of the device without stopping or deleting it (a failed takeover leaves it quiesced
// for another attempt): queue threads leave once idle, buffers and descriptors are released.
void UblkTransport::abandon() {
  std::lock_guard<std::mutex> stop_lk(stop_mu_);
  stopping_ = true;
  if (cdev_fd_ >= 0) {
    for (auto &q : queues_)
      if (q->thread.joinable()) q->thread.join();
    for (auto &q : queues_) {
      if (q->descs) munmap(const_cast<ublksrv_io_desc *>(q->descs), q->descs_len);
      for (uint8_t *b : q->bufs) free(b);
    }
    queues_.clear();
    close(cdev_fd_);
    cdev_fd_ = -1;
  }
  if (ctrl_fd_ >= 0) close(ctrl_fd_);
  ctrl_fd_ = -1;
  dev_id_ = -1;
}

}  // namespace tsublk
