/* A minimal ublk RAM-disk server in C (liburing): the physical limit of the ublk transport,
 * the baseline of the `ublk` bench in the guest. One queue, one thread, memcpy to/from a RAM
 * array. Usage: ublk-ramdisk <size-MiB> <depth>; prints "ready /dev/ublkbN", serves until
 * SIGTERM/SIGINT, then STOP_DEV + DEL_DEV. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/ublk_cmd.h>
#include <linux/ioctl.h>

#define U_CMD(nr) _IOWR('u', nr, struct ublksrv_ctrl_cmd)
#define U_IO(nr) _IOWR('u', nr, struct ublksrv_io_cmd)
#define MAX_IO (512 * 1024)

static int ctrl_fd, cdev_fd, dev_id, depth;
static uint8_t *ram;
static uint64_t ram_size;
static volatile int stop_flag;

static int ctrl(struct io_uring *r, unsigned op, struct ublksrv_ctrl_cmd *c) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(r);
  memset(sqe, 0, 128);
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = ctrl_fd;
  sqe->cmd_op = op;
  memcpy(sqe->cmd, c, sizeof *c);
  io_uring_submit(r);
  struct io_uring_cqe *cqe;
  io_uring_wait_cqe(r, &cqe);
  int res = cqe->res;
  io_uring_cqe_seen(r, cqe);
  return res;
}

static void io_cmd(struct io_uring *r, unsigned op, int tag, int result, void *buf) {
  struct io_uring_sqe *sqe = io_uring_get_sqe(r);
  memset(sqe, 0, 128);
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = cdev_fd;
  sqe->cmd_op = op;
  struct ublksrv_io_cmd c = {.q_id = 0, .tag = tag, .result = result, .addr = (uint64_t)buf};
  memcpy(sqe->cmd, &c, sizeof c);
  sqe->user_data = tag;
}

static volatile int ready;
static void *queue_main(void *arg) {
  (void)arg;
  size_t len = (depth * sizeof(struct ublksrv_io_desc) + 4095) & ~4095UL;
  const struct ublksrv_io_desc *d = mmap(0, len, PROT_READ, MAP_SHARED | MAP_POPULATE, cdev_fd, UBLKSRV_CMD_BUF_OFFSET);
  struct io_uring r;
  io_uring_queue_init(depth + 1, &r, IORING_SETUP_SQE128);
  uint8_t **bufs = calloc(depth, sizeof *bufs);
  for (int t = 0; t < depth; t++) {
    posix_memalign((void **)&bufs[t], 4096, MAX_IO);
    io_cmd(&r, U_IO(UBLK_IO_FETCH_REQ), t, -1, bufs[t]);
  }
  io_uring_submit(&r);
  ready = 1;
  int aborted = 0;
  while (aborted < depth) {
    struct io_uring_cqe *cqe;
    if (io_uring_submit_and_wait(&r, 1) < 0) break;
    unsigned head, n = 0;
    io_uring_for_each_cqe(&r, head, cqe) {
      n++;
      int tag = (int)cqe->user_data;
      if (cqe->res != UBLK_IO_RES_OK) { aborted++; continue; }
      const struct ublksrv_io_desc *io = &d[tag];
      uint64_t off = io->start_sector << 9, bytes = (uint64_t)io->nr_sectors << 9;
      int res = (int)bytes;
      switch (io->op_flags & 0xff) {
        case UBLK_IO_OP_READ: memcpy(bufs[tag], ram + off, bytes); break;
        case UBLK_IO_OP_WRITE: memcpy(ram + off, bufs[tag], bytes); break;
        case UBLK_IO_OP_DISCARD: case UBLK_IO_OP_WRITE_ZEROES: memset(ram + off, 0, bytes); res = 0; break;
        case UBLK_IO_OP_FLUSH: res = 0; break;
        default: res = -EOPNOTSUPP;
      }
      io_cmd(&r, U_IO(UBLK_IO_COMMIT_AND_FETCH_REQ), tag, res, bufs[tag]);
    }
    io_uring_cq_advance(&r, n);
  }
  io_uring_queue_exit(&r);
  return 0;
}

static void on_sig(int s) { (void)s; stop_flag = 1; }

int main(int argc, char **argv) {
  ram_size = (uint64_t)(argc > 1 ? atoi(argv[1]) : 64) << 20;
  depth = argc > 2 ? atoi(argv[2]) : 32;
  ram = mmap(0, ram_size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
  ctrl_fd = open("/dev/ublk-control", O_RDWR);
  if (ctrl_fd < 0) { perror("/dev/ublk-control"); return 1; }
  struct io_uring r;
  io_uring_queue_init(4, &r, IORING_SETUP_SQE128);
  struct ublksrv_ctrl_dev_info di = {.nr_hw_queues = 1, .queue_depth = depth, .max_io_buf_bytes = MAX_IO, .dev_id = -1, .flags = 1UL << 6};
  struct ublksrv_ctrl_cmd c = {.dev_id = -1, .queue_id = (uint16_t)-1, .addr = (uint64_t)&di, .len = sizeof di};
  int rc = ctrl(&r, U_CMD(UBLK_CMD_ADD_DEV), &c);
  if (rc < 0) { fprintf(stderr, "ADD_DEV: %s\n", strerror(-rc)); return 1; }
  dev_id = di.dev_id;
  struct ublk_params p = {.len = sizeof p, .types = UBLK_PARAM_TYPE_BASIC};
  p.basic.logical_bs_shift = 9; p.basic.physical_bs_shift = 12; p.basic.io_opt_shift = 12; p.basic.io_min_shift = 12;
  p.basic.max_sectors = MAX_IO >> 9; p.basic.dev_sectors = ram_size >> 9;
  struct ublksrv_ctrl_cmd pc = {.dev_id = dev_id, .queue_id = (uint16_t)-1, .addr = (uint64_t)&p, .len = sizeof p};
  if ((rc = ctrl(&r, U_CMD(UBLK_CMD_SET_PARAMS), &pc)) < 0) { fprintf(stderr, "SET_PARAMS: %s\n", strerror(-rc)); return 1; }
  char path[64];
  snprintf(path, sizeof path, "/dev/ublkc%d", dev_id);
  for (int i = 0; i < 300 && (cdev_fd = open(path, O_RDWR)) < 0; i++) usleep(10000);
  pthread_t th;
  pthread_create(&th, 0, queue_main, 0);
  while (!ready) usleep(1000);
  struct ublksrv_ctrl_cmd sc = {.dev_id = dev_id, .queue_id = (uint16_t)-1, .data = {getpid()}};
  if ((rc = ctrl(&r, U_CMD(UBLK_CMD_START_DEV), &sc)) < 0) { fprintf(stderr, "START_DEV: %s\n", strerror(-rc)); return 1; }
  printf("ready /dev/ublkb%d\n", dev_id);
  fflush(stdout);
  signal(SIGTERM, on_sig);
  signal(SIGINT, on_sig);
  while (!stop_flag) pause();
  struct ublksrv_ctrl_cmd xc = {.dev_id = dev_id, .queue_id = (uint16_t)-1};
  ctrl(&r, U_CMD(UBLK_CMD_STOP_DEV), &xc);
  pthread_join(th, 0);
  close(cdev_fd);
  ctrl(&r, U_CMD(UBLK_CMD_DEL_DEV), &xc);
  return 0;
}
