#!/bin/bash
# Baseline (issue 7 scenario 6): the kernel SRP initiator (ib_srp) on the same bench.
# Two targets on two paths, ib_srp logs in to both, md RAID1 (write-intent bitmap) over
# the two SCSI disks, a 4 KiB O_DIRECT writer on /dev/md0, then
#   flap:    path 0 down for FLAP s (default 3), up again
#   devloss: fast_io_fail_tmo=FIOF, dev_loss_tmo=DEVLOSS on path 0's rport, path 0 down
#            for DOWN s (> DEVLOSS), up, re-login: does /dev/sdX come back under a new name,
#            and what does md do?
# It records detection times, I/O stalls and errors, device names and md states as
# TIME/NOTE lines; it FAILs only when the bench itself does not work. 6.1's ib_srp has
# crashed the guest kernel (list_add double add in srp_send_done) on reconnect over rxe;
# a crash there is recorded as the result (crash_expected), and a BUG without a panic ends
# the scenario with a NOTE. Not in the default set: the guest may die.
# vm-default: no
# vm-timeout: 600
. "$(dirname "$0")/../guest-lib.sh"
FLAP=${FLAP:-3}; FIOF=${FIOF:-5}; DEVLOSS=${DEVLOSS:-10}; DOWN=${DOWN:-20}
PHASES=${PHASES:-flap devloss}
log "kernel-initiator: FLAP=$FLAP FIOF=$FIOF DEVLOSS=$DEVLOSS DOWN=$DOWN PHASES='$PHASES'"

setup_bench 2 ram:64:512
t0=$(now)
kib_srp_login 0 && kib_srp_login 1 || die "ib_srp login"
wait_for 30 kib_srp_have 2 || die "ib_srp disks did not appear"
pass login "$(since "$t0") s: $(kib_srp_disks | tr '\n' ' ')"
D0=$(disk_by_serial srpnbd-p0-l0) && D1=$(disk_by_serial srpnbd-p1-l0) || die "disks by serial"
log "path 0 disk /dev/$D0 ($(majmin /dev/$D0)), path 1 disk /dev/$D1"
for p in reconnect_delay fast_io_fail_tmo dev_loss_tmo; do
  echo "  ib_srp $p=$(cat /sys/module/ib_srp/parameters/$p 2>/dev/null)"
done
rport_of() { # rport sysfs dir of the SCSI host behind /dev/$1
  local h; h=$(readlink -f "/sys/block/$1/device" | grep -o 'host[0-9]*' | head -n1)
  echo "/sys/class/srp_remote_ports/port-${h#host}:1"
}
RP0=$(rport_of "$D0"); [ -d "$RP0" ] || die "no rport for $D0"
echo "  rport0 $RP0: state=$(cat $RP0/state) reconnect_delay=$(cat $RP0/reconnect_delay) fast_io_fail_tmo=$(cat $RP0/fast_io_fail_tmo) dev_loss_tmo=$(cat $RP0/dev_loss_tmo)"

t0=$(now)
dd if=/dev/urandom of=/tmp/pat bs=1M count=8 status=none
if dd if=/tmp/pat of=/dev/$D0 bs=1M oflag=direct status=none &&
   dd if=/dev/$D0 of=/tmp/back bs=1M count=8 iflag=direct status=none && cmp -s /tmp/pat /tmp/back; then
  pass dd-verify "$(since "$t0") s, 8 MiB on /dev/$D0"
else die "dd verify on /dev/$D0"; fi

md_raid1 /dev/md0 /dev/$D0 /dev/$D1 || die "mdadm --create"
wait_for 10 test -b /dev/md0 || die "/dev/md0 missing"
pass md-created "$(md_state /dev/md0), members $(md_members /dev/md0)"

path0_state() { # builtins only (see monitor_start): sets MON_VALUE
  local d=none r p a g m; [ -e /sys/block/$D0 ] && d=$D0
  sysfs_read r "$RP0/state" gone; sysfs_read p /sys/class/infiniband/rxe0/ports/1/state
  sysfs_read a /sys/block/md0/md/array_state; sysfs_read g /sys/block/md0/md/degraded
  md_dev_states m md0
  MON_VALUE="rport=$r disk=$d port=${p#*: } md=$a/deg$g $m"
}
monitor_start path0 path0_state 0.2
io_prober_start /dev/md0 0.1
sleep 2

# wait_back LIMIT: rport running again, or a kernel BUG: sets BUGGED
wait_back() {
  local lim=$1 t=$(now)
  BUGGED=
  while [ "$(awk -v a="$t" -v b="$(now)" 'BEGIN{print (b-a<'"$lim"')}')" = 1 ]; do
    [ "$(cat $RP0/state 2>/dev/null)" = running ] && return 0
    BUGGED=$(kernel_bug) && [ -n "$BUGGED" ] && return 2
    sleep 0.2
  done
  return 1
}
report_phase() { # report_phase NAME T_DOWN T_UP
  local n=$1 td=$2 tu=$3 tb te
  tb=$(monitor_first path0 "$td" '^rport=(blocked|fail-fast|lost|gone)')
  te=$(io_first_error /dev/md0 "$td")
  if [ -n "$tb" ]; then timing "$n-detect" "$(awk -v a="$td" -v b="$tb" 'BEGIN{printf "%.2f", b-a}')" "rport left running after link down"
  else note "$n-detect" "rport never left running"; fi
  [ -n "$te" ] && timing "$n-first-io-error" "$(awk -v a="$td" -v b="$te" 'BEGIN{printf "%.2f", b-a}')" "on /dev/md0"
  note "$n-io" "$(io_summary /dev/md0 "$td")"
  path0_state; note "$n-after" "$MON_VALUE"
  echo "--- monitor (path 0) during $n:"; awk -v a="$td" '$1>=a-1' /tmp/mon-path0.log
  echo "--- dmesg during $n:"; dmesg | grep -vE 'rdma_rxe' | tail -n 25
}

for phase in $PHASES; do
  case $phase in
  flap)
    dmesg -c >/dev/null
    log "=== flap: path 0 down for $FLAP s"
    link_down 0; uptime_to td; sleep "$FLAP"   # td: the link is down (ip returned)
    crash_expected "ib_srp reconnect after a ${FLAP}s link flap (6.1 list_add double add in srp_send_done)"
    link_up 0; uptime_to tu
    wait_back 90; rc=$?
    if [ $rc = 0 ]; then timing flap-reconnect "$(since "$tu")" "rport running again after link up"
    elif [ $rc = 2 ]; then note flap-kernel-bug "$BUGGED"
    else note flap-reconnect "rport not running 90 s after link up: $(cat $RP0/state 2>/dev/null || echo gone)"; fi
    sleep 2
    report_phase flap "$td" "$tu"
    crash_unexpected
    [ -n "$BUGGED" ] && break
    ;;
  devloss)
    echo "$FIOF" > "$RP0/fast_io_fail_tmo" && echo "$DEVLOSS" > "$RP0/dev_loss_tmo" ||
      { fail devloss-setup "cannot set fast_io_fail_tmo=$FIOF dev_loss_tmo=$DEVLOSS"; continue; }
    dmesg -c >/dev/null
    old="$D0 $(majmin /dev/$D0)"
    log "=== devloss: path 0 down for $DOWN s (fast_io_fail_tmo=$FIOF dev_loss_tmo=$DEVLOSS)"
    link_down 0; uptime_to td; sleep "$DOWN"
    tg=$(monitor_first path0 "$td" 'disk=none')
    [ -n "$tg" ] && timing devloss-disk-removed "$(awk -v a="$td" -v b="$tg" 'BEGIN{printf "%.2f", b-a}')" "/dev/$D0 removed after link down"
    crash_expected "ib_srp re-login after dev_loss_tmo over rxe"
    link_up 0; uptime_to tu
    sleep 2
    if [ ! -d "$RP0" ]; then
      kib_srp_login 0 || note devloss-relogin "add_target refused"
      wait_for 30 disk_by_serial srpnbd-p0-l0
    else wait_back 60; fi
    BUGGED=$(kernel_bug)
    nd=$(disk_by_serial srpnbd-p0-l0)
    new="${nd:-none} $( [ -n "$nd" ] && majmin /dev/$nd)"
    if [ "$new" = "$old" ]; then note devloss-name "same device /dev/$old"
    else note devloss-name "device changed: /dev/$old -> ${nd:+/dev/}$new"; fi
    note devloss-md "$(md_state /dev/md0), degraded=$(md_degraded /dev/md0), members $(md_members /dev/md0)"
    if [ -n "$nd" ] && [ "$new" != "$old" ]; then
      t0=$(now)
      mdadm /dev/md0 --remove failed >/dev/null 2>&1; mdadm /dev/md0 --remove detached >/dev/null 2>&1
      if mdadm /dev/md0 --re-add /dev/$nd 2>/tmp/readd.err; then note devloss-readd "mdadm --re-add /dev/$nd ok after $(since "$t0") s"
      else note devloss-readd "mdadm --re-add /dev/$nd refused: $(tr '\n' ' ' </tmp/readd.err)"; fi
    fi
    [ -n "$BUGGED" ] && note devloss-kernel-bug "$BUGGED"
    report_phase devloss "$td" "$tu"
    crash_unexpected
    [ -n "$BUGGED" ] && break
    ;;
  *) fail phases "unknown phase $phase" ;;
  esac
done
io_prober_stop /dev/md0
monitor_stop path0
cat /proc/mdstat
pass completed "$(echo $PHASES) measured"
finish
