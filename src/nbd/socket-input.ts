/**
 * Socket input into caller-chosen memory (Node's `onread` mode).
 *
 * Node's default read path allocates a fresh 64 KiB buffer per read. With
 * `onread`, libuv reads into a buffer we hand it, chosen anew before every
 * read: the NBD connection gives its staging buffer while parsing headers
 * and the WRITE payload's destination while receiving a large payload, so
 * bulk write data goes from the kernel straight to where it belongs.
 *
 * The sink must consume the bytes synchronously: the buffer is reused.
 */
import * as net from 'node:net';

export interface InputSink {
  /** `chunk` holds the bytes just read (a view on the buffer nextReadBuffer() returned). */
  onInput(chunk: Buffer): void;
  /** The buffer the next read fills; must stay valid until the next onInput(). */
  nextReadBuffer(): Buffer;
}

/** Creates a socket over an inherited file descriptor (e.g. one end of a kernel NBD socketpair). */
export function socketFromFd(fd: number, sink: InputSink): net.Socket {
  return new net.Socket({
    fd,
    allowHalfOpen: true,
    readable: true,
    writable: true,
    onread: onreadFor(sink),
  } as net.SocketConstructorOpts);
}

/**
 * Re-wraps an accepted socket (created with pauseOnConnect) so that it
 * reads through `sink`. Node offers `onread` only at construction, so the
 * native handle moves to a new Socket; the emptied original is destroyed,
 * which only updates its server's connection count. Returns undefined if
 * this Node has no such handle, and the caller keeps 'data' events.
 */
export function adoptAccepted(accepted: net.Socket, sink: InputSink): net.Socket | undefined {
  const holder = accepted as unknown as { _handle?: object | null };
  const handle = holder._handle;
  if (!handle) return undefined;
  holder._handle = null;
  accepted.destroy();
  const s = new net.Socket({
    handle,
    allowHalfOpen: true,
    readable: true,
    writable: true,
    onread: onreadFor(sink),
  } as net.SocketConstructorOpts);
  return s;
}

function onreadFor(sink: InputSink): net.OnReadOpts {
  return {
    buffer: () => sink.nextReadBuffer(),
    callback: (n: number, buf: Uint8Array): boolean => {
      sink.onInput((buf as Buffer).subarray(0, n));
      return true;
    },
  };
}
