/**
 * The daemon's RDMA connector: RDMA/CM channels to one target (ib_srp add_target with dest=IP:port),
 * the login's port ids, and path-up events: PORT_ACTIVE on the port, or another connector's channel
 * to the same destination connecting (the target is reachable again, so a waiting port need not
 * sit out its reconnect timer).
 */
import { TransportError } from '../scsi-executor.js';
import { srpPortIds } from '../target-address.js';
import type { SrpLogger } from '../srp-session.js';
import type { NativeBinding } from '../../native/native.js';
import * as R from '../../native/rdma-constants.js';
import { formatRdmaAddress } from '../../native/sockaddr.js';
import { AsyncEventHub } from './async-event-hub.js';
import { RdmaChannelTransport } from './channel.js';
import type { RdmaTransportOptions } from './options.js';
import type { LoginContext } from '../transport.js';

/** Options of createRdmaConnector() (the daemon's per-target options). */
export interface RdmaConnectorOptions {
  /** local ACK timeout exponent (4.096 µs × 2^n) */
  ackTimeout: number;
  /** transport retry count 0..6 */
  retryCount: number;
  /** zero-length RDMA WRITE keep-alive period on every live channel; 0 = off */
  keepaliveIntervalMs: number;
  logger: SrpLogger;
  /** the native binding; default: the built addon (loadNative) */
  binding?: NativeBinding;
  /**
   * Which initiator port id the target sees. 'port' (default): ib_srp's, initiator_ext ‖ the port
   * GUID (interface id of GID 0) of the local port each channel resolves to, so every local port is
   * its own initiator, as with the kernel initiator. 'host': initiator_ext ‖ a fixed id of this host
   * (from /etc/machine-id), one initiator across all local ports.
   */
  initiatorId?: 'port' | 'host';
  /** overrides the derived initiator port id (16 bytes) */
  initiatorPortId?: Buffer;
  /** per-channel transport options (tests, tuning) */
  transport?: Partial<
    Omit<RdmaTransportOptions, 'dst' | 'src' | 'ackTimeout' | 'retryCount' | 'keepaliveIntervalMs' | 'logger'>
  >;
}

/** The part of SrpTargetAddress the connector needs (src/initiator/target-address.ts). */
export interface RdmaCmTargetAddress {
  transport: 'ib-cm' | 'rdma-cm';
  idExt: bigint;
  iocGuid: bigint;
  dest?: { family: 4 | 6; address: string; scopeId?: string; port?: number };
  src?: { family: 4 | 6; address: string; scopeId?: string; port?: number };
  initiatorExt?: bigint;
  ioClass?: number;
}

/** Open connectors by destination (formatted address): a connect to one is a path-up for the others. */
const byDestination = new Map<string, Set<RdmaConnector>>();

/** 64 bits naming this host: from /etc/machine-id (else the host name), stable across restarts. */
export async function hostPortGuid(): Promise<bigint> {
  const { readFile } = await import('node:fs/promises');
  const { createHash } = await import('node:crypto');
  const { hostname } = await import('node:os');
  let seed: string;
  try {
    seed = (await readFile('/etc/machine-id', 'utf8')).trim();
  } catch {
    seed = '';
  }
  if (!seed) seed = hostname();
  return createHash('sha256')
    .update('srp-nbd initiator ' + seed)
    .digest()
    .readBigUInt64BE(0);
}

/**
 * Opens RDMA/CM channels to one target (ChannelConnector of src/fsm/srp-port.ts), with keep-alive and
 * path-up events.
 */
export class RdmaConnector {
  readonly description: string;
  private readonly pathUp = new Set<() => void>();
  private watched: { ctx: number; port: number; unsubscribe: () => void } | undefined;
  private closed = false;
  private readonly destination: string;
  /** channels opened (for status and tests) */
  opened = 0;
  private lastLogin: LoginContext | undefined;

  constructor(
    private readonly b: NativeBinding,
    private readonly o: RdmaTransportOptions,
  ) {
    this.destination = formatRdmaAddress(o.dst);
    this.description = `dest=${this.destination}${o.src && o.src.family === 'ip' ? `,src=${o.src.host}` : ''}`;
    let peers = byDestination.get(this.destination);
    if (!peers) byDestination.set(this.destination, (peers = new Set()));
    peers.add(this);
  }

  /** A fresh channel, not logged in yet (SrpSession.login connects it). */
  async open(signal: AbortSignal): Promise<RdmaChannelTransport> {
    if (this.closed) throw new TransportError(`${this.description}: connector closed`, 'closed');
    if (signal.aborted) throw new TransportError(`${this.description}: connect aborted`, 'closed');
    const tr = new RdmaChannelTransport(this.b, this.o);
    this.opened++;
    const onAbort = () => {
      if (tr.state === 'connecting' || tr.state === 'idle') tr.close();
    };
    signal.addEventListener('abort', onAbort, { once: true });
    const done = () => signal.removeEventListener('abort', onAbort);
    tr.on('disconnect', done);
    // once a channel has resolved its device, watch that port for PORT_ACTIVE (even with no channel left)
    const origConnect = tr.connect.bind(tr);
    tr.connect = async (req, opts) => {
      try {
        return await origConnect(req, opts);
      } finally {
        this.lastLogin = tr.loginContext() ?? this.lastLogin;
        const h = tr.deviceHandle;
        if (h) this.watch(h);
        if (tr.state === 'connected') {
          done();
          this.tellPeers();
        }
      }
    };
    return tr;
  }

  /** The last login as the target saw it (initiator port id, source address), once one was sent. */
  loginContext(): LoginContext | undefined {
    return this.lastLogin;
  }

  onPathUp(listener: () => void): () => void {
    this.pathUp.add(listener);
    return () => this.pathUp.delete(listener);
  }

  /** Stops watching the device; channels already open are the caller's. */
  close(): void {
    this.closed = true;
    const peers = byDestination.get(this.destination);
    peers?.delete(this);
    if (peers?.size === 0) byDestination.delete(this.destination);
    this.watched?.unsubscribe();
    this.watched = undefined;
    this.pathUp.clear();
  }

  /** A channel of ours connected: the destination is reachable, so a port waiting to retry it may go now. */
  private tellPeers(): void {
    for (const peer of byDestination.get(this.destination) ?? []) {
      if (peer === this || peer.closed || peer.pathUp.size === 0) continue;
      this.o.logger?.info({ dest: this.destination }, 'rdma: a channel to the same destination connected');
      for (const l of [...peer.pathUp]) l();
    }
  }

  private watch(h: { ctx: number; port: number; asyncFd: number; device: string }): void {
    if (this.closed || (this.watched && this.watched.ctx === h.ctx && this.watched.port === h.port)) return;
    this.watched?.unsubscribe();
    const unsubscribe = AsyncEventHub.subscribe(
      this.b,
      h.ctx,
      h.asyncFd,
      (ev) => {
        if (ev.type !== R.IBV_EVENT_PORT_ACTIVE || ev.portNum !== h.port) return;
        this.o.logger?.info({ device: h.device, port: h.port }, 'rdma: port active again');
        for (const l of [...this.pathUp]) l();
      },
      (err) =>
        this.o.logger?.warn(
          { err, device: h.device, port: h.port },
          'rdma: device async events lost: no path-up on PORT_ACTIVE until a channel opens again',
        ),
    );
    this.watched = { ctx: h.ctx, port: h.port, unsubscribe };
  }
}

/**
 * The daemon's entry point (src/daemon/daemon.ts RdmaConnectorModule): a connector for an ib_srp
 * add_target address with dest=IP:port (RDMA/CM), and the login's port ids.
 */
export async function createRdmaConnector(
  addr: RdmaCmTargetAddress,
  opts: RdmaConnectorOptions,
): Promise<{ connector: RdmaConnector; initiatorPortId: Buffer; targetPortId: Buffer; close: () => void }> {
  if (addr.transport !== 'rdma-cm' || !addr.dest) {
    throw new TransportError('only RDMA/CM addressing (dest=IP:port) is supported by the RDMA connector', 'protocol');
  }
  if (addr.dest.port === undefined) throw new TransportError('dest= needs a port', 'protocol');
  let b = opts.binding;
  if (!b) {
    const { loadNative } = await import('../../native/native.js');
    b = loadNative();
  }
  const host = (a: { address: string; scopeId?: string }) => (a.scopeId ? `${a.address}%${a.scopeId}` : a.address);
  const perPort = opts.initiatorPortId === undefined && (opts.initiatorId ?? 'port') === 'port';
  const ids = srpPortIds(addr, perPort ? 0n : await hostPortGuid());
  const connector = new RdmaConnector(b, {
    ...opts.transport,
    dst: { family: 'ip', host: host(addr.dest), port: addr.dest.port },
    ...(addr.src ? { src: { family: 'ip', host: host(addr.src), port: 0 } } : {}),
    ackTimeout: opts.ackTimeout,
    retryCount: opts.retryCount,
    keepaliveIntervalMs: opts.keepaliveIntervalMs,
    logger: opts.logger,
    // ib_srp: initiator_ext ‖ the interface id of the source port's GID 0 (its port GUID)
    ...(perPort ? { initiatorPortId: (local) => srpPortIds(addr, local.gid.readBigUInt64BE(8)).initiatorPortId } : {}),
  });
  return {
    connector,
    initiatorPortId: opts.initiatorPortId ?? ids.initiatorPortId,
    targetPortId: ids.targetPortId,
    close: () => connector.close(),
  };
}
