/*
 * A yardstick for `npm run bench:nbd`, not part of srp-nbd: the least an NBD server can do for
 * fio's nbd engine. One process, one connection at a time, blocking reads, a RAM export, and
 * every reply of one input batch in one writev (READ data straight from the export, no copy).
 * What fio reaches against it shows how far the client itself lets any server go on this machine.
 *
 * It speaks just what libnbd asks for: fixed newstyle, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_GO /
 * NBD_OPT_INFO (NBD_INFO_EXPORT only), NBD_OPT_ABORT; READ, WRITE, FLUSH, DISC. Anything else,
 * or a request outside the export, ends the connection.
 *
 *   cc -O2 -o minimal-server bench/minimal-server.c
 *   minimal-server /path/to.sock SIZE_MIB      or      minimal-server PORT SIZE_MIB  (127.0.0.1)
 */
#include <endian.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <unistd.h>

/* Constants as named in the NBD protocol document. */
#define NBDMAGIC 0x4e42444d41474943ULL
#define IHAVEOPT 0x49484156454F5054ULL
#define NBD_OPT_REPLY_MAGIC 0x3e889045565a9ULL
#define NBD_REQUEST_MAGIC 0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC 0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu
#define NBD_FLAG_FIXED_NEWSTYLE 1
#define NBD_FLAG_NO_ZEROES 2
#define NBD_FLAG_HAS_FLAGS 1
#define NBD_FLAG_SEND_FLUSH 4
#define NBD_FLAG_SEND_FUA 8
#define NBD_OPT_ABORT 2
#define NBD_OPT_INFO 6
#define NBD_OPT_GO 7
#define NBD_OPT_STRUCTURED_REPLY 8
#define NBD_REP_ACK 1
#define NBD_REP_INFO 3
#define NBD_REP_ERR_UNSUP 0x80000001u
#define NBD_INFO_EXPORT 0
#define NBD_CMD_READ 0
#define NBD_CMD_WRITE 1
#define NBD_CMD_DISC 2
#define NBD_CMD_FLUSH 3
#define NBD_REPLY_FLAG_DONE 1
#define NBD_REPLY_TYPE_OFFSET_DATA 1
#define REQUEST_SIZE 28
#define MAX_REQUEST (32u << 20)
#define MAX_IOV 1024

static unsigned char *disk;
static uint64_t disk_size;

static int read_all(int fd, void *buf, size_t n) {
  for (size_t done = 0; done < n;) {
    ssize_t r = read(fd, (char *)buf + done, n - done);
    if (r <= 0) return -1;
    done += (size_t)r;
  }
  return 0;
}

static int write_all(int fd, const void *buf, size_t n) {
  for (size_t done = 0; done < n;) {
    ssize_t r = write(fd, (const char *)buf + done, n - done);
    if (r <= 0) return -1;
    done += (size_t)r;
  }
  return 0;
}

static void put16(unsigned char *p, uint16_t v) { v = htobe16(v); memcpy(p, &v, 2); }
static void put32(unsigned char *p, uint32_t v) { v = htobe32(v); memcpy(p, &v, 4); }
static void put64(unsigned char *p, uint64_t v) { v = htobe64(v); memcpy(p, &v, 8); }
static uint16_t get16(const unsigned char *p) { uint16_t v; memcpy(&v, p, 2); return be16toh(v); }
static uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return be32toh(v); }
static uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return be64toh(v); }

static int option_reply(int fd, uint32_t option, uint32_t type, const void *data, uint32_t len) {
  unsigned char h[20];
  put64(h, NBD_OPT_REPLY_MAGIC);
  put32(h + 8, option);
  put32(h + 12, type);
  put32(h + 16, len);
  return write_all(fd, h, sizeof h) || (len && write_all(fd, data, len)) ? -1 : 0;
}

/* Option haggling up to NBD_OPT_GO; returns whether structured replies were agreed, or -1. */
static int handshake(int fd) {
  unsigned char g[18];
  put64(g, NBDMAGIC);
  put64(g + 8, IHAVEOPT);
  put16(g + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  uint32_t client_flags;
  if (write_all(fd, g, sizeof g) || read_all(fd, &client_flags, 4)) return -1;
  int structured = 0;
  for (;;) {
    unsigned char h[16], data[4096 + 64];
    if (read_all(fd, h, sizeof h) || get64(h) != IHAVEOPT) return -1;
    uint32_t option = get32(h + 8), len = get32(h + 12);
    if (len > sizeof data || read_all(fd, data, len)) return -1;
    switch (option) {
      case NBD_OPT_STRUCTURED_REPLY:
        structured = 1;
        if (option_reply(fd, option, NBD_REP_ACK, NULL, 0)) return -1;
        break;
      case NBD_OPT_INFO:
      case NBD_OPT_GO: {
        unsigned char info[12];
        put16(info, NBD_INFO_EXPORT);
        put64(info + 2, disk_size);
        put16(info + 10, NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA);
        if (option_reply(fd, option, NBD_REP_INFO, info, sizeof info) || option_reply(fd, option, NBD_REP_ACK, NULL, 0)) return -1;
        if (option == NBD_OPT_GO) return structured;
        break;
      }
      case NBD_OPT_ABORT:
        option_reply(fd, option, NBD_REP_ACK, NULL, 0);
        return -1;
      default:
        if (option_reply(fd, option, NBD_REP_ERR_UNSUP, NULL, 0)) return -1;
    }
  }
}

/* Transmission: parse every whole request in the input, answer them all with one writev. */
static void transmission(int fd, int structured) {
  static unsigned char in[MAX_REQUEST + 2 * 65536];
  static unsigned char headers[MAX_IOV * 32];
  static struct iovec iov[MAX_IOV];
  size_t have = 0;
  for (;;) {
    size_t pos = 0, hpos = 0;
    int n = 0, stop = 0;
    while (have - pos >= REQUEST_SIZE && n + 2 <= MAX_IOV) {
      const unsigned char *q = in + pos;
      uint16_t type = get16(q + 6);
      uint64_t offset = get64(q + 16);
      uint32_t length = get32(q + 24);
      if (get32(q) != NBD_REQUEST_MAGIC || type == NBD_CMD_DISC) { stop = 1; break; }
      if (type != NBD_CMD_FLUSH && (length > MAX_REQUEST || offset > disk_size || length > disk_size - offset)) { stop = 1; break; }
      if (type == NBD_CMD_WRITE) {
        if (have - pos < REQUEST_SIZE + (size_t)length) break; /* payload not all here yet */
        memcpy(disk + offset, q + REQUEST_SIZE, length);
        pos += length;
      } else if (type != NBD_CMD_READ && type != NBD_CMD_FLUSH) {
        stop = 1;
        break;
      }
      pos += REQUEST_SIZE;
      unsigned char *h = headers + hpos;
      if (type == NBD_CMD_READ && structured) {
        put32(h, NBD_STRUCTURED_REPLY_MAGIC);
        put16(h + 4, NBD_REPLY_FLAG_DONE);
        put16(h + 6, NBD_REPLY_TYPE_OFFSET_DATA);
        memcpy(h + 8, q + 8, 8); /* cookie */
        put32(h + 16, 8 + length);
        put64(h + 20, offset);
        iov[n++] = (struct iovec){h, 28};
        hpos += 28;
      } else {
        put32(h, NBD_SIMPLE_REPLY_MAGIC);
        put32(h + 4, 0);
        memcpy(h + 8, q + 8, 8);
        iov[n++] = (struct iovec){h, 16};
        hpos += 16;
      }
      if (type == NBD_CMD_READ) iov[n++] = (struct iovec){disk + offset, length};
    }
    /* Answers leave before a disconnect; the socket is blocking, so writev returns once it has taken some. */
    for (int i = 0; i < n;) {
      ssize_t w = writev(fd, iov + i, n - i);
      if (w <= 0) return;
      while (i < n && (size_t)w >= iov[i].iov_len) w -= (ssize_t)iov[i++].iov_len;
      if (i < n) {
        iov[i].iov_base = (char *)iov[i].iov_base + w;
        iov[i].iov_len -= (size_t)w;
      }
    }
    if (stop) return;
    memmove(in, in + pos, have - pos);
    have -= pos;
    if (n > 0) continue; /* more whole requests may be waiting behind the batch limit */
    ssize_t r = read(fd, in + have, sizeof in - have);
    if (r <= 0) return;
    have += (size_t)r;
  }
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s SOCKET_PATH|PORT SIZE_MIB\n", argv[0]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN); /* a client gone mid-reply ends its connection, not the server */
  disk_size = strtoull(argv[2], NULL, 10) << 20;
  disk = calloc(1, disk_size);
  int one = 1, listener;
  if (argv[1][0] == '/') {
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", argv[1]);
    unlink(argv[1]);
    listener = socket(AF_UNIX, SOCK_STREAM, 0);
    if (bind(listener, (struct sockaddr *)&a, sizeof a) < 0) return perror("bind"), 1;
  } else {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1])), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    listener = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&a, sizeof a) < 0) return perror("bind"), 1;
  }
  if (!disk || listen(listener, 16) < 0) return perror("listen"), 1;
  for (;;) {
    int fd = accept(listener, NULL, NULL);
    if (fd < 0) continue;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* fails harmlessly on unix sockets */
    int structured = handshake(fd);
    if (structured >= 0) transmission(fd, structured);
    close(fd);
  }
}
