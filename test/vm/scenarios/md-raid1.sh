#!/bin/bash
# md RAID1 over two srp-nbd devices on two targets (issue 7 scenario 2; also `npm run demo`):
#   setup       two LIO ib_srpt targets, one per path; the daemon attaches one LUN of each as
#               /dev/nbd0 and /dev/nbd1; /dev/md0 = RAID1 with a write-intent bitmap over both
#   flap        fio verify on /dev/md0 while path 0 is down FLAP (3) s, shorter than
#               fast_io_fail_tmo (FIOF, 8): no I/O error, no member failed, array clean
#   outage      a 4 KiB writer on /dev/md0 while path 0 is down DOWN (30) s: /dev/nbd0 fails fast,
#               md fails that member, the array keeps serving (no write fails); the path returns,
#               the daemon re-adds /dev/nbd0, the bitmap resync completes, an md "check" finds the
#               mirrors identical, fio verify on /dev/md0 passes
#   names       /dev/nbd0 and /dev/nbd1 kept their names and major:minor throughout
# Narration lines (what `npm run demo` shows) go to $OUT_DIR/narration.
# Run: test/vm/boot.sh test/vm/scenarios/md-raid1.sh [FLAP=3] [DOWN=30] [FIOF=8]
# vm-timeout: 1800
. "$(dirname "$0")/../guest-lib.sh"
FLAP=${FLAP:-3}
DOWN=${DOWN:-30}
FIOF=${FIOF:-8}
T_START=$(now)

# say TEXT: one narration line, with the time since the scenario started
say() {
  local line
  printf -v line '[%6.1f s] %s' "$(since "$T_START")" "$*"
  echo "$line"
  echo "$line" >> "$OUT_DIR/narration"
}
# mirror_state: builtins only (monitor_start): member states, array state, degraded, sync
mirror_state() {
  local a g s m
  sysfs_read a /sys/block/md0/md/array_state; sysfs_read g /sys/block/md0/md/degraded
  sysfs_read s /sys/block/md0/md/sync_action; md_dev_states m md0
  MON_VALUE="${m}array=$a degraded=$g sync=$s"
}
member_faulty() { local m; md_dev_states m md0; [[ $m == *"$1:faulty"* ]]; }
member_back() { [ -e "/sys/block/md0/md/dev-$1/state" ] && ! member_faulty "$1"; }  # still bound, not faulty
mirror_whole() { local m g s; md_dev_states m md0; sysfs_read g /sys/block/md0/md/degraded; sysfs_read s /sys/block/md0/md/sync_action
  [[ $m == *nbd0:in_sync* && $m == *nbd1:in_sync* && $g == 0 && $s == idle ]]; }
devices() { echo "/dev/nbd0 $(majmin /dev/nbd0), /dev/nbd1 $(majmin /dev/nbd1)"; }
# narrate the daemon's view of target a (one CLI call: 1-4 s under TCG)
target_a_state() { srp_nbd status a --json 2>/dev/null | sed -n 's/^  "state": "\(.*\)",$/\1/p'; }

say "booting the bench: soft-RoCE on two veth paths, LIO ib_srpt with one target per path"
setup_bench 2 ram:64:512
say "srp-nbd daemon starting; attaching target a (path 0) and target b (path 1)"
daemon_up
TMO=(--fast-io-fail-tmo "$FIOF" --dev-loss-tmo 120)
srp_nbd attach "$(srp_target_string 0)" --id a --device /dev/nbd0 "${TMO[@]}" || fail attach-a "srp-nbd attach exited $?"
srp_nbd attach "$(srp_target_string 1)" --id b --device /dev/nbd1 "${TMO[@]}" || fail attach-b "srp-nbd attach exited $?"
check attach wait_for 60 bash -c 'test -e /sys/block/nbd0/pid && test -e /sys/block/nbd1/pid'
NAMES=$(devices)
say "attached: $NAMES (fast_io_fail_tmo $FIOF s)"

check md-create md_raid1 /dev/md0 /dev/nbd0 /dev/nbd1
check md-clean wait_for 10 mirror_whole
say "/dev/md0: RAID1 over /dev/nbd0 + /dev/nbd1 with a write-intent bitmap: $(md_state /dev/md0)"
check status-shows-md bash -c "node '$SRP_NBD_CLI' status a | grep 'md: md0 raid1 slot 0 in_sync'"
monitor_start mirror mirror_state 0.2

# ---- 1. a short flap: held, not failed ----------------------------------------------------
say "== 1. path 0 goes down for $FLAP s (shorter than fast_io_fail_tmo) while fio writes and verifies /dev/md0"
( fio_verify /dev/md0 16M ) &
FIO=$!
sleep 2
TD_MS=$(epoch_ms); uptime_to TD; link_down 0
say "path 0 down (link_down: carrier loss)"
sleep "$FLAP"
link_up 0; uptime_to TU
say "path 0 up after $FLAP s; srp-nbd reconnects and replays the held I/O"
wait $FIO; rc=$?
if [ $rc = 0 ]; then pass flap-fio-verify "fio verify on /dev/md0 passed across the flap"
else fail flap-fio-verify "fio exited $rc: $(tail -n 3 /tmp/fio-verify.out)"; fi
if grep -q faulty /tmp/mon-mirror.log; then fail flap-no-member-failed "$(grep -m1 faulty /tmp/mon-mirror.log)"
else pass flap-no-member-failed "no member faulty"; fi
check flap-array-clean mirror_whole
check flap-port-running wait_for 30 target_state_is a running
TB_MS=$(daemon_log_first "$TD_MS" '"to":"blocked"'); TR_MS=$(daemon_log_first "${TB_MS:-$TD_MS}" '"to":"running"')
if [ -n "$TB_MS" ] && [ -n "$TR_MS" ]; then
  timing flap-detect "$(ms_between "$TD_MS" "$TB_MS")" "link down -> port blocked (PORT_ERR)"
  timing flap-blocked "$(ms_between "$TB_MS" "$TR_MS")" "I/O held while blocked, then replayed"
  say "target a was blocked $(ms_between "$TD_MS" "$TB_MS") s after link down and running again $(ms_between "$TB_MS" "$TR_MS") s later; held I/O replayed"
fi
say "verdict 1: fio verify passed, no md member failed, array $(md_state /dev/md0) (port a $(target_a_state))"

# ---- 2. a long outage: fail fast, degrade, re-add, resync ----------------------------------
say "== 2. path 0 goes down for $DOWN s while a writer keeps writing to /dev/md0"
io_prober_start /dev/md0 0.1
sleep 1
uptime_to TD; link_down 0
say "path 0 down; target a blocks, I/O to /dev/nbd0 is held"
if wait_for $((FIOF + 20)) member_faulty nbd0; then
  TF=$(since "$TD"); pass member-failed-fast "md failed /dev/nbd0 after $TF s"
  timing member-failed "$TF" "link down -> md marks nbd0 faulty (fast_io_fail_tmo $FIOF s)"
  say "after $TF s: fast_io_fail_tmo expired, /dev/nbd0 fails I/O with EIO, md marks it faulty: $(md_members /dev/md0)"
else fail member-failed-fast "nbd0 not faulty $((FIOF + 20)) s after link down: $(mirror_state; echo "$MON_VALUE")"; fi
check array-serving-degraded bash -c 'dd if=/dev/urandom of=/tmp/deg bs=64k count=16 status=none &&
  timeout 30 dd if=/tmp/deg of=/dev/md0 bs=64k seek=800 oflag=direct status=none &&
  timeout 30 dd if=/dev/md0 bs=64k skip=800 count=16 iflag=direct status=none | cmp - /tmp/deg'
say "/dev/md0 keeps serving from /dev/nbd1 (degraded $(md_degraded /dev/md0)); port a: $(target_a_state)"
REST=$(awk -v d="$DOWN" -v s="$(since "$TD")" 'BEGIN{r=d-s; printf "%.1f", (r > 0 ? r : 0)}')
sleep "$REST"
TU_MS=$(epoch_ms); link_up 0; uptime_to TU
say "path 0 up after $DOWN s"
if wait_for 120 target_state_is a running; then
  TR_MS=$(daemon_log_first "$TU_MS" '"to":"running"')
  [ -n "$TR_MS" ] && timing reconnect "$(ms_between "$TU_MS" "$TR_MS")" "link up -> target a running (daemon log)"
  pass reconnected "target a running"
  say "target a running again $(ms_between "$TU_MS" "${TR_MS:-$TU_MS}") s after the link came up (RDMA port active -> immediate reconnect, identity checked)"
else fail reconnected "target a not running 120 s after link up"; fi
if wait_for 120 member_back nbd0; then
  timing readd "$(since "$TU")" "link up -> nbd0 back in md0 (seen after the CLI polling above)"
  RA_MS=$(daemon_log_first "$TU_MS" 're-added /dev/nbd0 to /dev/md0')
  [ -n "$RA_MS" ] && timing readd-log "$(ms_between "$TU_MS" "$RA_MS")" "link up -> re-add written (daemon log)"
  pass member-readded "$(md_members /dev/md0)"
  say "srp-nbd re-added /dev/nbd0 to /dev/md0; md resyncs the regions the bitmap marked"
else fail member-readded "nbd0 still faulty 120 s after link up: $(md_members /dev/md0)"; fi
if wait_for 300 mirror_whole; then
  timing resync "$(since "$TU")" "link up -> resync complete, both members in_sync"
  pass resync-complete "$(md_members /dev/md0)"
  say "resync complete $(since "$TU") s after the path returned: $(md_members /dev/md0)"
else fail resync-complete "$(mirror_state; echo "$MON_VALUE")"; fi
io_prober_stop /dev/md0
SUMMARY=$(io_summary /dev/md0 "$TD")
note writer "$SUMMARY"
if [ -z "$(io_first_error /dev/md0 "$TD")" ]; then pass writer-no-errors "$SUMMARY"
else fail writer-no-errors "$SUMMARY"; fi
say "writer on /dev/md0 during the outage: $SUMMARY"
check daemon-logged-readd grep -q 're-added /dev/nbd0 to /dev/md0' "$OUT_DIR/daemon.log"

# The mirrors must be identical after the resync, and the data must verify.
echo check > /sys/block/md0/md/sync_action
check md-check-done wait_for 300 mirror_whole
MISMATCH=$(cat /sys/block/md0/md/mismatch_cnt)
check md-mismatch-zero test "$MISMATCH" = 0
check outage-fio-verify fio_verify /dev/md0 16M
say "md check: mismatch_cnt $MISMATCH; fio verify on /dev/md0: $( [ -s /tmp/fio-verify.out ] && echo done)"
check same-names test "$(devices)" = "$NAMES"
say "device names and numbers throughout: $(devices)"
monitor_stop mirror
echo "--- md states during the run:"; monitor_show mirror

mdadm --stop /dev/md0 >/dev/null 2>&1
srp_nbd detach a; srp_nbd detach b
daemon_stop
if [ "$NFAIL" = 0 ]; then say "VERDICT: PASS: the mirror survived a ${FLAP} s flap untouched and a ${DOWN} s outage degraded, re-added and resynced, on the same /dev/nbd0"
else say "VERDICT: FAIL: $NFAIL check(s) failed (see the FAIL lines)"; fi
finish
