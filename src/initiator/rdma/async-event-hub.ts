/**
 * Device async events (ibv_get_async_event): one poller per device context, shared by every
 * channel and connector that uses the device.
 */
import { UV_READABLE, type AsyncEvent, type NativeBinding, type NativeError } from '../../native/native.js';

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
  private constructor(
    private readonly b: NativeBinding,
    private readonly ctx: number,
    private readonly fd: number,
  ) {}

  static subscribe(
    b: NativeBinding,
    ctx: number,
    asyncFd: number,
    fn: AsyncListener,
    onError?: AsyncErrorListener,
  ): () => void {
    let m = this.hubs.get(b);
    if (!m) this.hubs.set(b, (m = new Map()));
    let hub = m.get(ctx);
    if (!hub) m.set(ctx, (hub = new AsyncEventHub(b, ctx, asyncFd)));
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

  private drain(): void {
    for (;;) {
      let ev: AsyncEvent | null;
      try {
        ev = this.b.getAsyncEvent(this.ctx);
      } catch {
        return;
      }
      if (!ev) return;
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
