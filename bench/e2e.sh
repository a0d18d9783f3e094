#!/usr/bin/env bash
# npm run bench:e2e: the end-to-end data-path benchmark (docs/performance.md).
#   1. the guest scenario bench-e2e (one qemu boot): fio on srp-nbd's /dev/nbd0, the native
#      data-loop prototype's /dev/nbd2 (bench/native-loop.c, compiled in the guest), kernel
#      ib_srp's disk for the same LIO LUN, and nbdkit + nbd-client, interleaved;
#   2. the host-native row: serve --test-target against serve --memory, CPU per request;
#   3. the report: the table printed, bench/results/e2e.json and docs/performance.md updated.
# Env: WARMUP, RUNTIME, REPS, STRACE_RUNTIME, WORKLOADS, VERBS_ITERS, NATIVE_LOOP_ARGS (the guest), BENCH_RUNTIME, BENCH_REPEAT (the host),
#      E2E_OUT (where the guest's files go; default a new directory under test/vm/cache/runs).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench:e2e: run as root (the qemu guest)" >&2; exit 1; }
out=${E2E_OUT:-$PWD/test/vm/cache/runs/bench-e2e-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$out"
vars=()
for v in WARMUP RUNTIME REPS STRACE_RUNTIME WORKLOADS LUN_MIB VERBS_ITERS NATIVE_LOOP_ARGS; do [ -n "${!v:-}" ] && vars+=("$v=${!v}"); done
test/vm/setup.sh >/dev/null
QUIET=${QUIET:-1} VM_OUT=$out TIMEOUT=${TIMEOUT:-3000} test/vm/boot.sh test/vm/scenarios/bench-e2e.sh "${vars[@]}" ||
  { echo "bench:e2e: guest scenario failed (console: $out/console.log)"; cat "$out/results" 2>/dev/null; exit 1; }
cat "$out/results"
node dist/bench/e2e-host.js "$out/host.json"
node dist/bench/e2e-report.js "$out/e2e" "$out/host.json" bench/results/e2e.json docs/performance.md
