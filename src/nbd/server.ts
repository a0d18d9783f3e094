/**
 * The NBD server: a registry of named exports, listeners on unix sockets
 * and TCP, and the transmission-only entry point used for kernel NBD
 * socketpairs. Each connection is independent: a misbehaving client only
 * ever ends its own connection.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Logger } from 'pino';
import type { Backend } from './backend.js';
import { BufferPool } from './buffer-pool.js';
import { type ConnectionOptions, NbdConnection, type SocketSource } from './connection.js';
import type { ExportRegistry } from './handshake.js';
import { type InputSink, adoptAccepted } from './socket-input.js';
import { tryLoadNative } from '../native/native.js';
import { rateLimitedWarn } from '../util/log.js';

export interface NbdServerOptions {
  logger: Logger;
  /** Name of the export a client gets when it asks for "" (default: the first export added). */
  defaultExport?: string;
  maxInFlight?: number;
  handshakeTimeoutMs?: number;
  /** Clients past their handshake served at once; more are closed at accept (default 64). Each may hold ~128 MiB of buffers. */
  maxConnections?: number;
  /**
   * Clients still in their handshake at once (default 16): a budget of its own, so clients that
   * connect and stall (each is dropped after handshakeTimeoutMs) never take the slots of clients
   * that have chosen an export.
   */
  maxHandshakes?: number;
  /**
   * How replies reach the socket: the addon's gathered send (default, when the addon loads),
   * another function of that shape (tests), or null for the socket's own stream (no addon).
   */
  sendv?: ConnectionOptions['sendv'] | null;
}

export class NbdServer implements ExportRegistry {
  private readonly exports = new Map<string, Backend>();
  private readonly listeners: net.Server[] = [];
  private readonly connections = new Set<NbdConnection>();
  /** Connections from the listeners (not the kernel's socketpairs): what the budgets count. */
  private readonly accepted = new Set<NbdConnection>();
  private readonly warnRefused: (obj: object, msg: string) => void;
  private readonly pool = new BufferPool();
  private defaultExport: string | undefined;
  private readonly sendv: ConnectionOptions['sendv'];

  constructor(private readonly opts: NbdServerOptions) {
    this.defaultExport = opts.defaultExport;
    this.warnRefused = rateLimitedWarn(opts.logger);
    this.sendv = opts.sendv === undefined ? tryLoadNative()?.sendv : (opts.sendv ?? undefined);
  }

  addExport(name: string, backend: Backend): void {
    if (this.exports.has(name)) throw new Error(`export '${name}' already exists`);
    if (Buffer.byteLength(name) > 4096) throw new Error('export name longer than 4096 bytes');
    this.exports.set(name, backend);
    this.defaultExport ??= name;
  }

  /**
   * Removes an export: new clients no longer find it, connections serving it are closed after
   * their in-flight requests. The backend is returned, not closed (its owner decides).
   */
  async removeExport(name: string): Promise<Backend | undefined> {
    const backend = this.exports.get(name);
    if (!backend) return undefined;
    this.exports.delete(name);
    if (this.defaultExport === name) this.defaultExport = this.exports.keys().next().value;
    const conns = [...this.connections].filter((c) => c.export === name);
    for (const c of conns) c.close();
    await Promise.all(conns.map((c) => c.closed));
    return backend;
  }

  lookup(name: string): { name: string; backend: Backend } | undefined {
    const key = name === '' ? this.defaultExport : name;
    const backend = key === undefined ? undefined : this.exports.get(key);
    return backend && key !== undefined ? { name: key, backend } : undefined;
  }

  list(): { name: string; backend: Backend }[] {
    return [...this.exports].map(([name, backend]) => ({ name, backend }));
  }

  /** Listens on a unix socket path (replacing a stale socket file); resolves when listening. */
  async listenUnix(path: string, mode = 0o600): Promise<void> {
    try {
      if (fs.statSync(path).isSocket()) fs.unlinkSync(path);
    } catch {
      /* absent: fine */
    }
    const server = await this.listen((s) => s.listen(path));
    fs.chmodSync(path, mode);
    server.on('close', () => fs.rmSync(path, { force: true }));
  }

  /** Listens on TCP, 127.0.0.1 unless a host is given; resolves to the bound port. */
  async listenTcp(port: number, host = '127.0.0.1'): Promise<number> {
    const server = await this.listen((s) => s.listen(port, host));
    return (server.address() as net.AddressInfo).port;
  }

  /** Serves a connected socket from the handshake on. */
  accept(socket: net.Socket): NbdConnection | undefined {
    const max = this.opts.maxConnections ?? 64;
    const maxHandshakes = this.opts.maxHandshakes ?? 16;
    let handshaking = 0;
    let established = 0;
    for (const c of this.accepted) {
      if (c.export === undefined) handshaking++;
      else established++;
    }
    if (handshaking >= maxHandshakes || established >= max) {
      const why = handshaking >= maxHandshakes ? `${handshaking} clients in their handshake` : `${established} clients`;
      this.warnRefused({ max, maxHandshakes }, `too many NBD connections (${why}): refusing a new one`);
      socket.destroy();
      return undefined;
    }
    const source = (sink: InputSink): net.Socket => adoptAccepted(socket, sink) ?? socket;
    const c = this.track(NbdConnection.handshake(source, this, this.connectionOptions()));
    this.accepted.add(c);
    void c.closed.then(() => this.accepted.delete(c));
    return c;
  }

  /** Serves the transmission phase only on an already negotiated socket (kernel NBD socketpair). */
  serveTransmission(socket: SocketSource, exportName: string): NbdConnection {
    const found = this.lookup(exportName);
    if (!found) throw new Error(`no export named '${exportName}'`);
    return this.track(NbdConnection.transmission(socket, found.name, found.backend, this.connectionOptions()));
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  /** Stops listening, closes every connection after its in-flight requests, closes backends. */
  async close(): Promise<void> {
    await Promise.all(this.listeners.map((l) => new Promise<void>((r) => l.close(() => r()))));
    const conns = [...this.connections];
    for (const c of conns) c.close();
    await Promise.all(conns.map((c) => c.closed));
    for (const b of this.exports.values()) await b.close?.();
  }

  private listen(start: (s: net.Server) => void): Promise<net.Server> {
    const server = net.createServer({ pauseOnConnect: true, allowHalfOpen: true }, (socket) => this.accept(socket));
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.once('listening', () => {
        server.off('error', reject);
        server.on('error', (err) => this.opts.logger.error({ err }, 'listener error'));
        this.listeners.push(server);
        resolve(server);
      });
      start(server);
    });
  }

  private track(c: NbdConnection): NbdConnection {
    this.connections.add(c);
    void c.closed.then(() => this.connections.delete(c));
    return c;
  }

  private connectionOptions(): ConnectionOptions {
    const o: ConnectionOptions = { logger: this.opts.logger, pool: this.pool };
    if (this.sendv) o.sendv = this.sendv;
    if (this.opts.maxInFlight !== undefined) o.maxInFlight = this.opts.maxInFlight;
    if (this.opts.handshakeTimeoutMs !== undefined) o.handshakeTimeoutMs = this.opts.handshakeTimeoutMs;
    return o;
  }
}
