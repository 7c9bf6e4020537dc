#!/bin/bash
# Runs inside the QEMU guest (setup: ublk) for the `ublk` bench: fio 4 KiB randrw QD32 against
# a minimal C RAM-disk ublk server and tierstack ublk devices over a native (CxlTier memfd) and a
# JS (MemoryTier) one-tier stack, rounds alternating. Writes fio JSON to $TIERSTACK_GUEST_RESULTS.
# Args: <repo> <ramdisk binary> <seconds> <rounds>
set -euo pipefail
REPO=$1; C=$2; SECS=$3; ROUNDS=$4
OUT=${TIERSTACK_GUEST_RESULTS:-/tmp}
SIZE=$((64 << 20))
PIDS=
up() { # up <name> <cmd...>: starts a server, waits for "ready <dev>", sets DEV_<name>
  local name=$1; shift
  "$@" >"/tmp/$name.out" 2>"/tmp/$name.err" &
  PIDS="$PIDS $!"
  for _ in $(seq 1 300); do grep -q '^ready ' "/tmp/$name.out" && break; sleep 0.2; done
  local dev; dev=$(sed -n 's/^ready //p' "/tmp/$name.out")
  [ -b "$dev" ] || { cat "/tmp/$name.err"; exit 1; }
  dd if=/dev/zero of="$dev" bs=1M count=64 oflag=direct status=none
  eval "DEV_$name=$dev"
}
up c "$C" 64 32
up cxl node "$REPO/packages/bench/dist/ublk-guest-server.js" cxl $SIZE 1 32
up memory node "$REPO/packages/bench/dist/ublk-guest-server.js" memory $SIZE 1 32
run() { fio --name=b --filename="$2" --rw=randrw --bs=4k --iodepth=32 --ioengine=libaio --direct=1 --size=64M \
  --runtime="$SECS" --time_based --randrepeat=1 --output-format=json >"$OUT/$1-$3.json"; }
for r in $(seq 0 "$ROUNDS"); do  # round 0 is the warm-up
  run c "$DEV_c" $r; run cxl "$DEV_cxl" $r; run memory "$DEV_memory" $r
done
for p in $PIDS; do
  kill "$p"
  for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -0 "$p" 2>/dev/null && { echo "server $p did not stop on SIGTERM" >&2; ps -o pid,args -p "$p" >&2; kill -9 "$p"; }
done
echo BENCH-OK
