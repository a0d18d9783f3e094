#!/bin/bash
# The daemon against a silent black hole in the guest (issue 7 scenario 3): netem drops 100 %
# of path 0's packets with the link up (no PORT_ERR, no CM event). The keep-alive probe
# (keepalive_interval 0.25 s; ACK timeout 14 x retry 6 = ~0.5 s) must notice, the port blocks,
# fails fast at fast_io_fail_tmo (5 s) and comes back to running, on the same /dev/nbd0, once
# the path delivers again.
# Run: test/vm/boot.sh test/vm/scenarios/daemon-blackhole.sh
# vm-timeout: 1500
. "$(dirname "$0")/../guest-lib.sh"
setup_bench 1 ram:64:512
ADDR=$(srp_target_string 0)

daemon_up
attach_nbd t0 "$ADDR" nbd0
MM1=$(majmin /dev/nbd0)

T0=$(now)
blackhole 0 || die "netem"
check detected wait_for 30 target_outage t0
timing detect "$(since "$T0")" "black hole -> port blocked (includes srp_nbd polling under TCG)"
check fail-fast wait_for 30 target_state_is t0 fail-fast
timing fail-fast "$(since "$T0")" "black hole -> fail-fast (fast_io_fail_tmo 5 s)"
expect_fail eio-while-down dd if=/dev/nbd0 of=/dev/null bs=4k count=1 iflag=direct status=none
T1=$(now)
unblackhole 0
check recovered wait_for 120 target_state_is t0 running
timing recover "$(since "$T1")" "path delivers again -> running"
check same-device test "$(majmin /dev/nbd0)" = "$MM1"
check fio-after fio_verify /dev/nbd0 4M
srp_nbd detach t0 || fail detach-cmd "srp-nbd detach exited $?"
daemon_stop
finish
