/*
 * A measuring instrument for `npm run bench:e2e`, not part of srp-nbd and never a product path: a
 * PROTOTYPE of srp-nbd's steady-state data loop written in C, to tell what of the TypeScript
 * daemon's cost is the language and what is the path (a user-space initiator behind the kernel's
 * NBD driver over soft-RoCE). No failover, no reconnect, no policy, no task management, one LUN.
 *
 * Same architecture as the daemon's steady state:
 *   - login over RDMA/CM with SRP_LOGIN_REQ as the CM REQ private data (struct srp_login_req_rdma),
 *     SRP_MULTICHAN_SINGLE, SRP-2 immediate data requested, initiator port id
 *     initiator_ext ‖ the source port's GUID, target port id id_ext ‖ ioc_guid (as ib_srp);
 *   - QUEUE command slots preallocated, each an IU buffer and a data buffer, registered once
 *     (one region for all IUs, one for all data); credits (req_lim) kept as the daemon keeps them,
 *     SRP_TSK_MGMT_SQ_SIZE in reserve;
 *   - SRP_CMD with a direct data descriptor into the slot (READ(16)/WRITE(16), SYNCHRONIZE
 *     CACHE(10) for NBD_CMD_FLUSH), writes up to MAX_IMM_DATA as immediate data;
 *   - sends signalled once per SIGNAL_EVERY or at half a send queue, so a command costs one
 *     completion (its SRP_RSP);
 *   - one thread, epoll on the NBD socket and the CQ's completion channel (event-driven: the
 *     daemon's wake-ups); with --poll it busy-polls the CQ and the socket while a command is in
 *     flight and blocks in epoll only when none is (so it spins only while it has I/O to do);
 *   - every request of one socket read posted as one chained ibv_post_send, every reply of one
 *     CQ poll written with one writev, READ data straight from the slot.
 * The kernel gets the other end of a socketpair through the NBD ioctls (a child process, forked
 * before any RDMA resource exists, blocks in NBD_DO_IT and sleeps there); the device's
 * max_sectors_kb is set to the slot size (512 KiB, like ib_srp and the daemon), so every NBD
 * request is one SRP command.
 *
 *   cc -O2 -Wall -o native-loop bench/native-loop.c -lrdmacm -libverbs
 *   native-loop [--poll] SRC_IP DST_IP CM_PORT SERVICE_GUID INITIATOR_EXT /dev/nbdN
 *     SERVICE_GUID: ib_srpt's srpt_service_guid (id_ext and ioc_guid); INITIATOR_EXT: the upper
 *     half of the initiator port id (give each initiator of the same port its own).
 * It prints "ready SIZE BLOCK_SIZE" once the device is live and exits when the kernel disconnects
 * (nbd-client -d /dev/nbdN) or on any error (the device then fails its I/O).
 */
#define _GNU_SOURCE
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <infiniband/verbs.h>
#include <linux/nbd.h>
#include <netdb.h>
#include <rdma/rdma_cma.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

/* SRP, as named in include/scsi/srp.h (and drivers/infiniband/ulp/srp/ib_srp.h). */
#define SRP_LOGIN_REQ 0x00
#define SRP_CMD 0x02
#define SRP_LOGIN_RSP 0xc0
#define SRP_RSP 0xc1
#define SRP_LOGIN_REJ 0xc2
#define SRP_BUF_FORMAT_DIRECT (1 << 1)
#define SRP_BUF_FORMAT_INDIRECT (1 << 2)
#define SRP_NO_DATA_DESC 0
#define SRP_DATA_DESC_DIRECT 1
#define SRP_DATA_DESC_IMM 3
#define SRP_MULTICHAN_SINGLE 0
#define SRP_IMMED_REQUESTED 0x80
#define SRP_LOGIN_RSP_IMMED_SUPP 0x80
#define SRP_RSP_FLAG_SNSVALID (1 << 1)
#define SRP_LOGIN_REQ_RDMA_LEN 56 /* struct srp_login_req_rdma */
#define SRP_LOGIN_RSP_LEN 52
#define SRP_CMD_LEN 48
#define SRP_RSP_LEN 36
#define SRP_DIRECT_BUF_LEN 16
#define SRP_IMM_BUF_LEN 4
#define SRP_MAX_ADD_CDB_LEN 16
#define SRP_IMM_DATA_OFFSET (SRP_CMD_LEN + SRP_MAX_ADD_CDB_LEN + SRP_IMM_BUF_LEN)
#define SRP_TSK_MGMT_SQ_SIZE 1
#define SRP_CMD_SIMPLE_Q 0
/* SCSI */
#define READ_16 0x88
#define WRITE_16 0x8a
#define SYNCHRONIZE_CACHE 0x35
#define SERVICE_ACTION_IN_16 0x9e
#define SAI_READ_CAPACITY_16 0x10
#define SAM_STAT_GOOD 0x00
#define SAM_STAT_CHECK_CONDITION 0x02
/* NBD (linux/nbd.h has the ioctls, flags, magics and command types) */
#define NBD_REQUEST_LEN 28
#define NBD_REPLY_LEN 16

/* The prototype's sizes: the daemon's defaults (queue_size 62, 8 KiB immediate data, 512 KiB commands). */
#define QUEUE 62
#define MAX_IMM_DATA 8192
#define IU_SIZE 8448 /* >= SRP_IMM_DATA_OFFSET + MAX_IMM_DATA, and the receive buffer size */
#define REQ_IT_IU_LEN (SRP_IMM_DATA_OFFSET + MAX_IMM_DATA)
#define SLOT_DATA (512u << 10)
#define MAX_SECTORS_KB (SLOT_DATA >> 10)
#define RECV_DEPTH (QUEUE + 4)
#define SEND_DEPTH 256
#define SIGNAL_EVERY 16
#define IN_BUF (2 * SLOT_DATA + 65536)
#define ACK_TIMEOUT 14
#define RETRY_COUNT 6
#define RNR_RETRY_COUNT 7

struct slot {
  int busy;
  uint64_t handle; /* the NBD request's */
  uint32_t nbd_type;
  uint32_t len; /* data bytes */
  unsigned char *iu;
  unsigned char *data;
};

static struct slot slots[QUEUE];
static int free_slots[QUEUE], nfree;
static unsigned char *iu_area, *data_area, *recv_area;
static struct ibv_mr *iu_mr, *data_mr, *recv_mr;
static struct rdma_cm_id *cm;
static struct ibv_cq *cq;
static struct ibv_comp_channel *comp;
static int req_lim, imm_ok, sq_used, unsignalled, polling;
static uint32_t max_ti_iu_len, block_size;
static uint64_t blocks;
static int nbd_fd;
static unsigned char in_buf[IN_BUF];
static size_t in_have;

static void die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "native-loop: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  exit(1);
}

static void put16(unsigned char *p, uint16_t v) { v = htobe16(v); memcpy(p, &v, 2); }
static void put32(unsigned char *p, uint32_t v) { v = htobe32(v); memcpy(p, &v, 4); }
static void put64(unsigned char *p, uint64_t v) { v = htobe64(v); memcpy(p, &v, 8); }
static uint32_t get32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return be32toh(v); }
static uint64_t get64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return be64toh(v); }

static struct rdma_cm_event *cm_wait(enum rdma_cm_event_type want, const char *what) {
  struct rdma_cm_event *ev;
  if (rdma_get_cm_event(cm->channel, &ev)) die("rdma_get_cm_event: %s", strerror(errno));
  if (ev->event != want && !(want == RDMA_CM_EVENT_ESTABLISHED && ev->event == RDMA_CM_EVENT_REJECTED))
    die("%s: %s (status %d)", what, rdma_event_str(ev->event), ev->status);
  return ev;
}

static void post_recv(int i) {
  struct ibv_sge sge = {(uintptr_t)(recv_area + (size_t)i * IU_SIZE), IU_SIZE, recv_mr->lkey};
  struct ibv_recv_wr wr = {.wr_id = (uint64_t)i, .sg_list = &sge, .num_sge = 1}, *bad;
  if (ibv_post_recv(cm->qp, &wr, &bad)) die("ibv_post_recv");
}

/* Registers the slots, connects and logs in. */
static void login(const char *src, const char *dst, const char *port, uint64_t guid, uint64_t initiator_ext) {
  struct rdma_event_channel *ec = rdma_create_event_channel();
  if (!ec || rdma_create_id(ec, &cm, NULL, RDMA_PS_TCP)) die("rdma_create_id: %s", strerror(errno));
  struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM}, *sa, *da;
  if (getaddrinfo(src, NULL, &hints, &sa) || getaddrinfo(dst, port, &hints, &da)) die("bad address");
  if (rdma_resolve_addr(cm, sa->ai_addr, da->ai_addr, 2000)) die("rdma_resolve_addr: %s", strerror(errno));
  rdma_ack_cm_event(cm_wait(RDMA_CM_EVENT_ADDR_RESOLVED, "address"));
  if (rdma_resolve_route(cm, 2000)) die("rdma_resolve_route: %s", strerror(errno));
  rdma_ack_cm_event(cm_wait(RDMA_CM_EVENT_ROUTE_RESOLVED, "route"));

  struct ibv_pd *pd = ibv_alloc_pd(cm->verbs);
  comp = ibv_create_comp_channel(cm->verbs);
  if (!pd || !comp) die("ibv_alloc_pd / ibv_create_comp_channel");
  cq = ibv_create_cq(cm->verbs, SEND_DEPTH + RECV_DEPTH, NULL, comp, 0);
  if (!cq) die("ibv_create_cq: %s", strerror(errno));
  struct ibv_qp_init_attr qa = {.send_cq = cq,
                                .recv_cq = cq,
                                .qp_type = IBV_QPT_RC,
                                .cap = {.max_send_wr = SEND_DEPTH, .max_recv_wr = RECV_DEPTH, .max_send_sge = 1, .max_recv_sge = 1}};
  if (rdma_create_qp(cm, pd, &qa)) die("rdma_create_qp: %s", strerror(errno));

  int remote = IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ;
  if (posix_memalign((void **)&iu_area, 4096, (size_t)QUEUE * IU_SIZE) ||
      posix_memalign((void **)&data_area, 4096, (size_t)QUEUE * SLOT_DATA) ||
      posix_memalign((void **)&recv_area, 4096, (size_t)RECV_DEPTH * IU_SIZE))
    die("out of memory");
  memset(iu_area, 0, (size_t)QUEUE * IU_SIZE);
  memset(data_area, 0, (size_t)QUEUE * SLOT_DATA);
  iu_mr = ibv_reg_mr(pd, iu_area, (size_t)QUEUE * IU_SIZE, IBV_ACCESS_LOCAL_WRITE);
  data_mr = ibv_reg_mr(pd, data_area, (size_t)QUEUE * SLOT_DATA, remote);
  recv_mr = ibv_reg_mr(pd, recv_area, (size_t)RECV_DEPTH * IU_SIZE, IBV_ACCESS_LOCAL_WRITE);
  if (!iu_mr || !data_mr || !recv_mr) die("ibv_reg_mr: %s", strerror(errno));
  for (int i = 0; i < QUEUE; i++) {
    slots[i].iu = iu_area + (size_t)i * IU_SIZE;
    slots[i].data = data_area + (size_t)i * SLOT_DATA;
    free_slots[nfree++] = QUEUE - 1 - i;
  }
  for (int i = 0; i < RECV_DEPTH; i++) post_recv(i);

  /* initiator port id: initiator_ext ‖ the interface id of the source port's GID 0 (its GUID) */
  union ibv_gid gid;
  if (ibv_query_gid(cm->verbs, cm->port_num, 0, &gid)) die("ibv_query_gid");
  unsigned char req[SRP_LOGIN_REQ_RDMA_LEN] = {0};
  put64(req, 0);                                     /* tag */
  put16(req + 8, SRP_BUF_FORMAT_DIRECT | SRP_BUF_FORMAT_INDIRECT);
  req[10] = SRP_MULTICHAN_SINGLE | SRP_IMMED_REQUESTED; /* req_flags */
  req[11] = SRP_LOGIN_REQ;
  put32(req + 12, REQ_IT_IU_LEN);
  put64(req + 16, initiator_ext);
  memcpy(req + 24, gid.raw + 8, 8);
  put64(req + 32, guid); /* target port id: id_ext ‖ ioc_guid */
  put64(req + 40, guid);
  put16(req + 48, SRP_IMM_DATA_OFFSET);

  uint8_t ack = ACK_TIMEOUT;
  rdma_set_option(cm, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &ack, sizeof ack);
  struct ibv_device_attr attr;
  if (ibv_query_device(cm->verbs, &attr)) die("ibv_query_device");
  struct rdma_conn_param cp = {.private_data = req,
                               .private_data_len = sizeof req,
                               .responder_resources = (uint8_t)(attr.max_qp_rd_atom < 16 ? attr.max_qp_rd_atom : 16),
                               .initiator_depth = (uint8_t)(attr.max_qp_init_rd_atom < 16 ? attr.max_qp_init_rd_atom : 16),
                               .retry_count = RETRY_COUNT,
                               .rnr_retry_count = RNR_RETRY_COUNT};
  if (rdma_connect(cm, &cp)) die("rdma_connect: %s", strerror(errno));
  struct rdma_cm_event *ev = cm_wait(RDMA_CM_EVENT_ESTABLISHED, "login");
  const unsigned char *rsp = ev->param.conn.private_data;
  if (ev->event == RDMA_CM_EVENT_REJECTED) {
    if (rsp && ev->param.conn.private_data_len >= 8 && rsp[0] == SRP_LOGIN_REJ)
      die("SRP_LOGIN_REJ, reason 0x%08x", get32(rsp + 4));
    die("login rejected by the CM (status %d)", ev->status);
  }
  if (!rsp || ev->param.conn.private_data_len < SRP_LOGIN_RSP_LEN || rsp[0] != SRP_LOGIN_RSP)
    die("no SRP_LOGIN_RSP in the CM REP");
  req_lim = (int)get32(rsp + 4);
  max_ti_iu_len = get32(rsp + 20);
  imm_ok = (rsp[26] & SRP_LOGIN_RSP_IMMED_SUPP) && get32(rsp + 16) >= REQ_IT_IU_LEN;
  rdma_ack_cm_event(ev);
  if (max_ti_iu_len > IU_SIZE) die("max_ti_iu_len %u above the receive buffer", max_ti_iu_len);
  fprintf(stderr, "native-loop: logged in: req_lim %d, max_ti_iu_len %u, immediate data %s\n", req_lim, max_ti_iu_len,
          imm_ok ? "yes" : "no");
}

/* Fills slot s's SRP_CMD; returns its length. data_out: SRP_DATA_DESC_* of the data-out buffer. */
static uint32_t build_cmd(struct slot *s, int idx, const unsigned char *cdb, int data_in, int data_out, uint32_t len) {
  unsigned char *b = s->iu;
  memset(b, 0, SRP_IMM_DATA_OFFSET); /* the command, a descriptor, an srp_imm_buf */
  b[0] = SRP_CMD;
  b[5] = (uint8_t)((data_out << 4) | data_in);
  put64(b + 8, (uint64_t)idx); /* tag: the slot */
  b[29] = SRP_CMD_SIMPLE_Q;    /* LUN 0: bytes 20..27 zero */
  memcpy(b + 32, cdb, 16);
  unsigned char *d = b + SRP_CMD_LEN;
  if (data_out == SRP_DATA_DESC_IMM) {
    put32(d, len); /* struct srp_imm_buf; the caller puts the data at SRP_IMM_DATA_OFFSET */
    return SRP_IMM_DATA_OFFSET + len;
  }
  if (data_out == SRP_DATA_DESC_DIRECT || data_in == SRP_DATA_DESC_DIRECT) {
    put64(d, (uintptr_t)s->data);
    put32(d + 8, data_mr->rkey);
    put32(d + 12, len);
    d += SRP_DIRECT_BUF_LEN;
  }
  return (uint32_t)(d - b);
}

static struct ibv_send_wr wrs[QUEUE];
static struct ibv_sge sges[QUEUE];
static int nwr;

static void queue_send(int idx, uint32_t iu_len) {
  struct ibv_send_wr *wr = &wrs[nwr];
  sges[nwr] = (struct ibv_sge){(uintptr_t)slots[idx].iu, iu_len, iu_mr->lkey};
  *wr = (struct ibv_send_wr){.wr_id = 0, .sg_list = &sges[nwr], .num_sge = 1, .opcode = IBV_WR_SEND};
  if (nwr) wrs[nwr - 1].next = wr;
  nwr++;
  req_lim--;
  sq_used++;
  unsignalled++;
}

/*
 * Posts the queued sends as one list; the last is signalled (always, or once SIGNAL_EVERY wait
 * uncovered or the queue is half full).
 */
static void flush_sends(int signal) {
  if (!nwr) return;
  struct ibv_send_wr *last = &wrs[nwr - 1], *bad;
  last->next = NULL;
  if (signal || unsignalled >= SIGNAL_EVERY || sq_used >= SEND_DEPTH / 2) {
    last->send_flags = IBV_SEND_SIGNALED;
    last->wr_id = (uint64_t)unsignalled; /* the sends this completion retires */
    unsignalled = 0;
  }
  if (ibv_post_send(cm->qp, wrs, &bad)) die("ibv_post_send");
  nwr = 0;
}

/* A command can go: a free slot, a credit beyond the task management reserve, send queue room. */
static int can_send(void) { return nfree > 0 && req_lim > SRP_TSK_MGMT_SQ_SIZE && sq_used < SEND_DEPTH - 1; }

static int writev_all(int fd, struct iovec *iov, int n) {
  while (n > 0) {
    ssize_t r = writev(fd, iov, n > IOV_MAX ? IOV_MAX : n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return -1;
    while (n > 0 && (size_t)r >= iov->iov_len) r -= (ssize_t)iov->iov_len, iov++, n--;
    if (n > 0) iov->iov_base = (char *)iov->iov_base + r, iov->iov_len -= (size_t)r;
  }
  return 0;
}

/* Takes every whole NBD request in in_buf that a slot and a credit can carry; returns 1 on NBD_CMD_DISC. */
static int take_requests(void) {
  size_t pos = 0;
  int disc = 0;
  while (in_have - pos >= NBD_REQUEST_LEN && can_send()) {
    const unsigned char *h = in_buf + pos;
    if (get32(h) != NBD_REQUEST_MAGIC) die("bad NBD request magic");
    uint32_t type = get32(h + 4) & 0xffff;
    uint64_t handle, from = get64(h + 16);
    memcpy(&handle, h + 8, 8);
    uint32_t len = get32(h + 24);
    if ((type == NBD_CMD_READ || type == NBD_CMD_WRITE) && (len > SLOT_DATA || from % block_size || len % block_size))
      die("NBD request of %u bytes at %llu: not one command", len, (unsigned long long)from);
    size_t need = NBD_REQUEST_LEN + (type == NBD_CMD_WRITE ? len : 0);
    if (in_have - pos < need) break;
    if (type == NBD_CMD_DISC) { disc = 1; pos += need; break; }
    int idx = free_slots[--nfree];
    struct slot *s = &slots[idx];
    s->busy = 1;
    s->handle = handle;
    s->nbd_type = type;
    s->len = type == NBD_CMD_READ ? len : 0;
    unsigned char cdb[16] = {0};
    uint32_t iu_len;
    if (type == NBD_CMD_READ || type == NBD_CMD_WRITE) {
      cdb[0] = type == NBD_CMD_READ ? READ_16 : WRITE_16;
      put64(cdb + 2, from / block_size);
      put32(cdb + 10, len / block_size);
      if (type == NBD_CMD_READ) {
        iu_len = build_cmd(s, idx, cdb, SRP_DATA_DESC_DIRECT, SRP_NO_DATA_DESC, len);
      } else if (imm_ok && len <= MAX_IMM_DATA) {
        iu_len = build_cmd(s, idx, cdb, SRP_NO_DATA_DESC, SRP_DATA_DESC_IMM, len);
        memcpy(s->iu + SRP_IMM_DATA_OFFSET, h + NBD_REQUEST_LEN, len);
      } else {
        memcpy(s->data, h + NBD_REQUEST_LEN, len);
        iu_len = build_cmd(s, idx, cdb, SRP_NO_DATA_DESC, SRP_DATA_DESC_DIRECT, len);
      }
    } else if (type == NBD_CMD_FLUSH) {
      cdb[0] = SYNCHRONIZE_CACHE;
      iu_len = build_cmd(s, idx, cdb, SRP_NO_DATA_DESC, SRP_NO_DATA_DESC, 0);
    } else {
      die("NBD command type %u not served by the prototype", type);
    }
    queue_send(idx, iu_len);
    pos += need;
  }
  flush_sends(0);
  memmove(in_buf, in_buf + pos, in_have - pos);
  in_have -= pos;
  return disc;
}

static struct iovec out_iov[2 * QUEUE];
static unsigned char out_hdr[QUEUE][NBD_REPLY_LEN];

/* Polls the CQ dry: SRP_RSPs become NBD replies (one writev), their slots and credits come back. */
static int poll_cq(void) {
  struct ibv_wc wc[32];
  int n, niov = 0, nrep = 0, got = 0;
  int done[QUEUE];
  while ((n = ibv_poll_cq(cq, 32, wc)) > 0) {
    got += n;
    for (int k = 0; k < n; k++) {
      if (wc[k].status != IBV_WC_SUCCESS) die("completion error: %s", ibv_wc_status_str(wc[k].status));
      if (wc[k].opcode == IBV_WC_SEND) { sq_used -= (int)wc[k].wr_id; continue; }
      const unsigned char *r = recv_area + wc[k].wr_id * IU_SIZE;
      if (r[0] != SRP_RSP || wc[k].byte_len < SRP_RSP_LEN) die("unexpected IU 0x%02x from the target", r[0]);
      uint64_t tag = get64(r + 8);
      if (tag >= QUEUE || !slots[tag].busy) die("SRP_RSP for unknown tag %llu", (unsigned long long)tag);
      req_lim += (int)get32(r + 4);
      struct slot *s = &slots[tag];
      int status = r[19];
      uint32_t err = 0;
      if (status != SAM_STAT_GOOD) {
        err = EIO;
        fprintf(stderr, "native-loop: SCSI status 0x%02x%s\n", status,
                status == SAM_STAT_CHECK_CONDITION && (r[18] & SRP_RSP_FLAG_SNSVALID) ? " (sense data)" : "");
      }
      post_recv((int)wc[k].wr_id);
      unsigned char *h = out_hdr[nrep];
      put32(h, NBD_REPLY_MAGIC);
      put32(h + 4, err);
      memcpy(h + 8, &s->handle, 8);
      out_iov[niov++] = (struct iovec){h, NBD_REPLY_LEN};
      if (s->nbd_type == NBD_CMD_READ && !err) out_iov[niov++] = (struct iovec){s->data, s->len};
      done[nrep++] = (int)tag;
    }
  }
  if (n < 0) die("ibv_poll_cq");
  if (niov && writev_all(nbd_fd, out_iov, niov)) die("NBD reply: %s", strerror(errno));
  for (int k = 0; k < nrep; k++) {
    slots[done[k]].busy = 0;
    free_slots[nfree++] = done[k];
  }
  return got;
}

/* One synchronous command during setup (READ CAPACITY); returns the SCSI status, the data in *data. */
static int setup_command(const unsigned char *cdb, uint32_t len, const unsigned char **data) {
  int idx = free_slots[--nfree];
  slots[idx].busy = 1;
  queue_send(idx, build_cmd(&slots[idx], idx, cdb, SRP_DATA_DESC_DIRECT, SRP_NO_DATA_DESC, len));
  flush_sends(1);
  for (;;) {
    struct ibv_wc wc;
    int n = ibv_poll_cq(cq, 1, &wc);
    if (n < 0 || (n && wc.status != IBV_WC_SUCCESS)) die("setup command: completion error");
    if (!n) { usleep(1000); continue; }
    if (wc.opcode == IBV_WC_SEND) { sq_used -= (int)wc.wr_id; continue; }
    const unsigned char *r = recv_area + wc.wr_id * IU_SIZE;
    if (r[0] != SRP_RSP) die("unexpected IU 0x%02x", r[0]);
    req_lim += (int)get32(r + 4);
    post_recv((int)wc.wr_id);
    slots[idx].busy = 0;
    free_slots[nfree++] = idx;
    *data = slots[idx].data;
    return r[19];
  }
}

static void read_capacity(void) {
  unsigned char cdb[16] = {SERVICE_ACTION_IN_16, SAI_READ_CAPACITY_16};
  put32(cdb + 10, 32);
  for (int tries = 0;; tries++) { /* a unit attention (new nexus) answers the first one */
    const unsigned char *d;
    int st = setup_command(cdb, 32, &d);
    if (st == SAM_STAT_GOOD) {
      blocks = get64(d) + 1;
      block_size = get32(d + 8);
      if (!block_size || SLOT_DATA % block_size) die("block size %u", block_size);
      return;
    }
    if (tries == 5) die("READ CAPACITY(16): SCSI status 0x%02x", st);
  }
}

/*
 * The kernel's side, a child process forked before any RDMA resource exists: waits for the LUN's
 * geometry on a pipe, configures the device, gives it the socket and blocks in NBD_DO_IT until
 * the disconnect. A process of its own, not a thread, so that nothing (strace -f attaching to the
 * server, a signal) interrupts NBD_DO_IT: the driver shuts the socket down when it is interrupted.
 */
static void nbd_child(const char *dev, int sock, int geometry) {
  uint64_t g[2]; /* block size, blocks */
  ssize_t r = read(geometry, g, sizeof g);
  if (r == 0) _exit(0); /* the server failed before it had a device to offer */
  if (r != sizeof g) die("geometry pipe: %s", strerror(errno));
  int fd = open(dev, O_RDWR);
  if (fd < 0) die("%s: %s", dev, strerror(errno));
  if (ioctl(fd, NBD_SET_BLKSIZE, (unsigned long)g[0]) || ioctl(fd, NBD_SET_SIZE_BLOCKS, (unsigned long)g[1]) ||
      ioctl(fd, NBD_SET_FLAGS, (unsigned long)(NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH)) ||
      ioctl(fd, NBD_SET_SOCK, (unsigned long)sock))
    die("NBD ioctl on %s: %s", dev, strerror(errno));
  char attr[256];
  snprintf(attr, sizeof attr, "/sys/block/%s/queue/max_sectors_kb", strrchr(dev, '/') + 1);
  FILE *f = fopen(attr, "w");
  if (!f || fprintf(f, "%u\n", MAX_SECTORS_KB) < 0 || fclose(f)) die("%s: %s", attr, strerror(errno));
  ioctl(fd, NBD_DO_IT); /* returns on disconnect */
  ioctl(fd, NBD_CLEAR_QUE);
  ioctl(fd, NBD_CLEAR_SOCK);
  _exit(0);
}

/* Forks the kernel's side; returns our end of the socketpair, *geometry the pipe to send the size on. */
static int start_nbd(const char *dev, pid_t *child, int *geometry) {
  int sv[2], pp[2];
  if (strncmp(dev, "/dev/nbd", 8)) die("%s: not an NBD device", dev);
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) || pipe(pp)) die("socketpair/pipe: %s", strerror(errno));
  *child = fork();
  if (*child < 0) die("fork: %s", strerror(errno));
  if (*child == 0) {
    close(sv[0]);
    close(pp[1]);
    nbd_child(dev, sv[1], pp[0]);
  }
  close(sv[1]);
  close(pp[0]);
  *geometry = pp[1];
  return sv[0];
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "--poll")) polling = 1, argc--, argv++;
  if (argc != 7) {
    fprintf(stderr, "usage: native-loop [--poll] SRC_IP DST_IP CM_PORT SERVICE_GUID INITIATOR_EXT /dev/nbdN\n");
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  pid_t child;
  int geometry;
  nbd_fd = start_nbd(argv[6], &child, &geometry);
  login(argv[1], argv[2], argv[3], strtoull(argv[4], NULL, 0), strtoull(argv[5], NULL, 0));
  read_capacity();
  uint64_t g[2] = {block_size, blocks};
  if (write(geometry, g, sizeof g) != sizeof g) die("geometry pipe: %s", strerror(errno));
  close(geometry);
  printf("ready %llu %u\n", (unsigned long long)(blocks * block_size), block_size);
  fflush(stdout);

  if (!polling && ibv_req_notify_cq(cq, 0)) die("ibv_req_notify_cq");
  int ep = epoll_create1(0);
  fcntl(comp->fd, F_SETFL, fcntl(comp->fd, F_GETFL) | O_NONBLOCK);
  struct epoll_event e1 = {.events = EPOLLIN, .data.u32 = 0}, e2 = {.events = EPOLLIN, .data.u32 = 1};
  if (epoll_ctl(ep, EPOLL_CTL_ADD, nbd_fd, &e1) || epoll_ctl(ep, EPOLL_CTL_ADD, comp->fd, &e2)) die("epoll_ctl");
  for (;;) {
    struct epoll_event ev[2];
    int spin = polling && nfree < QUEUE;
    int n = epoll_wait(ep, ev, 2, spin ? 0 : -1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) die("epoll_wait");
    int cq_ready = spin;
    for (int k = 0; k < n; k++) {
      if (ev[k].data.u32 == 1) {
        struct ibv_cq *c;
        void *ctx;
        while (ibv_get_cq_event(comp, &c, &ctx) == 0) ibv_ack_cq_events(c, 1);
        cq_ready = 1;
      } else if (in_have < sizeof in_buf) {
        ssize_t r = read(nbd_fd, in_buf + in_have, sizeof in_buf - in_have);
        if (r == 0) {
          fprintf(stderr, "native-loop: the kernel closed the NBD connection\n");
          goto out;
        }
        if (r < 0 && errno != EINTR && errno != EAGAIN) die("NBD socket: %s", strerror(errno));
        if (r > 0) in_have += (size_t)r;
      }
    }
    if (cq_ready) {
      if (!polling && ibv_req_notify_cq(cq, 0)) die("ibv_req_notify_cq");
      poll_cq();
    }
    if (in_have && take_requests()) goto out;
  }
out:
  close(nbd_fd);
  waitpid(child, NULL, 0);
  rdma_disconnect(cm);
  return 0;
}
