/**
 * Device async events (ibv_get_async_event): one poller per device context, shared by every
 * channel and connector that uses the device. The hub also remembers each port's state from its
 * PORT_ACTIVE / PORT_ERR events, so that a channel can ask whether its port is up without
 * ibv_query_port: on rxe that call takes the RTNL lock (ib_get_eth_speed), which link changes
 * hold for seconds under load, and it would block the event loop and every path's I/O just when
 * a path fails.
 */
import { UV_READABLE, type AsyncEvent, type NativeBinding, type NativeError } from '../../native/native.js';
import * as R from '../../native/rdma-constants.js';

export type AsyncListener = (ev: AsyncEvent) => void;
/** The device's async fd can no longer be polled: no more events come until a new subscription restarts it. */
export type AsyncErrorListener = (err: NativeError) => void;

interface Subscriber {
  event: AsyncListener;
  error?: AsyncErrorListener;
}

/** One poller per device context, shared by every channel on that device. */
export class AsyncEventHub {
  private static readonly hubs = new Map<NativeBinding, Map<number, AsyncEventHub>>();
  private readonly listeners = new Set<Subscriber>();
  private poller = 0;
  /** port number -> ACTIVE, from the last PORT_ACTIVE / PORT_ERR seen (or the seed) */
  private readonly ports = new Map<number, boolean>();
  private constructor(
    private readonly b: NativeBinding,
    private readonly ctx: number,
    private readonly fd: number,
  ) {}

  private static hub(b: NativeBinding, ctx: number, asyncFd: number): AsyncEventHub {
    let m = this.hubs.get(b);
    if (!m) this.hubs.set(b, (m = new Map()));
    let hub = m.get(ctx);
    if (!hub) m.set(ctx, (hub = new AsyncEventHub(b, ctx, asyncFd)));
    return hub;
  }

  /**
   * Whether port `port` of the device is ACTIVE, from its async events; `seed()` answers the first
   * time (ibv_query_port, once per port and process). With no subscriber (no poller) the queued
   * events are read first, so the answer is never older than the last event the device reported.
   */
  static portActive(b: NativeBinding, ctx: number, asyncFd: number, port: number, seed: () => boolean): boolean {
    const hub = this.hub(b, ctx, asyncFd);
    hub.catchUp();
    let active = hub.ports.get(port);
    if (active === undefined) hub.ports.set(port, (active = seed()));
    return active;
  }

  static subscribe(
    b: NativeBinding,
    ctx: number,
    asyncFd: number,
    fn: AsyncListener,
    onError?: AsyncErrorListener,
  ): () => void {
    const hub = this.hub(b, ctx, asyncFd);
    hub.catchUp();
    const sub: Subscriber = { event: fn, error: onError };
    hub.listeners.add(sub);
    if (!hub.poller) {
      const h = hub;
      h.poller = b.pollStart(asyncFd, UV_READABLE, (err) => (err ? h.pollFailed(err) : h.drain()));
      b.pollRef(h.poller, false);
    }
    const h = hub;
    return () => {
      h.listeners.delete(sub);
      if (h.listeners.size === 0 && h.poller) {
        b.pollStop(h.poller);
        h.poller = 0;
      }
    };
  }

  /** Reads what the device reported while nobody listened (only the port states matter then). */
  private catchUp(): void {
    if (!this.poller && this.listeners.size === 0) this.drain();
  }

  private drain(): void {
    for (;;) {
      let ev: AsyncEvent | null;
      try {
        ev = this.b.getAsyncEvent(this.ctx);
      } catch {
        return;
      }
      if (!ev) return;
      if (ev.type === R.IBV_EVENT_PORT_ACTIVE) this.ports.set(ev.portNum, true);
      else if (ev.type === R.IBV_EVENT_PORT_ERR) this.ports.set(ev.portNum, false);
      for (const s of [...this.listeners]) s.event(ev);
    }
  }

  /** The addon stopped the poll: free it (the next subscription starts a new one) and tell every subscriber. */
  private pollFailed(err: NativeError): void {
    this.b.pollStop(this.poller);
    this.poller = 0;
    for (const s of [...this.listeners]) s.error?.(err);
  }

  get fdNumber(): number {
    return this.fd;
  }
}
