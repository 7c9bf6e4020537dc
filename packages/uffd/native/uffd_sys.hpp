// Thin wrappers over the userfaultfd kernel interface.
//
// The host headers may be older than the running kernel: constants that newer kernels added
// (UFFDIO_POISON, 6.6) are defined here when missing. Every wrapper returns 0 or -errno and
// never throws: these run on fault threads.
#pragma once

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef _UFFDIO_POISON
#define _UFFDIO_POISON (0x08)
struct uffdio_poison {
  struct uffdio_range range;
#define UFFDIO_POISON_MODE_DONTWAKE ((__u64)1 << 0)
  __u64 mode;
  __s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct uffdio_poison)
#endif

namespace tsuffd {

inline int neg_errno() { return -errno; }

// A new userfaultfd (non-blocking, close-on-exec): /dev/userfaultfd first (works without
// vm.unprivileged_userfaultfd for its owner), then the syscall.
inline int open_uffd() {
  int dev = ::open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev >= 0) {
    int fd = ::ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    int e = errno;
    ::close(dev);
    if (fd >= 0) return fd;
    errno = e;
  }
#ifdef __NR_userfaultfd
  int fd = static_cast<int>(::syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK));
  if (fd >= 0) return fd;
#endif
  return neg_errno();
}

// UFFDIO_API handshake asking for `features`; `*got` receives what the kernel granted.
inline int api(int fd, uint64_t features, uint64_t *got) {
  uffdio_api a{};
  a.api = UFFD_API;
  a.features = features;
  if (::ioctl(fd, UFFDIO_API, &a) != 0) return neg_errno();
  if (got) *got = a.features;
  return 0;
}

// The features this kernel offers (probed on a throw-away fd: the handshake is once per fd).
inline int probe_features(uint64_t *features) {
  int fd = open_uffd();
  if (fd < 0) return fd;
  int rc = api(fd, 0, features);
  ::close(fd);
  return rc;
}

inline int register_range(int fd, uint64_t start, uint64_t len, uint64_t mode, uint64_t *ioctls) {
  uffdio_register r{};
  r.range.start = start;
  r.range.len = len;
  r.mode = mode;
  if (::ioctl(fd, UFFDIO_REGISTER, &r) != 0) return neg_errno();
  if (ioctls) *ioctls = r.ioctls;
  return 0;
}

inline int unregister_range(int fd, uint64_t start, uint64_t len) {
  uffdio_range r{start, len};
  return ::ioctl(fd, UFFDIO_UNREGISTER, &r) == 0 ? 0 : neg_errno();
}

inline int wake(int fd, uint64_t start, uint64_t len) {
  uffdio_range r{start, len};
  return ::ioctl(fd, UFFDIO_WAKE, &r) == 0 ? 0 : neg_errno();
}

// One UFFDIO_COPY attempt. Returns bytes copied (> 0, possibly short), or -errno
// (-EEXIST: the first page is already present; -EAGAIN: a mapping change is pending).
inline int64_t copy_once(int fd, uint64_t dst, const void *src, uint64_t len, bool wp, bool dontwake) {
  uffdio_copy c{};
  c.dst = dst;
  c.src = reinterpret_cast<uint64_t>(src);
  c.len = len;
  c.mode = (wp ? UFFDIO_COPY_MODE_WP : 0) | (dontwake ? UFFDIO_COPY_MODE_DONTWAKE : 0);
  int rc = ::ioctl(fd, UFFDIO_COPY, &c);
  if (rc == 0) return static_cast<int64_t>(len);
  if (c.copy > 0) return c.copy;  // a partial copy reports the bytes done
  return c.copy < 0 ? c.copy : neg_errno();
}

inline int64_t zeropage_once(int fd, uint64_t dst, uint64_t len, bool dontwake) {
  uffdio_zeropage z{};
  z.range.start = dst;
  z.range.len = len;
  z.mode = dontwake ? UFFDIO_ZEROPAGE_MODE_DONTWAKE : 0;
  int rc = ::ioctl(fd, UFFDIO_ZEROPAGE, &z);
  if (rc == 0) return static_cast<int64_t>(len);
  if (z.zeropage > 0) return z.zeropage;
  return z.zeropage < 0 ? z.zeropage : neg_errno();
}

inline int64_t poison_once(int fd, uint64_t dst, uint64_t len, bool dontwake) {
  uffdio_poison p{};
  p.range.start = dst;
  p.range.len = len;
  p.mode = dontwake ? UFFDIO_POISON_MODE_DONTWAKE : 0;
  int rc = ::ioctl(fd, UFFDIO_POISON, &p);
  if (rc == 0) return static_cast<int64_t>(len);
  if (p.updated > 0) return p.updated;
  return p.updated < 0 ? p.updated : neg_errno();
}

inline int write_protect(int fd, uint64_t start, uint64_t len, bool protect, bool dontwake) {
  uffdio_writeprotect w{};
  w.range.start = start;
  w.range.len = len;
  w.mode = (protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0) | (dontwake ? UFFDIO_WRITEPROTECT_MODE_DONTWAKE : 0);
  return ::ioctl(fd, UFFDIO_WRITEPROTECT, &w) == 0 ? 0 : neg_errno();
}

inline pid_t current_tid() { return static_cast<pid_t>(::syscall(SYS_gettid)); }

}  // namespace tsuffd
