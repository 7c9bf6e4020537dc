#!/bin/bash
# Runs inside the QEMU guest (setup: ublk; /dev/vda: a scratch disk). One boot, every check:
# dd round trip, unaligned writes, mkfs.ext4 + mount, fio verify, swap under a cgroup2 limit,
# delete with no leftovers, and a server killed mid-I/O. Prints "OK <check>" lines; exits
# non-zero at the first failure. Args: <repo root> <hog binary>.
set -euo pipefail
REPO=$1
HOG=$2
SERVE="node $REPO/packages/ublk/test/guest/serve.mjs"
STATE=/tmp/tierstack-state
ok() { echo "OK $*"; }
fail() { echo "FAIL $*"; tail -20 /tmp/*.err >&2 || true; exit 1; }

mkfs.ext4 -q -F /dev/vda
mkdir -p /mnt/data /mnt/u
mount /dev/vda /mnt/data

# start <name> <size> [on|off]: serves a ublk device over [MemoryTier 16 MiB, FileTier on
# /mnt/data] (user recovery on unless "off"); sets DEV and PID.
start() {
  $SERVE add "$1" "$2" "/mnt/data/$1" $STATE ublk "${3:-on}" >"/tmp/$1.out" 2>"/tmp/$1.err" &
  PID=$!
  for _ in $(seq 1 300); do grep -q '"ready"' "/tmp/$1.out" 2>/dev/null && break; kill -0 $PID 2>/dev/null || fail "server $1 died"; sleep 0.2; done
  DEV=$(sed -n 's/.*"path":"\([^"]*\)".*/\1/p' "/tmp/$1.out")
  [ -b "$DEV" ] || fail "no block device for $1"
}

start g1 $((192 << 20))
ok "start $DEV"

# 1. dd round trip (direct I/O both ways).
dd if=/dev/urandom of=/tmp/rand bs=1M count=16 status=none
dd if=/tmp/rand of="$DEV" bs=1M oflag=direct status=none
dd if="$DEV" of=/tmp/back bs=1M count=16 iflag=direct status=none
cmp /tmp/rand /tmp/back || fail "dd round trip"
ok "dd 16 MiB round trip"

# 2. Unaligned writes: 512-byte sectors, partial pages (read-modify-write in the handler).
dd if=/dev/urandom of=/tmp/small bs=512 count=11 status=none
dd if=/tmp/small of="$DEV" bs=512 seek=3 oflag=direct conv=notrunc status=none
dd if="$DEV" of=/tmp/small.back bs=512 skip=3 count=11 iflag=direct status=none
cmp /tmp/small /tmp/small.back || fail "unaligned write"
dd if="$DEV" of=/tmp/edge bs=512 count=3 iflag=direct status=none
dd if=/tmp/rand of=/tmp/edge.want bs=512 count=3 status=none
cmp /tmp/edge /tmp/edge.want || fail "bytes around an unaligned write changed"
ok "unaligned 512-byte writes"

# 3. mkfs.ext4 + mount + file round trip (through a fresh mount: nothing from the page cache).
mkfs.ext4 -q -F "$DEV"
mount "$DEV" /mnt/u
cp /tmp/rand /mnt/u/file
sync
umount /mnt/u
echo 3 >/proc/sys/vm/drop_caches
mount "$DEV" /mnt/u
cmp /tmp/rand /mnt/u/file || fail "ext4 file round trip"
umount /mnt/u
FL=$($SERVE stats g1 $STATE | node -e "let t='';process.stdin.on('data',d=>t+=d).on('end',()=>console.log(JSON.parse(t).device.flush.requests))")
[ "$FL" -gt 0 ] || fail "no flush reached the stack (volatile write cache not advertised?)"
ok "ext4 file round trip ($FL flushes reached the stack)"

# 4. fio random writes with verification (crc32c), QD 32.
fio --name=verify --filename="$DEV" --rw=randwrite --bs=4k --iodepth=32 --ioengine=libaio --direct=1 \
  --size=16M --verify=crc32c --do_verify=1 --verify_fatal=1 --output=/tmp/fio.txt >/dev/null || { cat /tmp/fio.txt; fail "fio verify"; }
grep -q "err= 0" /tmp/fio.txt || { cat /tmp/fio.txt; fail "fio reported errors"; }
ok "fio randwrite verify"

# 5. Swap: a hog in a cgroup2 with memory.max well below its working set; every byte verified.
blkdiscard "$DEV" 2>/dev/null || true
mkswap "$DEV" >/dev/null
swapon -p 100 "$DEV"
grep -q "^$DEV " /proc/swaps || fail "swapon"
mountpoint -q /sys/fs/cgroup || mount -t cgroup2 none /sys/fs/cgroup
echo +memory >/sys/fs/cgroup/cgroup.subtree_control
mkdir -p /sys/fs/cgroup/hog
echo $((16 << 20)) >/sys/fs/cgroup/hog/memory.max
HOGOUT=$(sh -c "echo \$\$ > /sys/fs/cgroup/hog/cgroup.procs && exec $HOG 48 5") || fail "hog: $HOGOUT"
echo "hog: $HOGOUT"
echo "$HOGOUT" | grep -q '"badWords":0' || fail "hog saw wrong bytes"
PEAK=$(cat /sys/fs/cgroup/hog/memory.peak 2>/dev/null || echo 0)
[ "$PEAK" -le $((17 << 20)) ] || fail "hog exceeded its limit ($PEAK)"
rmdir /sys/fs/cgroup/hog
W=$($SERVE stats g1 $STATE | node -e "let t='';process.stdin.on('data',d=>t+=d).on('end',()=>console.log(JSON.parse(t).device.write.bytes))")
[ "$W" -gt $((32 << 20)) ] || fail "too little went out through the device ($W bytes)"
swapoff "$DEV"
grep -q "^$DEV " /proc/swaps && fail "swapoff"
ok "swap: 48 MiB hog under a 16 MiB memory.max, every byte right ($W bytes written to the device)"

# 6. Delete: the server stops, the device and its char device disappear.
$SERVE del g1 $STATE
wait $PID || fail "server g1 exited with an error"
ls /dev/ublkb* /dev/ublkc* 2>/dev/null && fail "leftover ublk devices after del"
[ -e $STATE/g1.json ] && fail "leftover state"
ok "del: no leftovers"

# 7. Kill the server of a device without user recovery mid-I/O: the kernel stops the device, the
# writer gets errors, nothing hangs. (ublk-recovery.sh: with recovery, the next server takes over.)
start g2 $((128 << 20)) off
dd if=/dev/urandom of="$DEV" bs=64k count=2000 oflag=direct status=none 2>/dev/null &
DD=$!
sleep 2
kill -9 $PID
for _ in $(seq 1 150); do kill -0 $DD 2>/dev/null || break; sleep 0.2; done
kill -0 $DD 2>/dev/null && fail "writer hangs after the server died"
wait $DD && fail "writer did not see an error" || true
for _ in $(seq 1 100); do [ -e "$DEV" ] || break; sleep 0.2; done
[ -e "$DEV" ] && echo "note: $DEV still present after the server died (stopped, not deleted)"
$SERVE del g2 $STATE
ls /dev/ublkb* /dev/ublkc* 2>/dev/null && fail "leftover ublk devices after killing the server"
ok "kill -9 mid-I/O: device torn down, writer failed, del cleaned up"
umount /mnt/data
echo ALL-OK
