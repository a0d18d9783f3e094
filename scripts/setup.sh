#!/usr/bin/env bash
# One-time setup of a fresh Debian 12 machine (as root): the Debian packages
# srp-nbd's tests, benchmark and demo use, then the npm modules (npm ci builds
# everything that needs building).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (apt-get install)" >&2
  exit 1
fi
# nbdkit, libnbd-bin (nbdinfo, nbdcopy), qemu-utils (qemu-img, qemu-io), fio:
#   real NBD clients for the tests and the benchmark's peer server.
# libibverbs-dev, librdmacm-dev, python3, make, g++: the native addon's build (python3 also
#   receives the daemon's sd_notify datagrams in a test).
# systemd: systemd-analyze verify of packaging/*.service (a container may lack it).
PKGS="nbdkit libnbd-bin qemu-utils fio libibverbs-dev librdmacm-dev python3 make g++ systemd"
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
npm ci --no-audit --no-fund
