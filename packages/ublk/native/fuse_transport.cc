#include "fuse_transport.hpp"

#include <fuse_lowlevel.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>
#include <fcntl.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstring>

#include <tierstack/clock.hpp>

namespace tsublk {
namespace {

constexpr fuse_ino_t kDiskIno = 2;
constexpr const char *kDiskName = "disk";

FuseTransport *self_of(fuse_req_t req) { return static_cast<FuseTransport *>(fuse_req_userdata(req)); }

using tierstack::now_ns;

void fill_attr(FuseTransport *t, fuse_ino_t ino, struct stat &st) {
  std::memset(&st, 0, sizeof st);
  st.st_ino = ino;
  if (ino == FUSE_ROOT_ID) {
    st.st_mode = S_IFDIR | 0755;
    st.st_nlink = 2;
  } else {
    st.st_mode = S_IFREG | 0600;
    st.st_nlink = 1;
    st.st_size = static_cast<off_t>(t->handler()->size());
    st.st_blocks = st.st_size / 512;
  }
  st.st_blksize = 4096;
}

void op_init(void *userdata, fuse_conn_info *conn) {
  conn->max_write = 1u << 20;
  conn->max_readahead = 0;
  conn->max_background = 128;
  conn->congestion_threshold = 96;
  if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
}

void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  if (parent != FUSE_ROOT_ID || std::strcmp(name, kDiskName) != 0) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_entry_param e;
  std::memset(&e, 0, sizeof e);
  e.ino = kDiskIno;
  e.attr_timeout = 3600;
  e.entry_timeout = 3600;
  fill_attr(self_of(req), kDiskIno, e.attr);
  fuse_reply_entry(req, &e);
}

void op_getattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info *) {
  if (ino != FUSE_ROOT_ID && ino != kDiskIno) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st;
  fill_attr(self_of(req), ino, st);
  fuse_reply_attr(req, &st, 3600);
}

void op_open(fuse_req_t req, fuse_ino_t ino, fuse_file_info *fi) {
  if (ino != kDiskIno) {
    fuse_reply_err(req, ino == FUSE_ROOT_ID ? EISDIR : ENOENT);
    return;
  }
  fi->keep_cache = 0;
  fi->noflush = 1;
  fuse_reply_open(req, fi);
}

// One request through the handler, with stats.
int serve(FuseTransport *t, BlockOp op, uint64_t off, uint64_t len, uint8_t *buf, FuseTransport::Worker *w) {
  uint64_t t0 = now_ns();
  BlockRequest r{op, off, len, buf, 0};
  t->handler()->process(&r, 1, w->scratch);
  uint64_t dt = now_ns() - t0;
  t->stats()->record(op, len, dt, r.result >= 0);
  t->stats()->trace.record(static_cast<uint8_t>(op), t0, off, len, dt, r.level, r.result >= 0);
  return r.result;
}

void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info *) {
  FuseTransport *t = self_of(req);
  uint64_t dev = t->handler()->size();
  if (static_cast<uint64_t>(off) >= dev) {
    fuse_reply_buf(req, nullptr, 0);
    return;
  }
  size = static_cast<size_t>(std::min<uint64_t>(size, dev - static_cast<uint64_t>(off)));
  FuseTransport::Worker *w = t->take_worker(size);
  int rc = serve(t, BlockOp::Read, static_cast<uint64_t>(off), size, w->buf.get(), w);
  if (rc < 0) fuse_reply_err(req, -rc);
  else fuse_reply_buf(req, reinterpret_cast<const char *>(w->buf.get()), size);
  t->give_worker(w);
}

void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, fuse_file_info *) {
  FuseTransport *t = self_of(req);
  uint64_t dev = t->handler()->size();
  if (static_cast<uint64_t>(off) >= dev || size > dev - static_cast<uint64_t>(off)) {
    fuse_reply_err(req, ENOSPC);  // the file cannot grow
    return;
  }
  FuseTransport::Worker *w = t->take_worker(0);
  int rc = serve(t, BlockOp::Write, static_cast<uint64_t>(off), size,
                 reinterpret_cast<uint8_t *>(const_cast<char *>(buf)), w);
  t->give_worker(w);
  if (rc < 0) fuse_reply_err(req, -rc);
  else fuse_reply_write(req, size);
}

void op_fsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info *) {
  FuseTransport *t = self_of(req);
  FuseTransport::Worker *w = t->take_worker(0);
  int rc = serve(t, BlockOp::Flush, 0, 0, nullptr, w);
  t->give_worker(w);
  fuse_reply_err(req, rc < 0 ? -rc : 0);
}

void op_fallocate(fuse_req_t req, fuse_ino_t, int mode, off_t off, off_t len, fuse_file_info *) {
  FuseTransport *t = self_of(req);
  BlockOp op;
  if (mode == 0 || mode == FALLOC_FL_KEEP_SIZE) {
    fuse_reply_err(req, 0);  // preallocation: every byte already exists
    return;
  } else if (mode & FALLOC_FL_PUNCH_HOLE) {
    op = BlockOp::Discard;  // the loop device's discard
  } else if (mode & FALLOC_FL_ZERO_RANGE) {
    op = BlockOp::WriteZeroes;
  } else {
    fuse_reply_err(req, EOPNOTSUPP);
    return;
  }
  uint64_t dev = t->handler()->size();
  uint64_t o = static_cast<uint64_t>(off), l = static_cast<uint64_t>(len);
  if (o >= dev) {
    fuse_reply_err(req, 0);
    return;
  }
  l = std::min(l, dev - o);
  FuseTransport::Worker *w = t->take_worker(0);
  int rc = serve(t, op, o, l, nullptr, w);
  t->give_worker(w);
  fuse_reply_err(req, rc < 0 ? -rc : 0);
}

void op_statfs(fuse_req_t req, fuse_ino_t) {
  struct statvfs st;
  std::memset(&st, 0, sizeof st);
  st.f_bsize = 4096;
  st.f_frsize = 4096;
  st.f_blocks = self_of(req)->handler()->size() / 4096;
  st.f_files = 2;
  st.f_namemax = 255;
  fuse_reply_statfs(req, &st);
}

const fuse_lowlevel_ops kOps = [] {
  fuse_lowlevel_ops o;
  std::memset(&o, 0, sizeof o);
  o.init = op_init;
  o.lookup = op_lookup;
  o.getattr = op_getattr;
  o.open = op_open;
  o.read = op_read;
  o.write = op_write;
  o.fsync = op_fsync;
  o.fallocate = op_fallocate;
  o.statfs = op_statfs;
  return o;
}();

}  // namespace

FuseTransport::Worker *FuseTransport::take_worker(size_t need) {
  Worker *w;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (free_workers_.empty()) {
      workers_.emplace_back(new Worker());
      w = workers_.back().get();
    } else {
      w = free_workers_.back();
      free_workers_.pop_back();
    }
  }
  if (w->cap < need) {
    size_t cap = std::max<size_t>(need, 1u << 20);
    w->buf.reset(new uint8_t[cap]);
    w->cap = cap;
    stats_->lock(w->buf.get(), cap);
  }
  return w;
}

void FuseTransport::give_worker(Worker *w) {
  std::lock_guard<std::mutex> lk(mu_);
  free_workers_.push_back(w);
}

int FuseTransport::start(TransportInfo &info, std::string &error) {
  // libfuse parses mount options from argv; it never calls exit() for these.
  const char *argv[] = {"tierstack-ublk", "-o", "allow_other,fsname=tierstack,subtype=tierstack", nullptr};
  fuse_args args = FUSE_ARGS_INIT(3, const_cast<char **>(argv));
  se_ = fuse_session_new(&args, &kOps, sizeof kOps, this);
  if (se_ == nullptr) {
    error = "fuse_session_new failed";
    return -EIO;
  }
  if (fuse_session_mount(se_, opts_.mount_dir.c_str()) != 0) {
    error = "fuse_session_mount " + opts_.mount_dir + " failed (is /dev/fuse there and are we root?)";
    fuse_session_destroy(se_);
    se_ = nullptr;
    return -EPERM;
  }
  mounted_ = true;
  loop_thread_ = std::thread([this] {
    fuse_loop_config *cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(cfg, opts_.max_threads);
    fuse_loop_cfg_set_idle_threads(cfg, opts_.max_threads);
    fuse_loop_cfg_set_clone_fd(cfg, 1);
    fuse_session_loop_mt(se_, cfg);
    fuse_loop_cfg_destroy(cfg);
    std::lock_guard<std::mutex> lk(mu_);
    loop_done_ = true;
    cv_.notify_all();
  });
  // (stat after the loop runs: the mountpoint's GETATTR waits for FUSE INIT.)
  struct stat mst;
  if (stat(opts_.mount_dir.c_str(), &mst) == 0)
    conn_abort_path_ = "/sys/fs/fuse/connections/" + std::to_string(minor(mst.st_dev)) + "/abort";
  int rc = loop_attach(opts_.mount_dir + "/" + kDiskName, opts_.block_size, loop_, error);
  // Detach the mount now: the loop device holds the file, and a dead process leaves no mount.
  unmount_now();
  if (rc != 0) {
    stop();
    return rc;
  }
  info.path = loop_.path;
  info.id = loop_.minor;
  info.direct_io = loop_.direct_io;
  return 0;
}

void FuseTransport::unmount_now() {
  if (!mounted_) return;
  umount2(opts_.mount_dir.c_str(), MNT_DETACH);
  mounted_ = false;
}

void FuseTransport::stop() {
  std::lock_guard<std::mutex> stop_lk(stop_mu_);
  if (se_ == nullptr) return;
  loop_detach(loop_);
  unmount_now();
  fuse_session_exit(se_);
  if (loop_thread_.joinable()) {
    // The loop ends when the kernel drops the connection (the file's last reference went away
    // with the loop device). If something still holds it, abort the connection.
    std::unique_lock<std::mutex> lk(mu_);
    if (!cv_.wait_for(lk, std::chrono::seconds(3), [&] { return loop_done_; })) {
      lk.unlock();
      if (!conn_abort_path_.empty()) {
        int fd = open(conn_abort_path_.c_str(), O_WRONLY | O_CLOEXEC);
        if (fd >= 0) {
          (void)!write(fd, "1", 1);
          close(fd);
        }
      }
      lk.lock();
      cv_.wait_for(lk, std::chrono::seconds(5), [&] { return loop_done_; });
    }
    lk.unlock();
    if (loop_done_) loop_thread_.join();
    else loop_thread_.detach();  // cannot happen after an abort; never hang the caller
  }
  if (loop_done_) fuse_session_destroy(se_);
  se_ = nullptr;
}

}  // namespace tsublk
