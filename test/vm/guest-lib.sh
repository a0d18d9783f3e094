# Helpers for guest scenario scripts (bash). Source it first:
#   . "$(dirname "$0")/../guest-lib.sh"        (from test/vm/scenarios/)
#
# Topology built by setup_net/setup_rxe (everything inside the guest, -nic none):
#   path 0:  veth0 192.0.2.1    rxe0  (initiator side) <-> wi0 [br0] wt0 <-> veth1 192.0.2.2    rxe1  (target side)
#   path 1:  veth2 198.51.100.1 rxe2  (initiator side) <-> wi1 [br1] wt1 <-> veth3 198.51.100.2 rxe3  (target side)
# Each end is a veth pair whose other end (wiP, wtP) is a port of the path's bridge: the
# "wire". link_down takes the wire's ports down, so both ends lose carrier (a cable pull)
# while veth0/veth1 themselves stay up, routes and all. (Taking an rxe netdev itself down makes
# any CM MAD the device sends meanwhile fail its route lookup; on 6.1 that breaks the device's
# GSI QP receive side for good: docs/initiator.md.)
# Both ends of every pair live in the init network namespace (6.1's rxe listens on UDP
# 4791 in init_net only). As all addresses are local, policy routing sends locally
# generated traffic for the peer out of the veth instead of through lo, so it really
# crosses the link that link_down / blackhole break. 192.0.2.0/24 and 198.51.100.0/24
# are RFC 5737 documentation ranges and never leave the guest.
#
# Results: check/pass/fail print "PASS name (detail)" / "FAIL name: reason" and append
# the same line to $OUT_DIR/results, which run-scenarios.sh counts. A scenario ends
# with `finish`, whose exit status is non-zero if anything failed.

: "${OUT_DIR:=/mnt/out}"
GUEST_LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${REPO_ROOT:=$(cd "$GUEST_LIB_DIR/../.." && pwd)}"
SRP_NBD_CLI="$REPO_ROOT/bin/srp-nbd.js"
CM_PORT=${CM_PORT:-5000}                 # ib_srpt's RDMA/CM listen port
INI_IP=(192.0.2.1 198.51.100.1)          # per path: initiator-side address (veth 2p)
TGT_IP=(192.0.2.2 198.51.100.2)          # per path: target-side address (veth 2p+1)
NPASS=0; NFAIL=0
SCENARIO=${SCENARIO:-$(basename "${0%.sh}")}
CFG=/sys/kernel/config/target

# ---- time, logging, reporting --------------------------------------------------------
now() { local u _; read -r u _ </proc/uptime; echo "$u"; }  # guest uptime, seconds (no exec)
uptime_to() { local _; read -r "$1" _ </proc/uptime; }       # uptime_to VAR: no fork at all
# nap SECONDS: sleep without starting a process (read -t on a pipe nobody writes)
nap() {
  [ -n "${_NAP_FD:-}" ] || { exec {_NAP_FD}<> <(:); } 2>/dev/null || _NAP_FD=none
  if [ "$_NAP_FD" = none ]; then sleep "$1"; else read -r -t "$1" -u "$_NAP_FD" _; fi
  return 0
}
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.2f", b-a}'; }  # seconds since $1
log() { echo "[$(now)] $*"; }
_result() { echo "$*"; echo "$*" >> "$OUT_DIR/results" 2>/dev/null; }
pass() { local n=$1; shift; NPASS=$((NPASS+1)); _result "PASS $SCENARIO/$n${*:+ ($*)}"; }
fail() { local n=$1; shift; NFAIL=$((NFAIL+1)); _result "FAIL $SCENARIO/$n: ${*:-failed}"; }
# timing NAME SECONDS [note]: record a measured time (reported, never judged)
timing() { _result "TIME $SCENARIO/$1 $2 s${3:+ ($3)}"; }
# note NAME TEXT: record an observation (reported, never judged)
note() { local n=$1; shift; _result "NOTE $SCENARIO/$n: $*"; }
# check NAME CMD...: run CMD (output to the console); PASS with its duration or FAIL with rc
check() {
  local n=$1 t0 rc; shift; t0=$(now)
  "$@"; rc=$?
  if [ $rc = 0 ]; then pass "$n" "$(since "$t0") s"; else fail "$n" "'$*' exited $rc"; fi
  return $rc
}
# expect_fail NAME CMD...: PASS if CMD fails
expect_fail() {
  local n=$1 rc; shift
  "$@"; rc=$?
  if [ $rc != 0 ]; then pass "$n" "failed as expected, rc $rc"; else fail "$n" "'$*' succeeded"; fi
  [ $rc != 0 ]
}
# wait_for SECONDS CMD...: poll CMD every 0.1 s until it succeeds (SECONDS: an integer);
# sets WAITED to the time waited. Returns 1 on timeout.
WAITED=0
uptime_cs() { local u _; read -r u _ </proc/uptime; printf -v "$1" '%d' "$((10#${u/./}))"; }  # centiseconds
wait_for() {
  local lim=$1 t0 t; shift; uptime_cs t0
  while :; do
    if "$@" >/dev/null 2>&1; then uptime_cs t; printf -v WAITED '%d.%02d' $(((t-t0)/100)) $(((t-t0)%100)); return 0; fi
    uptime_cs t
    if [ $((t - t0)) -ge $((lim * 100)) ]; then printf -v WAITED '%d.%02d' $(((t-t0)/100)) $(((t-t0)%100)); return 1; fi
    nap 0.1
  done
}
# die MESSAGE: a bench malfunction; record a FAIL, print diagnostics, stop the scenario
die() { fail setup "$*"; diag; finish; }
diag() {
  echo "---- diag at $(now)s"
  rdma link show 2>&1 | sed 's/^/  /'
  ip -br link 2>&1 | sed 's/^/  /'
  dmesg | tail -n 30 | sed 's/^/  dmesg: /'
}
# crash_expected REASON: from here on a guest kernel crash is this scenario's measured
# result (boot.sh then records it as a PASS), not a bench failure; crash_unexpected ends that
crash_expected() { echo "$*" > "$OUT_DIR/crash-expected"; sync; }
crash_unexpected() { rm -f "$OUT_DIR/crash-expected"; }
# finish: summary line for the console, exit status = number of FAILs (capped)
finish() {
  echo "[scenario] $SCENARIO done at uptime $(now)s: pass=$NPASS fail=$NFAIL"
  # a failed scenario shows the end of the daemon's log on the console (the host prints its tail)
  if [ $NFAIL != 0 ] && [ -s "$OUT_DIR/daemon.log" ]; then
    echo "[scenario] last lines of $OUT_DIR/daemon.log:"; tail -n 40 "$OUT_DIR/daemon.log"
  fi
  [ $NFAIL = 0 ] || exit $(( NFAIL > 100 ? 100 : NFAIL ))
  [ $NPASS -gt 0 ] || { echo "FAIL $SCENARIO: no checks ran" | tee -a "$OUT_DIR/results"; exit 1; }
  exit 0
}

# ---- network + soft-RoCE --------------------------------------------------------------
ini_dev() { echo "veth$((2*$1))"; }       # path -> initiator-side netdev
tgt_dev() { echo "veth$((2*$1+1))"; }     # path -> target-side netdev
ini_rxe() { echo "rxe$((2*$1))"; }
tgt_rxe() { echo "rxe$((2*$1+1))"; }
ini_wire() { echo "wi$1"; }             # path -> the wire's port facing the initiator
tgt_wire() { echo "wt$1"; }             # path -> the wire's port facing the target

# _path_routes P: (re)install path P's policy routes (`ip link set vethN down` would delete them)
_path_routes() {
  local p=$1 a b
  a=$(ini_dev "$p"); b=$(tgt_dev "$p")
  ip route replace "${TGT_IP[p]}/32" dev "$a" src "${INI_IP[p]}" table $((100+2*p))
  ip route replace "${INI_IP[p]}/32" dev "$b" src "${TGT_IP[p]}" table $((101+2*p))
}
# setup_net [NPATHS=1]: veth pairs with addresses and policy routing (see the top)
setup_net() {
  local n=${1:-1} p a b
  NPATHS=$n
  modprobe veth || return 1
  for c in all default; do sysctl -qw net.ipv4.conf.$c.accept_local=1 net.ipv4.conf.$c.rp_filter=0; done
  for ((p=0; p<n; p++)); do
    a=$(ini_dev $p); b=$(tgt_dev $p)
    ip link add "$a" type veth peer name "$(ini_wire $p)" || return 1
    ip link add "$b" type veth peer name "$(tgt_wire $p)" || return 1
    ip link add "br$p" type bridge stp_state 0 forward_delay 0 || return 1
    # the bridge is only the wire: no ARP answers (it would claim every local address), no IPv6
    ip link set "br$p" arp off; sysctl -qw net.ipv6.conf.br$p.disable_ipv6=1 2>/dev/null
    ip link set "$(ini_wire $p)" master "br$p"; ip link set "$(tgt_wire $p)" master "br$p"
    ip link set "br$p" up; ip link set "$(ini_wire $p)" up; ip link set "$(tgt_wire $p)" up
    sysctl -qw net.ipv4.conf.$a.accept_local=1 net.ipv4.conf.$a.rp_filter=0 \
               net.ipv4.conf.$b.accept_local=1 net.ipv4.conf.$b.rp_filter=0
    ip addr add "${INI_IP[p]}/24" dev "$a"
    ip addr add "${TGT_IP[p]}/24" dev "$b"
    ip link set "$a" up; ip link set "$b" up
    # Static neighbours: with ARP, a carrier loss flushes the entries and rxe's next packets wait
    # on an unresolved one for the 3 s ARP gives up after; rxe's QP destroy waits for them
    # (docs/failover.md, "Soft-RoCE: a QP destroyed while its link is down").
    ip neigh replace "${TGT_IP[p]}" lladdr "$(cat /sys/class/net/$b/address)" dev "$a" nud permanent
    ip neigh replace "${INI_IP[p]}" lladdr "$(cat /sys/class/net/$a/address)" dev "$b" nud permanent
    wait_for 5 _link_has_carrier "$a" && wait_for 5 _link_has_carrier "$b" || return 1
    _path_routes $p || return 1
    ip rule add pref $((10+2*p)) iif lo to "${TGT_IP[p]}/32" lookup $((100+2*p))
    ip rule add pref $((11+2*p)) iif lo to "${INI_IP[p]}/32" lookup $((101+2*p))
  done
  ip rule add pref 1000 lookup local
  ip rule del pref 0 lookup local
}
# setup_rxe: rdma_rxe on both ends of every path, waits until all ports are ACTIVE
setup_rxe() {
  local p
  modprobe rdma_rxe || return 1
  modprobe ib_uverbs; modprobe rdma_ucm; modprobe ib_umad 2>/dev/null
  for ((p=0; p<${NPATHS:-1}; p++)); do
    rdma link add "$(ini_rxe $p)" type rxe netdev "$(ini_dev $p)" || return 1
    rdma link add "$(tgt_rxe $p)" type rxe netdev "$(tgt_dev $p)" || return 1
  done
  for ((p=0; p<2*${NPATHS:-1}; p++)); do wait_for 10 port_active rxe$p || return 1; done
}
port_state() { cut -d' ' -f2 "/sys/class/infiniband/$1/ports/1/state" 2>/dev/null; }  # ACTIVE, DOWN
port_active() { [ "$(port_state "$1")" = ACTIVE ]; }
port_inactive() { ! port_active "$1"; }

# ---- faults ------------------------------------------------------------------------------
# link_down P / link_up P: carrier loss on path P: the wire's two bridge ports go down, so both
# ends (initiator and target netdev) lose carrier and their rxe ports go DOWN; the netdevs stay
# up. link_up brings the target's side back first (a re-plugged cable gives both ends carrier
# at once; two commands a TCG moment apart would let the initiator's PORT_ACTIVE, and the login
# it starts, come while the target's end is still down) and waits until both have carrier.
link_down() { ip link set "$(ini_wire "$1")" down; ip link set "$(tgt_wire "$1")" down; }
link_up() {
  ip link set "$(tgt_wire "$1")" up && ip link set "$(ini_wire "$1")" up || return 1
  wait_for 5 _link_has_carrier "$(ini_dev "$1")" && wait_for 5 _link_has_carrier "$(tgt_dev "$1")"
}
_link_has_carrier() { [ "$(cat /sys/class/net/$1/carrier 2>/dev/null)" = 1 ]; }
# blackhole P / unblackhole P: silent loss of every packet both ways, links stay up
blackhole() {
  modprobe sch_netem || return 1
  tc qdisc replace dev "$(ini_dev "$1")" root netem loss 100% &&
  tc qdisc replace dev "$(tgt_dev "$1")" root netem loss 100%
}
unblackhole() {
  tc qdisc del dev "$(ini_dev "$1")" root 2>/dev/null
  tc qdisc del dev "$(tgt_dev "$1")" root 2>/dev/null
  return 0
}
# rxe_counters: every rxe device's packet and error counters on one line. send_err counts packets
# the device failed to send (e.g. a CM MAD while its netdev was down: on 6.1 that breaks the GSI
# QP's receive side, so the device gets no CM message again until it is recreated).
rxe_counters() {
  local d c
  for d in /sys/class/infiniband/rxe*; do
    c=$d/ports/1/hw_counters
    printf '%s sent=%s rcvd=%s send_err=%s retry_exceeded=%s; ' "${d##*/}" "$(cat "$c/sent_pkts" 2>/dev/null)" \
      "$(cat "$c/rcvd_pkts" 2>/dev/null)" "$(cat "$c/send_err" 2>/dev/null)" "$(cat "$c/retry_exceeded_err" 2>/dev/null)"
  done
}
# srpt_login_reqs [SINCE]: how many SRP_LOGIN_REQs ib_srpt logged (all ports) since uptime SINCE
# (default: boot). None while the daemon keeps trying means the REQs never reached the target.
srpt_login_reqs() {
  dmesg | awk -v s="${1:-0}" '/ib_srpt Received SRP_LOGIN_REQ/ { t = $0; sub(/^\[ */, "", t); sub(/\].*/, "", t); if (t + 0 >= s) n++ } END { print n + 0 }'
}
# tx_packets DEV: packets sent by DEV (to prove traffic crossed a veth)
tx_packets() { cat "/sys/class/net/$1/statistics/tx_packets"; }

# ---- LIO ib_srpt target -------------------------------------------------------------------
# srpt_start: load LIO + ib_srpt (after setup_rxe), RDMA/CM port $CM_PORT. Sets SRPT_GUID
# (ib_srpt's srpt_service_guid: id_ext, ioc_guid and the target port id of a login).
srpt_start() {
  mkdir -p /etc/target     # LIO's db_root (else "db_root: cannot open" at load)
  modprobe target_core_mod || return 1
  modprobe ib_srpt || return 1
  mountpoint -q /sys/kernel/config || mount -t configfs configfs /sys/kernel/config
  mkdir -p $CFG/srpt || return 1
  echo "$CM_PORT" > $CFG/srpt/discovery_auth/rdma_cm_port || return 1
  SRPT_GUID=$(cat /sys/module/ib_srpt/parameters/srpt_service_guid)
}
# srpt_port_name P: configfs name of the target side's port on path P (port GUID form)
srpt_port_name() {
  local gid; gid=$(cat "/sys/class/infiniband/$(tgt_rxe "$1")/ports/1/gids/0") || return 1
  echo "${gid#fe80:0000:0000:0000:}"
}
# srpt_add_target P ACLS LUNSPEC...: export LUNs on path P's target port (rxe 2P+1).
#   ACLS   "default": ACLs for the target's own IP and the initiator IP (6.1's ib_srpt
#                     names an RDMA/CM session after the *target's* IP, so that one is
#                     what admits a login);
#          "any":     demo mode (generate_node_acls=1), no ACL needed;
#          "none" or any other word list: exactly these ACL names (a list without the
#                     target IP makes every RDMA/CM login be rejected).
#   LUNSPEC  ram:SIZE[:BLOCKSIZE] or file:SIZE[:BLOCKSIZE]; SIZE in MiB (suffix M optional),
#            BLOCKSIZE 512 (default) or 4096. LUN L of path P gets unit serial
#            "srpnbd-pP-lL" and, for file LUNs, the image /tmp/srpt-pP-lL.img.
# Sets TARGET_LUNS[P] (the number of LUNs).
declare -a TARGET_LUNS
srpt_add_target() {
  local p=$1 acls=$2 tp tpg l=0 spec kind size bs bsdir name ini; shift 2
  tp=$(srpt_port_name "$p") || return 1
  tpg=$CFG/srpt/$tp/$tp
  mkdir -p "$tpg" || return 1
  for spec in "$@"; do
    IFS=: read -r kind size bs <<<"$spec"; size=${size%M}; bs=${bs:-512}
    name=p${p}l${l}
    case $kind in
      ram)  bsdir=$CFG/core/rd_mcp_$p/$name; mkdir -p "$bsdir" || return 1
            echo "rd_pages=$((size * 256))" > "$bsdir/control" || return 1 ;;
      file) bsdir=$CFG/core/fileio_$p/$name; mkdir -p "$bsdir" || return 1
            truncate -s "${size}M" "/tmp/srpt-$name.img" || return 1
            echo "fd_dev_name=/tmp/srpt-$name.img,fd_dev_size=$((size << 20))" > "$bsdir/control" || return 1 ;;
      *) log "srpt_add_target: bad LUN spec '$spec'"; return 1 ;;
    esac
    echo "srpnbd-p${p}-l${l}" > "$bsdir/wwn/vpd_unit_serial" || return 1
    echo 1 > "$bsdir/enable" || return 1
    echo "$bs" > "$bsdir/attrib/block_size" || { log "block_size $bs refused for $name"; return 1; }
    mkdir "$tpg/lun/lun_$l" || return 1
    ln -s "$bsdir" "$tpg/lun/lun_$l/$name" || return 1
    l=$((l+1))
  done
  TARGET_LUNS[p]=$l
  case $acls in
    any)     echo 1 > "$tpg/attrib/generate_node_acls"; echo 1 > "$tpg/attrib/cache_dynamic_acls"
             echo 0 > "$tpg/attrib/demo_mode_write_protect" ;;
    default) _srpt_acls "$tpg" "$l" "${TGT_IP[p]}" "${INI_IP[p]}" || return 1 ;;
    none)    ;;
    *)       _srpt_acls "$tpg" "$l" $acls || return 1 ;;
  esac
  echo 1 > "$tpg/enable" || return 1
}
_srpt_acls() {
  local tpg=$1 n=$2 ini i; shift 2
  for ini in "$@"; do
    mkdir "$tpg/acls/$ini" || return 1
    for ((i=0; i<n; i++)); do
      mkdir "$tpg/acls/$ini/lun_$i" && ln -s "$tpg/lun/lun_$i" "$tpg/acls/$ini/lun_$i/lun_$i" || return 1
    done
  done
}
# srpt_remove_target P: tear path P's target down (sessions are closed, backstores freed);
# srpt_add_target P ... builds it again (a "target restart")
srpt_remove_target() {
  local p=$1 tp tpg d; tp=$(srpt_port_name "$p") || return 1
  tpg=$CFG/srpt/$tp/$tp
  [ -d "$tpg" ] || return 0
  echo 0 > "$tpg/enable" 2>/dev/null
  for d in "$tpg"/acls/*/lun_*/lun_*; do [ -L "$d" ] && rm -f "$d"; done
  for d in "$tpg"/acls/*/lun_*; do [ -d "$d" ] && rmdir "$d"; done
  for d in "$tpg"/acls/*; do [ -d "$d" ] && rmdir "$d"; done
  for d in "$tpg"/lun/lun_*/*; do [ -L "$d" ] && rm -f "$d"; done
  for d in "$tpg"/lun/lun_*; do [ -d "$d" ] && rmdir "$d"; done
  rmdir "$tpg" "$CFG/srpt/$tp" || return 1
  for d in "$CFG"/core/{rd_mcp,fileio}_"$p"/*/; do [ -d "$d" ] && rmdir "$d"; done
  rmdir "$CFG"/core/{rd_mcp,fileio}_"$p" 2>/dev/null
  rm -f /tmp/srpt-p"$p"l*.img
  return 0
}
# srpt_sessions P: names of the sessions logged in to path P's target
srpt_sessions() {
  local tp; tp=$(srpt_port_name "$1") || return 1
  cat "$CFG/srpt/$tp/$tp"/acls/*/info 2>/dev/null | sed -n 's/.*InitiatorName: *//p'
}
# srpt_add_shared_lun SIZE [PATH...]: ONE ramdisk backstore of SIZE MiB (512-byte blocks), unit
# serial "srpnbd-shared" (LIO HBA rd_mcp_9), exported as LUN 0 through the target port of every PATH (default: every
# path setup_net built) with the "default" ACLs of each path: the paths reach the same logical
# unit (same VPD 80h serial and 83h NAA; only the target port designators differ), as an array's
# two target ports do for multipath. Give each path no other target. Sets TARGET_LUNS[P]=1 and
# LIO_PORT_CMDS[P] (the port's in_cmds counter file, see lio_port_cmds).
declare -a LIO_PORT_CMDS
srpt_add_shared_lun() {
  local size=$1 p tp tpg bsdir=$CFG/core/rd_mcp_9/shared; shift
  local paths=("$@"); [ ${#paths[@]} -gt 0 ] || for ((p=0; p<${NPATHS:-1}; p++)); do paths+=("$p"); done
  mkdir -p "$bsdir" || return 1
  echo "rd_pages=$((${size%M} * 256))" > "$bsdir/control" || return 1
  echo srpnbd-shared > "$bsdir/wwn/vpd_unit_serial" || return 1
  echo 1 > "$bsdir/enable" || return 1
  for p in "${paths[@]}"; do
    tp=$(srpt_port_name "$p") || return 1
    tpg=$CFG/srpt/$tp/$tp
    mkdir -p "$tpg/lun/lun_0" || return 1
    ln -s "$bsdir" "$tpg/lun/lun_0/shared" || return 1
    _srpt_acls "$tpg" 1 "${TGT_IP[p]}" "${INI_IP[p]}" || return 1
    echo 1 > "$tpg/enable" || return 1
    TARGET_LUNS[p]=1
    LIO_PORT_CMDS[p]=$tpg/lun/lun_0/statistics/scsi_tgt_port/in_cmds
  done
}
# lio_port_cmds VAR P: VAR = SCSI commands LIO received for LUN 0 through path P's target port
# (builtins only: usable in samplers). Side-neutral: counts what any initiator sent on that path.
lio_port_cmds() { sysfs_read "$1" "${LIO_PORT_CMDS[$2]}" 0; }
# lio_sampler_start [INTERVAL=0.1]: log "uptime cmds(path 0) cmds(path 1)" every INTERVAL to
# /tmp/lio-cmds.log (which path carries I/O, and when it switched); lio_sampler_stop ends it
lio_sampler_start() {
  local iv=${1:-0.1}
  : > /tmp/lio-cmds.log; rm -f /tmp/lio-cmds.log.stop
  ( while [ ! -e /tmp/lio-cmds.log.stop ]; do
      uptime_to t; lio_port_cmds a 0; lio_port_cmds b 1
      echo "$t $a $b" >> /tmp/lio-cmds.log; nap "$iv"
    done ) &
}
lio_sampler_stop() { touch /tmp/lio-cmds.log.stop; }
# setup_bench [NPATHS=1] [LUNSPEC...]: net + rxe + ib_srpt with one target per path
# (default LUNs: ram:64:512 ram:64:4096), nbd and raid1 loaded. die()s on failure.
setup_bench() {
  local n=${1:-1} p; shift || true
  local luns=("$@"); [ ${#luns[@]} -gt 0 ] || luns=(ram:64:512 ram:64:4096)
  setup_net "$n" || die "setup_net"
  setup_rxe || die "setup_rxe (ports: $(for i in /sys/class/infiniband/*; do echo -n "$(basename $i)=$(port_state $(basename $i)) "; done))"
  srpt_start || die "ib_srpt"
  for ((p=0; p<n; p++)); do srpt_add_target $p default "${luns[@]}" || die "srpt target on path $p"; done
  load_nbd || die "modprobe nbd"
  load_md || die "modprobe raid1"
}
# srp_target_string P: the ib_srp add_target string (RDMA/CM) for path P's target
srp_target_string() {
  echo "id_ext=$SRPT_GUID,ioc_guid=$SRPT_GUID,dest=${TGT_IP[$1]}:$CM_PORT,src=${INI_IP[$1]}"
}

# ---- block layer --------------------------------------------------------------------------
load_nbd() { modprobe nbd nbds_max=${NBDS_MAX:-8} && wait_for 5 test -b /dev/nbd0; }
load_md() { modprobe raid1 && grep -q raid1 /proc/mdstat; }
# majmin DEV: "major:minor" of a block device node
majmin() { stat -Lc '%t:%T' "$1" | { IFS=: read -r a b; echo "$((16#$a)):$((16#$b))"; }; }

# disk_by_serial SERIAL: the block device (sdX, nbdN...) whose VPD 0x80 unit serial is SERIAL
disk_by_serial() {
  local d
  for d in /sys/block/*; do
    grep -aq -- "$1" "$d/device/vpd_pg80" 2>/dev/null && { basename "$d"; return 0; }
  done
  return 1
}
# fio_verify DEV [SIZE=16M] [fio options...]: write then verify with crc32c, direct I/O
fio_verify() {
  local dev=$1 size=${2:-16M}; shift 2 2>/dev/null || shift $#
  fio --name=verify --filename="$dev" --direct=1 --ioengine=libaio --iodepth=8 \
      --rw=randwrite --bs=4k --size="$size" --verify=crc32c --verify_fatal=1 \
      --do_verify=1 --output-format=terse --terse-version=3 "$@" >/tmp/fio-verify.out 2>&1
}
# md_raid1 MD DEV DEV: RAID1 with a write-intent bitmap, no initial resync
md_raid1() {
  mdadm --create "$1" --run --quiet --level=1 --raid-devices=2 --bitmap=internal \
        --assume-clean --metadata=1.2 "$2" "$3"
}
# sysfs_read VAR FILE [DEFAULT=-]: VAR = first line of a sysfs file, without forking
sysfs_read() { { read -r "$1" <"$2"; } 2>/dev/null || printf -v "$1" '%s' "${3:--}"; }
# sysfs_get FILE [DEFAULT=-]: print it (a fork when used as $(...))
sysfs_get() { local v; sysfs_read v "$1" "${2:--}"; echo "$v"; }
# md_dev_states VAR MD: VAR = "sda:in_sync sdb:faulty " from sysfs, builtins only
md_dev_states() {
  local d v o=""
  for d in /sys/block/${2##*/}/md/dev-*; do
    [ -e "$d/state" ] && { sysfs_read v "$d/state"; o="$o${d##*/dev-}:$v "; }
  done
  printf -v "$1" '%s' "$o"
}
md_state() { cat "/sys/block/$(basename "$1")/md/array_state" 2>/dev/null; }        # clean, active, ...
md_degraded() { cat "/sys/block/$(basename "$1")/md/degraded" 2>/dev/null; }         # 0 = both members
md_members() { mdadm --detail "$1" 2>/dev/null | awk '$NF ~ /^\/dev\// && $1 ~ /^[0-9-]+$/ {s=$5; for (i=6;i<NF;i++) s=s "-" $i; printf "%s(%s) ", $NF, s}'; }

# ---- background probes: I/O prober and state monitor ------------------------------------
# io_prober_start DEV [INTERVAL=0.1]: 4 KiB O_DIRECT writes, one per INTERVAL, each logged
# as "start end rc" (guest uptime) to /tmp/prober-<dev>.log. DEV may be a function name
# printing the current device (for devices that get renamed).
io_prober_start() {
  local dev=$1 iv=${2:-0.1} log=/tmp/prober-$(basename "$1").log
  dd if=/dev/urandom of=/tmp/prober.blk bs=4k count=1 status=none
  : > "$log"; rm -f "$log.stop"
  (
    i=0
    while [ ! -e "$log.stop" ]; do
      d=$dev; declare -F "$dev" >/dev/null && d=/dev/$($dev)
      uptime_to t0
      dd if=/tmp/prober.blk of="$d" bs=4k count=1 seek=$((i % 1024)) oflag=direct conv=notrunc status=none 2>/dev/null
      rc=$?; uptime_to t1
      echo "$t0 $t1 $rc" >> "$log"
      i=$((i+1)); nap "$iv"
    done
  ) &
  PROBER_PID=$!
}
# io_prober_stop DEV: stop the prober (does not wait for a write stuck in the kernel)
io_prober_stop() {
  touch "/tmp/prober-$(basename "$1").log.stop"
  wait_for 5 bash -c "! kill -0 $PROBER_PID" || log "prober still blocked in I/O"
}
# io_summary DEV FROM [TO=now]: one line: writes, failures, first failure, longest stall
io_summary() {
  awk -v a="$2" -v b="${3:-999999}" '
    $1>=a && $1<=b { n++; if ($3==0) { ok++; if (last!="" && $2-last>gap) {gap=$2-last; g0=last}; last=$2 }
                     else { err++; if (first=="") first=$2 } ; if ($2-$1>slow) slow=$2-$1 }
    END { printf "%d writes, %d failed, first failure at %s, longest stall %.2f s (from %s), slowest write %.2f s\n",
          n, err, first==""?"-":first, gap, g0==""?"-":g0, slow }' "/tmp/prober-$(basename "$1").log"
}
# io_first_error DEV FROM: uptime of the first failed write started after FROM (or nothing)
io_first_error() { awk -v a="$2" '$1>=a && $3!=0 {print $2; exit}' "/tmp/prober-$(basename "$1").log"; }
# monitor_start NAME FUNCTION [INTERVAL=0.2]: call FUNCTION every INTERVAL; it must set
# MON_VALUE; every change is logged as "uptime value" to /tmp/mon-NAME.log; monitor_stop
# NAME ends it. Under TCG every fork or exec costs tens to hundreds of ms and a command
# touching a blocked device hangs: FUNCTION should use builtins only (sysfs_read, [ -e ]).
monitor_start() {
  local name=$1 fn=$2 iv=${3:-0.2} f=/tmp/mon-$1.log
  : > "$f"; rm -f "$f.stop"
  ( prev=""; while [ ! -e "$f.stop" ]; do
      MON_VALUE=""; $fn 2>/dev/null
      if [ "$MON_VALUE" != "$prev" ]; then uptime_to t; echo "$t $MON_VALUE" >> "$f"; prev=$MON_VALUE; fi
      nap "$iv"
    done ) &
}
monitor_stop() { touch "/tmp/mon-$1.log.stop"; }
# monitor_first NAME FROM REGEX: uptime of the first logged value after FROM matching REGEX
monitor_first() { awk -v a="$2" -v re="$3" '$1>=a { v=$0; sub(/^[^ ]* /,"",v); if (v ~ re) {print $1; exit} }' "/tmp/mon-$1.log"; }
monitor_show() { sed "s/^/  [$1] /" "/tmp/mon-$1.log"; }
# kernel_bug: the first kernel BUG/oops line in dmesg, if any
kernel_bug() { dmesg | grep -m1 -E 'kernel BUG|list_add (double add|corruption)|Oops|general protection|BUG:'; }

# ---- the project ---------------------------------------------------------------------------
# srp_nbd ARGS...: run the built CLI with the host's node
srp_nbd() { node "$SRP_NBD_CLI" "$@"; }
# daemon_start [ARGS...]: `srp-nbd daemon ARGS` in the background, log in $OUT_DIR/daemon.log
# (kept on the host); DAEMON_PID. daemon_kill9: kill -9 it (the restart scenario).
daemon_start() {
  node "$SRP_NBD_CLI" daemon "$@" >>"$OUT_DIR/daemon.log" 2>&1 &
  DAEMON_PID=$!
}
# daemon_config: a minimal daemon config with its state under /tmp; prints its path.
# DAEMON_CONFIG_EXTRA: more top-level members, e.g. '"memory": { "lock": false }'
daemon_config() {
  mkdir -p /tmp/srpnbd/state
  echo "{ \"state_dir\": \"/tmp/srpnbd/state\"${DAEMON_CONFIG_EXTRA:+, $DAEMON_CONFIG_EXTRA} }" > /tmp/srpnbd/config.json
  echo /tmp/srpnbd/config.json
}
# daemon_up: start the daemon on a fresh daemon_config (path in DAEMON_CONFIG) and wait until
# its control socket answers (PASS/FAIL daemon-ready)
daemon_up() {
  DAEMON_CONFIG=$(daemon_config)
  daemon_start --config "$DAEMON_CONFIG"
  check daemon-ready wait_for 90 srp_nbd list
}
# attach_nbd ID ADDRESS nbdN [OPTIONS...]: `srp-nbd attach ADDRESS --id ID --device /dev/nbdN
# OPTIONS...`, then wait for the kernel connection (PASS/FAIL attach)
attach_nbd() {
  srp_nbd attach "$2" --id "$1" --device "/dev/$3" "${@:4}" || fail attach-cmd "srp-nbd attach exited $?"
  check attach wait_for 60 nbd_connected "$3"
}
# epoch_ms: wall clock in ms, the clock of the daemon's log lines (pino "time")
epoch_ms() { date +%s%3N; }
# daemon_log_first SINCE_MS REGEX: the "time" (ms) of the first daemon.log line at or after
# SINCE_MS that matches REGEX. Timings taken from the daemon's own log do not include the
# seconds a CLI call costs under TCG. The time is printed as the log has it: mawk (Debian's awk)
# prints a number like 1732560000123 as 1.73256e+12.
daemon_log_first() {
  awk -v s="$1" -v re="$2" 'match($0, /"time":[0-9]+/) { ts = substr($0, RSTART + 7, RLENGTH - 7)
    if (ts + 0 >= s + 0 && $0 ~ re) { print ts; exit } }' "$OUT_DIR/daemon.log"
}
# ms_between A_MS B_MS: seconds from A to B, two decimals
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1000 }'; }
# target_state_is ID STATE: the daemon reports target ID's transport state as STATE
target_state_is() { srp_nbd status "$1" --json 2>/dev/null | grep -Eq "\"state\": ?\"$2\""; }
# target_outage ID: blocked or fail-fast
target_outage() { target_state_is "$1" blocked || target_state_is "$1" fail-fast; }
daemon_kill9() { [ -n "${DAEMON_PID:-}" ] && kill -9 "$DAEMON_PID" 2>/dev/null; wait "$DAEMON_PID" 2>/dev/null; DAEMON_PID=; }
daemon_stop() { [ -n "${DAEMON_PID:-}" ] && kill "$DAEMON_PID" 2>/dev/null && wait_for 20 bash -c "! kill -0 $DAEMON_PID"; DAEMON_PID=; }
# nbd_connected nbdN: the kernel has a live NBD connection on /dev/nbdN (sysfs pid exists)
nbd_connected() { [ -e "/sys/block/${1##*/}/pid" ]; }
# nbd_size_bytes nbdN: device size in bytes (0 when not connected)
nbd_size_bytes() { local s; sysfs_read s "/sys/block/${1##*/}/size" 0; echo $((s * 512)); }

# ---- kernel ib_srp (baseline) ---------------------------------------------------------------
# kib_srp_login P [ib_srp module args...]: kernel initiator login to path P's target
kib_srp_login() {
  local p=$1; shift
  modprobe sd_mod; modprobe sg
  lsmod | grep -q '^ib_srp ' || modprobe ib_srp "$@" || return 1
  echo "$(srp_target_string "$p"),initiator_ext=$(printf '%016x' $((p+1)))" \
    > "/sys/class/infiniband_srp/srp-$(ini_rxe "$p")-1/add_target"
}
# kib_srp_have N: at least N ib_srp disks exist
kib_srp_have() { [ "$(kib_srp_disks | wc -l)" -ge "$1" ]; }
# kib_srp_disks: sdX names of disks behind ib_srp, with their unit serial
kib_srp_disks() {
  local d h
  for d in /sys/block/sd*; do
    [ -e "$d" ] || continue
    h=$(readlink -f "$d/device" | grep -o 'host[0-9]*' | head -1)
    [ "$(cat "/sys/class/scsi_host/$h/proc_name" 2>/dev/null)" = ib_srp ] && basename "$d"
  done
}

# ---- dm-multipath (kernel baseline) ---------------------------------------------------------
# mpath_start CONF_TEXT: multipathd in the guest with CONF_TEXT as /etc/multipath.conf. The guest's
# root is an overlay whose upper layer is the guest's tmpfs, so the file never reaches the host's
# /etc (refused if / is not that overlay). Loads dm_multipath, dm_round_robin and scsi_dh_alua,
# starts systemd-udevd if none runs and replays the block devices' add events (multipathd uses
# only devices udev has initialized, and 60-multipath.rules marks the paths), then multipathd in the foreground of a background job, its log in $OUT_DIR/multipathd.log.
mpath_start() {
  awk '$2 == "/" && $3 == "overlay" {f=1} END {exit !f}' /proc/mounts ||
    { log "mpath_start: / is not the guest's overlay: refusing to write /etc/multipath.conf"; return 1; }
  printf '%s\n' "$1" > /etc/multipath.conf || return 1
  modprobe dm_multipath && modprobe dm_round_robin || return 1
  modprobe scsi_dh_alua 2>/dev/null
  if ! pgrep -x systemd-udevd >/dev/null; then
    /lib/systemd/systemd-udevd --daemon --resolve-names=never || return 1
  fi
  wait_for 10 udevadm control --ping || return 1
  udevadm trigger --action=add --subsystem-match=block && udevadm settle -t 30   # disks seen before udevd
  multipathd -d -v2 >>"$OUT_DIR/multipathd.log" 2>&1 &
  MPATHD_PID=$!
  wait_for 30 multipathd show daemon
}
mpath_stop() { [ -n "${MPATHD_PID:-}" ] && kill "$MPATHD_PID" 2>/dev/null; MPATHD_PID=; }
# mpath_map: name of the (first) multipath map
mpath_map() { dmsetup ls --target multipath 2>/dev/null | awk '$1 != "No" && $2 ~ /^\(/ {print $1; exit}'; }  # "name (254, 0)"
# mpath_active MAP N: MAP exists and N of its paths are active ("A" in dmsetup status)
mpath_active() {
  [ "$(dmsetup status "$1" 2>/dev/null | awk '{for (i=1;i<NF;i++) if ($i ~ /^[0-9]+:[0-9]+$/ && $(i+1) == "A") n++} END {print n+0}')" -ge "$2" ]
}
# sd_writes VAR sdX: VAR = completed writes of /sys/block/sdX (builtins only)
sd_writes() { local a b c d e; { read -r a b c d e _ <"/sys/block/$2/stat"; } 2>/dev/null || e=0; printf -v "$1" '%s' "$e"; }
# kib_srp_path sdX: the path (0, 1, ...) an ib_srp disk logged in over (its host's local IB device)
kib_srp_path() {
  local h dev; h=$(readlink -f "/sys/block/$1/device" | grep -o 'host[0-9]*' | head -n1)
  dev=$(cat "/sys/class/scsi_host/$h/local_ib_device" 2>/dev/null) || return 1
  dev=${dev#rxe}; echo $((dev / 2))
}
# kib_srp_rport sdX: the srp_remote_ports sysfs dir of an ib_srp disk
kib_srp_rport() {
  local h; h=$(readlink -f "/sys/block/$1/device" | grep -o 'host[0-9]*' | head -n1)
  echo "/sys/class/srp_remote_ports/port-${h#host}:1"
}
