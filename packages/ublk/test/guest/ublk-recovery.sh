#!/bin/bash
# Runs inside the QEMU guest (setup: ublk; /dev/vda: a scratch disk). A recoverable ublk device
# (the default) outlives its server: kill -9 of the server leaves the device waiting, the next
# server of the same name takes it over (START/END_USER_RECOVERY, requests re-issued) and the data,
# the swap area and the process swapping to it carry on. Prints "OK <check>" lines; exits non-zero
# at the first failure. Args: <repo root> <hog binary>.
set -euo pipefail
REPO=$1
HOG=$2
SERVE="node $REPO/packages/ublk/test/guest/serve.mjs"
STATE=/tmp/tierstack-state
ok() { echo "OK $*"; }
fail() {
  echo "FAIL $*"
  for f in /tmp/*.err; do echo "== $f"; tail -15 "$f"; done >&2 || true
  dmesg | tail -40 >&2
  exit 1
}

mkfs.ext4 -q -F /dev/vda
mkdir -p /mnt/data
mount /dev/vda /mnt/data

# start <name> <size> <generation>: serves a ublk device over [MemoryTier 16 MiB, FileTier on
# /mnt/data], write-through; a device whose server died is taken over. Sets DEV and PID.
start() {
  $SERVE add "$1" "$2" "/mnt/data/$1" $STATE >"/tmp/$1.$3.out" 2>"/tmp/$1.$3.err" &
  PID=$!
  for _ in $(seq 1 600); do grep -q '"ready"' "/tmp/$1.$3.out" 2>/dev/null && break; kill -0 $PID 2>/dev/null || fail "server $1 ($3) died"; sleep 0.1; done
  grep -q '"ready"' "/tmp/$1.$3.out" || fail "server $1 ($3) not ready"
  DEV=$(sed -n 's/.*"path":"\([^"]*\)".*/\1/p' "/tmp/$1.$3.out")
  [ -b "$DEV" ] || fail "no block device for $1"
}
# kill9: kills the server and reaps it (a zombie would still count as alive).
kill9() {
  kill -9 "$PID"
  wait "$PID" 2>/dev/null || true
}
sectors_written() { awk '{print $7}' "/sys/block/$(basename "$DEV")/stat"; }

start r1 $((128 << 20)) 0
grep -q '"recoverable":true' /tmp/r1.0.out || fail "the device is not recoverable"
ok "start $DEV (recoverable)"

# 1. A takeover keeps what was written: 8 MiB, kill -9, a new server, read back.
dd if=/dev/urandom of=/tmp/rand bs=1M count=8 status=none
dd if=/tmp/rand of="$DEV" bs=1M oflag=direct status=none
kill9
sleep 0.5
[ -b "$DEV" ] || fail "the device went away with its server"
start r1 $((128 << 20)) 1
grep -q '"recoveries":1' /tmp/r1.1.out || fail "not a takeover: $(cat /tmp/r1.1.out)"
dd if="$DEV" of=/tmp/back bs=1M count=8 iflag=direct status=none
cmp /tmp/rand /tmp/back || fail "data after the takeover"
ok "takeover after kill -9: the same device, 8 MiB read back right"

# 2. I/O in flight across a kill: a writer started before the kill completes after the takeover.
dd if=/dev/urandom of=/tmp/rand2 bs=1M count=24 status=none
dd if=/tmp/rand2 of="$DEV" bs=64k seek=256 oflag=direct status=none &
DD=$!
sleep 1
kill9
sleep 1
kill -0 $DD 2>/dev/null || fail "the writer ended while no server ran"
start r1 $((128 << 20)) 2
wait $DD || fail "the writer failed across the takeover"
dd if="$DEV" of=/tmp/back2 bs=64k skip=256 count=384 iflag=direct status=none
cmp /tmp/rand2 /tmp/back2 || fail "bytes written across the takeover"
ok "a writer in flight at kill -9 waits, then completes: 24 MiB right"

# 3. Swap: a hog in a cgroup2 with memory.max far below its working set, the server killed -9
# twice while it swaps; every byte right, nothing left stuck.
mkswap "$DEV" >/dev/null
swapon -p 100 "$DEV"
grep -q "^$DEV " /proc/swaps || fail "swapon"
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup
echo +memory >/sys/fs/cgroup/cgroup.subtree_control
mkdir -p /sys/fs/cgroup/hog
echo $((16 << 20)) >/sys/fs/cgroup/hog/memory.max
(sh -c "echo \$\$ > /sys/fs/cgroup/hog/cgroup.procs && exec $HOG 64 9" >/tmp/hog.out 2>&1; echo $? >/tmp/hog.rc) &
HOGJOB=$!
GEN=3
for k in 1 2; do
  base=$(sectors_written)
  until [ $(($(sectors_written) - base)) -ge $((8 << 11)) ]; do
    [ -e /tmp/hog.rc ] && fail "the hog ended before kill $k: $(cat /tmp/hog.out)"
    sleep 0.2
  done
  kill9
  sleep 1
  [ -e /tmp/hog.rc ] && fail "the hog ended while no server ran (kill $k): $(cat /tmp/hog.out)"
  start r1 $((128 << 20)) $GEN
  GEN=$((GEN + 1))
  ok "swap: server killed -9 mid-swap ($k), replaced"
done
wait $HOGJOB
HOGOUT=$(cat /tmp/hog.out)
echo "hog: $HOGOUT"
[ "$(cat /tmp/hog.rc)" = 0 ] || fail "hog exited $(cat /tmp/hog.rc)"
echo "$HOGOUT" | grep -q '"badWords":0' || fail "hog saw wrong bytes"
SWAPPED=$(grep -E '^swap ' /sys/fs/cgroup/hog/memory.stat 2>/dev/null | awk '{print $2}' || echo '?')
rmdir /sys/fs/cgroup/hog
STUCK=$(ps -eo stat=,pid=,comm= | awk '$1 ~ /^D/' || true)
[ -z "$STUCK" ] || fail "processes stuck in D state: $STUCK"
ok "swap: 64 MiB hog under a 16 MiB memory.max, server killed -9 twice, every byte right, nothing stuck"

swapoff "$DEV"
grep -Eq '"recoveries": ?4' "$STATE/r1.json" || fail "recoveries: $(cat $STATE/r1.json)"
$SERVE del r1 $STATE
wait $PID || fail "server r1 exited with an error"
ls /dev/ublkb* /dev/ublkc* 2>/dev/null && fail "leftover ublk devices after del"
[ -e $STATE/r1.json ] && fail "leftover state"
ok "del after 4 takeovers: no leftovers"
umount /mnt/data
echo ALL-OK
