#!/usr/bin/env bash
# What `npm test` and `npm run demo` run first, so that one command works on a fresh clone:
# installs what is missing and nothing else.
#   - Debian packages of scripts/setup.sh (as root; without root the missing ones are named and
#     the tests that need them fail saying so);
#   - node_modules with `npm ci` when absent or older than package-lock.json (its install script
#     builds the native addon; without root and the build packages, the modules without it);
#   - the addon when its build is missing or older than its sources.
# The TypeScript build (`npm run build`) follows in the npm script.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { echo "ensure: $*" >&2; }

pkgs=$(sed -n 's/^PKGS="\(.*\)"$/\1/p' scripts/setup.sh)
missing=""
for p in $pkgs; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed' || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    say "installing Debian packages:$missing (scripts/setup.sh)"
    bash scripts/setup.sh
  else
    say "missing Debian packages:$missing (run as root once: sudo bash scripts/setup.sh)"
  fi
fi
addon=native/build/Release/srp_nbd_native.node
if [ ! -e node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "npm ci (node modules and the native addon)"
  if ! npm ci --no-audit --no-fund; then
    [ "$(id -u)" != 0 ] || exit 1
    say "npm ci failed (the native addon needs:${missing:- the packages of scripts/setup.sh}): installing the modules without it; the tests that need the addon say so"
    npm ci --no-audit --no-fund --ignore-scripts
  fi
elif [ ! -e "$addon" ] || [ -n "$(find native/src native/binding.gyp -newer "$addon" 2>/dev/null | head -1)" ]; then
  say "building the native addon (missing, or older than native/src)"
  npm run build:native || [ "$(id -u)" != 0 ]
fi
