#!/bin/sh
# PID 1 of the system test guest, after the initramfs switch_root (root = tmpfs overlay
# over the host root). Mounts the pseudo file systems, reads the job that boot.sh wrote
# to /mnt/out/job.env, runs the job script with bash, stores its exit status in
# /mnt/out/rc (the host's verdict) and powers off. Never returns.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8
mount -t proc proc /proc
mount -t sysfs sysfs /sys
[ -e /dev/null ] || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
# what udev would create: bash's process substitution <(...) needs /dev/fd
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# /tmp stays the overlay (host /tmp visible, writes go to the tmpfs upper layer)
mount -t tmpfs tmpfs /run
mkdir -p /run/lock
mount -t configfs configfs /sys/kernel/config 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
hostname srpnbd-guest
ip link set lo up
ulimit -c 0

uptime_s() { cut -d' ' -f1 /proc/uptime; }
halt_now() {
  sync & sleep 1            # (sync can block on I/O a test left stuck: do not wait for it)
  echo "[guest-init] poweroff at uptime $(uptime_s)s"
  busybox poweroff -f
  sleep 5; echo o > /proc/sysrq-trigger
}
if [ ! -r /mnt/out/job.env ]; then
  echo "[guest-init] FATAL: no /mnt/out/job.env (vmout share missing?)"; halt_now
fi
set -a; . /mnt/out/job.env; set +a
echo "$(uptime_s)" > /mnt/out/started
echo "[guest-init] up at uptime $(uptime_s)s, kernel $(uname -r), running $JOB_SCRIPT"
cd "${REPO_ROOT:-/}"
bash "$JOB_SCRIPT" </dev/null
rc=$?
echo "$rc" > /mnt/out/rc
echo "[guest-init] $JOB_SCRIPT exited rc=$rc at uptime $(uptime_s)s"
halt_now
