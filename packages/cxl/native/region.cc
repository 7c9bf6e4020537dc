#include "region.hpp"

#include "cache.hpp"

#include <cerrno>
#include <cstring>
#include <ctime>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <tierstack/page_store.hpp>

namespace tscxl {

namespace {

std::string errno_text(const char *what, int e) { return std::string(what) + ": " + std::strerror(e); }

// Binds [addr, addr + len) to one NUMA node before any page of it is touched. A raw syscall, so
// no libnuma is needed; MPOL_BIND = 2.
Status bind_to_node(void *addr, uint64_t len, int node) {
  constexpr int kMpolBind = 2;
  constexpr unsigned kMaskBits = 1024;
  if (node < 0 || unsigned(node) >= kMaskBits) return Status::fail(TS_E_BAD_ARGUMENT, "numaNode must be in [0, 1024)");
  unsigned long mask[kMaskBits / (8 * sizeof(unsigned long))] = {};
  mask[node / (8 * sizeof(unsigned long))] |= 1UL << (node % (8 * sizeof(unsigned long)));
  if (syscall(SYS_mbind, addr, len, kMpolBind, mask, kMaskBits + 1, 0) != 0) {
    int e = errno;
    return Status::fail(e == EINVAL ? TS_E_BAD_ARGUMENT : TS_E_IO,
                        errno_text(("mbind to NUMA node " + std::to_string(node)).c_str(), e), e);
  }
  return Status::ok();
}

// Identity of this process's pid namespace (the inode of /proc/self/ns/pid), 0 if unknown.
uint32_t own_pid_namespace() {
  struct stat st;
  if (stat("/proc/self/ns/pid", &st) != 0) return 0;
  return uint32_t(st.st_ino);
}

// FNV-1a 64 of /proc/sys/kernel/random/boot_id (a UUID per boot), 0 if unreadable.
uint64_t current_boot_id() {
  int fd = ::open("/proc/sys/kernel/random/boot_id", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[64];
  ssize_t n = read(fd, buf, sizeof buf);
  close(fd);
  if (n <= 0) return 0;
  uint64_t h = 0xcbf29ce484222325ULL;
  for (ssize_t i = 0; i < n; i++) h = (h ^ uint8_t(buf[i])) * 0x100000001b3ULL;
  return h;
}

bool all_zero(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i]) return false;
  return true;
}

// Holds an advisory lock on the backing while a process formats or validates it, so two
// processes opening a fresh file at once do not both format it.
struct FlockGuard {
  int fd;
  explicit FlockGuard(int f) : fd(f) {
    if (fd >= 0)
      while (flock(fd, LOCK_EX) != 0 && errno == EINTR) {
      }
  }
  ~FlockGuard() {
    if (fd >= 0) flock(fd, LOCK_UN);
  }
};

}  // namespace

uint32_t header_checksum(const Header &h) { return tierstack::crc32c(&h, offsetof(Header, header_crc)); }

Status plan_geometry(uint64_t bytes, uint32_t page_size, uint32_t ways, uint32_t ns_entries, Geometry &g) {
  if (page_size < 512 || (page_size & (page_size - 1)) != 0)
    return Status::fail(TS_E_PAGE_SIZE, "page size must be a power of two >= 512");
  if (ways < kMinWays || ways > kMaxWays)
    return Status::fail(TS_E_BAD_ARGUMENT, "ways must be in [" + std::to_string(kMinWays) + ", " + std::to_string(kMaxWays) + "]");
  if (ns_entries < 1 || ns_entries > (1u << 20)) return Status::fail(TS_E_BAD_ARGUMENT, "namespace entries must be in [1, 2^20]");
  g.page_size = page_size;
  g.ways = ways;
  g.ns_entries = ns_entries;
  g.set_bytes = uint32_t(set_record_bytes(ways));
  g.ns_offset = kHeaderBytes;
  g.sets_offset = align_up(g.ns_offset + uint64_t(ns_entries) * sizeof(NsEntry), 4096);
  const uint64_t data_align = page_size < 4096 ? 4096 : page_size;
  const uint64_t per_set = g.set_bytes + uint64_t(ways) * page_size;
  if (bytes < g.sets_offset + data_align + per_set) {
    return Status::fail(TS_E_BAD_ARGUMENT, "region of " + std::to_string(bytes) + " bytes is too small for one set of " +
                                                std::to_string(ways) + " pages of " + std::to_string(page_size) + " bytes");
  }
  g.set_count = (bytes - g.sets_offset - data_align) / per_set;
  g.data_offset = align_up(g.sets_offset + g.set_count * g.set_bytes, data_align);
  g.region_bytes = bytes;
  return Status::ok();
}

Region::~Region() {
  if (base_) munmap(base_, map_bytes_);
  if (fd_ >= 0) close(fd_);
}

Status Region::map(uint64_t bytes, int numa_node) {
  void *p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    return Status::fail(e == EINVAL || e == ENODEV ? TS_E_BAD_ARGUMENT : TS_E_IO, errno_text("mmap of the backing", e), e);
  }
  base_ = static_cast<uint8_t *>(p);
  map_bytes_ = bytes;
  if (numa_node >= 0) return bind_to_node(p, bytes, numa_node);
  return Status::ok();
}

Status Region::format(const OpenOptions &o, uint64_t bytes) {
  Geometry g;
  Status st = plan_geometry(bytes, o.page_size ? o.page_size : 4096, o.ways ? o.ways : kDefaultWays,
                            o.ns_entries ? o.ns_entries : kDefaultNsEntries, g);
  if (!st.is_ok()) return st;
  // Clear the magic first: a crash mid-format leaves a region that reads as unformatted.
  __atomic_store_n(reinterpret_cast<uint64_t *>(base_), uint64_t(0), __ATOMIC_SEQ_CST);
  std::memset(base_ + 8, 0, g.sets_offset - 8);
  std::memset(base_ + g.sets_offset, 0, g.set_count * g.set_bytes);
  Header h;
  std::memset(&h, 0, sizeof h);
  std::memcpy(h.magic, kMagic, sizeof kMagic);
  h.version = kVersion;
  h.header_bytes = uint32_t(kHeaderBytes);
  h.page_size = g.page_size;
  h.ways = g.ways;
  h.set_count = g.set_count;
  h.slot_count = g.set_count * g.ways;
  h.region_bytes = g.region_bytes;
  h.ns_offset = g.ns_offset;
  h.ns_entries = g.ns_entries;
  h.set_bytes = g.set_bytes;
  h.sets_offset = g.sets_offset;
  h.data_offset = g.data_offset;
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  h.created_unix_ns = uint64_t(ts.tv_sec) * 1000000000ULL + uint64_t(ts.tv_nsec);
  h.creator_pid = uint32_t(getpid());
  h.pid_namespace = own_pid_namespace();
  gethostname(h.creator_host, sizeof h.creator_host - 1);
  h.header_crc = header_checksum(h);
  std::memcpy(base_ + 8, reinterpret_cast<const uint8_t *>(&h) + 8, sizeof h - 8);
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  uint64_t magic;
  std::memcpy(&magic, kMagic, 8);
  __atomic_store_n(reinterpret_cast<uint64_t *>(base_ + kBootIdOffset), current_boot_id(), __ATOMIC_RELAXED);
  __atomic_store_n(reinterpret_cast<uint64_t *>(base_), magic, __ATOMIC_SEQ_CST);
  formatted_now_ = true;
  return Status::ok();
}

Status Region::validate(const OpenOptions &o, uint64_t backing_bytes) {
  const Header &h = header();
  if (std::memcmp(h.magic, kMagic, sizeof kMagic) != 0)
    return Status::fail(TS_E_CORRUPT, "the backing does not hold a tierstack CXL region (foreign or damaged header; format it explicitly)");
  if (h.version != kVersion)
    return Status::fail(TS_E_UNSUPPORTED, "region format version " + std::to_string(h.version) + " is not supported (this build reads " +
                                              std::to_string(kVersion) + ")");
  if (header_checksum(h) != h.header_crc) return Status::fail(TS_E_CORRUPT, "the region header's checksum does not match (corrupted header)");
  Geometry g;
  Status st = plan_geometry(h.region_bytes, h.page_size, h.ways, h.ns_entries, g);
  if (!st.is_ok() || g.set_count != h.set_count || g.set_bytes != h.set_bytes || g.sets_offset != h.sets_offset ||
      g.data_offset != h.data_offset || g.ns_offset != h.ns_offset || h.slot_count != h.set_count * h.ways)
    return Status::fail(TS_E_CORRUPT, "the region header's geometry is inconsistent (corrupted header)");
  if (h.region_bytes > backing_bytes)
    return Status::fail(TS_E_CORRUPT, "the backing is truncated: the region needs " + std::to_string(h.region_bytes) + " bytes, the backing has " +
                                          std::to_string(backing_bytes));
  // Set locks name their owner by pid; a process in another pid namespace would misjudge them.
  const uint32_t pidns = own_pid_namespace();
  if (h.pid_namespace && pidns && h.pid_namespace != pidns)
    return Status::fail(TS_E_UNSUPPORTED, "the region was formatted in another pid namespace: processes sharing a region must share one "
                                          "(lock owners are pids)");
  if (o.page_size && o.page_size != h.page_size)
    return Status::fail(TS_E_PAGE_SIZE, "the region holds pages of " + std::to_string(h.page_size) + " bytes, " + std::to_string(o.page_size) +
                                            " were asked for");
  if (o.ways && o.ways != h.ways)
    return Status::fail(TS_E_BAD_ARGUMENT, "geometry mismatch: the region has " + std::to_string(h.ways) + " ways per set, " +
                                               std::to_string(o.ways) + " were asked for");
  if (o.size && o.size != h.region_bytes)
    return Status::fail(TS_E_BAD_ARGUMENT, "geometry mismatch: the region is " + std::to_string(h.region_bytes) + " bytes, " +
                                               std::to_string(o.size) + " were asked for (format to change it)");
  if (o.ns_entries && o.ns_entries != h.ns_entries)
    return Status::fail(TS_E_BAD_ARGUMENT, "geometry mismatch: the region has " + std::to_string(h.ns_entries) + " namespace entries");
  return Status::ok();
}

Status Region::open(const OpenOptions &o) {
  formatted_now_ = false;
  if (o.kind == BackingKind::Memfd) {
    uint64_t bytes = o.size ? o.size : (64ULL << 20);
    fd_ = int(syscall(SYS_memfd_create, "tierstack-cxl", 1u /* MFD_CLOEXEC */));
    if (fd_ < 0) return Status::fail(TS_E_IO, errno_text("memfd_create", errno), errno);
    if (ftruncate(fd_, off_t(bytes)) != 0) return Status::fail(TS_E_IO, errno_text("ftruncate of the memfd", errno), errno);
    Geometry g;
    Status st = plan_geometry(bytes, o.page_size ? o.page_size : 4096, o.ways ? o.ways : kDefaultWays,
                              o.ns_entries ? o.ns_entries : kDefaultNsEntries, g);
    if (!st.is_ok()) return st;
    st = map(bytes, o.numa_node);
    if (!st.is_ok()) return st;
    return format(o, bytes);
  }

  if (o.numa_node >= 0) return Status::fail(TS_E_BAD_ARGUMENT, "numaNode applies to a memfd backing only");
  const bool devdax = o.kind == BackingKind::Devdax;
  int flags = O_RDWR | O_CLOEXEC | (!devdax && o.create ? O_CREAT : 0);
  fd_ = ::open(o.path.c_str(), flags, 0600);
  if (fd_ < 0) {
    int e = errno;
    return Status::fail(e == ENOENT ? TS_E_NOT_FOUND : TS_E_IO, errno_text(("open " + o.path).c_str(), e), e);
  }
  struct stat sb;
  if (fstat(fd_, &sb) != 0) return Status::fail(TS_E_IO, errno_text("fstat", errno), errno);
  FlockGuard guard(fd_);

  uint64_t backing_bytes;
  if (devdax) {
    if (!S_ISCHR(sb.st_mode)) return Status::fail(TS_E_BAD_ARGUMENT, o.path + " is not a character device (devdax backing)");
    if (o.device_size == 0 || o.device_align == 0)
      return Status::fail(TS_E_BAD_ARGUMENT, "the size and alignment of " + o.path + " are unknown (sysfs)");
    if (o.device_size % o.device_align != 0)
      return Status::fail(TS_E_BAD_ARGUMENT, "devdax size " + std::to_string(o.device_size) + " of " + o.path + " is not a multiple of its alignment " +
                                                 std::to_string(o.device_align));
    if (o.size && (o.size > o.device_size || o.size % o.device_align != 0))
      return Status::fail(TS_E_BAD_ARGUMENT, "size must be a multiple of the device alignment " + std::to_string(o.device_align) +
                                                 " and at most the device size " + std::to_string(o.device_size));
    backing_bytes = o.device_size;
  } else {
    if (!S_ISREG(sb.st_mode)) return Status::fail(TS_E_BAD_ARGUMENT, o.path + " is not a regular file");
    backing_bytes = uint64_t(sb.st_size);
    const bool resize = backing_bytes == 0 ? o.size > 0 : (o.format && o.size && o.size != backing_bytes);
    if (backing_bytes == 0 && !resize)
      return Status::fail(TS_E_BAD_ARGUMENT, o.path + " is empty: give a size to create the region");
    if (resize) {
      if (ftruncate(fd_, off_t(o.size)) != 0) return Status::fail(TS_E_IO, errno_text("ftruncate of the backing file", errno), errno);
      backing_bytes = o.size;
    } else if (backing_bytes < kHeaderBytes) {
      return Status::fail(TS_E_CORRUPT, "the backing file is truncated (" + std::to_string(backing_bytes) + " bytes, shorter than a region header)");
    }
  }

  // Map the whole backing; a new layout uses `size` bytes of it when given (a devdax prefix).
  Status st = map(backing_bytes, -1);
  if (!st.is_ok()) return st;
  if (o.format || all_zero(base_, kHeaderBytes)) {
    if (o.size > backing_bytes)
      return Status::fail(TS_E_BAD_ARGUMENT, "size " + std::to_string(o.size) + " exceeds the backing's " + std::to_string(backing_bytes) + " bytes");
    return format(o, o.size ? o.size : backing_bytes);
  }
  st = validate(o, backing_bytes);
  if (!st.is_ok()) return st;
  // First opener since a reboot (we hold the flock, so no one else is opening it now, and any
  // process of this boot that opened it before would have stored this boot's id).
  uint64_t *stored_boot = reinterpret_cast<uint64_t *>(base_ + kBootIdOffset);
  const uint64_t boot = current_boot_id();
  if (boot && __atomic_load_n(stored_boot, __ATOMIC_RELAXED) != boot) {
    Cache(*this).recover_after_reboot();
    __atomic_store_n(stored_boot, boot, __ATOMIC_SEQ_CST);
    recovered_ = true;
  }
  // The mapping stays as large as the backing; the layout uses region_bytes of it.
  return Status::ok();
}

}  // namespace tscxl
