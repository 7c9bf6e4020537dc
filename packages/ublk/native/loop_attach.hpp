// Attaches a file to a free loop device with LOOP_CONFIGURE (direct I/O, autoclear), keeping one
// fd open: the device detaches itself when that fd closes, also when the process dies.
#pragma once

#include <cstdint>
#include <string>

namespace tsublk {

struct LoopDevice {
  int fd = -1;
  int minor = -1;
  bool direct_io = false;
  std::string path;
};

// Returns 0 or -errno (error names the step).
int loop_attach(const std::string &file, uint32_t block_size, LoopDevice &out, std::string &error);
// Clears the device and closes the fd. Idempotent.
void loop_detach(LoopDevice &dev);

}  // namespace tsublk
