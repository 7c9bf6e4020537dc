// The ublk transport: a device added through /dev/ublk-control (io_uring URING_CMD), one thread
// with its own io_uring per queue on /dev/ublkcN fetching requests and committing results.
// Requests a queue thread has in hand are served as one batch by the BlockHandler.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "block_handler.hpp"
#include "stats.hpp"
#include "transport.hpp"
#include "ublk_uapi.hpp"

namespace tsublk {

class CtrlRing;  // ctrl_ring.hpp

struct UblkOptions {
  uint32_t queues = 1;
  uint32_t depth = 64;
  uint32_t max_io_bytes = 512 * 1024;
  int dev_id = -1;  // -1: the driver picks
  bool recovery = false;  // add with UBLK_F_USER_RECOVERY | _REISSUE: the device outlives its server
  bool recover = false;   // take over device dev_id whose server died instead of adding one (recovery.cc)
};

// Probes /dev/ublk-control: 0, -ENOENT (absent: no ublk_drv), -EACCES/-EPERM.
int ublk_probe();
// Stops and deletes a ublk device left by a dead server. 0 or -errno.
int ublk_delete(int dev_id, std::string &error);

class UblkTransport : public Transport {
 public:
  UblkTransport(BlockHandler *handler, DeviceStats *stats, UblkOptions opts)
      : handler_(handler), stats_(stats), opts_(opts) {}
  ~UblkTransport() override;
  int start(TransportInfo &info, std::string &error) override;
  void stop() override;

 private:
  struct Queue {
    uint16_t id = 0;
    std::thread thread;
    const ublksrv_io_desc *descs = nullptr;
    size_t descs_len = 0;
    std::vector<uint8_t *> bufs;
  };
  void queue_main(Queue *q);
  int open_control(CtrlRing &r, std::string &error);  // /dev/ublk-control + its command ring
  int open_queues(int id, std::string &error);         // char node, queue threads, tags fetched
  int recover_start(TransportInfo &info, std::string &error);  // recovery.cc
  void abandon();                                              // recovery.cc
  int serving(TransportInfo &info);                            // started: fills info, 0

  BlockHandler *handler_;
  DeviceStats *stats_;
  UblkOptions opts_;
  int ctrl_fd_ = -1;
  int cdev_fd_ = -1;
  int dev_id_ = -1;
  bool legacy_ = false;
  bool started_ = false;
  std::vector<std::unique_ptr<Queue>> queues_;
  std::mutex mu_, stop_mu_;
  std::condition_variable cv_;
  uint32_t ready_ = 0;
  int queue_error_ = 0;
  std::atomic<bool> stopping_{false};
};

}  // namespace tsublk
