#!/usr/bin/env bash
# npm run bench:failover: the failover benchmark (docs/failover.md), srp-nbd against kernel ib_srp.
#   1. bench/failover-probe.c compiled (the guest's probe writer and sysfs watcher);
#   2. the guest scenario bench-failover (test/vm/scenarios/bench-failover.sh): every event against
#      srp-nbd, then against ib_srp, in one boot. 6.1's ib_srp may crash the guest kernel on a
#      reconnect: the crash is that row's result, and the kernel rows after it run in another boot
#      (at most FAILOVER_BOOTS boots in all, default 3);
#   3. the report (bench/failover-report.ts): the table printed, bench/results/failover.json and the
#      table in docs/failover.md updated.
# Env: LINK_DOWN HOLE RESTART WATCH FIOF PROBE_MS PHASES_SRP PHASES_KIB (the guest, see the scenario),
#      FAILOVER_BOOTS=3, FAILOVER_OUT (default a new directory under test/vm/cache/runs).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench:failover: run as root (the qemu guest)" >&2; exit 1; }
out=${FAILOVER_OUT:-$PWD/test/vm/cache/runs/bench-failover-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
gcc -O2 -Wall -o "$out/failover-probe" bench/failover-probe.c
vars=("PROBE_BIN=$out/failover-probe")
for v in LINK_DOWN HOLE RESTART WATCH FIOF PROBE_MS; do [ -n "${!v:-}" ] && vars+=("$v=${!v}"); done
test/vm/setup.sh >/dev/null
srp=${PHASES_SRP-linkdown blackhole restart rebuild mdreadd kill}
kib=${PHASES_KIB-restart rebuild blackhole linkdown kill}
boots=${FAILOVER_BOOTS:-3}
for ((b = 1; b <= boots; b++)); do
  dir=$out/boot$b
  echo "bench:failover: boot $b: srp-nbd '$srp', ib_srp '$kib' ($dir)"
  rc=0
  QUIET=${QUIET:-1} VM_OUT=$dir TIMEOUT=${TIMEOUT:-1200} test/vm/boot.sh test/vm/scenarios/bench-failover.sh \
    "${vars[@]}" "PHASES_SRP=$srp" "PHASES_KIB=$kib" || rc=$?
  cat "$dir/results" 2>/dev/null || true
  [ "$rc" = 0 ] || echo "bench:failover: boot $b exited $rc (console: $dir/console.log)"
  # the ib_srp events not run yet: those after the one that crashed the kernel (no "end" mark)
  ev=$dir/failover/events.tsv
  crashed=$(awk '$1=="ib_srp" && $3=="begin" {e=$2} $1=="ib_srp" && $3=="end" && $2==e {e=""} END {print e}' "$ev" 2>/dev/null || true)
  [ -n "$crashed" ] || break
  rest=$(echo "$kib" | tr ' ' '\n' | awk -v c="$crashed" 'f && NF {print} $0==c {f=1}' | tr '\n' ' ')
  rest=${rest% }
  [ -n "$rest" ] || break
  echo "bench:failover: the kernel crashed in ib_srp '$crashed'; the rest ($rest) in another boot"
  srp=""; kib=$rest
done
node dist/bench/failover-report.js "$out" bench/results/failover.json docs/failover.md
