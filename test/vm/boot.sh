#!/bin/bash
# Boot Debian's kernel under qemu (TCG by default) with the host root shared read-only
# over virtio-9p under a tmpfs overlay, run one guest script as the guest's job, power off.
#
# Usage: test/vm/boot.sh SCRIPT [NAME=value...]
#   SCRIPT        a bash script on the host root file system (the guest sees the same path)
#   NAME=value    exported into the guest script's environment (written, shell-quoted,
#                 to the job's job.env; NAME is a shell identifier)
# Exit status: the guest script's exit status; 124 when TIMEOUT killed the guest;
#   125 when the guest stopped without a result (boot failure, kernel crash); 126 when
#   the bench is not set up. On a failure the tail of the console log is printed.
#   A kernel crash after the guest script called crash_expected (guest-lib.sh) is its
#   recorded result: exit 0 and a "PASS <script>/kernel-crash-recorded" result line.
# Env: TIMEOUT=900 (s, whole run)  SMP=2  MEM=3072 (MiB)  ACCEL=tcg|kvm
#      KERNEL_ARGS  appended to the guest kernel command line (e.g. oops=panic)
#      QUIET=1      do not stream the guest console (it is always in the job's console.log)
#      TAIL=100     console lines printed on failure
#      VM_CACHE     as for setup.sh (default test/vm/cache)
#      VM_OUT       the job directory (default $VM_CACHE/out/<script>-<date>-<pid>); the
#                   guest sees it read-write at /mnt/out ($OUT_DIR) and keeps its files there
# Lines from this script start with "[host]".
set -uo pipefail
VM_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(cd "$VM_DIR/../.." && pwd)
VM_CACHE=${VM_CACHE:-$VM_DIR/cache}
TIMEOUT=${TIMEOUT:-900}; SMP=${SMP:-2}; MEM=${MEM:-3072}; ACCEL=${ACCEL:-tcg}; TAIL=${TAIL:-100}
host() { echo "[host] $*"; }

[ $# -ge 1 ] || { sed -n '2,20s/^# \{0,1\}//p' "$0"; exit 2; }
SCRIPT=$(readlink -f "$1"); shift
[ -f "$SCRIPT" ] || { host "no such guest script: $SCRIPT"; exit 2; }
if [ ! -r "$VM_CACHE/current.env" ]; then
  host "bench not set up; running test/vm/setup.sh"
  "$VM_DIR/setup.sh" || { host "setup.sh failed"; exit 126; }
fi
. "$VM_CACHE/current.env"          # KV KDIR INITRD
[ -r "$KDIR/boot/vmlinuz-$KV" ] && [ -r "$INITRD" ] ||
  { host "kernel or initramfs missing in $KDIR: run test/vm/setup.sh"; exit 126; }
command -v qemu-system-x86_64 >/dev/null || { host "qemu-system-x86_64 missing: run test/vm/setup.sh"; exit 126; }

NAME=$(basename "$SCRIPT" .sh)
VM_OUT=${VM_OUT:-$VM_CACHE/out/$NAME-$(date +%Y%m%d-%H%M%S)-$$}
mkdir -p "$VM_OUT"; VM_OUT=$(cd "$VM_OUT" && pwd)
rm -f "$VM_OUT/rc" "$VM_OUT/started" "$VM_OUT/crash-expected" "$VM_OUT/results"
LOG=$VM_OUT/console.log
{
  printf 'JOB_SCRIPT=%q\nREPO_ROOT=%q\nVM_DIR=%q\nOUT_DIR=/mnt/out\nHOST_OUT_DIR=%q\n' \
    "$SCRIPT" "$REPO_ROOT" "$VM_DIR" "$VM_OUT"
  for kv in "$@"; do
    n=${kv%%=*}
    [[ $kv == *=* && $n =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { host "bad argument '$kv' (want NAME=value)" >&2; exit 2; }
    printf '%s=%q\n' "$n" "${kv#*=}"
  done
} > "$VM_OUT/job.env" || exit 2

case "$ACCEL" in
  tcg) ACCELARG=(-accel tcg,thread=multi -cpu max) ;;
  kvm) ACCELARG=(-accel kvm -cpu host) ;;
  *)   ACCELARG=(-accel "$ACCEL") ;;
esac
# panic=-1 + -no-reboot: a guest kernel panic ends qemu at once (no result file -> 125).
APPEND="console=ttyS0 panic=-1 quiet loglevel=4 srpvm.init=$VM_DIR/guest-init.sh srpvm.kdir=$KDIR ${KERNEL_ARGS:-}"
host "boot $NAME (kernel $KV, $ACCEL, smp $SMP, ${MEM} MiB, timeout ${TIMEOUT}s) job dir $VM_OUT"
T0=$(date +%s.%N)
# -nic none: the guest has no network to the outside; all its traffic stays inside.
timeout -k 5 "$TIMEOUT" qemu-system-x86_64 \
  -machine q35 "${ACCELARG[@]}" -smp "$SMP" -m "$MEM" \
  -nographic -no-reboot -nic none -device virtio-rng-pci \
  -kernel "$KDIR/boot/vmlinuz-$KV" -initrd "$INITRD" -append "$APPEND" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs local,path="$VM_OUT",mount_tag=vmout,security_model=none,multidevs=remap \
  </dev/null 2>&1 | sed -u 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g; s/\r//g' | if [ "${QUIET:-0}" = 1 ]; then cat > "$LOG"; else tee "$LOG"; fi
QRC=${PIPESTATUS[0]}
T1=$(date +%s.%N)
wall=$(awk -v a="$T0" -v b="$T1" 'BEGIN{printf "%.1f", b-a}')
boot=-
[ -e "$VM_OUT/started" ] &&
  boot=$(awk -v a="$T0" -v b="$(stat -c %.9Y "$VM_OUT/started")" 'BEGIN{printf "%.1f", b-a}')
if [ "$QRC" = 124 ] || [ "$QRC" = 137 ]; then
  RC=124; why="TIMEOUT: guest killed after ${TIMEOUT}s"
elif [ -s "$VM_OUT/rc" ]; then
  RC=$(cat "$VM_OUT/rc"); why="guest script exit status $RC"
else
  crash=$(grep -m1 -E 'Kernel panic|kernel BUG|BUG:|Oops|general protection' "$LOG")
  [ -n "$crash" ] && echo "[host] first crash line: $crash"
  if [ -n "$crash" ] && [ -s "$VM_OUT/crash-expected" ]; then
    # the scenario announced (crash_expected in guest-lib.sh) that the kernel may die
    # here and that a crash is its measured result, not a bench malfunction
    RC=0; why="guest kernel crashed where the scenario expected it may ($(head -n1 "$VM_OUT/crash-expected")): recorded as the result"
    echo "PASS $NAME/kernel-crash-recorded (${crash#*] })" >> "$VM_OUT/results"
    grep -E -A12 'Kernel panic|kernel BUG|BUG:|Oops|general protection' "$LOG" | head -n 40
  else
    RC=125; why="guest stopped without a result (qemu rc=$QRC; boot failure or kernel crash)"
  fi
fi
host "$NAME: $why; boot-to-script ${boot}s, wall ${wall}s, log $LOG"
if [ "$RC" != 0 ]; then
  echo "[host] ---- last $TAIL console lines of $NAME ----"
  tail -n "$TAIL" "$LOG"
  echo "[host] ---- end of console tail ----"
fi
exit "$RC"
