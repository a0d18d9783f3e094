#!/bin/bash
# Stable names for srp-nbd devices through udev (packaging/60-srp-nbd.rules + `srp-nbd udev-info`):
#   udevd        systemd-udevd runs (started here: the guest's init starts no udev)
#   link         after `attach --device /dev/nbd0`, /dev/disk/by-id/<by_id of `srp-nbd status`>
#                exists and resolves to /dev/nbd0; `list` shows it in the BY-ID column
#   part-link    a partition table written on it (partition: the kernel shows nbd0p1) gives
#                <name>-part1 -> /dev/nbd0p1
#   status-by-id `srp-nbd status /dev/disk/by-id/<name>` names the target
#   detach-dev   `srp-nbd detach /dev/nbd0` detaches the target, reports /dev/nbd0
#   link-gone    the link goes at detach (and -part1 with it)
#   follows      attached again on /dev/nbd3: the same name now resolves to /dev/nbd3
#   detach-all   `srp-nbd detach --all`: the link goes again
# Run: test/vm/run-scenarios.sh udev-names
# vm-timeout: 600
. "$(dirname "$0")/../guest-lib.sh"
setup_bench 1 ram:64:512

# udev with only srp-nbd's rule added (in /run, the guest's tmpfs), the program path pointed at
# this checkout
mkdir -p /run/udev/rules.d
sed "s|/usr/local/bin/srp-nbd|$(command -v node) $SRP_NBD_CLI|" "$REPO_ROOT/packaging/60-srp-nbd.rules" \
  > /run/udev/rules.d/60-srp-nbd.rules
if ! pgrep -x systemd-udevd >/dev/null; then
  /lib/systemd/systemd-udevd --daemon --resolve-names=never || die "systemd-udevd did not start"
fi
check udevd wait_for 10 udevadm control --ping
settle() { udevadm settle -t 60; }
link_of() { readlink -f "/dev/disk/by-id/$1" 2>/dev/null; }

daemon_up
ADDR=$(srp_target_string 0)
attach_nbd t0 "$ADDR" nbd0
settle
NAME=$(srp_nbd status t0 --json | sed -n 's/.*"by_id": *"\([^"]*\)".*/\1/p' | head -1)
note name "$NAME"
check by-id-name bash -c "[[ '$NAME' == srp-nbd-naa.* ]]"
check link wait_for 30 bash -c "[ \"\$(readlink -f /dev/disk/by-id/$NAME)\" = /dev/nbd0 ]"
check list-by-id bash -c "node $SRP_NBD_CLI list | grep -q 't0 .* /dev/nbd0  *$NAME '"

# one Linux partition from sector 2048 to the end (an MBR, no partitioning tool needed)
le32() { local v=$1 i; for i in 0 8 16 24; do printf "\\x$(printf %02x $(((v >> i) & 255)))"; done; }
SECTORS=$(($(blockdev --getsz /dev/nbd0) - 2048))
# (into a file first: dd reading a pipe may get a short block)
{ head -c 446 /dev/zero; printf '\x00\x00\x00\x00\x83\x00\x00\x00'; le32 2048; le32 "$SECTORS"
  head -c 48 /dev/zero; printf '\x55\xaa'; } > /tmp/mbr
check mbr-write dd if=/tmp/mbr of=/dev/nbd0 bs=512 count=1 oflag=direct status=none
blockdev --rereadpt /dev/nbd0 || log "BLKRRPART failed"
# (if the rescan did not add it, BLKPG does)
wait_for 5 test -e /sys/block/nbd0/nbd0p1 || partx -a /dev/nbd0 || log "partx -a failed"
check partition wait_for 10 test -b /dev/nbd0p1
settle
if ! check part-link wait_for 30 bash -c "[ \"\$(readlink -f /dev/disk/by-id/$NAME-part1)\" = /dev/nbd0p1 ]"; then
  grep nbd /proc/partitions | sed 's/^/  partitions: /'
  ls -l /dev/disk/by-id/ 2>&1 | sed 's/^/  by-id: /'
  udevadm info /dev/nbd0p1 2>&1 | sed 's/^/  nbd0p1: /'
  udevadm info /dev/nbd0 2>&1 | grep -E 'SRP_NBD|DEVLINKS' | sed 's/^/  nbd0: /'
fi
check status-by-id bash -c "node $SRP_NBD_CLI status /dev/disk/by-id/$NAME --json | grep -q '\"id\": \"t0\"'"

OUT=$(srp_nbd detach /dev/nbd0); log "detach: $OUT"
check detach-dev test "$OUT" = "t0: detached (/dev/nbd0) [/dev/nbd0]"
settle
check link-gone wait_for 30 bash -c "! test -e /dev/disk/by-id/$NAME"
check part-link-gone wait_for 30 bash -c "! test -e /dev/disk/by-id/$NAME-part1"

attach_nbd t1 "$ADDR" nbd3
settle
check follows wait_for 30 bash -c "[ \"\$(readlink -f /dev/disk/by-id/$NAME)\" = /dev/nbd3 ]"
check detach-all srp_nbd detach --all
settle
check link-gone-again wait_for 30 bash -c "! test -e /dev/disk/by-id/$NAME"
ls -l /dev/disk/by-id/ 2>/dev/null | sed 's/^/  /'
daemon_stop
finish
