// ublk user recovery (UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE): a device added with
// these flags survives its server. When the server dies the driver quiesces the disk and requeues
// every request the server had taken (REISSUE); the device, its swap area and the processes using
// it wait. A new server takes over with START_USER_RECOVERY (accepted once the dead server's
// /dev/ublkcN is released and the device is QUIESCED), re-opens /dev/ublkcN, fetches every tag
// again and sends END_USER_RECOVERY with its pid: the disk runs again and the requeued requests
// reach the new server. UblkTransport::recover_start (recovery.cc) is that takeover.
#pragma once

#include <linux/ioctl.h>
#include <linux/ublk_cmd.h>

// Kernel uapi numbers Debian bookworm's 6.1 header lacks (ioctl-encoded commands, kernel >= 6.4).
#ifndef UBLK_U_CMD_GET_PARAMS
#define UBLK_U_CMD_GET_PARAMS _IOR('u', UBLK_CMD_GET_PARAMS, struct ublksrv_ctrl_cmd)
#endif
#ifndef UBLK_U_CMD_START_USER_RECOVERY
#define UBLK_U_CMD_START_USER_RECOVERY _IOWR('u', UBLK_CMD_START_USER_RECOVERY, struct ublksrv_ctrl_cmd)
#define UBLK_U_CMD_END_USER_RECOVERY _IOWR('u', UBLK_CMD_END_USER_RECOVERY, struct ublksrv_ctrl_cmd)
#endif

namespace tsublk {

// The flags a recoverable device is added with.
constexpr unsigned long long kUblkRecoveryFlags = UBLK_F_USER_RECOVERY | UBLK_F_USER_RECOVERY_REISSUE;

// How long a takeover waits for the driver to finish with the dead server (START_USER_RECOVERY
// answers -EBUSY until the old /dev/ublkcN is released and the device is quiesced).
constexpr int kRecoverWaitMs = 30000;

}  // namespace tsublk
