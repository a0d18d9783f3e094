#!/bin/bash
# The srp-nbd part of the multipath scenario alone (multipath.sh PARTS=srp-nbd, the full 20 flaps
# and 30 s outage): the CI form, as the kernel part may crash its guest. ~5 min of guest time.
# Run: test/vm/run-scenarios.sh multipath-srp-nbd
# vm-default: no
# vm-timeout: 900
export PARTS=srp-nbd
exec bash "$(dirname "$0")/multipath.sh"
