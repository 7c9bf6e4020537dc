#include "ublk_transport.hpp"

#include <fcntl.h>
#include <liburing.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <tierstack/clock.hpp>

#include "ctrl_ring.hpp"
#include "recovery.hpp"
#include "ublk_uapi.hpp"

namespace tsublk {
namespace {

using tierstack::now_ns;

uint32_t ctrl_op(bool legacy, uint32_t legacy_op, uint32_t ioctl_op) { return legacy ? legacy_op : ioctl_op; }

int simple_cmd(CtrlRing &r, int fd, bool legacy, int dev_id, uint32_t lop, uint32_t iop, uint64_t data0 = 0) {
  ublksrv_ctrl_cmd c = ctrl_cmd(dev_id, nullptr, 0, data0);
  return r.run(fd, ctrl_op(legacy, lop, iop), c);
}

size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

}  // namespace

int ublk_probe() {
  int fd = open(kUblkControl, O_RDWR | O_CLOEXEC);
  if (fd < 0) return -errno;
  close(fd);
  return 0;
}

int ublk_delete(int dev_id, std::string &error) {
  int fd = open(kUblkControl, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    error = std::string("open /dev/ublk-control: ") + strerror(errno);
    return -errno;
  }
  CtrlRing r;
  int rc = r.init();
  if (rc == 0) {
    simple_cmd(r, fd, false, dev_id, UBLK_CMD_STOP_DEV, UBLK_U_CMD_STOP_DEV);  // may already be stopped
    rc = simple_cmd(r, fd, false, dev_id, UBLK_CMD_DEL_DEV, UBLK_U_CMD_DEL_DEV);
    if (rc == -EOPNOTSUPP || rc == -EINVAL) rc = simple_cmd(r, fd, true, dev_id, UBLK_CMD_DEL_DEV, UBLK_U_CMD_DEL_DEV);
    if (rc < 0) error = std::string("DEL_DEV: ") + strerror(-rc);
  } else {
    error = std::string("io_uring_queue_init: ") + strerror(-rc);
  }
  close(fd);
  return rc < 0 ? rc : 0;
}


int UblkTransport::start(TransportInfo &info, std::string &error) {
  if (opts_.queues == 0 || opts_.queues > 64 || opts_.depth == 0 || opts_.depth > UBLK_MAX_QUEUE_DEPTH ||
      opts_.max_io_bytes < 4096 || opts_.max_io_bytes > (32u << 20) || opts_.max_io_bytes % 4096) {
    error = "bad ublk geometry (queues 1..64, depth 1..4096, maxIoBytes a multiple of 4096 up to 32 MiB)";
    return -EINVAL;
  }
  if (opts_.recover) return recover_start(info, error);
  CtrlRing r;
  int rc = open_control(r, error);
  if (rc < 0) return rc;
  ublksrv_ctrl_dev_info di;
  std::memset(&di, 0, sizeof di);
  di.nr_hw_queues = static_cast<uint16_t>(opts_.queues);
  di.queue_depth = static_cast<uint16_t>(opts_.depth);
  di.max_io_buf_bytes = opts_.max_io_bytes;
  di.dev_id = static_cast<uint32_t>(opts_.dev_id);
  di.ublksrv_pid = getpid();
  di.flags = UBLK_F_CMD_IOCTL_ENCODE | (opts_.recovery ? kUblkRecoveryFlags : 0);
  ublksrv_ctrl_cmd c = ctrl_cmd(opts_.dev_id, &di, sizeof di);
  rc = r.run(ctrl_fd_, UBLK_U_CMD_ADD_DEV, c);
  if (rc == -EOPNOTSUPP || rc == -EINVAL) {  // an old kernel: legacy opcodes, no ioctl encoding
    legacy_ = true;
    di.flags &= ~static_cast<__u64>(UBLK_F_CMD_IOCTL_ENCODE);
    rc = r.run(ctrl_fd_, UBLK_CMD_ADD_DEV, c);
  }
  if (rc < 0) {
    error = std::string("ADD_DEV: ") + strerror(-rc);
    return rc;
  }
  dev_id_ = static_cast<int>(di.dev_id);
  opts_.max_io_bytes = di.max_io_buf_bytes;  // the driver may lower it
  opts_.depth = di.queue_depth;

  ublk_params p;
  std::memset(&p, 0, sizeof p);
  p.len = sizeof p;
  p.types = UBLK_PARAM_TYPE_BASIC | UBLK_PARAM_TYPE_DISCARD;
  // A volatile write cache: the stack holds dirty pages above its durable tier, so the kernel
  // must send FLUSH (fsync, journal commits), which becomes the stack's flush().
  p.basic.attrs = UBLK_ATTR_VOLATILE_CACHE;
  p.basic.logical_bs_shift = 9;
  p.basic.physical_bs_shift = 12;
  p.basic.io_opt_shift = 12;
  p.basic.io_min_shift = 12;
  p.basic.max_sectors = opts_.max_io_bytes >> 9;
  p.basic.dev_sectors = handler_->size() >> 9;
  p.discard.discard_granularity = 4096;
  p.discard.max_discard_sectors = UINT32_MAX >> 9;
  p.discard.max_write_zeroes_sectors = UINT32_MAX >> 9;
  p.discard.max_discard_segments = 1;
  c = ctrl_cmd(dev_id_, &p, sizeof p);
  rc = r.run(ctrl_fd_, ctrl_op(legacy_, UBLK_CMD_SET_PARAMS, UBLK_U_CMD_SET_PARAMS), c);
  if (rc < 0) {
    error = std::string("SET_PARAMS: ") + strerror(-rc);
    stop();
    return rc;
  }

  rc = open_queues(dev_id_, error);
  if (rc < 0) {
    stop();
    return rc;
  }
  rc = simple_cmd(r, ctrl_fd_, legacy_, dev_id_, UBLK_CMD_START_DEV, UBLK_U_CMD_START_DEV, static_cast<uint64_t>(getpid()));
  if (rc < 0) {
    error = std::string("START_DEV: ") + strerror(-rc);
    stop();
    return rc;
  }
  return serving(info);
}

// The device runs and its requests come to this process (a start or a takeover): what the
// caller learns of it. Always 0.
int UblkTransport::serving(TransportInfo &info) {
  started_ = true;
  info.path = "/dev/ublkb" + std::to_string(dev_id_);
  info.id = dev_id_;
  info.direct_io = true;
  return 0;
}

// Opens /dev/ublk-control (ctrl_fd_) and the ring its commands go through. 0 or -errno, `error` set.
int UblkTransport::open_control(CtrlRing &r, std::string &error) {
  ctrl_fd_ = open(kUblkControl, O_RDWR | O_CLOEXEC);
  if (ctrl_fd_ < 0) {
    int e = errno;
    error = std::string("open /dev/ublk-control: ") + strerror(e);
    return -e;
  }
  int rc = r.init();
  if (rc < 0) error = std::string("io_uring_queue_init: ") + strerror(-rc);
  return rc;
}

// Opens the device's char node (devtmpfs creates it asynchronously), starts one thread per queue
// and waits until every queue has fetched its tags. 0, or -errno with `error` set; the caller
// cleans up (stop() for a new device, abandon() for a takeover).
int UblkTransport::open_queues(int id, std::string &error) {
  std::string cpath = "/dev/ublkc" + std::to_string(id);
  for (int w = 0; w < 300 && cdev_fd_ < 0; w++) {
    cdev_fd_ = open(cpath.c_str(), O_RDWR | O_CLOEXEC);
    if (cdev_fd_ < 0 && errno == ENOENT) usleep(10000);
    else if (cdev_fd_ < 0) break;
  }
  if (cdev_fd_ < 0) {
    int e = errno;
    error = "open " + cpath + ": " + strerror(e);
    return -e;
  }
  for (uint32_t q = 0; q < opts_.queues; q++) {
    queues_.emplace_back(new Queue());
    queues_.back()->id = static_cast<uint16_t>(q);
  }
  for (auto &q : queues_) {
    Queue *qp = q.get();
    qp->thread = std::thread([this, qp] { queue_main(qp); });
  }
  std::unique_lock<std::mutex> lk(mu_);
  cv_.wait(lk, [&] { return ready_ == opts_.queues || queue_error_ != 0; });
  if (queue_error_ != 0) {
    error = std::string("queue setup: ") + strerror(-queue_error_);
    return queue_error_;
  }
  return 0;
}

void UblkTransport::queue_main(Queue *q) {
  const uint32_t depth = opts_.depth;
  auto fail = [&](int e) {
    std::lock_guard<std::mutex> lk(mu_);
    if (queue_error_ == 0) queue_error_ = e;
    cv_.notify_all();
  };
  long page = sysconf(_SC_PAGESIZE);
  size_t max_cmd_buf = round_up(UBLK_MAX_QUEUE_DEPTH * sizeof(ublksrv_io_desc), static_cast<size_t>(page));
  q->descs_len = round_up(depth * sizeof(ublksrv_io_desc), static_cast<size_t>(page));
  void *m = mmap(nullptr, q->descs_len, PROT_READ, MAP_SHARED | MAP_POPULATE, cdev_fd_,
                 static_cast<off_t>(UBLKSRV_CMD_BUF_OFFSET + q->id * max_cmd_buf));
  if (m == MAP_FAILED) return fail(-errno);
  q->descs = static_cast<const ublksrv_io_desc *>(m);
  io_uring ring;
  int rc = io_uring_queue_init(depth + 1, &ring, IORING_SETUP_SQE128);
  if (rc < 0) return fail(rc);
  q->bufs.resize(depth);
  for (uint32_t t = 0; t < depth; t++) {
    void *b = nullptr;
    if (posix_memalign(&b, static_cast<size_t>(page), opts_.max_io_bytes) != 0) return fail(-ENOMEM);
    q->bufs[t] = static_cast<uint8_t *>(b);
    stats_->lock(b, opts_.max_io_bytes);
  }
  auto queue_cmd = [&](uint16_t tag, uint32_t lop, uint32_t iop, int32_t result) {
    io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    while (!sqe) {
      io_uring_submit(&ring);
      sqe = io_uring_get_sqe(&ring);
    }
    std::memset(sqe, 0, 2 * sizeof(io_uring_sqe));
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = cdev_fd_;
    sqe->cmd_op = legacy_ ? lop : iop;
    ublksrv_io_cmd cmd;
    std::memset(&cmd, 0, sizeof cmd);
    cmd.q_id = q->id;
    cmd.tag = tag;
    cmd.result = result;
    cmd.addr = reinterpret_cast<uint64_t>(q->bufs[tag]);
    std::memcpy(sqe->cmd, &cmd, sizeof cmd);
    sqe->user_data = tag;
  };
  for (uint32_t t = 0; t < depth; t++) queue_cmd(static_cast<uint16_t>(t), UBLK_IO_FETCH_REQ, UBLK_U_IO_FETCH_REQ, -1);
  rc = io_uring_submit(&ring);
  if (rc < 0) return fail(rc);
  {
    std::lock_guard<std::mutex> lk(mu_);
    ready_++;
    cv_.notify_all();
  }

  BlockHandler::Scratch scratch;
  std::vector<BlockRequest> reqs;
  std::vector<uint16_t> tags;
  std::vector<uint64_t> t0s;
  uint32_t aborted = 0;
  uint64_t stop_seen = 0;
  while (aborted < depth) {
    io_uring_cqe *cqe = nullptr;
    __kernel_timespec ts{1, 0};
    rc = io_uring_submit_and_wait_timeout(&ring, &cqe, 1, &ts, nullptr);
    if (rc == -ETIME || rc == -EINTR) {
      // Stopping and nothing more comes (e.g. the device never started): leave.
      if (stopping_.load() && ++stop_seen >= 5) break;
      continue;
    }
    if (rc < 0 && rc != -EBUSY) break;
    reqs.clear();
    tags.clear();
    t0s.clear();
    unsigned head, seen = 0;
    uint64_t t0 = now_ns();
    io_uring_for_each_cqe(&ring, head, cqe) {
      seen++;
      uint16_t tag = static_cast<uint16_t>(cqe->user_data);
      if (cqe->res != UBLK_IO_RES_OK || tag >= depth) {
        aborted++;  // UBLK_IO_RES_ABORT: the device is going away, this tag is not re-armed
        continue;
      }
      const ublksrv_io_desc &d = q->descs[tag];
      BlockRequest br;
      switch (ublksrv_get_op(&d)) {
        case UBLK_IO_OP_READ: br.op = BlockOp::Read; break;
        case UBLK_IO_OP_WRITE: br.op = BlockOp::Write; break;
        case UBLK_IO_OP_FLUSH: br.op = BlockOp::Flush; break;
        case UBLK_IO_OP_DISCARD: br.op = BlockOp::Discard; break;
        case UBLK_IO_OP_WRITE_ZEROES: br.op = BlockOp::WriteZeroes; break;
        default: br.op = static_cast<BlockOp>(255); break;
      }
      br.offset = d.start_sector << 9;
      br.length = static_cast<uint64_t>(d.nr_sectors) << 9;
      br.buf = q->bufs[tag];
      br.result = 0;
      reqs.push_back(br);
      tags.push_back(tag);
      t0s.push_back(t0);
    }
    io_uring_cq_advance(&ring, seen);
    if (reqs.empty()) continue;
    handler_->process(reqs.data(), reqs.size(), scratch);
    uint64_t t1 = now_ns();
    for (size_t i = 0; i < reqs.size(); i++) {
      const BlockRequest &br = reqs[i];
      int32_t res = br.result;
      if (br.op == BlockOp::Flush || br.op == BlockOp::Discard || br.op == BlockOp::WriteZeroes) res = res < 0 ? res : 0;
      if (static_cast<int>(br.op) < kOpCount) {
        stats_->record(br.op, br.length, t1 - t0s[i], res >= 0);
        stats_->trace.record(static_cast<uint8_t>(br.op), t0s[i], br.offset, br.length, t1 - t0s[i], br.level, res >= 0);
      }
      queue_cmd(tags[i], UBLK_IO_COMMIT_AND_FETCH_REQ, UBLK_U_IO_COMMIT_AND_FETCH_REQ, res);
    }
  }
  io_uring_queue_exit(&ring);
}

UblkTransport::~UblkTransport() { stop(); }

void UblkTransport::stop() {
  std::lock_guard<std::mutex> stop_lk(stop_mu_);
  if (ctrl_fd_ < 0) return;
  stopping_ = true;
  CtrlRing r;
  bool ring = r.init() == 0;
  if (ring && dev_id_ >= 0) simple_cmd(r, ctrl_fd_, legacy_, dev_id_, UBLK_CMD_STOP_DEV, UBLK_U_CMD_STOP_DEV);
  for (auto &q : queues_)
    if (q->thread.joinable()) q->thread.join();
  for (auto &q : queues_) {
    if (q->descs) munmap(const_cast<ublksrv_io_desc *>(q->descs), q->descs_len);
    for (uint8_t *b : q->bufs) free(b);
  }
  queues_.clear();
  if (cdev_fd_ >= 0) close(cdev_fd_);
  cdev_fd_ = -1;
  if (ring && dev_id_ >= 0) simple_cmd(r, ctrl_fd_, legacy_, dev_id_, UBLK_CMD_DEL_DEV, UBLK_U_CMD_DEL_DEV);
  dev_id_ = -1;
  close(ctrl_fd_);
  ctrl_fd_ = -1;
}

}  // namespace tsublk
