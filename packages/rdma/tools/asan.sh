#!/usr/bin/env bash
# Runs rdma tests against an AddressSanitizer build of the addon (client pool and memd donors).
#   bash packages/rdma/tools/asan.sh [vitest file filters...]   (from anywhere in the repo)
#   ASAN_LIBFABRIC=<prefix> ...: also use a libfabric built with -fsanitize=address installed
#   under <prefix> (libfabric's own code is then checked too; see the README).
# The ASan addon is built into $ASAN_DIR (default /tmp/tierstack-rdma-asan), never into build/:
# the normal addon stays in place for everything else. Node itself is not instrumented, so
# libasan is preloaded into every node process of the run, and tools/asan-preload.cjs makes
# process.dlopen load the ASan addon instead of build/Release/tierstack_rdma.node. Reports go
# to $ASAN_DIR/asan.<pid> (one file per process that found something); the run fails loudly
# too (an instrumented process aborts at the first error: a crashed vitest worker or donor).
set -euo pipefail
pkg="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
repo="$(cd "$pkg/../.." && pwd)"
out="${ASAN_DIR:-/tmp/tierstack-rdma-asan}"
mkdir -p "$out"
rm -f "$out"/asan.*

addon_api="$(cd "$pkg" && node -p "require('path').resolve(require('node-addon-api').include_dir)")"
core_inc="$(cd "$pkg" && node -p "require('path').join(require('path').dirname(require.resolve('@tierstack/core/package.json')),'include')")"
node_inc=/usr/include/node
[ -f "$node_inc/node_api.h" ] || node_inc="$(dirname "$(dirname "$(command -v node)")")/include/node"

if [ -n "${ASAN_LIBFABRIC:-}" ]; then
  fabric_cflags="-I$ASAN_LIBFABRIC/include"
  fabric_libs="-L$ASAN_LIBFABRIC/lib -lfabric"
  export LD_LIBRARY_PATH="$ASAN_LIBFABRIC/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
else
  fabric_cflags="$(pkg-config --cflags libfabric)"
  fabric_libs="$(pkg-config --libs libfabric)"
fi

echo "asan: building $out/tierstack_rdma.node" >&2
# shellcheck disable=SC2086
g++ -std=c++17 -g -O1 -fno-omit-frame-pointer -fsanitize=address -fPIC -shared \
  -Wall -Wno-missing-field-initializers \
  -DNAPI_VERSION=8 -DNODE_ADDON_API_DISABLE_CPP_EXCEPTIONS \
  -I"$node_inc" -I"$addon_api" -I"$core_inc" $fabric_cflags \
  "$pkg"/native/*.cc \
  -o "$out/tierstack_rdma.node" $fabric_libs -lpthread

libasan="$(g++ -print-file-name=libasan.so)"
export TIERSTACK_RDMA_ADDON="$out/tierstack_rdma.node"
export LD_PRELOAD="$libasan${LD_PRELOAD:+:$LD_PRELOAD}"
# Node is not built with ASan: leak reports at exit would be Node's own, so leaks are off.
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:log_path=$out/asan${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export NODE_OPTIONS="--require $pkg/tools/asan-preload.cjs${NODE_OPTIONS:+ $NODE_OPTIONS}"
cd "$repo"
status=0
pnpm exec vitest run --project rdma "${@:-packages/rdma/test}" || status=$?
if compgen -G "$out/asan.*" > /dev/null; then
  echo "asan: reports in $out:" >&2
  cat "$out"/asan.* >&2
  exit 1
fi
echo "asan: no report" >&2
exit "$status"
