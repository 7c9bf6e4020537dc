#!/usr/bin/env bash
# The demo: sets up what is missing, then runs `tierstack demo` (extra arguments go to it).
set -euo pipefail
cd "$(dirname "$0")/.."
TIERSTACK_SETUP_QUIET=1 bash scripts/setup.sh
exec node packages/cli/dist/bin.js demo "$@"
