#!/bin/bash
# Bench smoke test: proves that the guest has everything the srp-nbd scenarios need.
# soft-RoCE on two veth paths, verbs traffic really crossing the veth, LIO ib_srpt
# serving two targets (512 and 4096-byte LUNs) and rejecting logins without an ACL,
# the link fault helpers, nbd + raid1 + mdadm + fio, the host's node and the built CLI.
# Run: test/vm/boot.sh test/vm/scenarios/smoke.sh   (or test/vm/run-scenarios.sh smoke)
. "$(dirname "$0")/../guest-lib.sh"
T_START=$(now)
log "smoke: repo $REPO_ROOT"

# --- user space from the host root: in the background (node takes seconds under TCG),
#     judged after the network is up
(
  t0=$(now); node -e 'console.log("node", process.version, process.arch)' >/tmp/node.out 2>&1
  echo "$? $(since "$t0")" >/tmp/node.rc
  if [ -f "$SRP_NBD_CLI" ] && [ -d "$REPO_ROOT/dist" ]; then
    t0=$(now); srp_nbd --help >/tmp/cli.out 2>&1; echo "$? $(since "$t0")" >/tmp/cli.rc
  else echo "missing" >/tmp/cli.rc; fi
) &
USER_JOB=$!
check tools-present bash -c 'mdadm --version && fio --version && command -v rping && command -v tc'

# --- network and rxe: two paths
t0=$(now)
setup_net 2 || die "setup_net"
if setup_rxe; then pass rxe-active "$(since "$t0") s: $(rdma link show | awk '{print $2, $4}' | tr '\n' ' ')"
else die "rxe ports not ACTIVE: $(rdma link show | tr '\n' ';')"; fi
rdma link show

# verbs traffic rxe0 -> rxe1 over veth0 (the policy route keeps it off lo)
rping_ok() { # rping_ok P [TIMEOUT=15]: rping from the initiator side to path P's target side
  local p=$1 lim=${2:-15} rc srv
  timeout $((lim + 5)) rping -s -a "${TGT_IP[p]}" -C 3 >/tmp/rping-s.log 2>&1 &
  srv=$!
  sleep 0.5
  timeout "$lim" rping -c -a "${TGT_IP[p]}" -I "${INI_IP[p]}" -C 3 -S 64 -v >/tmp/rping-c.log 2>&1; rc=$?
  kill $srv 2>/dev/null; wait $srv 2>/dev/null
  return $rc
}
tx0=$(tx_packets veth0); t0=$(now)
if rping_ok 0; then
  d=$(( $(tx_packets veth0) - tx0 ))
  if [ $d -gt 0 ]; then pass rping-path0 "$(since "$t0") s, $d packets on veth0"
  else fail rping-path0 "rping worked but veth0 sent nothing: traffic went through lo"; fi
else fail rping-path0 "$(tail -n 3 /tmp/rping-c.log | tr '\n' ' ')"; fi
t0=$(now)
if rping_ok 1; then pass rping-path1 "$(since "$t0") s"; else fail rping-path1 "$(tail -n 3 /tmp/rping-c.log | tr '\n' ' ')"; fi

wait $USER_JOB
cat /tmp/node.out
read -r rc secs </tmp/node.rc
if [ "$rc" = 0 ]; then pass node-runs "$secs s"; else fail node-runs "node exited $rc: $(tail -n 2 /tmp/node.out)"; fi
read -r rc secs </tmp/cli.rc
head -n 5 /tmp/cli.out 2>/dev/null
if [ "$rc" = missing ]; then fail cli-help "$SRP_NBD_CLI or $REPO_ROOT/dist missing: run 'npm run build' on the host"
elif [ "$rc" = 0 ] && [ -s /tmp/cli.out ]; then pass cli-help "$secs s"
else fail cli-help "srp-nbd --help exited $rc: $(tail -n 2 /tmp/cli.out)"; fi

# --- LIO ib_srpt: path 0 two RAM LUNs (512 and 4096-byte blocks); path 1 a file LUN
#     whose ACLs do not name the target IP, so logins are refused
t0=$(now)
if srpt_start && srpt_add_target 0 default ram:64:512 ram:32:4096 &&
   srpt_add_target 1 192.0.2.99 file:32:512; then
  pass srpt-configured "$(since "$t0") s, service guid $SRPT_GUID, port $CM_PORT"
else die "ib_srpt configuration"; fi
TP0=$CFG/srpt/$(srpt_port_name 0)/$(srpt_port_name 0)
ls "$TP0/lun" | tr '\n' ' '; echo
[ "$(cat "$TP0/enable")" = 1 ] && [ "$(ls "$TP0/lun" | wc -l)" = 2 ] &&
  pass srpt-two-luns "$(ls "$TP0/lun" | tr '\n' ' ')" || fail srpt-two-luns "$(ls "$TP0/lun")"

# end to end through the target with the kernel initiator (login only, no link faults:
# ib_srp's reconnect is what crashes 6.1 over rxe)
t0=$(now)
if kib_srp_login 0 && wait_for 20 kib_srp_have 2; then
  pass srpt-login "$(since "$t0") s: $(kib_srp_disks | tr '\n' ' ')"
  for d in $(kib_srp_disks); do
    echo "/dev/$d: serial $(sg_inq -p 0x80 /dev/$d 2>/dev/null | sed -n 's/.*Unit serial number: *//p')" \
      "logical block $(cat /sys/block/$d/queue/logical_block_size) size $(( $(cat /sys/block/$d/size) / 2048 )) MiB"
  done
  bss=$(for d in $(kib_srp_disks); do cat /sys/block/$d/queue/logical_block_size; done | sort -n | tr '\n' ' ')
  [ "$bss" = "512 4096 " ] && pass lun-block-sizes "$bss" || fail lun-block-sizes "got '$bss', want '512 4096 '"
  d=$(for x in $(kib_srp_disks); do [ "$(cat /sys/block/$x/queue/logical_block_size)" = 512 ] && echo $x; done | head -1)
  t0=$(now)
  if [ -n "$d" ] && dd if=/dev/urandom of=/tmp/pat bs=1M count=4 status=none &&
     dd if=/tmp/pat of=/dev/$d bs=1M oflag=direct status=none &&
     dd if=/dev/$d of=/tmp/back bs=1M count=4 iflag=direct status=none && cmp /tmp/pat /tmp/back; then
    pass srpt-io-verify "$(since "$t0") s, 4 MiB written and read back on /dev/$d"
  else fail srpt-io-verify "dd/cmp on /dev/$d"; fi
else
  fail srpt-login "kernel ib_srp login to path 0 failed"; dmesg | grep -iE 'srp' | tail -n 10
fi
# ACL without the target IP: the login is rejected
t0=$(now)
expect_fail acl-reject kib_srp_login 1
dmesg | grep -iE 'rejected login|srpt.*reject' | tail -n 2

# --- fault helpers: carrier loss and silent black hole on path 1
t0=$(now); link_down 1
if wait_for 5 port_inactive rxe2; then
  pass link-down "rxe2 $(port_state rxe2) after ${WAITED} s"; else fail link-down "rxe2 still $(port_state rxe2)"; fi
t0=$(now); link_up 1
if wait_for 10 port_active rxe2 && rping_ok 1; then pass link-up "rxe2 ACTIVE after ${WAITED} s, rping ok"
else fail link-up "rxe2 $(port_state rxe2), rping: $(tail -n 2 /tmp/rping-c.log | tr '\n' ' ')"; fi
blackhole 1 || fail blackhole "tc netem"
if rping_ok 1 6; then fail blackhole "rping got through a black hole"
else pass blackhole "rping fails, rxe2 stays $(port_state rxe2)"; fi
unblackhole 1
# the first connect after a black hole can still fail (stale CM state of the killed
# rping; the neighbour entry was FAILED): one retry
t0=$(now)
if rping_ok 1 || rping_ok 1; then pass unblackhole "rping ok again after $(since "$t0") s"; else fail unblackhole "$(tail -n 2 /tmp/rping-c.log | tr '\n' ' ')"; fi

# --- block layer modules
check nbd-module load_nbd
ls /dev/nbd* | head -n 4 | tr '\n' ' '; echo
check raid1-module load_md
cat /proc/mdstat

timing smoke-total "$(since "$T_START")" "guest script, after boot"
finish
