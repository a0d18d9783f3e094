/*
 * The guest-side probes of `npm run bench:failover` (test/vm/scenarios/bench-failover.sh).
 *
 *   failover-probe write DEV LOG [INTERVAL_MS=20] [BLOCKS=1024]
 *       4 KiB O_DIRECT writes to DEV, one every INTERVAL_MS (block i % BLOCKS, a pattern naming
 *       the write), each logged as "start end errno" in seconds of CLOCK_BOOTTIME (the clock of
 *       /proc/uptime); errno 0 is a completed write. Both stop when LOG.stop exists.
 *   failover-probe watch FILE LOG [INTERVAL_MS=20]
 *       reads the first line of FILE (e.g. a sysfs rport state) every INTERVAL_MS and logs
 *       "time value" whenever it changes ("gone" while it cannot be read).
 *
 * The logs are line-buffered (each line one write()).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void nap(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static int stopped(const char *log) {
  char p[4096];
  snprintf(p, sizeof p, "%s.stop", log);
  return access(p, F_OK) == 0;
}

static int writer(const char *dev, const char *log, long iv, long blocks) {
  FILE *out = fopen(log, "w");
  if (!out) return perror(log), 1;
  setvbuf(out, NULL, _IOLBF, 0);
  void *buf;
  if (posix_memalign(&buf, 4096, 4096)) return 1;
  for (long i = 0; !stopped(log); i++) {
    memset(buf, 0, 4096);
    snprintf(buf, 4096, "failover-probe write %ld\n", i);
    double t0 = now();
    int err = 0;
    /* opened per write: a device that was replaced under the same name is written, not the old one */
    int fd = open(dev, O_WRONLY | O_DIRECT);
    if (fd < 0) err = errno;
    else {
      ssize_t n = pwrite(fd, buf, 4096, (off_t)(i % blocks) * 4096);
      if (n != 4096) err = n < 0 ? errno : EIO;
      close(fd);
    }
    fprintf(out, "%.3f %.3f %d\n", t0, now(), err);
    nap(iv);
  }
  return 0;
}

static int watcher(const char *file, const char *log, long iv) {
  FILE *out = fopen(log, "w");
  if (!out) return perror(log), 1;
  setvbuf(out, NULL, _IOLBF, 0);
  char prev[256] = "", cur[256];
  while (!stopped(log)) {
    int fd = open(file, O_RDONLY);
    ssize_t n = fd < 0 ? -1 : read(fd, cur, sizeof cur - 1);
    if (fd >= 0) close(fd);
    if (n <= 0) strcpy(cur, "gone");
    else {
      cur[n] = 0;
      cur[strcspn(cur, "\n")] = 0;
    }
    if (strcmp(cur, prev) != 0) {
      fprintf(out, "%.3f %s\n", now(), cur);
      strcpy(prev, cur);
    }
    nap(iv);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 4 && strcmp(argv[1], "write") == 0)
    return writer(argv[2], argv[3], argc > 4 ? atol(argv[4]) : 20, argc > 5 ? atol(argv[5]) : 1024);
  if (argc >= 4 && strcmp(argv[1], "watch") == 0) return watcher(argv[2], argv[3], argc > 4 ? atol(argv[4]) : 20);
  fprintf(stderr, "usage: %s write DEV LOG [INTERVAL_MS [BLOCKS]] | watch FILE LOG [INTERVAL_MS]\n", argv[0]);
  return 2;
}
