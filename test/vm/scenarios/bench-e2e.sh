#!/bin/bash
# End-to-end data-path benchmark (npm run bench:e2e): one LIO ib_srpt ramdisk LUN, reached in
# the same boot by
#   srp-nbd  the daemon over soft-RoCE, /dev/nbd0
#   native-loop  bench/native-loop.c, a C prototype of the daemon's steady-state data loop (a
#            measuring instrument, never a product path), /dev/nbd2, logged in to the same target
#            port and LUN as a third initiator port (initiator_ext 2)
#   ib_srp   the kernel initiator, /dev/sdX (logged in at the same time, same LUN)
#   nbdkit   nbdkit's memory plugin through nbd-client, /dev/nbd1: the kernel NBD path with a
#            C server, the yardstick for what /dev/nbdN itself carries here
# For every workload the four run one after the other, REPS times, who goes first rotating.
# Each run is fio (libaio, O_DIRECT, RUNTIME s); the daemon's, the native loop's and nbdkit's CPU
# time (all threads, /proc/PID/stat) is read around it. A second, shorter pass per workload runs
# them under `strace -c -f` to count their system calls per I/O (strace slows them, so rates of
# that pass are not used). Results: $OUT_DIR/e2e/*.json (fio) and
# $OUT_DIR/e2e/runs.tsv; bench/e2e-report.ts turns them into the table.
# Before any measurement every device gets WARMUP seconds of 4K random reads and writes, untimed:
# at the few hundred IOPS of a TCG guest V8 needs thousands of requests before it optimizes the
# daemon's I/O path (below that the figures measure its interpreter, which real hardware leaves
# within milliseconds); without the warm-up the daemon costs ~2.6x the CPU per I/O here.
# Last, the user-space verbs floor: perftest's ib_send_lat between the two rxe ports of the path.
# Env: WARMUP=40 RUNTIME=8 REPS=2 STRACE_RUNTIME=4 LUN_MIB=256 WORKLOADS="randread-4k-qd32 ..." VERBS_ITERS=1000
#      NATIVE_LOOP_ARGS (e.g. --poll: the native loop busy-polls while it has commands in flight)
# vm-default: no
# vm-timeout: 3000
. "$(dirname "$0")/../guest-lib.sh"
WARMUP=${WARMUP:-40}; RUNTIME=${RUNTIME:-8}; REPS=${REPS:-2}; STRACE_RUNTIME=${STRACE_RUNTIME:-4}; LUN_MIB=${LUN_MIB:-256}
VERBS_ITERS=${VERBS_ITERS:-1000}
NATIVE_LOOP_ARGS=${NATIVE_LOOP_ARGS:-}
WORKLOADS=${WORKLOADS:-randread-4k-qd32 randwrite-4k-qd32 randread-4k-qd1 read-1m-qd8 write-1m-qd8}
E2E=$OUT_DIR/e2e
mkdir -p "$E2E"; : > "$E2E/runs.tsv"
echo "WARMUP=$WARMUP s, RUNTIME=$RUNTIME s, REPS=$REPS, STRACE_RUNTIME=$STRACE_RUNTIME s, LUN $LUN_MIB MiB, kernel $(uname -r), $(nproc) vCPUs (TCG)${NATIVE_LOOP_ARGS:+, native loop $NATIVE_LOOP_ARGS}" > "$E2E/params"
log "bench-e2e: WARMUP=$WARMUP RUNTIME=$RUNTIME REPS=$REPS STRACE_RUNTIME=$STRACE_RUNTIME LUN_MIB=$LUN_MIB"

setup_bench 1 "ram:$LUN_MIB:512"

# srp-nbd
daemon_up
attach_nbd e2e "$(srp_target_string 0)" nbd0
SRP_DEV=/dev/nbd0
# ib_srp on the same target port and LUN
kib_srp_login 0 || die "ib_srp login"
wait_for 30 kib_srp_have 1 || die "no ib_srp disk"
KIB_DEV=/dev/$(kib_srp_disks | head -n1)
# the native loop: initiator_ext 2 (the daemon's is 0, ib_srp's 1: a port id of its own, or the
# target would end one of the others' channels at its single-channel login)
NATIVE_LOOP=/tmp/native-loop
cc -O2 -Wall -o $NATIVE_LOOP "$REPO_ROOT/bench/native-loop.c" -lrdmacm -libverbs || die "cc native-loop"
# shellcheck disable=SC2086
"$NATIVE_LOOP" $NATIVE_LOOP_ARGS "${INI_IP[0]}" "${TGT_IP[0]}" "$CM_PORT" "$SRPT_GUID" 2 /dev/nbd2 >/tmp/native-loop.out \
  2>"$OUT_DIR/native-loop.log" &
NATIVE_PID=$!
wait_for 60 grep -q ready /tmp/native-loop.out || die "native-loop: $(tail -n 3 "$OUT_DIR/native-loop.log")"
wait_for 10 nbd_connected nbd2 || die "native-loop: /dev/nbd2 not connected"
# nbdkit + nbd-client
nbdkit --unix /tmp/nbdkit.sock --pidfile /tmp/nbdkit.pid memory "${LUN_MIB}M" || die "nbdkit"
wait_for 10 test -s /tmp/nbdkit.pid || die "nbdkit pid file"
NBDKIT_PID=$(cat /tmp/nbdkit.pid)
nbd-client -u /tmp/nbdkit.sock /dev/nbd1 -b 512 >/dev/null 2>&1 || die "nbd-client /dev/nbd1"
wait_for 10 nbd_connected nbd1 || die "nbd-client: /dev/nbd1 not connected"
pass setup "srp-nbd $SRP_DEV (daemon pid $DAEMON_PID), native-loop /dev/nbd2 (pid $NATIVE_PID), ib_srp $KIB_DEV, nbdkit /dev/nbd1 (pid $NBDKIT_PID)"
note native-loop "$(tail -n 1 "$OUT_DIR/native-loop.log")"

INITIATORS=(srp-nbd native-loop ib_srp nbdkit)
dev_of() { case $1 in srp-nbd) echo $SRP_DEV ;; native-loop) echo /dev/nbd2 ;; ib_srp) echo "$KIB_DEV" ;; nbdkit) echo /dev/nbd1 ;; esac; }
pid_of() { case $1 in srp-nbd) echo "$DAEMON_PID" ;; native-loop) echo "$NATIVE_PID" ;; nbdkit) echo "$NBDKIT_PID" ;; *) echo - ;; esac; }
# cpu_ticks PID: "utime stime" of every thread, clock ticks; "- -" without a process
cpu_ticks() {
  [ "$1" = - ] && { echo "- -"; return; }
  local s; s=$(cat "/proc/$1/stat") || { echo "- -"; return; }
  s=${s##*) }; set -- $s; echo "${12} ${13}"
}
# guest_ticks: busy time of every vCPU (user nice system irq softirq of /proc/stat), clock ticks
guest_ticks() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8; exit }' /proc/stat; }
# secs A B: clock ticks A..B in seconds
secs() { awk -v a="$1" -v b="$2" -v t="$ticks" 'BEGIN{printf "%.3f", (b-a)/t}'; }
for i in "${INITIATORS[@]}"; do
  d=$(dev_of $i); q=/sys/block/${d##*/}/queue
  note "device-$i" "$d max_sectors_kb=$(sysfs_get $q/max_sectors_kb) max_hw_sectors_kb=$(sysfs_get $q/max_hw_sectors_kb) nr_requests=$(sysfs_get $q/nr_requests) size=$(blockdev --getsize64 "$d")"
done
# Fill every device once so reads find data (and the ramdisk has its pages).
for i in "${INITIATORS[@]}"; do
  dd if=/dev/zero of="$(dev_of $i)" bs=1M count="$LUN_MIB" oflag=direct status=none || fail "fill-$i" "dd"
done

# fio_run INITIATOR WORKLOAD SECONDS OUT: one fio job on the initiator's device, JSON to OUT
fio_run() {
  local rw bs qd; IFS=- read -r rw bs qd <<<"$2"; qd=${qd#qd}
  fio --name=e2e --filename="$(dev_of "$1")" --direct=1 --ioengine=libaio --rw="$rw" --bs="$bs" \
      --iodepth="$qd" --runtime="$3" --time_based --group_reporting --output-format=json >"$4" 2>"$4.err"
}
for i in "${INITIATORS[@]}"; do
  for w in randread-4k-qd32 randwrite-4k-qd32; do fio_run "$i" "$w" $((WARMUP / 2)) "$E2E/warmup-$i-$w.json" || fail "warmup-$i" "fio"; done
done
log "bench-e2e: warmed up ($WARMUP s per device)"
ticks=$(getconf CLK_TCK)
n=${#INITIATORS[@]}
for w in $WORKLOADS; do
  for ((r=0; r<REPS; r++)); do
    for ((j=0; j<n; j++)); do
      i=${INITIATORS[$(( (r + j) % n ))]}; pid=$(pid_of $i); out=$E2E/$w-$i-$r.json
      read -r u0 s0 < <(cpu_ticks "$pid"); g0=$(guest_ticks); t0=$(now)
      fio_run "$i" "$w" "$RUNTIME" "$out" || fail "fio-$w-$i-$r" "$(tail -n 3 "$out.err")"
      read -r u1 s1 < <(cpu_ticks "$pid"); g1=$(guest_ticks)
      cpu=-; user=-; sys=-
      if [ "$u0" != - ] && [ "$u1" != - ]; then
        cpu=$(secs $((u0 + s0)) $((u1 + s1))); user=$(secs "$u0" "$u1"); sys=$(secs "$s0" "$s1")
      fi
      # workload, initiator, rep, run, process CPU s, seconds, process user s, system s, guest CPU s
      printf '%s\t%s\t%s\trun\t%s\t%s\t%s\t%s\t%s\n' "$w" "$i" "$r" "$cpu" "$(since "$t0")" "$user" "$sys" \
        "$(secs "$g0" "$g1")" >> "$E2E/runs.tsv"
    done
  done
  log "bench-e2e: $w measured"
done
# System calls per I/O: the same job, shorter, with strace -c -f attached to the server.
for w in $WORKLOADS; do
  for i in srp-nbd native-loop nbdkit; do
    pid=$(pid_of $i); out=$E2E/$w-$i-strace.json
    strace -c -f -p "$pid" -o "$E2E/$w-$i.strace" &
    sp=$!; nap 1
    fio_run "$i" "$w" "$STRACE_RUNTIME" "$out" || fail "fio-strace-$w-$i" "$(tail -n 3 "$out.err")"
    kill -INT "$sp"; wait "$sp" 2>/dev/null
    printf '%s\t%s\t-\tstrace\t-\t-\n' "$w" "$i" >> "$E2E/runs.tsv"
  done
done
# The user-space verbs floor: perftest's send latency test between the path's two rxe ports (C,
# user space at both ends, one 64-byte SEND each way, as an SRP_CMD and its SRP_RSP), waiting for
# completions on events as the daemon does (-e) and busy-polling; it prints half the round trip.
# What one user-space wake-up over rxe costs here, whatever the language.
for v in events:-e polling:; do
  name=${v%%:*}; flag=${v#*:}
  # shellcheck disable=SC2086
  ib_send_lat -R -s 64 -n "$VERBS_ITERS" $flag -d "$(tgt_rxe 0)" >"$E2E/verbs-$name-server.txt" 2>&1 &
  srv=$!
  # the client is rejected until the server listens (it may take seconds to start here): retry
  rc=1
  for try in 1 2 3 4 5 6; do
    nap 2
    # shellcheck disable=SC2086
    timeout 300 ib_send_lat -R -s 64 -n "$VERBS_ITERS" $flag -d "$(ini_rxe 0)" "${TGT_IP[0]}" >"$E2E/verbs-$name.txt" 2>&1
    rc=$?; [ $rc = 0 ] && break
    kill -0 "$srv" 2>/dev/null || break
  done
  [ $rc = 0 ] || fail "verbs-floor-$name" "ib_send_lat exited $rc after $try tries: $(tail -n 2 "$E2E/verbs-$name.txt")"
  kill "$srv" 2>/dev/null; wait "$srv" 2>/dev/null
done
# the daemon's own view after the runs: memory registrations (slots vs per command), credits
srp_nbd status e2e --json > "$E2E/srp-nbd-status.json" 2>/dev/null || fail status "srp-nbd status"
check daemon-alive kill -0 "$DAEMON_PID"
check srp-nbd-still-running target_state_is e2e running
check fio-verify-after fio_verify $SRP_DEV 4M
check native-loop-alive kill -0 "$NATIVE_PID"
check native-loop-verify-after fio_verify /dev/nbd2 4M
nbd-client -d /dev/nbd1 >/dev/null 2>&1
nbd-client -d /dev/nbd2 >/dev/null 2>&1
kill "$NBDKIT_PID" 2>/dev/null
finish
