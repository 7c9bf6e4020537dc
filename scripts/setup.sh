#!/usr/bin/env bash
# Installs everything tierstack needs on a fresh machine and builds it; quick when already done.
#   - Debian packages each workspace package declares in package.json ("tierstack": {"apt": [...]})
#   - pnpm at the version pinned in package.json's packageManager
#   - node_modules (pnpm install --frozen-lockfile), native addons (build:native), TypeScript (tsc -b)
set -euo pipefail
cd "$(dirname "$0")/.."
say() { [ "${TIERSTACK_SETUP_QUIET:-}" = 1 ] || echo "setup: $*" >&2; }

node -e 'const [a,b]=process.versions.node.split(".").map(Number); if (a<20||(a===20&&b<19)) { console.error("tierstack needs Node >= 20.19, found "+process.version); process.exit(1) }'

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else echo "setup: need root for: $*" >&2; return 1; fi; }

# 1. Debian packages declared by the workspace packages.
mapfile -t apt_wanted < <(node -e '
  const fs = require("fs"), path = require("path");
  const want = new Set(["pkg-config"]);
  for (const root of ["packages", "tools"]) {
    if (!fs.existsSync(root)) continue;
    for (const d of fs.readdirSync(root)) {
      const f = path.join(root, d, "package.json");
      if (fs.existsSync(f)) for (const p of (JSON.parse(fs.readFileSync(f, "utf8")).tierstack?.apt ?? [])) want.add(p);
    }
  }
  console.log([...want].join("\n"));')
missing=()
for p in "${apt_wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# 2. pnpm, pinned.
want_pnpm=$(node -p 'require("./package.json").packageManager.split("@")[1]')
if [ "$(pnpm --version 2>/dev/null || true)" != "$want_pnpm" ]; then
  say "installing pnpm $want_pnpm"
  as_root npm install -g --silent "pnpm@$want_pnpm" >/dev/null
fi

# 3. Dependencies (skipped when the lockfile has not changed since the last install).
stamp=node_modules/.tierstack-install-stamp
if [ ! -f "$stamp" ] || [ pnpm-lock.yaml -nt "$stamp" ] || [ package.json -nt "$stamp" ]; then
  say "installing dependencies"
  CI=true pnpm install --frozen-lockfile --reporter=silent
  touch "$stamp"
fi

# 4. Native addons (each skips itself when up to date), then TypeScript.
pnpm -r --workspace-concurrency=1 --if-present --reporter=silent run build:native
pnpm exec tsc -b
say "ready"
