/**
 * Device async events (ibv_get_async_event): one poller per device context, shared by every
 * channel and connector that uses the device.
 */
import type { AsyncEvent, NativeBinding } from '../../native/native.js';

export type AsyncListener = (ev: AsyncEvent) => void;

/** One poller per device context, shared by every channel on that device. */
export class AsyncEventHub {
  private static readonly hubs = new Map<NativeBinding, Map<number, AsyncEventHub>>();
  private readonly listeners = new Set<AsyncListener>();
  private poller = 0;
  private constructor(private readonly b: NativeBinding, private readonly ctx: number, private readonly fd: number) {}

  static subscribe(b: NativeBinding, ctx: number, asyncFd: number, fn: AsyncListener): () => void {
    let m = this.hubs.get(b);
    if (!m) this.hubs.set(b, (m = new Map()));
    let hub = m.get(ctx);
    if (!hub) m.set(ctx, (hub = new AsyncEventHub(b, ctx, asyncFd)));
    hub.listeners.add(fn);
    if (!hub.poller) {
      hub.poller = b.pollStart(asyncFd, 1, () => hub!.drain());
      b.pollRef(hub.poller, false);
    }
    const h = hub;
    return () => {
      h.listeners.delete(fn);
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
      for (const fn of [...this.listeners]) fn(ev);
    }
  }
  get fdNumber(): number {
    return this.fd;
  }
}
