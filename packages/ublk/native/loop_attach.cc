#include "loop_attach.hpp"

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace tsublk {

int loop_attach(const std::string &file, uint32_t block_size, LoopDevice &out, std::string &error) {
  int backing = open(file.c_str(), O_RDWR | O_DIRECT | O_CLOEXEC);
  if (backing < 0 && errno == EINVAL) backing = open(file.c_str(), O_RDWR | O_CLOEXEC);
  if (backing < 0) {
    int e = errno;
    error = "open " + file + ": " + strerror(e);
    return -e;
  }
  int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) {
    int e = errno;
    close(backing);
    error = std::string("open /dev/loop-control: ") + strerror(e);
    return -e;
  }
  int rc = -EBUSY;
  for (int attempt = 0; attempt < 16; attempt++) {
    int minor = ioctl(ctl, LOOP_CTL_GET_FREE);
    if (minor < 0) {
      rc = -errno;
      error = std::string("LOOP_CTL_GET_FREE: ") + strerror(errno);
      break;
    }
    std::string path = "/dev/loop" + std::to_string(minor);
    int fd = -1;
    for (int w = 0; w < 100 && fd < 0; w++) {  // the node may appear a moment after GET_FREE
      fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
      if (fd < 0 && errno == ENOENT) usleep(10000);
      else break;
    }
    if (fd < 0) {
      rc = -errno;
      error = "open " + path + ": " + strerror(errno);
      break;
    }
    loop_config cfg;
    std::memset(&cfg, 0, sizeof cfg);
    cfg.fd = static_cast<uint32_t>(backing);
    cfg.block_size = block_size;
    cfg.info.lo_flags = LO_FLAGS_DIRECT_IO | LO_FLAGS_AUTOCLEAR;
    std::strncpy(reinterpret_cast<char *>(cfg.info.lo_file_name), "tierstack", LO_NAME_SIZE - 1);
    if (ioctl(fd, LOOP_CONFIGURE, &cfg) < 0) {
      int e = errno;
      if (e == EINVAL) {  // no direct I/O on this backing file: attach without it
        cfg.info.lo_flags = LO_FLAGS_AUTOCLEAR;
        if (ioctl(fd, LOOP_CONFIGURE, &cfg) == 0) e = 0;
        else e = errno;
      }
      if (e != 0) {
        close(fd);
        if (e == EBUSY) continue;  // another process took this device first
        rc = -e;
        error = "LOOP_CONFIGURE " + path + ": " + strerror(e);
        break;
      }
    }
    loop_info64 info;
    std::memset(&info, 0, sizeof info);
    out.direct_io = ioctl(fd, LOOP_GET_STATUS64, &info) == 0 && (info.lo_flags & LO_FLAGS_DIRECT_IO);
    out.fd = fd;
    out.minor = minor;
    out.path = path;
    rc = 0;
    break;
  }
  close(ctl);
  close(backing);  // the loop device holds its own reference
  return rc;
}

void loop_detach(LoopDevice &dev) {
  if (dev.fd < 0) return;
  ioctl(dev.fd, LOOP_CLR_FD, 0);  // with autoclear, the last close detaches anyway
  close(dev.fd);
  dev.fd = -1;
}

}  // namespace tsublk
