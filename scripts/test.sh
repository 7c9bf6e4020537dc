#!/usr/bin/env bash
# The whole test suite: sets up what is missing (packages, pnpm, builds), then runs every
# vitest project. Extra arguments go to vitest (e.g. a project: --project core).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec pnpm exec vitest run "$@"
