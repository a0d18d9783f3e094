#!/bin/bash
# The daemon against target-side events in the guest (issue 7 scenarios 5 and 4):
#   login-reject    the target's ACL lacks our initiator: `srp-nbd attach` fails with the SRP
#                   login reject named, exit 1, and nothing is attached (/dev/nbd0 stays free)
#   target-restart  with /dev/nbd0 attached, the LIO target is torn down and rebuilt at once under a
#                   4 KiB O_DIRECT writer (no write fails), then torn down, left down 3 s and
#                   rebuilt: the daemon reconnects to the same /dev/nbd0 (same major:minor) and I/O
#                   works again
# Run: test/vm/boot.sh test/vm/scenarios/daemon-target.sh
# vm-timeout: 1500
. "$(dirname "$0")/../guest-lib.sh"
setup_bench 1 ram:64:512
ADDR=$(srp_target_string 0)

daemon_up

# Scenario 5: an ACL without our initiator port.
srpt_remove_target 0 && srpt_add_target 0 none ram:64:512 || die "rebuild target without ACL"
srp_nbd attach "$ADDR" --id rej --device /dev/nbd0 >/tmp/rej.out 2>&1; rc=$?
cat /tmp/rej.out
if [ $rc = 1 ] && grep -qi "reject" /tmp/rej.out; then pass login-reject "exit 1: $(head -c 200 /tmp/rej.out | tr '\n' ' ')"
else fail login-reject "exit $rc: $(head -c 200 /tmp/rej.out | tr '\n' ' ')"; fi
check nothing-attached bash -c '! test -e /sys/block/nbd0/pid'

# Scenario 4: target restart with /dev/nbd0 attached.
srpt_remove_target 0 && srpt_add_target 0 default ram:64:512 || die "rebuild target with ACL"
attach_nbd t0 "$ADDR" nbd0
MM1=$(majmin /dev/nbd0)

# A short restart (torn down and rebuilt at once, shorter than fast_io_fail_tmo 5 s) under a
# 4 KiB O_DIRECT writer: no write may fail. Times from the daemon's log (no CLI polling in them).
rm -f /tmp/w.err /tmp/w.ok; touch /tmp/w.run
( i=0; while [ -e /tmp/w.run ]; do
    if dd if=/dev/urandom of=/dev/nbd0 bs=4k count=1 seek=$((i % 4096)) oflag=direct status=none; then
      echo >> /tmp/w.ok; else echo >> /tmp/w.err; fi; i=$((i + 1)); done ) &
WPID=$!
nap 2
TD_MS=$(epoch_ms)
srpt_remove_target 0 || die "tear target down"
srpt_add_target 0 default ram:64:512 || die "rebuild target"
TE_MS=$(epoch_ms)
timing short-restart "$(ms_between "$TD_MS" "$TE_MS")" "LIO torn down and rebuilt at once (configfs)"
check short-reconnected wait_for 60 target_state_is t0 running
nap 2
rm -f /tmp/w.run; wait "$WPID"
TB_MS=$(daemon_log_first "$TD_MS" '"to":"blocked"'); TR_MS=$(daemon_log_first "$TE_MS" '"to":"running"')
[ -n "$TB_MS" ] && timing short-detect "$(ms_between "$TD_MS" "$TB_MS")" "teardown started -> port blocked (daemon log)"
[ -n "$TR_MS" ] && timing short-back "$(ms_between "$TE_MS" "$TR_MS")" "target enabled -> port running (daemon log)"
NOK=$(wc -l < /tmp/w.ok 2>/dev/null || echo 0); NERR=$(wc -l < /tmp/w.err 2>/dev/null || echo 0)
note short-writer "$NOK writes completed, $NERR failed"
check short-no-failed-write test "$NERR" = 0
check short-writes-done test "$NOK" -gt 0

# A long restart: torn down, 3 s, rebuilt (the port may reach fail-fast meanwhile).
T0=$(now)
srpt_remove_target 0 || die "tear target down"
timing teardown "$(since "$T0")" "LIO teardown (configfs) with srp-nbd logged in"
check blocked wait_for 30 target_outage t0
timing detect "$(since "$T0")" "target torn down -> port no longer running"
nap 3
T1=$(now)
srpt_add_target 0 default ram:64:512 || die "rebuild target"
T2=$(now); T2_MS=$(epoch_ms)
timing rebuild "$(since "$T1")" "LIO rebuild (configfs), port enabled last"
check reconnected wait_for 120 target_state_is t0 running
timing reconnect "$(since "$T1")" "target rebuild started -> port running"
TR2_MS=$(daemon_log_first "$T2_MS" '"to":"running"')
[ -n "$TR2_MS" ] && timing back "$(ms_between "$T2_MS" "$TR2_MS")" "target rebuilt and enabled -> port running (daemon log)"
check same-device test "$(majmin /dev/nbd0)" = "$MM1"
check node-kept nbd_connected nbd0
check fio-after-restart fio_verify /dev/nbd0 4M
srp_nbd detach t0 || fail detach-cmd "srp-nbd detach exited $?"
daemon_stop
finish
