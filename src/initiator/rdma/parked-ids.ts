/**
 * Parking of cm ids whose channel was lost while its port was down (see ParkedIds below).
 */
import type { NativeBinding } from '../../native/native.js';
import * as R from '../../native/rdma-constants.js';
import type { SrpLogger } from '../srp-session.js';
import { AsyncEventHub } from './async-event-hub.js';

/** The ids parked on one port of one device, and the subscription that releases them. */
interface ParkedPort {
  ids: { id: number; channel: number }[];
  unsubscribe: () => void;
}

/**
 * cm ids whose teardown waits for their port to be ACTIVE again.
 *
 * rdma_disconnect, and rdma_destroy_id of a connected (or connecting) id, make the kernel CM send a
 * MAD (DREQ, REJ) through the device's GSI QP. On rxe (6.1) such a send while the netdev is down
 * fails in the requester: the GSI QP goes to ERROR, ib_mad moves it back to RTS, which on rxe
 * restores only its send side: from then on the device never receives another CM MAD, so every
 * later login through it gets no REP at all (seen in the guest: the target sends REPs, the
 * initiator's rxe counts none). The same sequence broke the kernel ib_srp's re-login after
 * dev_loss_tmo. So when a channel is lost while its port is down we flush its QP (modify to ERR),
 * release everything else, and keep only the id (and its event channel) here; when PORT_ACTIVE
 * arrives the id is disconnected and destroyed normally, and the DREQ reaches the target.
 */
export class ParkedIds {
  private static readonly parked = new Map<NativeBinding, Map<string, ParkedPort>>();

  static park(
    b: NativeBinding,
    ctx: number,
    port: number,
    asyncFd: number,
    id: number,
    channel: number,
    log: SrpLogger,
  ): void {
    let m = this.parked.get(b);
    if (!m) this.parked.set(b, (m = new Map()));
    const key = `${ctx}/${port}`;
    let e = m.get(key);
    if (!e) {
      const entry: ParkedPort = { ids: [], unsubscribe: () => {} };
      entry.unsubscribe = AsyncEventHub.subscribe(
        b,
        ctx,
        asyncFd,
        (ev) => {
          if (ev.type === R.IBV_EVENT_PORT_ACTIVE && ev.portNum === port) this.release(b, key, log);
        },
        (err) =>
          log.warn(
            { err, port, parked: entry.ids.length },
            'rdma: device async events lost: parked cm ids stay until a channel polls the device again (or exit)',
          ),
      );
      m.set(key, (e = entry));
    }
    e.ids.push({ id, channel });
    log.info(
      { port, parked: e.ids.length },
      'rdma: port down: cm id kept until the port is active again (no DREQ through a downed port)',
    );
  }

  /** Disconnects and destroys the parked ids of one port (on PORT_ACTIVE); safe to call again. */
  private static release(b: NativeBinding, key: string, log: SrpLogger): void {
    const m = this.parked.get(b);
    const e = m?.get(key);
    if (!m || !e) return;
    m.delete(key);
    e.unsubscribe();
    for (const { id, channel } of e.ids) {
      try {
        b.cmDisconnect(id);
      } catch {
        /* not connected */
      }
      try {
        b.cmDestroyId(id);
      } catch (err) {
        log.warn({ err }, 'rdma: destroying a parked cm id failed');
      }
      try {
        b.cmDestroyChannel(channel);
      } catch (err) {
        log.warn({ err }, 'rdma: destroying a parked event channel failed');
      }
    }
  }

  /** Ids parked for this binding (status, tests). */
  static count(b: NativeBinding): number {
    let n = 0;
    for (const e of this.parked.get(b)?.values() ?? []) n += e.ids.length;
    return n;
  }
}

/** cm ids of lost channels waiting for their port to come back before they are torn down. */
export function parkedCmIds(b: NativeBinding): number {
  return ParkedIds.count(b);
}
