#!/bin/bash
# Multipath (issue 19): one logical unit reached over two paths, srp-nbd against the kernel's
# ib_srp + dm-multipath, the same workload and the same faults, side by side in one boot.
#   bench     ONE LIO ramdisk backstore (256 MiB) exported as LUN 0 through the ib_srpt ports of
#             both paths (srpt_add_shared_lun): the two paths reach the same LU (same serial, NAA)
#   workload  fio passes (4 KiB randwrite, libaio, O_DIRECT, QD8, crc32c verify of every pass)
#             on the multipath device, a 4 KiB O_DIRECT probe writer (every 0.1 s) timing each
#             write, and a sampler of the SCSI commands LIO received on each target port
#   faults    path 0 flaps FLAPS (20) times (down 1 or 2 s, up 2 or 3 s), then stays down
#             LONG_DOWN (30) s once, then SETTLE (15) s for failback
#   measured  per side: fio I/O errors, verify failures, failed probe writes, time to switch
#             (link down -> LIO sees commands on path 1's port), longest stall (largest gap
#             between completed probe writes), failback (path 0's port carries the I/O again
#             after it returns), whether the kernel crashed. One row per side in
#             $OUT_DIR/multipath-results; per-flap detail in $OUT_DIR/multipath-<side>-flaps.
# PARTS (default "srp-nbd kernel"; the kernel part runs last, it may crash the guest):
#   srp-nbd   `srp-nbd attach --id p0 ADDR0` + `--id p1 ADDR1` -> one /dev/nbd0 (failover,
#             failback immediate, p0 preferred). Checks: 0 fio errors, 0 verify failures, 0 failed
#             probe writes, /dev/nbd0 connected and the same major:minor throughout, no second
#             device, longest stall <= path_check.bound_ms (status) + STALL_MARGIN (default: the
#             longest gap the prober showed with no fault at all, plus 0.5 s for re-issuing the
#             commands in flight on the other path), failback (path 0's port and `srp-nbd path`
#             commands of p0 grow again), then a round-robin run (`--path-selector round-robin`)
#             where both paths' commands counters (and both LIO ports) grow.
#   kernel    ib_srp logs in over both paths (module parameters reconnect_delay K_RECONNECT (2),
#             fast_io_fail_tmo K_FIOF (2), dev_loss_tmo K_DEVLOSS (60)), sd command timeout
#             K_SCSI_TMO (5) and SCSI eh_deadline K_EH_DEADLINE (5) (kernel defaults: 30, off);
#             multipathd in the guest (/etc/multipath.conf written in the guest's tmpfs overlay
#             only) groups the two sd disks into one map: path_grouping_policy K_POLICY
#             (failover), prio weightedpath (path 0's disk 50, path 1's 10), failback immediate,
#             no_path_retry queue, polling_interval 1, checker_timeout K_SCSI_TMO. (multipathd
#             0.9.4 cannot set an SRP rport's timers: "setting scsi timeouts is unsupported for
#             protocol scsi:unspec"; ib_srp's parameters rule.) Measured only (TIME/NOTE lines);
#             FAILs only if the bench does not work. ib_srp on 6.1 may crash on reconnect after a
#             flap: recorded as the result (crash_expected; panic_on_oops so that a BUG ends the
#             guest instead of hanging it).
# Run: test/vm/run-scenarios.sh multipath                                   (both parts)
#      test/vm/boot.sh test/vm/scenarios/multipath.sh PARTS=srp-nbd          (one part)
#      test/vm/boot.sh test/vm/scenarios/multipath.sh PARTS=kernel FLAPS=5 LONG_DOWN=10
# vm-default: no
# vm-timeout: 1800
. "$(dirname "$0")/../guest-lib.sh"
PARTS=${PARTS:-srp-nbd kernel}
FLAPS=${FLAPS:-20}; FLAP_DOWN=${FLAP_DOWN:-1 2}; FLAP_UP=${FLAP_UP:-2 3}
LONG_DOWN=${LONG_DOWN:-30}; SETTLE=${SETTLE:-15}
SWITCH_MIN=${SWITCH_MIN:-3}     # commands in one 0.1 s sample that count as "I/O on this port"
FIOF=${FIOF:-8}; DEVLOSS=${DEVLOSS:-120}
RR_SIZE=${RR_SIZE:-16M}
K_RECONNECT=${K_RECONNECT:-2}; K_FIOF=${K_FIOF:-2}; K_DEVLOSS=${K_DEVLOSS:-60}
K_POLICY=${K_POLICY:-failover}
K_SCSI_TMO=${K_SCSI_TMO:-5}; K_EH_DEADLINE=${K_EH_DEADLINE:-5}   # sd command timeout, SCSI EH deadline
RESULTS=$OUT_DIR/multipath-results
log "multipath: PARTS='$PARTS' FLAPS=$FLAPS down '$FLAP_DOWN' up '$FLAP_UP' LONG_DOWN=$LONG_DOWN"

# ---- the bench: one LU behind both paths -------------------------------------------------
setup_net 2 || die "setup_net"
setup_rxe || die "setup_rxe"
srpt_start || die "ib_srpt"
srpt_add_shared_lun 256 0 1 || die "shared LUN on both target ports"
pass shared-lun "one 256 MiB ramdisk, LUN 0 on $(srpt_port_name 0) and $(srpt_port_name 1)"
[ -f "$RESULTS" ] || echo "# side errors verify_failures failed_probe_writes switch_s(median/max, n) longest_stall_s failback crash" > "$RESULTS"

# ---- the workload and its measurements (both sides) ------------------------------------------
# workload_start DEV: fio passes on DEV (offset 16 MiB: the prober writes the first 4 MiB), the
# probe writer and the LIO port sampler
workload_start() {
  local dev=$1
  rm -f /tmp/fio-loop.stop /tmp/fio-pass-*; : > /tmp/fio-passes
  ( n=0
    while [ ! -e /tmp/fio-loop.stop ]; do
      n=$((n+1))
      fio --name=mp --filename="$dev" --direct=1 --ioengine=libaio --iodepth=8 --rw=randwrite \
          --bs=4k --offset=16M --size=16M --randseed="$n" --verify=crc32c --do_verify=1 \
          --continue_on_error=io --output-format=json --output="/tmp/fio-pass-$n.json" \
          2>"/tmp/fio-pass-$n.err"
      rc=$?; uptime_to t; echo "$t $n $rc" >> /tmp/fio-passes
    done ) &
  FIO_LOOP=$!
  io_prober_start "$dev" 0.1
  lio_sampler_start 0.1
}
# workload_stop DEV: stop after the current fio pass (bounded), then the prober and the sampler
workload_stop() {
  touch /tmp/fio-loop.stop
  wait_for 180 bash -c "! kill -0 $FIO_LOOP" || log "fio pass still running 180 s after stop"
  io_prober_stop "$1"; lio_sampler_stop
}
# workload_summary: W_PASSES, W_ERRORS (I/O errors fio counted), W_VERIFY (verify failures),
# W_FAILED (passes with a non-zero exit)
workload_summary() {
  local f e
  W_PASSES=$(wc -l < /tmp/fio-passes); W_FAILED=$(awk '$3 != 0' /tmp/fio-passes | wc -l)
  W_ERRORS=0; W_VERIFY=0
  for f in /tmp/fio-pass-*.json; do
    [ -s "$f" ] || continue
    e=$(jq '[.jobs[] | (.total_err // (if .error != 0 then 1 else 0 end))] | add // 0' "$f" 2>/dev/null || echo 1)
    W_ERRORS=$((W_ERRORS + e))
  done
  W_VERIFY=$(cat /tmp/fio-pass-*.err 2>/dev/null | grep -cE 'verify failed|bad magic|bad header|verify: .*(mismatch|bad)')
  cp /tmp/fio-passes "$OUT_DIR/multipath-$SIDE-fio-passes" 2>/dev/null
  for f in /tmp/fio-pass-*.err; do [ -s "$f" ] && { echo "== $f"; head -n 20 "$f"; }; done > "$OUT_DIR/multipath-$SIDE-fio-errors" 2>/dev/null
}

EVENTS=/tmp/mp-events.log
# faults: FLAPS flaps of path 0, one LONG_DOWN outage, SETTLE s; "uptime down|up N" in $EVENTS
# (also appended to $OUT_DIR/multipath-<side>-events as it goes: a crash leaves the record).
# Returns 2 early if the kernel reported a BUG.
faults() {
  local i dn=($FLAP_DOWN) up=($FLAP_UP) t ev="$OUT_DIR/multipath-$SIDE-events"
  : > "$EVENTS"; : > "$ev"
  _ev() { uptime_to t; echo "$t $1 $2" >> "$EVENTS"; echo "$t $1 $2" >> "$ev"; }
  for ((i=1; i<=FLAPS+1; i++)); do
    link_down 0; _ev down "$i"
    if [ $i -le "$FLAPS" ]; then nap "${dn[(i-1) % ${#dn[@]}]}"; else nap "$LONG_DOWN"; fi
    link_up 0 || log "link_up 0: no carrier after 5 s"; _ev up "$i"
    if [ $i -le "$FLAPS" ]; then nap "${up[(i-1) % ${#up[@]}]}"; else nap "$SETTLE"; fi
    if [ "$SIDE" = kernel ]; then BUGGED=$(kernel_bug); [ -n "$BUGGED" ] && return 2; fi
  done
  return 0
}
# analyse: per outage (flaps and the long one) from the LIO sampler: was path 0 carrying I/O
# just before the link went down, when did path 1's port start receiving commands (switch), when
# did path 0's port carry I/O again after the link returned (failback). Writes the per-outage
# table to $OUT_DIR/multipath-<side>-flaps; sets SW_N SW_MED SW_MAX SW_LONG FB_N FB_LONG FB_MAX
analyse() {
  local out
  out=$(awk -v min="$SWITCH_MIN" '
    FNR == NR { ev[++ne] = $1; kind[ne] = $2; idx[ne] = $3; next }
    { n++; t[n] = $1; a[n] = $2; b[n] = $3 }
    END {
      for (k = 1; k <= ne; k++) {
        if (kind[k] != "down") continue
        td = ev[k]; tu = ev[k+1]; tn = (k + 2 <= ne) ? ev[k+2] : 1e12
        act = 0; sw = ""; fb = ""
        for (j = 2; j <= n; j++) {
          if (t[j] <= td && t[j] > td - 0.6 && a[j] - a[j-1] >= min) act = 1
          if (t[j] > td && t[j] < tn && sw == "" && b[j] - b[j-1] >= min) sw = t[j] - td
          if (t[j] > tu && t[j] < tn && fb == "" && a[j] - a[j-1] >= min) fb = t[j] - tu
        }
        long = (k + 2 > ne) ? "long" : "flap"
        printf "%s %d down_at %.2f down_for %.1f path0_active_before %s switch %s failback %s\n",
          long, idx[k], td, tu - td, act ? "yes" : "no", sw == "" ? "-" : sprintf("%.2f", sw),
          fb == "" ? "-" : sprintf("%.2f", fb)
      }
    }' "$EVENTS" /tmp/lio-cmds.log)
  echo "$out" > "$OUT_DIR/multipath-$SIDE-flaps"
  echo "--- $SIDE: per outage (from LIO's per-port command counters)"; echo "$out"
  read -r SW_N SW_MED SW_MAX <<<"$(echo "$out" | awk '$1 == "flap" && $8 == "yes" && $10 != "-" {print $10}' | sort -n |
    awk '{v[++n] = $1} END {if (n) printf "%d %.2f %.2f", n, v[int((n+1)/2)], v[n]; else print "0 - -"}')"
  SW_OF=$(echo "$out" | awk '$1 == "flap" && $8 == "yes"' | wc -l)
  SW_LONG=$(echo "$out" | awk '$1 == "long" {print $10}')
  FB_N=$(echo "$out" | awk '$1 == "flap" && $12 != "-"' | wc -l)
  FB_MAX=$(echo "$out" | awk '$1 == "flap" && $12 != "-" {print $12}' | sort -n | tail -n1)
  FB_LONG=$(echo "$out" | awk '$1 == "long" {print $12}')
}
# row SIDE CRASH: one line of $RESULTS (replaces the side's earlier line)
row() {
  local line
  line="$1 errors=$W_ERRORS verify_failures=$W_VERIFY failed_probe_writes=$PROBE_FAILED switch_s=$SW_MED/$SW_MAX(n=$SW_N/$SW_OF,long=${SW_LONG:--}) longest_stall_s=$STALL failback=flaps:$FB_N/$FLAPS,long:${FB_LONG:--} crash=$2"
  sed -i "/^$1 /d" "$RESULTS"; echo "$line" >> "$RESULTS"; note "row-$1" "$line"
}
probe_stats() { # probe_stats DEV FROM: PROBE_FAILED, STALL (longest gap between completed writes)
  local s; s=$(io_summary "$1" "$2"); note "$SIDE-probe" "$s"
  PROBE_FAILED=$(echo "$s" | awk '{print $3}')
  STALL=$(echo "$s" | sed -n 's/.*longest stall \([0-9.]*\) s.*/\1/p')
}

# ---- srp-nbd: two paths under one /dev/nbd0 ------------------------------------------------------
# (written against issue 19's interface: attach of a second address that reaches an attached LU
# adds a path; `srp-nbd path TARGET --json`; per-target --multipath/--path-selector/--failback/
# --path-priority)
path_json() { srp_nbd path p0 --json > /tmp/path.json 2>/tmp/path.err; }
path_commands() { jq -r --arg t "$1" '.paths[] | select(.target == $t) | .commands' /tmp/path.json 2>/dev/null; }
attach_paths() { # attach_paths SELECTOR: p0 (priority 10) and p1 (priority 5) of one LU
  local o=(--fast-io-fail-tmo "$FIOF" --dev-loss-tmo "$DEVLOSS" --multipath on --path-selector "$1" --failback immediate)
  srp_nbd attach "$(srp_target_string 0)" --id p0 --device /dev/nbd0 "${o[@]}" --path-priority 10 ||
    { fail "attach-p0-$1" "srp-nbd attach p0 exited $?"; return 1; }
  srp_nbd attach "$(srp_target_string 1)" --id p1 "${o[@]}" --path-priority 5 ||
    { fail "attach-p1-$1" "srp-nbd attach p1 exited $?"; return 1; }
  wait_for 60 nbd_connected nbd0
}
nbd0_state() { MON_VALUE=gone; [ -e /sys/block/nbd0/pid ] && MON_VALUE=connected; }

part_srp_nbd() {
  SIDE=srp-nbd
  local t0 names bound margin base td0 c0 c1 r0 r1 l0 l1
  load_nbd || { fail srp-nbd-setup "modprobe nbd"; return; }
  # both addresses reach the same LU, as srp-nbd reads it (no daemon needed)
  srp_nbd discover "$(srp_target_string 0)" --json > /tmp/disc0.json 2>&1
  srp_nbd discover "$(srp_target_string 1)" --json > /tmp/disc1.json 2>&1
  local id0 id1; id0=$(jq -c '.luns[0].identity' /tmp/disc0.json 2>/dev/null); id1=$(jq -c '.luns[0].identity' /tmp/disc1.json 2>/dev/null)
  if [ -n "$id0" ] && [ "$id0" != null ] && [ "$id0" = "$id1" ]; then pass srp-nbd-same-lu "both paths: $id0"
  else fail srp-nbd-same-lu "path 0: ${id0:-$(head -c 200 /tmp/disc0.json)} / path 1: ${id1:-$(head -c 200 /tmp/disc1.json)}"; fi

  daemon_up
  t0=$(now)
  attach_paths failover || { fail srp-nbd-attach "no /dev/nbd0"; daemon_stop; return; }
  pass srp-nbd-attach "$(since "$t0") s: p0 + p1 -> /dev/nbd0"
  check srp-nbd-one-device bash -c '! test -e /sys/block/nbd1/pid'
  path_json; cp /tmp/path.json "$OUT_DIR/multipath-path-attached.json" 2>/dev/null
  check srp-nbd-two-paths jq -e '.device == "/dev/nbd0" and (.paths | length) == 2' /tmp/path.json
  bound=$(srp_nbd status p0 --json 2>/dev/null | jq -r '.path_check.bound_ms // empty')
  [ -n "$bound" ] || { fail srp-nbd-bound "no path_check.bound_ms in status p0"; bound=1500; }
  names="/dev/nbd0 $(majmin /dev/nbd0)"

  monitor_start nbd0 nbd0_state 0.2
  workload_start /dev/nbd0
  nap 10
  base=$(io_summary /dev/nbd0 0 | sed -n 's/.*longest stall \([0-9.]*\) s.*/\1/p')
  margin=${STALL_MARGIN:-$(awk -v b="$base" 'BEGIN {printf "%.2f", b + 0.5}')}
  note srp-nbd-stall-bound "path_check.bound_ms $bound + margin $margin s (longest gap with no fault $base s + 0.5 s re-issue)"
  uptime_to td0
  faults
  note srp-nbd-rxe "after the faults: $(rxe_counters)"
  workload_stop /dev/nbd0
  monitor_stop nbd0
  workload_summary; probe_stats /dev/nbd0 "$td0"; analyse
  if [ "$W_ERRORS" = 0 ] && [ "$W_FAILED" = 0 ]; then pass srp-nbd-no-io-errors "$W_PASSES fio passes"
  else fail srp-nbd-no-io-errors "$W_ERRORS I/O errors, $W_FAILED of $W_PASSES passes failed"; fi
  if [ "$W_VERIFY" = 0 ]; then pass srp-nbd-no-verify-failures "$W_PASSES passes verified"
  else fail srp-nbd-no-verify-failures "$W_VERIFY verify failures"; fi
  if [ "$PROBE_FAILED" = 0 ]; then pass srp-nbd-probe-no-errors; else fail srp-nbd-probe-no-errors "$PROBE_FAILED probe writes failed"; fi
  if awk -v s="$STALL" -v b="$bound" -v m="$margin" 'BEGIN {exit !(s <= b / 1000 + m)}'; then
    pass srp-nbd-stall-bounded "longest stall $STALL s <= $bound ms + $margin s"
  else fail srp-nbd-stall-bounded "longest stall $STALL s > $bound ms + $margin s"; fi
  timing srp-nbd-longest-stall "$STALL" "largest gap between completed probe writes, $FLAPS flaps + ${LONG_DOWN} s down"
  [ "$SW_MAX" != - ] && timing srp-nbd-switch-max "$SW_MAX" "link down -> commands on path 1's port (median $SW_MED, $SW_N flaps)"
  if grep -q gone /tmp/mon-nbd0.log; then fail srp-nbd-device-connected "$(grep -m1 gone /tmp/mon-nbd0.log)"
  else pass srp-nbd-device-connected "/dev/nbd0 connected throughout"; fi
  check srp-nbd-same-device test "/dev/nbd0 $(majmin /dev/nbd0)" = "$names"
  # failback immediate: path 0 carries the I/O again after it returned
  if [ -n "$FB_LONG" ] && [ "$FB_LONG" != - ]; then pass srp-nbd-failback-lio "path 0's port busy again $FB_LONG s after it returned"
  else fail srp-nbd-failback-lio "path 0's port carried no I/O in the $SETTLE s after the long outage (ib_srpt logged $(srpt_login_reqs "$(awk '$2 == "up" {t = $1} END {print t}' "$EVENTS")") login requests since path 0 came back; $(rxe_counters); GSI QPs: $(rdma resource show qp lqpn 1 2>&1 | tr -s ' \n' ' '))"; fi
  ( fio_verify /dev/nbd0 8M ) & local fv=$!
  path_json; c0=$(path_commands p0); c1=$(path_commands p1); nap 3
  path_json; r0=$(path_commands p0); r1=$(path_commands p1)
  wait $fv || fail srp-nbd-after-verify "fio verify after the faults: $(tail -n 3 /tmp/fio-verify.out)"
  cp /tmp/path.json "$OUT_DIR/multipath-path-after.json" 2>/dev/null
  if [ -n "$c0" ] && [ -n "$r0" ] && [ "$r0" -gt "$c0" ]; then pass srp-nbd-failback "p0 commands $c0 -> $r0 (p1 $c1 -> $r1)"
  else fail srp-nbd-failback "p0 commands '$c0' -> '$r0' (p1 '$c1' -> '$r1'): $(head -c 300 /tmp/path.err)"; fi
  row srp-nbd no

  # round-robin: both paths carry I/O
  srp_nbd detach p1; srp_nbd detach p0
  wait_for 30 bash -c '! test -e /sys/block/nbd0/pid' || fail srp-nbd-rr-detach "/dev/nbd0 still connected"
  if attach_paths round-robin; then
    path_json; c0=$(path_commands p0); c1=$(path_commands p1); lio_port_cmds l0 0; lio_port_cmds l1 1
    check srp-nbd-rr-fio fio_verify /dev/nbd0 "$RR_SIZE"
    path_json; r0=$(path_commands p0); r1=$(path_commands p1); lio_port_cmds l0b 0; lio_port_cmds l1b 1
    note srp-nbd-rr-lio "LIO port commands during the run: path 0 +$((l0b - l0)), path 1 +$((l1b - l1))"
    if [ -n "$r0" ] && [ -n "$r1" ] && [ "$r0" -gt "${c0:-0}" ] && [ "$r1" -gt "${c1:-0}" ]; then
      pass srp-nbd-round-robin "p0 commands $c0 -> $r0, p1 $c1 -> $r1"
    else fail srp-nbd-round-robin "p0 '$c0' -> '$r0', p1 '$c1' -> '$r1': $(head -c 300 /tmp/path.err)"; fi
    srp_nbd detach p1; srp_nbd detach p0
  else fail srp-nbd-rr-attach "round-robin attach"; fi
  daemon_stop
  dmesg > "$OUT_DIR/multipath-srp-nbd-dmesg"
}

# ---- kernel: ib_srp on both paths + dm-multipath ---------------------------------------------------
part_kernel() {
  SIDE=kernel
  local t0 d p D=() map conf td0 rp crash=no
  t0=$(now)
  kib_srp_login 0 reconnect_delay="$K_RECONNECT" fast_io_fail_tmo="$K_FIOF" dev_loss_tmo="$K_DEVLOSS" &&
    kib_srp_login 1 || { fail kernel-login "ib_srp add_target"; return; }
  wait_for 60 kib_srp_have 2 || { fail kernel-login "ib_srp disks did not appear"; return; }
  for d in $(kib_srp_disks); do p=$(kib_srp_path "$d") && D[p]=$d; done
  [ -n "${D[0]}" ] && [ -n "${D[1]}" ] || { fail kernel-login "disk per path: '${D[0]}' '${D[1]}'"; return; }
  pass kernel-login "$(since "$t0") s: path 0 /dev/${D[0]}, path 1 /dev/${D[1]}"
  check kernel-same-lu test "$(cat /sys/block/${D[0]}/device/wwid)" = "$(cat /sys/block/${D[1]}/device/wwid)"
  note kernel-wwid "$(cat /sys/block/${D[0]}/device/wwid)"
  # Over rxe a 1-2 s flap does not block the rport: the commands in flight are lost and only the
  # SCSI command timeout (30 s by default) and error handling (abort, device reset, host reset:
  # 90 s in all) free them. An operator shortens both; K_SCSI_TMO=30 K_EH_DEADLINE=off: defaults.
  for d in "${D[@]}"; do
    echo "$K_SCSI_TMO" > "/sys/block/$d/device/timeout" || fail kernel-tune "sd timeout $K_SCSI_TMO on $d"
    echo "$K_EH_DEADLINE" > "/sys/class/scsi_host/$(readlink -f "/sys/block/$d/device" | grep -o 'host[0-9]*' | head -n1)/eh_deadline" ||
      fail kernel-tune "eh_deadline $K_EH_DEADLINE on $d's host"
  done

  conf="defaults {
	find_multipaths no
	user_friendly_names no
	polling_interval 1
	checker_timeout $K_SCSI_TMO
}
blacklist {
	devnode \"^(nbd|md|loop|ram|zram|dm-)[0-9]*\"
}
overrides {
	path_grouping_policy $K_POLICY
	detect_prio no
	prio weightedpath
	prio_args \"devname ^${D[0]}\$ 50 ^${D[1]}\$ 10\"
	failback immediate
	no_path_retry queue
}"
  echo "$conf" > "$OUT_DIR/multipath.conf"
  t0=$(now)
  mpath_start "$conf" || { fail kernel-multipathd "multipathd did not start"; return; }
  wait_for 30 bash -c '[ -n "$(dmsetup ls --target multipath 2>/dev/null | grep -v "No devices")" ]' || multipath -v2 >/dev/null 2>&1
  map=$(mpath_map)
  if [ -z "$map" ] || ! wait_for 30 mpath_active "$map" 2; then
    fail kernel-map "no multipath map with 2 active paths: $(multipath -ll 2>&1 | tr '\n' ' ' | head -c 400)"; mpath_stop; return
  fi
  wait_for 10 test -b "/dev/mapper/$map" || { fail kernel-map "no /dev/mapper/$map"; mpath_stop; return; }
  pass kernel-map "$(since "$t0") s: /dev/mapper/$map over ${D[0]} + ${D[1]}"
  multipath -ll "$map" 2>&1 | tee "$OUT_DIR/multipath-ll.txt"
  rp=$(kib_srp_rport "${D[0]}")
  note kernel-timers "rport of path 0: reconnect_delay=$(cat "$rp/reconnect_delay") fast_io_fail_tmo=$(cat "$rp/fast_io_fail_tmo") dev_loss_tmo=$(cat "$rp/dev_loss_tmo"), sd timeout $(cat "/sys/block/${D[0]}/device/timeout") s, eh_deadline $K_EH_DEADLINE; multipath: $K_POLICY, weightedpath 50/10, failback immediate, no_path_retry queue, polling_interval 1"

  echo 1 > /proc/sys/kernel/panic_on_oops     # a BUG in ib_srp ends the guest (recorded), not hangs it
  workload_start "/dev/mapper/$map"
  nap 10
  uptime_to td0
  sed -i '/^kernel /d' "$RESULTS"   # replaced by row below; left as is if the guest dies
  echo "kernel crashed or hung during the faults (see multipath-kernel-events, console.log)" >> "$RESULTS"
  crash_expected "ib_srp reconnect after a link flap under dm-multipath (6.1: list_add double add in srp_send_done)"
  faults; [ $? = 2 ] && { note kernel-bug "$BUGGED"; crash="BUG: $BUGGED"; }
  crash_unexpected
  workload_stop "/dev/mapper/$map"
  workload_summary; probe_stats "/dev/mapper/$map" "$td0"; analyse
  timing kernel-longest-stall "$STALL" "largest gap between completed probe writes, $FLAPS flaps + ${LONG_DOWN} s down"
  [ "$SW_MAX" != - ] && timing kernel-switch-max "$SW_MAX" "link down -> commands on path 1's port (median $SW_MED, $SW_N flaps)"
  note kernel-io "$W_PASSES fio passes, $W_FAILED failed, $W_ERRORS I/O errors, $W_VERIFY verify failures, $PROBE_FAILED probe writes failed"
  note kernel-after "$(dmsetup status "$map" 2>&1); rport 0 $(cat "$rp/state" 2>/dev/null || echo gone)"
  dmesg | grep -E 'srp|multipath|device-mapper|I/O error' | tail -n 40 > "$OUT_DIR/multipath-kernel-dmesg"
  multipath -ll "$map" > "$OUT_DIR/multipath-ll-after.txt" 2>&1
  row kernel "$crash"
  pass kernel-measured "$FLAPS flaps + ${LONG_DOWN} s down measured"
  mpath_stop
}

for part in $PARTS; do
  case $part in
    srp-nbd) part_srp_nbd ;;
    kernel) part_kernel ;;
    *) fail parts "unknown part '$part' (srp-nbd, kernel)" ;;
  esac
done
echo "--- $RESULTS"; cat "$RESULTS"
finish
