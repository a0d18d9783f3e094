#!/bin/bash
# Read-only LUNs and LUN changes while attached, against LIO ib_srpt (issue 14):
#   write-protect  LUN 1 mapped write protected (the ACL's write_protect=1): its /dev/nbdN is read-only
#                  (getro 1), a write fails (EPERM/EROFS) and no command reaches the target, reads
#                  work; status says read_only (write_protect)
#   grow           the fileio LUN 0 grown on the target (image truncated, fd_dev_size raised) while
#                  a writer runs; `srp-nbd rescan`: its /dev/nbdN takes the new size, no write failed,
#                  the data is intact and the new end is writable
#   restart        grown again while the daemon is stopped: the restart re-attaches the same
#                  device (same major:minor) with the new size
#   add-remove     LUN 2 mapped and LUN 1 unmapped while attached; `srp-nbd rescan`: LUN 2 on the
#                  lowest free /dev/nbdN (nbd2), LUN 1's device stays and fails reads with EIO
# Run: test/vm/boot.sh test/vm/scenarios/lun-changes.sh
# vm-timeout: 900
. "$(dirname "$0")/../guest-lib.sh"
setup_bench 1 file:32:512 ram:16:512
ADDR=$(srp_target_string 0)
TP=$(srpt_port_name 0) || die "target port"
TPG=$CFG/srpt/$TP/$TP
FILE0=$CFG/core/fileio_0/p0l0
MiB=$((1 << 20))

# LUN 1 write protected for every ACL before the login: the WP bit is read at attach.
for a in "$TPG"/acls/*; do echo 1 > "$a/lun_1/write_protect" || die "write_protect on $a"; done

daemon_up
attach_nbd t0 "$ADDR" nbd0 --dead-conn-timeout 180
check nbd1-connected wait_for 30 nbd_connected nbd1
# lun_field LUN FIELD: lun_details[LUN].FIELD of `srp-nbd status t0 --json`, as JSON
lun_field() {
  srp_nbd status t0 --json | node -e "let v=JSON.parse(require('fs').readFileSync(0,'utf8'));
    if (Array.isArray(v)) v=v[0]; const l=v.lun_details.find((x)=>x.lun===$1);
    process.stdout.write(JSON.stringify(l ? l[process.argv[1]] : 'no such LUN'))" "$2"
}
# lun_is LUN FIELD JSON: lun_field LUN FIELD is JSON
lun_is() { local got; got=$(lun_field "$1" "$2"); [ "$got" = "$3" ] || { log "LUN $1 $2: $got, not $3"; return 1; }; }
# dev_of LUN: the LUN's device (/dev/nbdN): taken from status, whatever order devices were given in
dev_of() { local d; d=$(lun_field "$1" device); d=${d#\"}; echo "${d%\"}"; }
size_is() { [ "$(nbd_size_bytes "$1")" = "$2" ]; }  # size_is nbdN BYTES
D0=$(dev_of 0)   # the fileio LUN
D1=$(dev_of 1)   # the write-protected LUN
note devices "LUN 0 on $D0, LUN 1 on $D1"
[ -b "$D0" ] && [ -b "$D1" ] || die "no device for LUN 0 ($D0) or LUN 1 ($D1)"

# ---- write protect
check getro-wp-lun test "$(blockdev --getro $D1)" = 1
check getro-rw-lun test "$(blockdev --getro $D0)" = 0
check status-read-only lun_is 1 read_only true
check status-reason lun_is 1 read_only_reason '"write_protect"'
check status-kernel-ro lun_is 1 kernel_read_only true
check status-lun0-rw lun_is 0 read_only false
CMDS=$CFG/core/rd_mcp_0/p0l1/statistics/scsi_lu/num_cmds
N0=$(cat "$CMDS" 2>/dev/null)
dd if=/dev/zero of=$D1 bs=4k count=1 oflag=direct status=none 2>/tmp/wp.err; rc=$?
N1=$(cat "$CMDS" 2>/dev/null)
if [ $rc != 0 ] && grep -Eqi 'not permitted|read-only|permission denied' /tmp/wp.err; then
  pass write-refused "$(tr '\n' ' ' </tmp/wp.err)"
else fail write-refused "dd exit $rc: $(tr '\n' ' ' </tmp/wp.err)"; fi
if [ -n "$N0" ] && [ "$N0" = "$N1" ]; then pass write-not-sent "target commands on LUN 1: $N0 before, $N1 after"
else fail write-not-sent "target commands on LUN 1: ${N0:-?} before, ${N1:-?} after"; fi
check read-wp-lun dd if=$D1 of=/dev/null bs=4k count=16 iflag=direct status=none

# ---- grow the fileio LUN 0 while a writer runs, then rescan
dd if=/dev/urandom of=/tmp/pattern bs=1M count=2 status=none
check pattern-write dd if=/tmp/pattern of=$D0 bs=1M seek=8 oflag=direct status=none
io_prober_start $D0 0.1
nap 2
uptime_to TG
truncate -s 48M /tmp/srpt-p0l0.img && echo "fd_dev_size=$((48 * MiB))" > "$FILE0/control" || fail grow-target "fileio not resized"
srp_nbd rescan t0 || fail rescan-cmd "srp-nbd rescan exited $?"
check grown wait_for 30 size_is $D0 $((48 * MiB))
timing grow "$(since "$TG")" "target resized -> $D0 48 MiB (rescan included)"
nap 2
io_prober_stop $D0
SUMMARY=$(io_summary $D0 0)
if [ -z "$(io_first_error $D0 0)" ]; then pass writer-unharmed "$SUMMARY"; else fail writer-unharmed "$SUMMARY"; fi
check getsize64 test "$(blockdev --getsize64 $D0)" = $((48 * MiB))
check pattern-after-grow bash -c "dd if=$D0 bs=1M skip=8 count=2 iflag=direct status=none | cmp - /tmp/pattern"
check write-new-end dd if=/tmp/pattern of=$D0 bs=1M seek=46 oflag=direct status=none
check read-new-end bash -c "dd if=$D0 bs=1M skip=46 count=2 iflag=direct status=none | cmp - /tmp/pattern"

# ---- grown while the daemon is away: the restart takes it back with its new size
MM0=$(majmin $D0)
daemon_stop
truncate -s 64M /tmp/srpt-p0l0.img && echo "fd_dev_size=$((64 * MiB))" > "$FILE0/control" || fail grow-target-2 "fileio not resized"
uptime_to TR
daemon_start --config "$DAEMON_CONFIG"
check restart-running wait_for 120 target_state_is t0 running
check restart-attached lun_is 0 size $((64 * MiB))
check restart-grown wait_for 30 size_is $D0 $((64 * MiB))
timing restart "$(since "$TR")" "start to $D0 back with 64 MiB"
check restart-same-device test "$(majmin $D0)" = "$MM0"
check pattern-after-restart bash -c "dd if=$D0 bs=1M skip=46 count=2 iflag=direct status=none | cmp - /tmp/pattern"
check getro-after-restart test "$(blockdev --getro $D1)" = 1

# ---- LUN 2 mapped, LUN 1 unmapped while attached
B2=$CFG/core/rd_mcp_0/p0l2
mkdir -p "$B2" && echo "rd_pages=$((16 * 256))" > "$B2/control" && echo srpnbd-p0-l2 > "$B2/wwn/vpd_unit_serial" \
  && echo 1 > "$B2/enable" && mkdir "$TPG/lun/lun_2" && ln -s "$B2" "$TPG/lun/lun_2/p0l2" || die "LUN 2 backstore"
for a in "$TPG"/acls/*; do
  mkdir "$a/lun_2" && ln -s "$TPG/lun/lun_2" "$a/lun_2/lun_2" || die "map LUN 2 in $a"
  rm -f "$a/lun_1/lun_1" && rmdir "$a/lun_1" || die "unmap LUN 1 in $a"
done
rm -f "$TPG/lun/lun_1/p0l1" && rmdir "$TPG/lun/lun_1" || die "remove LUN 1"
uptime_to TA
srp_nbd rescan t0 || fail rescan-cmd-2 "srp-nbd rescan exited $?"
check lun2-device wait_for 30 nbd_connected nbd2
timing add "$(since "$TA")" "LUN 2 mapped -> /dev/nbd2 connected (rescan included)"
check lun2-status lun_is 2 device '"/dev/nbd2"'
check lun2-fio fio_verify /dev/nbd2 4M
check lun1-removed lun_is 1 state '"removed"'
expect_fail lun1-eio dd if=$D1 of=/dev/null bs=4k count=1 skip=100 iflag=direct status=none
check lun1-device-kept nbd_connected $D1
check lun0-still-works fio_verify $D0 4M
note daemon-ua "$(grep -c 'HAS CHANGED' "$OUT_DIR/daemon.log") unit-attention lines in the daemon log"

srp_nbd detach t0 || fail detach-cmd "srp-nbd detach exited $?"
check detached wait_for 30 bash -c '! test -e /sys/block/nbd0/pid && ! test -e /sys/block/nbd1/pid && ! test -e /sys/block/nbd2/pid'
daemon_stop
finish
