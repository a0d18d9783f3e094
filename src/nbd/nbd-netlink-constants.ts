/**
 * NBD generic netlink constants, named as in Linux include/uapi/linux/nbd-netlink.h (and the client
 * flags of linux/nbd.h that CONNECT carries), plus the netlink / generic netlink framing constants
 * of linux/netlink.h and linux/genetlink.h that src/nbd/netlink.ts needs.
 */

export const NBD_GENL_FAMILY_NAME = 'nbd';
export const NBD_GENL_VERSION = 0x1;
export const NBD_GENL_MCAST_GROUP_NAME = 'nbd_mc_group';

/* Configuration policy attributes, used for CONNECT */
export const NBD_ATTR_UNSPEC = 0;
export const NBD_ATTR_INDEX = 1; /* u32 */
export const NBD_ATTR_SIZE_BYTES = 2; /* u64 */
export const NBD_ATTR_BLOCK_SIZE_BYTES = 3; /* u64 */
export const NBD_ATTR_TIMEOUT = 4; /* u64, seconds; 0 = never time out */
export const NBD_ATTR_SERVER_FLAGS = 5; /* u64, NBD_FLAG_* */
export const NBD_ATTR_CLIENT_FLAGS = 6; /* u64, NBD_CFLAG_* */
export const NBD_ATTR_SOCKETS = 7; /* nested NBD_SOCK_ITEM */
export const NBD_ATTR_DEAD_CONN_TIMEOUT = 8; /* u64, seconds */
export const NBD_ATTR_DEVICE_LIST = 9; /* nested NBD_DEVICE_ITEM */
export const NBD_ATTR_BACKEND_IDENTIFIER = 10; /* string */

/* [NBD_ATTR_DEVICE_LIST] [NBD_DEVICE_ITEM] [NBD_DEVICE_INDEX] [NBD_DEVICE_CONNECTED] */
export const NBD_DEVICE_ITEM_UNSPEC = 0;
export const NBD_DEVICE_ITEM = 1;
export const NBD_DEVICE_UNSPEC = 0;
export const NBD_DEVICE_INDEX = 1; /* u32 */
export const NBD_DEVICE_CONNECTED = 2; /* u8 */

/* [NBD_ATTR_SOCKETS] [NBD_SOCK_ITEM] [NBD_SOCK_FD] */
export const NBD_SOCK_ITEM_UNSPEC = 0;
export const NBD_SOCK_ITEM = 1;
export const NBD_SOCK_UNSPEC = 0;
export const NBD_SOCK_FD = 1; /* u32 */

/* Commands */
export const NBD_CMD_UNSPEC = 0;
export const NBD_CMD_CONNECT = 1;
export const NBD_CMD_DISCONNECT = 2;
export const NBD_CMD_RECONFIGURE = 3;
export const NBD_CMD_LINK_DEAD = 4;
export const NBD_CMD_STATUS = 5;

/* Client flags (linux/nbd.h). srp-nbd never sets DESTROY_ON_DISCONNECT: the node must outlive us. */
export const NBD_CFLAG_DESTROY_ON_DISCONNECT = 1 << 0;
export const NBD_CFLAG_DISCONNECT_ON_CLOSE = 1 << 1;

/* asm-generic/socket.h (x86-64, arm64) */
export const SOL_SOCKET = 1;
export const SO_SNDBUF = 7;
export const SO_SNDBUFFORCE = 32;

/* linux/netlink.h */
export const NETLINK_GENERIC = 16;
export const SOL_NETLINK = 270;
export const NETLINK_ADD_MEMBERSHIP = 1;
export const NETLINK_DROP_MEMBERSHIP = 2;
export const NETLINK_CAP_ACK = 10;
export const NETLINK_EXT_ACK = 11;
export const NLMSG_HDRLEN = 16;
export const NLMSG_NOOP = 1;
export const NLMSG_ERROR = 2;
export const NLMSG_DONE = 3;
export const NLM_F_REQUEST = 0x01;
export const NLM_F_MULTI = 0x02;
export const NLM_F_ACK = 0x04;
export const NLM_F_CAPPED = 0x100;
export const NLM_F_ACK_TLVS = 0x200;
export const NLA_HDRLEN = 4;
export const NLA_F_NESTED = 1 << 15;
export const NLA_TYPE_MASK = ~(NLA_F_NESTED | (1 << 14)) & 0xffff;
export const NLMSGERR_ATTR_MSG = 1;

/* linux/genetlink.h */
export const GENL_HDRLEN = 4;
export const GENL_ID_CTRL = 0x10;
export const CTRL_CMD_GETFAMILY = 3;
export const CTRL_ATTR_FAMILY_ID = 1;
export const CTRL_ATTR_FAMILY_NAME = 2;
export const CTRL_ATTR_MCAST_GROUPS = 7;
export const CTRL_ATTR_MCAST_GRP_NAME = 1;
export const CTRL_ATTR_MCAST_GRP_ID = 2;

const CMD_NAMES = [
  'NBD_CMD_UNSPEC',
  'NBD_CMD_CONNECT',
  'NBD_CMD_DISCONNECT',
  'NBD_CMD_RECONFIGURE',
  'NBD_CMD_LINK_DEAD',
  'NBD_CMD_STATUS',
];
export function nameOfNbdGenlCmd(cmd: number): string {
  return CMD_NAMES[cmd] ?? `NBD_CMD_${cmd}`;
}
