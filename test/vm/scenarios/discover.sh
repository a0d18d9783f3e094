#!/bin/bash
# `srp-nbd discover ADDRESS` over RDMA/CM against LIO ib_srpt, without the daemon:
#   discover-json  `discover "$(srp_target_string 0)" --json` exits 0 and lists exactly the LUNs the
#                  target was configured with: 2 LUNs, 64 MiB / 512-byte and 32 MiB / 4096-byte blocks,
#                  in LUN order (LIO reports them newest first), each identity carrying the unit
#                  serial srpt_add_target gave it (srpnbd-p0-lL)
#   discover-table the text form: a header and one row per LUN
#   channel-seen   ib_srpt's RC QP shows on the target port while discover runs (a NOTE if unseen)
#   no-channel-left  and none is left once it has logged out and exited
#   login-reject   with an ACL lacking our initiator, discover exits 1 naming ib_srpt's reject reason
# Run: test/vm/run-scenarios.sh discover   (or test/vm/boot.sh test/vm/scenarios/discover.sh)
# vm-timeout: 900
. "$(dirname "$0")/../guest-lib.sh"
setup_bench 1 ram:64:512 ram:32:4096
ADDR=$(srp_target_string 0)
# RC QPs on the target's rxe port: ib_srpt's channels (LIO's acls/*/info lists no srpt session)
tgt_channels() { rdma res show qp link "$(tgt_rxe 0)/1" 2>/dev/null | grep -c ' RC '; }
no_channels() { [ "$(tgt_channels)" = 0 ]; }

log "discover $ADDR --json (target channels before: $(tgt_channels))"
T0=$(now)
srp_nbd discover "$ADDR" --json >/tmp/d.json 2>/tmp/d.err & DPID=$!
# the target's channel while discover runs (this shows that no_channels below can see one), polled
# once a second: under TCG every poll costs a process start
seen=
while kill -0 $DPID 2>/dev/null; do
  [ -z "$seen" ] && [ "$(tgt_channels)" != 0 ] && { seen=$(since "$T0"); rdma res show qp link "$(tgt_rxe 0)/1"; }
  nap 1
done
wait $DPID; rc=$?
[ -n "$seen" ] || rdma res show qp
if [ -n "$seen" ]; then pass channel-seen "an RC QP on $(tgt_rxe 0) ${seen} s after the start"; else note channel-seen "no target channel seen while discover ran (too quick, or rdma res shows none)"; fi
timing discover "$(since "$T0")" "node start, RDMA/CM login, REPORT LUNS, 2 LUN probes, logout"
cat /tmp/d.json /tmp/d.err; cp /tmp/d.json /tmp/d.err "$OUT_DIR/" 2>/dev/null
if [ $rc = 0 ]; then pass discover-json "exit 0"; else fail discover-json "exit $rc: $(head -c 300 /tmp/d.err | tr '\n' ' ')"; fi
got=$(jq -r '.luns | map("\(.lun):\(.size):\(.block_size)") | join(" ")' /tmp/d.json 2>/dev/null)
want="0:$((64 << 20)):512 1:$((32 << 20)):4096"
if [ "$got" = "$want" ]; then pass luns-match "LUN:bytes:block $got"; else fail luns-match "got '$got', want '$want'"; fi
check identities jq -e '(.luns | length) == 2 and (.luns[0].identity | contains("srpnbd-p0-l0")) and (.luns[1].identity | contains("srpnbd-p0-l1")) and .transport == "rdma-cm"' /tmp/d.json
check no-channel-left wait_for 15 no_channels

srp_nbd discover "$ADDR" >/tmp/d.txt 2>&1; rc=$?
cat /tmp/d.txt
if [ $rc = 0 ] && [ "$(grep -cE '^[01] +(64|32) MiB +(512|4096) ' /tmp/d.txt)" = 2 ] && head -1 /tmp/d.txt | grep -q '^LUN  *SIZE  *BLOCK  *IDENTITY'; then
  pass discover-table "$(sed -n 2p /tmp/d.txt | cut -c1-60)"
else fail discover-table "exit $rc: $(head -c 300 /tmp/d.txt | tr '\n' ' ')"; fi

srpt_remove_target 0 && srpt_add_target 0 none ram:64:512 || die "rebuild target without ACL"
srp_nbd discover "$ADDR" >/tmp/rej.out 2>&1; rc=$?
cat /tmp/rej.out
if [ $rc = 1 ] && grep -q "SRP login rejected: SRP_LOGIN_REJ_" /tmp/rej.out; then pass login-reject "exit 1: $(head -c 200 /tmp/rej.out | tr '\n' ' ')"
else fail login-reject "exit $rc: $(head -c 200 /tmp/rej.out | tr '\n' ' ')"; fi
finish
