// A transport exposes a BlockHandler as a kernel block device.
#pragma once

#include <cstdint>
#include <string>

namespace tsublk {

struct TransportInfo {
  std::string path;  // the block device (/dev/ublkbN, /dev/loopN)
  int id = -1;       // ublk device id or loop minor
  bool direct_io = false;
};

class Transport {
 public:
  virtual ~Transport() = default;
  // Blocking; never on the JS thread (the kernel reads from the device while it comes up).
  // Returns 0 or -errno; `error` says which step failed.
  virtual int start(TransportInfo &info, std::string &error) = 0;
  // Blocking; idempotent. Tears the device down and joins every thread.
  virtual void stop() = 0;
};

}  // namespace tsublk
