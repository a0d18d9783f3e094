#!/usr/bin/env bash
# `npm run demo`: the main job, narrated. Boots the qemu guest bench (test/vm, Debian's kernel
# under TCG with soft-RoCE and LIO ib_srpt), where the srp-nbd daemon attaches two SRP targets as
# /dev/nbd0 and /dev/nbd1, builds md RAID1 over them, and keeps the mirror alive through a 3 s
# path flap and a 30 s path outage (test/vm/scenarios/md-raid1.sh). Prints the narration as it
# happens, then the checks and the verdict. Takes 4-15 minutes on a 2-core machine.
#
# Needs root (qemu, apt for the first setup). Without root: `npm run demo:local` runs the
# in-process edition (loopback transport, NBD socket, no kernel devices) in a few seconds.
#   Environment: FLAP, DOWN, FIOF (md-raid1.sh), VERBOSE=1 streams the whole guest console.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "npm run demo boots a qemu guest and needs root (sudo npm run demo)."
  echo "Without root: npm run demo:local (the in-process edition)."
  exit 1
fi

echo "== srp-nbd demo: md RAID1 over two SRP paths, in a qemu guest (Debian 6.1 kernel, soft-RoCE, LIO ib_srpt)"
echo "   preparing the bench (test/vm/setup.sh: qemu, the guest kernel and initramfs; cached after the first run)"
test/vm/setup.sh >/tmp/srp-nbd-demo-setup.log 2>&1 || { tail -n 20 /tmp/srp-nbd-demo-setup.log; echo "bench setup failed (log above)"; exit 1; }

out="test/vm/cache/runs/demo-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"
args=()
for v in FLAP DOWN FIOF; do [ -n "${!v:-}" ] && args+=("$v=${!v}"); done
echo "   booting the guest (TCG: the first lines take a minute); job directory $out"
echo
VM_OUT="$out" QUIET=$([ "${VERBOSE:-0}" = 1 ] && echo 0 || echo 1) TIMEOUT=1800 \
  test/vm/boot.sh test/vm/scenarios/md-raid1.sh "${args[@]}" >"$out/boot.log" 2>&1 &
boot=$!

# Follow the narration (VERBOSE=1: the whole guest console) while the guest runs.
follow=$out/narration; [ "${VERBOSE:-0}" = 1 ] && follow=$out/boot.log
touch "$follow"
tail -n +1 -f --pid="$boot" "$follow" &
follower=$!
wait "$boot"; rc=$?
wait "$follower" 2>/dev/null

echo
echo "== checks"
if [ -s "$out/results" ]; then
  grep -E '^(PASS|FAIL|TIME)' "$out/results" | sed 's/^/   /'
else
  echo "   the guest produced no results (rc $rc); console tail:"
  tail -n 40 "$out/console.log" 2>/dev/null | sed 's/^/   /'
fi
passed=$(grep -c '^PASS' "$out/results" 2>/dev/null); failed=$(grep -c '^FAIL' "$out/results" 2>/dev/null)
echo
echo "daemon log: $out/daemon.log   guest console: $out/console.log"
if [ "$rc" = 0 ] && [ "${failed:-0}" = 0 ] && [ "${passed:-0}" -gt 0 ]; then
  echo "demo verdict: PASS ($passed checks)"
else
  echo "demo verdict: FAIL (${failed:-?} failed checks, guest exit $rc)"
  exit 1
fi
