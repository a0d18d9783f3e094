#!/bin/bash
# `srp-nbd discover ADDRESS` over RDMA/CM against LIO ib_srpt, then the daemon as a drop-in for
# ib_srp's identity (issue 14):
#   discover-json  `discover "$(srp_target_string 0)" --json` exits 0 and lists exactly the LUNs the
#                  target was configured with: 3 LUNs, 64 MiB / 512-byte, 32 MiB / 4096-byte and
#                  16 MiB / 512-byte blocks, in LUN order (LIO reports them newest first), each
#                  identity carrying the unit serial srpt_add_target gave it (srpnbd-p0-lL)
#   discover-table the text form: a header and one row per LUN
#   channel-seen   ib_srpt's RC QP shows on the target port while discover runs (a NOTE if unseen)
#   no-channel-left  and none is left once it has logged out and exited
#   lun-order      the daemon attaches the 3 LUNs with device auto: /dev/nbd0 = LUN 0 (64 MiB),
#                  /dev/nbd1 = LUN 1, /dev/nbd2 = LUN 2, whatever order REPORT LUNS used
#   initiator-id   `status` shows ib_srp's initiator port id: initiator_ext (0) ‖ the port GUID of
#                  the initiator's rxe0 (the interface id of its GID 0)
#   duplicate-refused  with `--multipath off`, a second attach of the same LUs (initiator_ext=1, another id) exits != 0
#                  naming the target and /dev/nbd0 that have LUN 0; no further device appears
#   login-reject   with an ACL lacking our initiator, discover exits 1 naming ib_srpt's reject
#                  reason, the initiator port id it saw and the targetcli command to add the ACL
#   acl-by-port-id the target port named by its GID (0xfe80…) with one ACL named by that initiator
#                  port id admits the login: the id is exactly the one ib_srpt matches ACLs against
#   acl-wrong-ext  with initiator_ext=5 the same target refuses, the message naming 0x…05‖GUID
# Run: test/vm/run-scenarios.sh discover   (or test/vm/boot.sh test/vm/scenarios/discover.sh)
# vm-timeout: 1200
. "$(dirname "$0")/../guest-lib.sh"
setup_bench 1 ram:64:512 ram:32:4096 ram:16:512
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
timing discover "$(since "$T0")" "node start, RDMA/CM login, REPORT LUNS, 3 LUN probes, logout"
cat /tmp/d.json /tmp/d.err; cp /tmp/d.json /tmp/d.err "$OUT_DIR/" 2>/dev/null
if [ $rc = 0 ]; then pass discover-json "exit 0"; else fail discover-json "exit $rc: $(head -c 300 /tmp/d.err | tr '\n' ' ')"; fi
got=$(jq -r '.luns | map("\(.lun):\(.size):\(.block_size)") | join(" ")' /tmp/d.json 2>/dev/null)
want="0:$((64 << 20)):512 1:$((32 << 20)):4096 2:$((16 << 20)):512"
if [ "$got" = "$want" ]; then pass luns-match "LUN:bytes:block $got"; else fail luns-match "got '$got', want '$want'"; fi
check identities jq -e '(.luns | length) == 3 and (.luns[0].identity | contains("srpnbd-p0-l0")) and (.luns[1].identity | contains("srpnbd-p0-l1")) and (.luns[2].identity | contains("srpnbd-p0-l2")) and .transport == "rdma-cm"' /tmp/d.json
check no-channel-left wait_for 15 no_channels

srp_nbd discover "$ADDR" >/tmp/d.txt 2>&1; rc=$?
cat /tmp/d.txt
if [ $rc = 0 ] && [ "$(grep -cE '^[012] +(64|32|16) MiB +(512|4096) ' /tmp/d.txt)" = 3 ] && head -1 /tmp/d.txt | grep -q '^LUN  *SIZE  *BLOCK  *IDENTITY'; then
  pass discover-table "$(sed -n 2p /tmp/d.txt | cut -c1-60)"
else fail discover-table "exit $rc: $(head -c 300 /tmp/d.txt | tr '\n' ' ')"; fi

# ib_srp's initiator port id: initiator_ext ‖ the interface id of GID 0 of the initiator's port
GID0=$(cat "/sys/class/infiniband/$(ini_rxe 0)/ports/1/gids/0")
GUID=$(echo "${GID0#fe80:0000:0000:0000:}" | tr -d :)
WANT_ID=0x0000000000000000$GUID
log "initiator port GUID $GUID (GID 0 $GID0): expected initiator port id $WANT_ID"

# ---- the daemon: devices in LUN order, the initiator port id, the same LU refused twice
daemon_up
srp_nbd attach "$ADDR" --id lo --device auto >/tmp/att.out 2>&1 || fail attach-cmd "srp-nbd attach exited $?: $(head -c 300 /tmp/att.out)"
cat /tmp/att.out
check attach wait_for 60 nbd_connected nbd2
got=$(for i in 0 1 2; do echo -n "nbd$i=$(($(nbd_size_bytes nbd$i) >> 20))M "; done)
srp_nbd status lo --json >/tmp/st.json 2>&1
map=$(jq -r '.lun_details | map("\(.lun):\(.device)") | join(" ")' /tmp/st.json 2>/dev/null)
if [ "$got" = "nbd0=64M nbd1=32M nbd2=16M " ] && [ "$map" = "0:/dev/nbd0 1:/dev/nbd1 2:/dev/nbd2" ]; then
  pass lun-order "$map; sizes $got"
else fail lun-order "sizes '$got' (want nbd0=64M nbd1=32M nbd2=16M), status '$map'"; fi
id=$(jq -r .initiator_port_id /tmp/st.json 2>/dev/null)
if [ "$id" = "$WANT_ID" ]; then pass initiator-id "$id"; else fail initiator-id "status says '$id', want $WANT_ID"; fi

srp_nbd attach "$ADDR,initiator_ext=1" --id dup --multipath off >/tmp/dup.out 2>&1; rc=$?
cat /tmp/dup.out
if [ $rc != 0 ] && grep -q "already attached as target lo LUN 0 (/dev/nbd0)" /tmp/dup.out && ! nbd_connected nbd3; then
  pass duplicate-refused "exit $rc: $(head -c 200 /tmp/dup.out | tr '\n' ' ')"
else fail duplicate-refused "exit $rc, nbd3 $(nbd_connected nbd3 && echo connected || echo free): $(head -c 300 /tmp/dup.out | tr '\n' ' ')"; fi
srp_nbd detach lo || fail detach-cmd "srp-nbd detach exited $?"
daemon_stop

# ---- LIO's no-ACL reject, explained
srpt_remove_target 0 && srpt_add_target 0 none ram:64:512 || die "rebuild target without ACL"
srp_nbd discover "$ADDR" >/tmp/rej.out 2>&1; rc=$?
cat /tmp/rej.out
if [ $rc = 1 ] && grep -q "SRP login rejected: SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED (0x00010006)" /tmp/rej.out &&
   grep -q "initiator port id $WANT_ID from ${INI_IP[0]}" /tmp/rej.out && grep -q "acls create ib.${WANT_ID#0x}" /tmp/rej.out; then
  pass login-reject "exit 1: $(head -c 300 /tmp/rej.out | tr '\n' ' ')"
else fail login-reject "exit $rc: $(head -c 300 /tmp/rej.out | tr '\n' ' ')"; fi

# ---- the target port named by its GID: ib_srpt matches ACLs against the initiator port id itself
srpt_remove_target 0 || die "remove target"
# srpt_gid_target P ACL: path P's port as configfs target 0x<GID>, one 16 MiB RAM LUN, one ACL
srpt_gid_target() {
  local p=$1 acl=$2 gid tp tpg bs
  gid=$(cat "/sys/class/infiniband/$(tgt_rxe "$p")/ports/1/gids/0") || return 1
  tp=0x${gid//:/}; tpg=$CFG/srpt/$tp/$tp; bs=$CFG/core/rd_mcp_9/gidlun
  mkdir -p "$tpg" "$bs" || return 1
  echo rd_pages=4096 > "$bs/control" && echo srpnbd-gid > "$bs/wwn/vpd_unit_serial" && echo 1 > "$bs/enable" || return 1
  mkdir "$tpg/lun/lun_0" && ln -s "$bs" "$tpg/lun/lun_0/gidlun" || return 1
  mkdir "$tpg/acls/$acl" "$tpg/acls/$acl/lun_0" && ln -s "$tpg/lun/lun_0" "$tpg/acls/$acl/lun_0/lun_0" || return 1
  echo 1 > "$tpg/enable"
}
srpt_gid_target 0 "$WANT_ID" || die "target port named by GID with ACL $WANT_ID"
srp_nbd discover "$ADDR" --json >/tmp/gid.json 2>/tmp/gid.err; rc=$?
cat /tmp/gid.json /tmp/gid.err
if [ $rc = 0 ] && jq -e '.luns | length == 1' /tmp/gid.json >/dev/null; then pass acl-by-port-id "ACL $WANT_ID admits the login"
else fail acl-by-port-id "exit $rc: $(head -c 300 /tmp/gid.err | tr '\n' ' ')"; fi
srp_nbd discover "$ADDR,initiator_ext=5" >/tmp/ext.out 2>&1; rc=$?
cat /tmp/ext.out
if [ $rc = 1 ] && grep -q "SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED.*initiator port id 0x0000000000000005$GUID from" /tmp/ext.out; then
  pass acl-wrong-ext "exit 1, names 0x0000000000000005$GUID"
else fail acl-wrong-ext "exit $rc: $(head -c 300 /tmp/ext.out | tr '\n' ' ')"; fi
finish
