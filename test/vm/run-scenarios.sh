#!/bin/bash
# Run guest scenarios, one qemu guest each, and print a plain summary line
# "N passed, N failed" (PASS/FAIL result lines of all scenarios counted).
#
# Usage: test/vm/run-scenarios.sh [SCENARIO...]
#   SCENARIO  a name (smoke) or a path of a script; default: every test/vm/scenarios/*.sh
#             whose header does not say "# vm-default: no"
# Scenario header lines (optional, read here):
#   # vm-default: no          not part of the default set (still runnable by name)
#   # vm-timeout: SECONDS     TIMEOUT for that guest (default $TIMEOUT or 900)
#   # vm-args: NAME=value...  passed to boot.sh
# Env: SKIP_SETUP=1 (do not run setup.sh), VERBOSE=1 (stream guest consoles), plus
#      everything boot.sh and setup.sh read (TIMEOUT, SMP, MEM, VM_CACHE, SKIP_APT, ...).
# Each run's job directories (console.log, results, files the guest left) are kept in
# $VM_CACHE/runs/<date>/<scenario>/.
# A guest that does not boot, crashes or hangs is a FAIL, with its console tail printed.
set -uo pipefail
VM_DIR=$(cd "$(dirname "$0")" && pwd)
VM_CACHE=${VM_CACHE:-$VM_DIR/cache}
export VM_CACHE
T0=$(date +%s)
PASSED=0; FAILED=0
summary() { echo "vm scenarios: wall $(( $(date +%s) - T0 )) s"; echo "$PASSED passed, $FAILED failed"; }

if [ "${SKIP_SETUP:-0}" != 1 ]; then
  if ! "$VM_DIR/setup.sh"; then
    echo "FAIL vm-setup: test/vm/setup.sh failed"; FAILED=1; summary; exit 1
  fi
fi

scripts=()
if [ $# = 0 ]; then
  for f in "$VM_DIR"/scenarios/*.sh; do
    grep -qE '^# vm-default: *no' "$f" || scripts+=("$f")
  done
else
  for a in "$@"; do
    if [ -f "$a" ]; then scripts+=("$(readlink -f "$a")")
    elif [ -f "$VM_DIR/scenarios/${a%.sh}.sh" ]; then scripts+=("$VM_DIR/scenarios/${a%.sh}.sh")
    else echo "FAIL $a: no such scenario"; FAILED=$((FAILED+1)); fi
  done
fi

RUN_DIR=$VM_CACHE/runs/$(date +%Y%m%d-%H%M%S)
for s in "${scripts[@]}"; do
  name=$(basename "$s" .sh)
  tmo=$(sed -n 's/^# vm-timeout: *\([0-9]*\).*/\1/p' "$s" | head -n1)
  read -r -a args <<<"$(sed -n 's/^# vm-args: *//p' "$s" | head -n1)"
  out=$RUN_DIR/$name
  echo "=== scenario $name"
  if [ "${VERBOSE:-0}" = 1 ]; then q=0; else q=1; fi
  QUIET=$q VM_OUT=$out TIMEOUT=${tmo:-${TIMEOUT:-900}} "$VM_DIR/boot.sh" "$s" "${args[@]}"
  rc=$?
  [ "$q" = 1 ] && [ -f "$out/results" ] && cat "$out/results"
  np=$(grep -c '^PASS ' "$out/results" 2>/dev/null); nf=$(grep -c '^FAIL ' "$out/results" 2>/dev/null)
  np=${np:-0}; nf=${nf:-0}
  if [ "$rc" != 0 ] && [ "$nf" = 0 ]; then
    case $rc in
      124) why="guest hung: killed by the timeout" ;;
      125) why="guest died without a result (boot failure or kernel crash)" ;;
      126) why="bench not set up" ;;
      *)   why="guest script exited $rc" ;;
    esac
    echo "FAIL $name: $why (console: $out/console.log)"; nf=1
  elif [ "$rc" = 0 ] && [ "$np" = 0 ] && [ "$nf" = 0 ]; then
    echo "FAIL $name: no results reported (console: $out/console.log)"; nf=1
  fi
  PASSED=$((PASSED+np)); FAILED=$((FAILED+nf))
  echo "=== scenario $name: $np passed, $nf failed, guest rc $rc"
done
summary
[ "$FAILED" = 0 ]
