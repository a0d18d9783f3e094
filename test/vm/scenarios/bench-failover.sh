#!/bin/bash
# Failover benchmark (npm run bench:failover, bench/failover.sh): the same events against srp-nbd
# and against kernel ib_srp, on the same link (path 0, LIO ib_srpt ramdisk LUN), in one boot:
#   linkdown   path 0 down for LINK_DOWN s (> fast_io_fail_tmo), up again
#   blackhole  netem drops 100 % of path 0's packets for HOLE s, links up
#   restart    LIO's target torn down, RESTART s later built again with the same LUN (with the
#              teardown and the rebuild, ~1 s each under TCG, a ~3 s restart)
#   rebuild    LIO's target torn down and built with a different backstore (another disk, another
#              unit serial) under the same LUN number: do writes reach the other disk?
#   mdreadd    (srp-nbd only) md RAID1 over the device and a RAM disk, md's writes probed, path 0
#              down for LINK_DOWN s (> fast_io_fail_tmo: md fails the member), up again: md's view
#              of the member (md/dev-nbd0/state, md/degraded) watched every 20 ms until it is back
#              and in sync, timed from "up" (the link set up: the daemon may re-add the member
#              before link_up returns). ib_srp has no analogue: it never re-adds a member md failed.
#   kill       md RAID1 over the device and a loop device: srp-nbd: kill -9 of the daemon (restarted
#              at once); ib_srp: the SCSI host removed (the rport's sysfs delete), the closest
#              analogue of losing the initiator. What does md see?
# "back" is marked once the path delivers again (after link_up / unblackhole returned: under TCG
# each tc or ip command takes a few hundred ms, and until the second netem qdisc is gone the
# target's answers are still dropped). Measured in the guest from event marks (guest uptime, the clock of /proc/uptime), the probe
# writer's log (bench/failover-probe.c: 4 KiB O_DIRECT writes every PROBE_MS, each timed), the
# daemon's log (state changes, ms) and, for ib_srp, the rport's sysfs state read every 20 ms.
# Files: $OUT_DIR/failover/events.tsv (marks), rows.tsv (values read in the guest), probe-*.log,
# watch-*.log; bench/failover-report.ts computes the table from them.
# srp-nbd's events run first, then ib_srp's (PHASES_KIB), least likely to crash the 6.1 kernel
# first (a reconnect after a link flap crashes it: list_add double add in srp_send_done; kill
# removes the SCSI host, so it comes last): a crash is that row's result (crash_expected), and bench/failover.sh runs the rest in
# another boot. Both initiators use reconnect_delay 1, fast_io_fail_tmo FIOF, dev_loss_tmo 600.
# Env: PROBE_BIN (required) PHASES_SRP PHASES_KIB LINK_DOWN=8 HOLE=4 RESTART=1 WATCH=10 FIOF=5 PROBE_MS=20
# vm-default: no
# vm-timeout: 1200
. "$(dirname "$0")/../guest-lib.sh"
PROBE=${PROBE_BIN:?PROBE_BIN: the compiled bench/failover-probe.c}
PHASES_SRP=${PHASES_SRP-linkdown blackhole restart rebuild mdreadd kill}
PHASES_KIB=${PHASES_KIB-restart rebuild blackhole linkdown kill}
LINK_DOWN=${LINK_DOWN:-8}; HOLE=${HOLE:-4}; RESTART=${RESTART:-1}; WATCH=${WATCH:-10}; FIOF=${FIOF:-5}
PROBE_MS=${PROBE_MS:-20}
FO=$OUT_DIR/failover
mkdir -p "$FO"
log "bench-failover: srp-nbd '$PHASES_SRP', ib_srp '$PHASES_KIB'; LINK_DOWN=$LINK_DOWN HOLE=$HOLE RESTART=$RESTART FIOF=$FIOF"
printf 'LINK_DOWN=%s HOLE=%s RESTART=%s WATCH=%s FIOF=%s PROBE_MS=%s kernel=%s\n' \
  "$LINK_DOWN" "$HOLE" "$RESTART" "$WATCH" "$FIOF" "$PROBE_MS" "$(uname -r)" > "$FO/params"

# mark WHO EVENT NAME: an event mark at this instant (uptime), in events.tsv
mark() { local t; uptime_to t; printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$t" >> "$FO/events.tsv"; }
# row WHO EVENT FIELD VALUE: a value read in the guest (device names, md's view, writes on the other disk)
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$FO/rows.tsv"; }
probe_start() { rm -f "$FO/probe-$2.log.stop"; "$PROBE" write "$1" "$FO/probe-$2.log" "$PROBE_MS" & }
probe_stop() { touch "$FO/probe-$1.log.stop"; }
watch_start() { rm -f "$FO/watch-$2.log.stop"; "$PROBE" watch "$1" "$FO/watch-$2.log" 20 & }
watch_stop() { touch "$FO/watch-$1.log.stop"; }
# first_ok LOG FROM: uptime at which the first write ending after FROM completed
first_ok() { awk -v a="$2" '$2>=a && $3==0 {print $2; exit}' "$1"; }
# wait_io WHO EVENT FROM LIMIT: wait until a probe write completes after FROM
have_ok() { [ -n "$(first_ok "$1" "$2")" ]; }
wait_io() { wait_for "$4" have_ok "$FO/probe-$1-$2.log" "$3"; }
clock_mark() { local t e; uptime_to t; e=$(epoch_ms); printf 'clock\t-\t-\t%s\t%s\n' "$t" "$e" >> "$FO/events.tsv"; }

setup_bench 1 ram:64:512
modprobe sch_netem || die "sch_netem"
# md's second member in the kill events: a RAM disk (brd), one per initiator
modprobe brd rd_nr=2 rd_size=65536 && wait_for 5 test -b /dev/ram1 || die "modprobe brd"
MD2_SRP=/dev/ram0; MD2_KIB=/dev/ram1
clock_mark

# other_target: path 0's target rebuilt with another disk under LUN 0 (fileio, unit serial
# srpnbd-other), ACLs as srpt_add_target's "default"
other_target() {
  local tp tpg bs=$CFG/core/fileio_0/other ini
  tp=$(srpt_port_name 0) || return 1; tpg=$CFG/srpt/$tp/$tp
  rm -f /tmp/fo-other.img; truncate -s 64M /tmp/fo-other.img
  mkdir -p "$tpg" "$bs" || return 1
  echo "fd_dev_name=/tmp/fo-other.img,fd_dev_size=$((64 << 20))" > "$bs/control" || return 1
  echo srpnbd-other > "$bs/wwn/vpd_unit_serial" && echo 1 > "$bs/enable" || return 1
  mkdir "$tpg/lun/lun_0" && ln -s "$bs" "$tpg/lun/lun_0/other" || return 1
  _srpt_acls "$tpg" 1 "${TGT_IP[0]}" "${INI_IP[0]}" || return 1
  echo 1 > "$tpg/enable"
}
# writes_on_other: 4 KiB blocks of the other disk holding a probe write
writes_on_other() { tr -d '\0' < /tmp/fo-other.img | grep -ac 'failover-probe write'; }

# event WHO EVENT DEV IS_RUNNING_FN: the fault and the path back, with marks; DEV the probe's device
event() {
  local who=$1 ev=$2 dev=$3 up=$4 name=$1-$2 t
  dmesg -c >/dev/null
  probe_start "$dev" "$name"
  nap 2
  case $ev in
    linkdown)
      mark "$who" "$ev" fault; link_down 0
      nap "$LINK_DOWN"
      link_up 0; mark "$who" "$ev" back ;;
    blackhole)
      mark "$who" "$ev" fault; blackhole 0
      nap "$HOLE"
      unblackhole 0; mark "$who" "$ev" back ;;
    restart)
      mark "$who" "$ev" fault; srpt_remove_target 0 || fail "$name-remove" "srpt_remove_target"
      mark "$who" "$ev" removed; nap "$RESTART"
      srpt_add_target 0 default ram:64:512 || fail "$name-add" "srpt_add_target"
      mark "$who" "$ev" back ;;
    rebuild)
      mark "$who" "$ev" fault; srpt_remove_target 0 || fail "$name-remove" "srpt_remove_target"
      mark "$who" "$ev" removed; nap 1
      other_target || fail "$name-other" "other_target"
      mark "$who" "$ev" back
      nap "$WATCH"
      row "$who" "$ev" writes_on_other "$(writes_on_other)"
      row "$who" "$ev" device "$($DEVNAME_FN)"
      mark "$who" "$ev" restore
      srpt_remove_target 0 && srpt_add_target 0 default ram:64:512 || fail "$name-restore" "target"
      [ "$who" = srp-nbd ] && srp_nbd reconnect t0 >/dev/null ;;
  esac
  case $ev in
    rebuild) wait_for 60 "$up" || note "$name" "not running again 60 s after the original target returned" ;;
    *) t=$(awk -v w="$who" -v e="$ev" '$1==w && $2==e && $3=="back" {t=$4} END {print t}' "$FO/events.tsv")
       wait_io "$who" "$ev" "$t" 60 || note "$name" "no write completed within 60 s of the path's return" ;;
  esac
  nap 2
  probe_stop "$name"
  [ "$ev" = rebuild ] || row "$who" "$ev" device "$($DEVNAME_FN)"
  row "$who" "$ev" stuck_lines "$(dmesg | grep -c 'Possible stuck request')"
  dmesg > "$FO/dmesg-$name.txt"
  log "bench-failover: $name measured"
}

# ---- srp-nbd -------------------------------------------------------------------------------------
if [ -n "$PHASES_SRP" ]; then
  daemon_up
  attach_nbd t0 "$(srp_target_string 0)" nbd0 --fast-io-fail-tmo "$FIOF" --reconnect-delay 1 --dev-loss-tmo 600
  srp_running() { target_state_is t0 running; }
  srp_devname() { echo "nbd0 $(majmin /dev/nbd0)$(nbd_connected nbd0 || echo ' (not connected)')"; }
  DEVNAME_FN=srp_devname
  row srp-nbd setup device "$(srp_devname)"
  srp_nbd status t0 > "$FO/srp-status-before.txt" 2>&1
  for ev in $PHASES_SRP; do
    case $ev in
      kill)
        md_raid1 /dev/md0 /dev/nbd0 "$MD2_SRP" || { fail srp-md "mdadm --create"; continue; }
        wait_for 10 test -b /dev/md0
        dmesg -c >/dev/null
        probe_start /dev/md0 srp-nbd-kill; nap 2
        mark srp-nbd kill fault; daemon_kill9
        daemon_start --config "$DAEMON_CONFIG"
        mark srp-nbd kill restarted
        wait_for 120 srp_running || note srp-nbd-kill "not running 120 s after the restart"
        t=$(awk '$1=="srp-nbd" && $2=="kill" && $3=="restarted" {print $4}' "$FO/events.tsv")
        wait_io srp-nbd kill "$t" 60
        nap 2; probe_stop srp-nbd-kill
        md_dev_states m md0
        row srp-nbd kill md_members "$m"
        row srp-nbd kill md_failures "$(dmesg | grep -c 'md/raid1:md0: Disk failure')"
        row srp-nbd kill device "$(srp_devname)"
        row srp-nbd kill stuck_lines "$(dmesg | grep -c 'Possible stuck request')"
        dmesg > "$FO/dmesg-srp-nbd-kill.txt"
        mdadm --stop /dev/md0 >/dev/null 2>&1 ;;
      mdreadd)
        md_raid1 /dev/md0 /dev/nbd0 "$MD2_SRP" || { fail srp-md "mdadm --create"; continue; }
        wait_for 10 test -b /dev/md0
        dmesg -c >/dev/null
        watch_start /sys/block/md0/md/dev-nbd0/state srp-nbd-mdreadd-state
        watch_start /sys/block/md0/md/degraded srp-nbd-mdreadd-degraded
        probe_start /dev/md0 srp-nbd-mdreadd; nap 2
        mark srp-nbd mdreadd fault; link_down 0
        nap "$LINK_DOWN"
        mark srp-nbd mdreadd up; link_up 0; mark srp-nbd mdreadd back
        md_whole() { [ "$(md_degraded /dev/md0)" = 0 ] && [ "$(sysfs_get /sys/block/md0/md/sync_action)" = idle ]; }
        wait_for 60 md_whole || note srp-nbd-mdreadd "md0 not whole 60 s after the path's return"
        nap 1; probe_stop srp-nbd-mdreadd
        watch_stop srp-nbd-mdreadd-state; watch_stop srp-nbd-mdreadd-degraded
        md_dev_states m md0
        row srp-nbd mdreadd md_members "$m"
        row srp-nbd mdreadd md_failures "$(dmesg | grep -c 'md/raid1:md0: Disk failure')"
        row srp-nbd mdreadd device "$(srp_devname)"
        dmesg > "$FO/dmesg-srp-nbd-mdreadd.txt"
        mdadm --stop /dev/md0 >/dev/null 2>&1 ;;
      *) event srp-nbd "$ev" /dev/nbd0 srp_running ;;
    esac
  done
  srp_nbd status t0 > "$FO/srp-status-after.txt" 2>&1
  srp_nbd detach t0 >/dev/null || fail detach "srp-nbd detach"
  daemon_stop
  pass srp-nbd "events: $PHASES_SRP"
fi

# ---- kernel ib_srp -------------------------------------------------------------------------------
if [ -n "$PHASES_KIB" ]; then
  kib_srp_login 0 || die "ib_srp login"
  wait_for 30 kib_srp_have 1 || die "no ib_srp disk"
  KD=$(disk_by_serial srpnbd-p0-l0) || die "ib_srp disk by serial"
  H=$(readlink -f "/sys/block/$KD/device" | grep -o 'host[0-9]*' | head -n1)
  RP=/sys/class/srp_remote_ports/port-${H#host}:1
  [ -d "$RP" ] || die "no rport for $KD"
  echo 1 > "$RP/reconnect_delay"; echo "$FIOF" > "$RP/fast_io_fail_tmo"; echo 600 > "$RP/dev_loss_tmo"
  row ib_srp setup rport "$(cat "$RP/state") reconnect_delay=$(cat "$RP/reconnect_delay") fast_io_fail_tmo=$(cat "$RP/fast_io_fail_tmo") dev_loss_tmo=$(cat "$RP/dev_loss_tmo")"
  kib_running() { [ "$(cat "$RP/state" 2>/dev/null)" = running ]; }
  kib_devname() {
    local d o=""
    for d in $(kib_srp_disks); do o="$o$d $(majmin /dev/$d) serial $(tr -dc 'a-z0-9-' < /sys/block/$d/device/vpd_pg80 2>/dev/null); "; done
    o=${o%; }; echo "${o:-none}"
  }
  DEVNAME_FN=kib_devname
  row ib_srp setup device "$(kib_devname)"
  watch_start "$RP/state" ib_srp
  for ev in $PHASES_KIB; do
    dmesg -c >/dev/null
    mark ib_srp "$ev" begin
    crash_expected "ib_srp: $ev (6.1: list_add double add in srp_send_done on reconnect)"
    case $ev in
      kill)
        md_raid1 /dev/md0 "/dev/$KD" "$MD2_KIB" || { fail kib-md "mdadm --create"; continue; }
        wait_for 10 test -b /dev/md0
        probe_start /dev/md0 ib_srp-kill; nap 2
        mark ib_srp kill fault; echo 1 > "$RP/delete"
        nap 5; probe_stop ib_srp-kill
        md_dev_states m md0
        row ib_srp kill md_members "$m"
        row ib_srp kill md_failures "$(dmesg | grep -c 'md/raid1:md0: Disk failure')"
        row ib_srp kill device "$(kib_devname)"
        mdadm --stop /dev/md0 >/dev/null 2>&1 ;;
      *) event ib_srp "$ev" "/dev/$KD" kib_running ;;
    esac
    b=$(kernel_bug)
    if [ -n "$b" ]; then row ib_srp "$ev" kernel_bug "$b"; mark ib_srp "$ev" kernel-bug; break; fi
    mark ib_srp "$ev" end
    crash_unexpected
  done
  watch_stop ib_srp
  pass ib_srp "events: $PHASES_KIB"
fi
dmesg | grep -E 'srp|md/raid1' | tail -n 40 > "$FO/dmesg-tail.txt"
finish
