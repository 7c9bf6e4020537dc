// loop over FUSE: a one-file FUSE filesystem (libfuse3 low-level API, served by libfuse's worker
// threads: no JavaScript on the path) whose file is the device, attached to a loop device with
// direct I/O. Right after the loop device holds the file, the mount is detached (MNT_DETACH), so
// nothing stays mounted if the process dies; the loop device clears itself when its fd closes.
#pragma once

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "block_handler.hpp"
#include "loop_attach.hpp"
#include "stats.hpp"
#include "transport.hpp"

struct fuse_session;

namespace tsublk {

struct FuseOptions {
  std::string mount_dir;  // an empty directory
  uint32_t block_size = 4096;
  uint32_t max_threads = 16;
};

class FuseTransport : public Transport {
 public:
  FuseTransport(BlockHandler *handler, DeviceStats *stats, FuseOptions opts)
      : handler_(handler), stats_(stats), opts_(std::move(opts)) {}
  ~FuseTransport() override { stop(); }
  int start(TransportInfo &info, std::string &error) override;
  void stop() override;

  // Called by the FUSE callbacks (libfuse worker threads).
  struct Worker {
    BlockHandler::Scratch scratch;
    std::unique_ptr<uint8_t[]> buf;
    size_t cap = 0;
  };
  Worker *take_worker(size_t need);
  void give_worker(Worker *w);
  BlockHandler *handler() const { return handler_; }
  DeviceStats *stats() const { return stats_; }

 private:
  void unmount_now();

  BlockHandler *handler_;
  DeviceStats *stats_;
  FuseOptions opts_;
  fuse_session *se_ = nullptr;
  std::thread loop_thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool loop_done_ = false;
  bool mounted_ = false;
  std::string conn_abort_path_;
  LoopDevice loop_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::vector<Worker *> free_workers_;
  std::mutex stop_mu_;
};

}  // namespace tsublk
