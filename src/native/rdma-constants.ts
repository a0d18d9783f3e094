/**
 * librdmacm and libibverbs constants, named and numbered as in <rdma/rdma_cma.h> and
 * <infiniband/verbs.h> (rdma-core 44), and the IB CM reject reasons of Linux
 * include/rdma/ib_cm.h. nameOf…() helpers for log lines.
 */

/* enum rdma_cm_event_type */
export const RDMA_CM_EVENT_ADDR_RESOLVED = 0;
export const RDMA_CM_EVENT_ADDR_ERROR = 1;
export const RDMA_CM_EVENT_ROUTE_RESOLVED = 2;
export const RDMA_CM_EVENT_ROUTE_ERROR = 3;
export const RDMA_CM_EVENT_CONNECT_REQUEST = 4;
export const RDMA_CM_EVENT_CONNECT_RESPONSE = 5;
export const RDMA_CM_EVENT_CONNECT_ERROR = 6;
export const RDMA_CM_EVENT_UNREACHABLE = 7;
export const RDMA_CM_EVENT_REJECTED = 8;
export const RDMA_CM_EVENT_ESTABLISHED = 9;
export const RDMA_CM_EVENT_DISCONNECTED = 10;
export const RDMA_CM_EVENT_DEVICE_REMOVAL = 11;
export const RDMA_CM_EVENT_MULTICAST_JOIN = 12;
export const RDMA_CM_EVENT_MULTICAST_ERROR = 13;
export const RDMA_CM_EVENT_ADDR_CHANGE = 14;
export const RDMA_CM_EVENT_TIMEWAIT_EXIT = 15;

/* enum rdma_port_space */
export const RDMA_PS_IPOIB = 0x0002;
export const RDMA_PS_TCP = 0x0106;
export const RDMA_PS_UDP = 0x0111;
export const RDMA_PS_IB = 0x013f;

/*
 * enum ib_cm_rej_reason (Linux include/rdma/ib_cm.h; the ones used here): the status of
 * RDMA_CM_EVENT_REJECTED on InfiniBand and RoCE.
 */
/** Nothing listens on the service ID (port) the REQ was sent to. */
export const IB_CM_REJ_INVALID_SERVICE_ID = 8;
/** The passive side still holds a connection with our QP number (an old one not yet timed out). */
export const IB_CM_REJ_STALE_CONN = 10;
/** Redirect to another port/LID, the target in the ARI (ClassPortInfo); not visible through rdma_cm. */
export const IB_CM_REJ_PORT_CM_REDIRECT = 24;
/** Redirect to another port (Topspin/Cisco gateways send it for 24, the GID in the ARI). */
export const IB_CM_REJ_PORT_REDIRECT = 25;
/** The passive side already has a connection with our local communication ID. */
export const IB_CM_REJ_DUPLICATE_LOCAL_COMM_ID = 30;
/** The peer refused the connection itself (for SRP: an SRP_LOGIN_REJ in the private data). */
export const IB_CM_REJ_CONSUMER_DEFINED = 28;

/* rdma_set_option levels and names */
export const RDMA_OPTION_ID = 0;
export const RDMA_OPTION_IB = 1;
export const RDMA_OPTION_ID_TOS = 0;
export const RDMA_OPTION_ID_REUSEADDR = 1;
export const RDMA_OPTION_ID_AFONLY = 2;
export const RDMA_OPTION_ID_ACK_TIMEOUT = 3;

/* address families (linux/socket.h) */
export const AF_INET = 2;
export const AF_INET6 = 10;
export const AF_IB = 27;

/* enum ibv_event_type */
export const IBV_EVENT_CQ_ERR = 0;
export const IBV_EVENT_QP_FATAL = 1;
export const IBV_EVENT_QP_REQ_ERR = 2;
export const IBV_EVENT_QP_ACCESS_ERR = 3;
export const IBV_EVENT_COMM_EST = 4;
export const IBV_EVENT_SQ_DRAINED = 5;
export const IBV_EVENT_PATH_MIG = 6;
export const IBV_EVENT_PATH_MIG_ERR = 7;
export const IBV_EVENT_DEVICE_FATAL = 8;
export const IBV_EVENT_PORT_ACTIVE = 9;
export const IBV_EVENT_PORT_ERR = 10;
export const IBV_EVENT_LID_CHANGE = 11;
export const IBV_EVENT_PKEY_CHANGE = 12;
export const IBV_EVENT_SM_CHANGE = 13;
export const IBV_EVENT_SRQ_ERR = 14;
export const IBV_EVENT_SRQ_LIMIT_REACHED = 15;
export const IBV_EVENT_QP_LAST_WQE_REACHED = 16;
export const IBV_EVENT_CLIENT_REREGISTER = 17;
export const IBV_EVENT_GID_CHANGE = 18;
export const IBV_EVENT_WQ_FATAL = 19;

/* enum ibv_wc_status */
export const IBV_WC_SUCCESS = 0;
export const IBV_WC_LOC_LEN_ERR = 1;
export const IBV_WC_LOC_QP_OP_ERR = 2;
export const IBV_WC_LOC_EEC_OP_ERR = 3;
export const IBV_WC_LOC_PROT_ERR = 4;
export const IBV_WC_WR_FLUSH_ERR = 5;
export const IBV_WC_MW_BIND_ERR = 6;
export const IBV_WC_BAD_RESP_ERR = 7;
export const IBV_WC_LOC_ACCESS_ERR = 8;
export const IBV_WC_REM_INV_REQ_ERR = 9;
export const IBV_WC_REM_ACCESS_ERR = 10;
export const IBV_WC_REM_OP_ERR = 11;
export const IBV_WC_RETRY_EXC_ERR = 12;
export const IBV_WC_RNR_RETRY_EXC_ERR = 13;
export const IBV_WC_LOC_RDD_VIOL_ERR = 14;
export const IBV_WC_REM_INV_RD_REQ_ERR = 15;
export const IBV_WC_REM_ABORT_ERR = 16;
export const IBV_WC_INV_EECN_ERR = 17;
export const IBV_WC_INV_EEC_STATE_ERR = 18;
export const IBV_WC_FATAL_ERR = 19;
export const IBV_WC_RESP_TIMEOUT_ERR = 20;
export const IBV_WC_GENERAL_ERR = 21;

/* enum ibv_wc_opcode */
export const IBV_WC_SEND = 0;
export const IBV_WC_RDMA_WRITE = 1;
export const IBV_WC_RDMA_READ = 2;
export const IBV_WC_RECV = 1 << 7;

/* enum ibv_wr_opcode */
export const IBV_WR_RDMA_WRITE = 0;
export const IBV_WR_RDMA_WRITE_WITH_IMM = 1;
export const IBV_WR_SEND = 2;
export const IBV_WR_SEND_WITH_IMM = 3;
export const IBV_WR_RDMA_READ = 4;

/* enum ibv_send_flags */
export const IBV_SEND_FENCE = 1 << 0;
export const IBV_SEND_SIGNALED = 1 << 1;
export const IBV_SEND_SOLICITED = 1 << 2;
export const IBV_SEND_INLINE = 1 << 3;

/* enum ibv_access_flags */
export const IBV_ACCESS_LOCAL_WRITE = 1;
export const IBV_ACCESS_REMOTE_WRITE = 1 << 1;
export const IBV_ACCESS_REMOTE_READ = 1 << 2;

/* enum ibv_qp_state */
export const IBV_QPS_RESET = 0;
export const IBV_QPS_INIT = 1;
export const IBV_QPS_RTR = 2;
export const IBV_QPS_RTS = 3;
export const IBV_QPS_SQD = 4;
export const IBV_QPS_SQE = 5;
export const IBV_QPS_ERR = 6;

/* enum ibv_port_state */
export const IBV_PORT_DOWN = 1;
export const IBV_PORT_ACTIVE = 4;

/** Size of one completion record written by cqPoll() (see native/src/rdma.cc). */
export const WC_RECORD_LEN = 32;
/** Sizes of one work request record of postSendList() / postRecvList() (see native/src/rdma.cc). */
export const SEND_WR_LEN = 48;
export const RECV_WR_LEN = 24;
/** Most work requests one postSendList() / postRecvList() takes. */
export const MAX_WR_LIST = 1024;

/**
 * Largest retry_count that still gives up: rxe (soft-RoCE) takes 7 as "retry forever", so a path
 * that stopped answering would never fail a work request.
 */
export const MAX_FINITE_RETRY_COUNT = 6;

function namer(prefix: string, table: Record<string, number>): (v: number) => string {
  const m = new Map<number, string>();
  for (const [k, v] of Object.entries(table)) if (k.startsWith(prefix) && !m.has(v)) m.set(v, k);
  return (v) => m.get(v) ?? `${prefix}${v}`;
}
const self = {
  RDMA_CM_EVENT_ADDR_RESOLVED,
  RDMA_CM_EVENT_ADDR_ERROR,
  RDMA_CM_EVENT_ROUTE_RESOLVED,
  RDMA_CM_EVENT_ROUTE_ERROR,
  RDMA_CM_EVENT_CONNECT_REQUEST,
  RDMA_CM_EVENT_CONNECT_RESPONSE,
  RDMA_CM_EVENT_CONNECT_ERROR,
  RDMA_CM_EVENT_UNREACHABLE,
  RDMA_CM_EVENT_REJECTED,
  RDMA_CM_EVENT_ESTABLISHED,
  RDMA_CM_EVENT_DISCONNECTED,
  RDMA_CM_EVENT_DEVICE_REMOVAL,
  RDMA_CM_EVENT_MULTICAST_JOIN,
  RDMA_CM_EVENT_MULTICAST_ERROR,
  RDMA_CM_EVENT_ADDR_CHANGE,
  RDMA_CM_EVENT_TIMEWAIT_EXIT,
  IBV_EVENT_CQ_ERR,
  IBV_EVENT_QP_FATAL,
  IBV_EVENT_QP_REQ_ERR,
  IBV_EVENT_QP_ACCESS_ERR,
  IBV_EVENT_COMM_EST,
  IBV_EVENT_SQ_DRAINED,
  IBV_EVENT_PATH_MIG,
  IBV_EVENT_PATH_MIG_ERR,
  IBV_EVENT_DEVICE_FATAL,
  IBV_EVENT_PORT_ACTIVE,
  IBV_EVENT_PORT_ERR,
  IBV_EVENT_LID_CHANGE,
  IBV_EVENT_PKEY_CHANGE,
  IBV_EVENT_SM_CHANGE,
  IBV_EVENT_SRQ_ERR,
  IBV_EVENT_SRQ_LIMIT_REACHED,
  IBV_EVENT_QP_LAST_WQE_REACHED,
  IBV_EVENT_CLIENT_REREGISTER,
  IBV_EVENT_GID_CHANGE,
  IBV_EVENT_WQ_FATAL,
  IBV_WC_SUCCESS,
  IBV_WC_LOC_LEN_ERR,
  IBV_WC_LOC_QP_OP_ERR,
  IBV_WC_LOC_EEC_OP_ERR,
  IBV_WC_LOC_PROT_ERR,
  IBV_WC_WR_FLUSH_ERR,
  IBV_WC_MW_BIND_ERR,
  IBV_WC_BAD_RESP_ERR,
  IBV_WC_LOC_ACCESS_ERR,
  IBV_WC_REM_INV_REQ_ERR,
  IBV_WC_REM_ACCESS_ERR,
  IBV_WC_REM_OP_ERR,
  IBV_WC_RETRY_EXC_ERR,
  IBV_WC_RNR_RETRY_EXC_ERR,
  IBV_WC_LOC_RDD_VIOL_ERR,
  IBV_WC_REM_INV_RD_REQ_ERR,
  IBV_WC_REM_ABORT_ERR,
  IBV_WC_INV_EECN_ERR,
  IBV_WC_INV_EEC_STATE_ERR,
  IBV_WC_FATAL_ERR,
  IBV_WC_RESP_TIMEOUT_ERR,
  IBV_WC_GENERAL_ERR,
};
export const nameOfCmEvent = namer('RDMA_CM_EVENT_', self);
export const nameOfAsyncEvent = namer('IBV_EVENT_', self);
export const nameOfWcStatus = namer('IBV_WC_', self);

/** What a failed work completion means for the channel, for error messages. */
export function describeWcStatus(status: number): string {
  switch (status) {
    case IBV_WC_RETRY_EXC_ERR:
      return 'transport retry counter exceeded: the target stopped acknowledging (link down or black hole)';
    case IBV_WC_RNR_RETRY_EXC_ERR:
      return 'receiver-not-ready retry counter exceeded: the target posted no receive buffer';
    case IBV_WC_REM_ACCESS_ERR:
      return 'remote access error: the target rejected an RDMA access (bad rkey or range)';
    case IBV_WC_LOC_PROT_ERR:
      return 'local protection error: a buffer was not registered';
    case IBV_WC_LOC_QP_OP_ERR:
      return 'local QP operation error: the queue pair is no longer usable (link went down)';
    case IBV_WC_WR_FLUSH_ERR:
      return 'work request flushed: the queue pair is in the error state';
    default:
      return nameOfWcStatus(status);
  }
}
