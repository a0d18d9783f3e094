#!/bin/bash
# Memory pressure on an srp-nbd mirror (issue 16): md RAID1 over two srp-nbd devices (two targets,
# two paths), ext4 on /dev/md0, swap on zram; a memory-limited cgroup v2 (CG_MB, 384 MiB) holds a
# memory hog (HOG_MB, 640 MiB, pages touched over and over, so it swaps) and a writer looping
# fio write + crc32c verify through ext4 (buffered: its dirty pages must be written back through the
# daemon, which runs outside the cgroup), for DURATION (60) s, while a prober times 4 KiB
# write+fsync on the same file system.
#   daemon-memory  the daemon (heap limit 256 MiB, as in the unit) reports itself an I/O flusher with
#                  its code locked (VmLck > 10 MiB)
#   pressure       the cgroup hit memory.max (memory.events) and swapped (zram in use)
#   fio-verify     every fio loop passed its verify
#   stall          the longest prober write+fsync stayed under STALL_MAX (30) s
#   no-hung-task   no "blocked for more than" in the kernel log (hung_task_timeout_secs 20)
#   daemon-alive   the daemon is alive afterwards, t0-running/t1-running, md-clean (not degraded)
# CG_MB=max: no cgroup limit, so the pressure is on the whole guest (HOG_MB near its memory, e.g.
# 2600 of 3072 MiB): the daemon's own pages are then what reclaim takes.
# PROTECT=0 runs the same without the daemon's protections (memory.lock and memory.io_flusher off, no
# heap limit): io-flusher and code-locked become notes, and the rest records what happens then.
# Run: test/vm/run-scenarios.sh memory-pressure   (PROTECT=0: test/vm/boot.sh ... PROTECT=0)
# vm-timeout: 480
. "$(dirname "$0")/../guest-lib.sh"
DURATION=${DURATION:-60} HOG_MB=${HOG_MB:-640} CG_MB=${CG_MB:-384} STALL_MAX=${STALL_MAX:-30} PROTECT=${PROTECT:-1}
setup_bench 2 ram:96:512
echo 20 > /proc/sys/kernel/hung_task_timeout_secs || note hung-task "no hung task detector"
DMESG_MARK=$(dmesg | wc -l)

if [ "$PROTECT" = 1 ]; then
  export NODE_OPTIONS=--max-old-space-size=256 # the heap limit of packaging/srp-nbd.service
else
  export DAEMON_CONFIG_EXTRA='"memory": { "lock": false, "io_flusher": false }'
  note unprotected "memory.lock and memory.io_flusher off, no heap limit"
fi
daemon_up
for p in 0 1; do
  srp_nbd attach "$(srp_target_string $p)" --id "t$p" --device "/dev/nbd$p" >/dev/null || fail attach-cmd "t$p"
done
check attach wait_for 60 bash -c 'test -e /sys/block/nbd0/pid && test -e /sys/block/nbd1/pid'
MEM=$(srp_nbd status | sed -n 's/^daemon  memory: //p')
note daemon-memory "$MEM; VmLck $(awk '/VmLck/ {print $2 " " $3}' /proc/$DAEMON_PID/status)"
if [ "$PROTECT" = 1 ]; then
  check io-flusher bash -c "[[ '$MEM' == 'I/O flusher, '* ]]"
  check code-locked awk '/VmLck/ {exit !($2 > 10240)}' /proc/$DAEMON_PID/status
fi

check md-create md_raid1 /dev/md0 /dev/nbd0 /dev/nbd1
check mkfs mkfs.ext4 -q -F /dev/md0
mkdir -p /mnt/md && check mount mount /dev/md0 /mnt/md

modprobe zram && echo 768M > /sys/block/zram0/disksize && mkswap /dev/zram0 >/dev/null && swapon /dev/zram0
check swap-on grep -q zram0 /proc/swaps
CG=/sys/fs/cgroup
[ -e $CG/cgroup.controllers ] || mount -t cgroup2 none $CG
echo +memory > $CG/cgroup.subtree_control
LIMIT=$CG_MB; [ "$CG_MB" = max ] || LIMIT=$((CG_MB << 20))
mkdir -p $CG/pressure && echo "$LIMIT" > $CG/pressure/memory.max
check cgroup test "$(cat $CG/pressure/memory.max)" = "$LIMIT"

log "pressure: hog $HOG_MB MiB + writer in a $CG_MB MiB cgroup for $DURATION s"
( echo $BASHPID > $CG/pressure/cgroup.procs
  exec node -e "const b = Buffer.alloc($HOG_MB * 1048576, 1);
    setInterval(() => { for (let i = 0; i < b.length; i += 4096) b[i]++; }, 50);" ) &
HOG=$!
END=$(awk -v n="$(now)" -v d="$DURATION" 'BEGIN {print n + d}')
( echo $BASHPID > $CG/pressure/cgroup.procs
  n=0
  while awk -v n="$(now)" -v e="$END" 'BEGIN {exit !(n < e)}'; do
    n=$((n + 1))
    if fio --name=w --directory=/mnt/md --filename=data --rw=write --bs=256k --size=32M --ioengine=psync \
        --end_fsync=1 --verify=crc32c --verify_fatal=1 --do_verify=1 --output-format=terse \
        --terse-version=3 >/tmp/fio-w.out 2>&1; then echo "ok $n"; else echo "FAIL $n"; cat /tmp/fio-w.out; fi
  done > /tmp/writer.log 2>&1 ) &
WRITER=$!
( while awk -v n="$(now)" -v e="$END" 'BEGIN {exit !(n < e)}'; do
    awk '$1 == "/dev/zram0" {print $4}' /proc/swaps >> /tmp/swap.log
    a=$(now); dd if=/dev/zero of=/mnt/md/probe bs=4k count=1 conv=fsync status=none; b=$(now)
    awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f %.2f\n", a, b - a}'
    nap 0.5
  done > /tmp/prober.log ) &
PROBER=$!
wait $PROBER
wait $WRITER
kill $HOG 2>/dev/null; wait $HOG 2>/dev/null

EVENTS=$(tr '\n' ' ' < $CG/pressure/memory.events)
SWAP=$(sort -n /tmp/swap.log | tail -1)
note pressure-numbers "memory.events: $EVENTS; zram swap in use at most ${SWAP:-0} KiB; daemon $(grep -E 'VmRSS|VmSwap|VmLck' /proc/$DAEMON_PID/status | tr -s ' \t\n' ' ')"
if [ "$CG_MB" = max ]; then check pressure test "${SWAP:-0}" -gt 0 # the whole guest short of memory
else check pressure bash -c "awk '\$1 == \"max\" {exit !(\$2 > 0)}' $CG/pressure/memory.events && [ ${SWAP:-0} -gt 0 ]"; fi
LOOPS=$(grep -c '^ok' /tmp/writer.log); FAILS=$(grep -c '^FAIL' /tmp/writer.log)
note writer "$LOOPS fio write+verify loops passed, $FAILS failed"
check fio-verify bash -c "[ $FAILS = 0 ] && [ $LOOPS -gt 0 ]"
[ "$FAILS" = 0 ] || sed -n '1,20p' /tmp/writer.log
MAX=$(sort -k2 -n /tmp/prober.log | tail -1 | cut -d' ' -f2)
timing stall "${MAX:-none}" "longest 4 KiB write+fsync on ext4 over md0 ($(wc -l < /tmp/prober.log) probes)"
check stall awk -v m="${MAX:-999}" -v b="$STALL_MAX" 'BEGIN {exit !(m < b)}'
HUNG=$(dmesg | tail -n +$((DMESG_MARK + 1)) | grep -c 'blocked for more than')
check no-hung-task test "$HUNG" = 0
[ "$HUNG" = 0 ] || dmesg | tail -n +$((DMESG_MARK + 1)) | grep -A5 'blocked for more than' | head -30
check daemon-alive kill -0 "$DAEMON_PID"
check t0-running target_state_is t0 running
check t1-running target_state_is t1 running
check md-clean test "$(md_degraded /dev/md0)" = 0

umount /mnt/md; swapoff /dev/zram0
mdadm --stop /dev/md0 >/dev/null 2>&1
srp_nbd detach --all >/dev/null || fail detach "detach --all exited $?"
daemon_stop
finish
