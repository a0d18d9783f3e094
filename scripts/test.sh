#!/usr/bin/env bash
# `npm test` after ensure.sh and the build: every test file under tap, then the tests that were
# skipped and why (without root, those that need it say so), then one line "N passed, N failed".
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
[ "$(id -u)" = 0 ] || echo "test: not root: the tests that need root are skipped, each saying why" >&2
tap 'dist/test/**/*.test.js' "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
node scripts/tap-skips.js "$log"
node scripts/tap-summary.js "$log" "$rc"
