/** Reads exact byte counts from a socket, for tests that speak a protocol by hand. */
import type { Socket } from 'node:net';

export class ByteReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private ended = false;
  private waiter: (() => void) | undefined;

  constructor(socket: Socket) {
    socket.on('data', (c: Buffer) => {
      this.chunks.push(c);
      this.have += c.length;
      this.waiter?.();
    });
    const end = (): void => {
      this.ended = true;
      this.waiter?.();
    };
    socket.on('end', end);
    socket.on('close', end);
    socket.on('error', end);
  }

  /** Resolves with exactly n bytes, or rejects if the peer closes first or `ms` pass. */
  async read(n: number, ms = 10_000): Promise<Buffer> {
    const deadline = Date.now() + ms;
    while (this.have < n) {
      if (this.ended) throw new Error(`peer closed with ${this.have} of ${n} bytes`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${n} bytes (have ${this.have})`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.waiter = () => {
          clearTimeout(t);
          this.waiter = undefined;
          resolve();
        };
      });
    }
    const all = Buffer.concat(this.chunks);
    this.chunks = [all.subarray(n)];
    this.have -= n;
    return all.subarray(0, n);
  }

  /** Resolves true once the peer has closed (after any unread bytes), false after `ms`. */
  async closed(ms = 10_000): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (!this.ended && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    return this.ended;
  }

  get buffered(): number {
    return this.have;
  }
}
