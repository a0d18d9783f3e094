/**
 * Login rejects explained for an operator: the SRP_LOGIN_REJ reason code and its srp.h name, what
 * the target saw (initiator port id, source address), and what usually causes it with LIO ib_srpt.
 *
 * ib_srpt answers SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED when no ACL admits the initiator
 * (srpt_cm_req_recv: target_setup_session() failed). Which name the ACL must have depends on how the
 * target port is named in configfs: a port named by its GID (0xfe80…) takes ACLs named by the
 * initiator port id ("0x" + 32 hex digits, or without 0x); a port named by its GUID
 * (xxxx:xxxx:xxxx:xxxx) takes the session name, which is an IP address for RDMA/CM logins and the
 * initiator's port GUID for IB CM ones. ib_srpt logs "Rejected login for initiator <name>".
 */
import {
  describeSrpLoginRejReason,
  nameOfSrpLoginRejReason,
  SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED,
  SRP_LOGIN_REJ_INSUFFICIENT_RESOURCES,
  SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE,
  SRP_LOGIN_REJ_UNABLE_ASSOCIATE_CHANNEL,
} from './srp-constants.js';
import type { LoginContext } from './transport.js';

/** "0x" + 32 hex digits, as ib_srpt prints an initiator port id and as its ACLs are named. */
export function formatPortId(id: Buffer): string {
  return '0x' + id.toString('hex');
}

/** The whole message of a rejected login. */
export function explainLoginReject(reason: number, ctx?: LoginContext): string {
  const code = `0x${(reason >>> 0).toString(16).padStart(8, '0')}`;
  let msg = `SRP login rejected: ${nameOfSrpLoginRejReason(reason)} (${code}): ${describeSrpLoginRejReason(reason)}`;
  const id = ctx?.initiatorPortId ? formatPortId(ctx.initiatorPortId) : undefined;
  const seen = [
    id ? `initiator port id ${id}` : undefined,
    ctx?.source ? `from ${ctx.source}` : undefined,
    ctx?.destination ? `to ${ctx.destination}` : undefined,
  ]
    .filter((x) => x !== undefined)
    .join(' ');
  switch (reason >>> 0) {
    case SRP_LOGIN_REJ_CHANNEL_LIMIT_REACHED:
      msg +=
        `. LIO ib_srpt answers this when no ACL admits the initiator; it saw ${seen || 'an unknown initiator port id'}.` +
        ` Add an ACL for it on the target: targetcli /srpt/ib.<target port GID>/acls create ib.${id ? id.slice(2) : '<initiator port id>'}` +
        ` (configfs: mkdir /sys/kernel/config/target/srpt/<port>/<port>/acls/${id ?? '0x<initiator port id>'});` +
        ` a target port named by its GUID takes the ACL by the name ib_srpt logs ("Rejected login for initiator <name>":` +
        ` an IP address over RDMA/CM)`;
      return msg;
    case SRP_LOGIN_REJ_UNABLE_ASSOCIATE_CHANNEL:
      msg += '. The target port id does not name this target: check id_ext, ioc_guid and io_class';
      break;
    case SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE:
      msg += '. Lower max_it_iu_size (or cmd_sg_entries) in the target address';
      break;
    case SRP_LOGIN_REJ_INSUFFICIENT_RESOURCES:
      msg += '. With ib_srpt: the target port is not enabled yet, or the target is short of memory';
      break;
    default:
      break;
  }
  return seen ? `${msg} (${seen})` : msg;
}
