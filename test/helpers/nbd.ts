/** Test fixtures: an in-process NBD server on a temporary unix socket and TCP port, and a raw client. */
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import type { Backend } from '../../src/nbd/backend.js';
import { encodeInfoRequest, encodeOption, encodeRequest } from '../../src/nbd/codec.js';
import * as C from '../../src/nbd/nbd-constants.js';
import { NbdServer, type NbdServerOptions } from '../../src/nbd/server.js';
import { silentLogger } from '../../src/util/log.js';
import { ByteReader } from './byte-reader.js';

export interface Running {
  server: NbdServer;
  dir: string;
  socketPath: string;
  port: number;
  /** NBD URI of the export over unix socket or TCP. */
  uri(kind: 'unix' | 'tcp', exportName?: string): string;
  close(): Promise<void>;
}

export async function startServer(
  exports: Record<string, Backend>,
  opts: Partial<NbdServerOptions> = {},
): Promise<Running> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-test-'));
  const socketPath = path.join(dir, 'nbd.sock');
  const server = new NbdServer({ logger: silentLogger(), ...opts });
  for (const [name, b] of Object.entries(exports)) server.addExport(name, b);
  await server.listenUnix(socketPath);
  const port = await server.listenTcp(0);
  return {
    server,
    dir,
    socketPath,
    port,
    uri: (kind, exportName = Object.keys(exports)[0]!) =>
      kind === 'unix' ? `nbd+unix:///${exportName}?socket=${socketPath}` : `nbd://127.0.0.1:${port}/${exportName}`,
    close: async () => {
      await server.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Runs a program; resolves with stdout, rejects with its stderr in the message. */
export function run(cmd: string, args: string[], timeoutMs = 120_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** A client speaking NBD by hand, for protocol-level tests. */
export class RawClient {
  readonly reader: ByteReader;
  private constructor(readonly socket: net.Socket) {
    this.reader = new ByteReader(socket);
  }

  static async connect(socketPath: string): Promise<RawClient> {
    const s = net.connect(socketPath);
    await new Promise<void>((resolve, reject) => {
      s.once('connect', resolve);
      s.once('error', reject);
    });
    return new RawClient(s);
  }

  /** Wraps an already connected socket (transmission-only tests). */
  static over(socket: net.Socket): RawClient {
    return new RawClient(socket);
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  /** Reads the greeting and sends client flags; returns the handshake flags. */
  async greet(clientFlags = C.NBD_FLAG_C_FIXED_NEWSTYLE | C.NBD_FLAG_C_NO_ZEROES): Promise<number> {
    const g = await this.reader.read(18);
    if (g.readBigUInt64BE(0) !== C.NBDMAGIC || g.readBigUInt64BE(8) !== C.IHAVEOPT) throw new Error('bad greeting');
    const f = Buffer.alloc(4);
    f.writeUInt32BE(clientFlags);
    this.write(f);
    return g.readUInt16BE(16);
  }

  option(opt: number, data?: Buffer): void {
    this.write(encodeOption(opt, data));
  }

  async optionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.reader.read(20);
    if (h.readBigUInt64BE(0) !== C.NBD_OPT_REPLY_MAGIC) throw new Error('bad option reply magic');
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.reader.read(len) };
  }

  /** Replies up to and including the final ACK or error of one option. */
  async optionReplies(): Promise<{ option: number; type: number; data: Buffer }[]> {
    const out = [];
    for (;;) {
      const r = await this.optionReply();
      out.push(r);
      if (r.type === C.NBD_REP_ACK || (r.type & C.NBD_REP_FLAG_ERROR) !== 0) return out;
    }
  }

  /** Full handshake with NBD_OPT_GO; optionally negotiates structured replies first. Returns transmission flags. */
  async go(name = '', structured = false): Promise<{ size: number; flags: number }> {
    await this.greet();
    if (structured) {
      this.option(C.NBD_OPT_STRUCTURED_REPLY);
      const r = await this.optionReply();
      if (r.type !== C.NBD_REP_ACK) throw new Error('structured replies refused');
    }
    this.option(C.NBD_OPT_GO, encodeInfoRequest(name, [C.NBD_INFO_BLOCK_SIZE]));
    const replies = await this.optionReplies();
    const last = replies[replies.length - 1]!;
    if (last.type !== C.NBD_REP_ACK) throw new Error(`NBD_OPT_GO failed: 0x${last.type.toString(16)}`);
    const info = replies.find((r) => r.type === C.NBD_REP_INFO && r.data.readUInt16BE(0) === C.NBD_INFO_EXPORT)!;
    return { size: Number(info.data.readBigUInt64BE(2)), flags: info.data.readUInt16BE(10) };
  }

  request(type: number, cookie: bigint, offset: number | bigint, length: number, flags = 0, payload?: Buffer): void {
    this.write(
      payload
        ? Buffer.concat([encodeRequest(type, flags, cookie, offset, length), payload])
        : encodeRequest(type, flags, cookie, offset, length),
    );
  }

  /** Reads a simple reply; with `dataLength` also its payload (for a successful READ). */
  async simpleReply(dataLength = 0): Promise<{ error: number; cookie: bigint; data: Buffer }> {
    const h = await this.reader.read(16);
    if (h.readUInt32BE(0) !== C.NBD_SIMPLE_REPLY_MAGIC)
      throw new Error(`bad reply magic 0x${h.readUInt32BE(0).toString(16)}`);
    const error = h.readUInt32BE(4);
    const data = error === 0 && dataLength > 0 ? await this.reader.read(dataLength) : Buffer.alloc(0);
    return { error, cookie: h.readBigUInt64BE(8), data };
  }

  /** Reads one structured reply chunk. */
  async structuredChunk(): Promise<{ flags: number; type: number; cookie: bigint; data: Buffer }> {
    const h = await this.reader.read(20);
    if (h.readUInt32BE(0) !== C.NBD_STRUCTURED_REPLY_MAGIC) throw new Error('bad structured reply magic');
    return {
      flags: h.readUInt16BE(4),
      type: h.readUInt16BE(6),
      cookie: h.readBigUInt64BE(8),
      data: await this.reader.read(h.readUInt32BE(16)),
    };
  }

  close(): void {
    this.socket.destroy();
  }
}
