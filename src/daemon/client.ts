/**
 * Client of the control API (the CLI's side of routes.ts): one JSON request per HTTP request over
 * the control unix socket, or over TCP with a bearer token.
 */
import * as http from 'node:http';
import { DEFAULT_CONTROL_SOCKET, type ConfigIssue } from './config.js';
import { type RouteName, ROUTES, routePath } from './routes.js';

export interface ClientOptions {
  /** Control unix socket (default SRP_NBD_SOCKET or DEFAULT_CONTROL_SOCKET). */
  socket?: string;
  /** http://host:port of a TCP listener instead of the socket. */
  url?: string;
  token?: string;
  timeoutMs?: number;
}

/** The daemon answered with an error status. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly issues?: ConfigIssue[],
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

/** The daemon could not be reached at all, or refused this caller (403 on the control socket). */
export class UnreachableError extends Error {
  override readonly name = 'UnreachableError';
}

export class ControlClient {
  /** The control socket's path, or the URL of the TCP listener. */
  readonly where: string;

  constructor(private readonly opts: ClientOptions = {}) {
    this.where = opts.url ?? opts.socket ?? process.env.SRP_NBD_SOCKET ?? DEFAULT_CONTROL_SOCKET;
  }

  /** Calls a route; resolves with the parsed JSON (or text) body of a success, rejects with ApiError/UnreachableError. */
  async call<T = unknown>(name: RouteName, req: { params?: Record<string, string>; body?: unknown } = {}): Promise<T> {
    const r = ROUTES[name];
    const pathname = routePath(name, req.params);
    const payload = req.body !== undefined ? Buffer.from(JSON.stringify(req.body)) : undefined;
    const headers: Record<string, string> = { accept: 'application/json' };
    if (payload) {
      headers['content-type'] = 'application/json';
      headers['content-length'] = String(payload.length);
    }
    if (this.opts.token) headers.authorization = `Bearer ${this.opts.token}`;
    const target: http.RequestOptions = {
      method: r.method,
      path: pathname,
      headers,
      timeout: this.opts.timeoutMs ?? 120_000,
    };
    if (this.opts.url) {
      const u = new URL(this.opts.url);
      target.host = u.hostname;
      target.port = u.port || 80;
      target.path = (u.pathname.replace(/\/$/, '') || '') + pathname;
    } else {
      target.socketPath = this.where;
    }
    const { status, text, type } = await new Promise<{ status: number; text: string; type: string }>(
      (resolve, reject) => {
        const q = http.request(target, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () =>
            resolve({
              status: res.statusCode ?? 0,
              text: Buffer.concat(chunks).toString('utf8'),
              type: String(res.headers['content-type'] ?? ''),
            }),
          );
          res.on('error', reject);
        });
        q.on('timeout', () => q.destroy(new Error('timed out waiting for the daemon')));
        q.on('error', (e: NodeJS.ErrnoException) => {
          const why =
            e.code === 'ENOENT' || e.code === 'ECONNREFUSED'
              ? 'is the daemon running? (systemctl status srp-nbd, or srp-nbd daemon)'
              : e.code === 'EACCES'
                ? 'permission denied (root only)'
                : e.message;
          reject(new UnreachableError(`cannot reach the daemon at ${this.where}: ${why}`));
        });
        if (payload) q.write(payload);
        q.end();
      },
    );
    let body: unknown = text;
    if (type.includes('json')) {
      try {
        body = JSON.parse(text);
      } catch {
        /* keep the text */
      }
    }
    if (status < 200 || status > 299) {
      const b = body as { message?: string; issues?: ConfigIssue[] };
      if (status === 403 && !this.opts.url) {
        // the socket's mode let us connect, but the daemon's SO_PEERCRED check did not
        throw new UnreachableError(
          `cannot reach the daemon at ${this.where}: ${typeof b?.message === 'string' ? b.message : 'permission denied (root only)'}`,
        );
      }
      throw new ApiError(
        status,
        typeof b?.message === 'string' ? b.message : `HTTP ${status}: ${text.slice(0, 200)}`,
        b?.issues,
      );
    }
    return body as T;
  }
}
