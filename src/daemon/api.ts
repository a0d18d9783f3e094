/**
 * The REST/control API server (fastify 4): the route table of routes.ts bound to Daemon methods,
 * served on the control unix socket (mode 0600: root only, and every connection's SO_PEERCRED
 * checked: 403 for anyone but root and the daemon's own uid) and, when configured, on TCP where every
 * request must carry `Authorization: Bearer <token>` (401 otherwise).
 *
 * Request bodies are validated with the route's zod schema; a bad body gets a 400 whose message
 * and `issues` name each offending field and the rule it breaks.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as net from 'node:net';
import * as path from 'node:path';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { boundedField, rateLimitedWarn, urlForLog } from '../util/log.js';
import { type NativeBinding, type PeerCred, tryLoadNative } from '../native/native.js';
import { CONTROL_SOCKET_MODE, type TargetSpec, zodIssues } from './config.js';
import { type Daemon, DaemonError, VERSION } from './daemon.js';
import type { TargetView } from './views.js';
import { removeStaleSocket } from './stale-socket.js';
import { openApiDocument, type RouteDef, type RouteName, ROUTES, type TimersPatch } from './routes.js';

type Handler = (d: Daemon, params: Record<string, string>, body: unknown) => unknown;

/** What each route does; every entry of ROUTES has exactly one. */
const HANDLERS: Record<RouteName, Handler> = {
  health: (d) => d.health(),
  listTargets: (d) => d.list(),
  getTarget: (d, p) => d.status(p.id!),
  attach: (d, _p, body) =>
    Array.isArray(body) ? attachInOrder(d, body as TargetSpec[]) : d.attach(body as TargetSpec),
  detach: (d, p) => d.detach(p.id!),
  getLun: (d, p) => d.lun(p.name!),
  setTimers: (d, p, body) => d.setTimers(p.id!, body as TimersPatch),
  reconnect: (d, p) => d.reconnect(p.id!),
  rescan: (d, p) => d.rescan(p.id!),
  listPaths: (d, p) => d.paths(p.id!),
  failPath: (d, p, body) => d.pathControl(p.id!, p.path!, 'fail', (body as { force?: boolean } | undefined)?.force),
  reinstatePath: (d, p) => d.pathControl(p.id!, p.path!, 'reinstate'),
  metrics: (d) => d.metrics(),
  openapi: () => openApiDocument(VERSION),
};

/**
 * POST /targets with an array: each target attached in order (the paths of one LU group as they
 * come). The first failure stops it, with that error's status, naming the entry and what stays
 * attached.
 */
async function attachInOrder(d: Daemon, specs: TargetSpec[]): Promise<unknown[]> {
  const done: TargetView[] = [];
  for (const [i, spec] of specs.entries()) {
    try {
      done.push(await d.attach(spec));
    } catch (e) {
      const attached = done.length > 0 ? done.map((v) => v.id).join(', ') : 'none';
      const status = e instanceof DaemonError ? e.status : ((e as { statusCode?: number }).statusCode ?? 500);
      const details = e instanceof DaemonError ? e.details : undefined;
      throw new DaemonError(
        `targets[${i}] (${spec.address}): ${(e as Error).message} (attached before it, still attached: ${attached})`,
        status,
        details,
      );
    }
  }
  return done;
}

const REASONS: Record<number, string> = {
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  409: 'Conflict',
  415: 'Unsupported Media Type',
  500: 'Internal Server Error',
  502: 'Bad Gateway',
  503: 'Service Unavailable',
};

/**
 * Limits of every control listener, so a client that connects and sends nothing, or half a
 * request, cannot hold a connection (and an fd) for long: the request's headers and body must
 * arrive within REQUEST_TIMEOUT_MS, an idle keep-alive connection closes after KEEPALIVE_TIMEOUT_MS,
 * both checked every CHECK_INTERVAL_MS; at most MAX_CONNECTIONS are open per listener (more are
 * dropped at once); the daemon's stop closes every connection. A handler (an attach may log in for
 * many seconds) is not limited: the timeouts cover receiving the request only.
 */
export const API_LIMITS = {
  REQUEST_TIMEOUT_MS: 10_000,
  KEEPALIVE_TIMEOUT_MS: 5_000,
  CHECK_INTERVAL_MS: 1_000,
  MAX_CONNECTIONS: 32,
};

/** Builds the fastify app; with `token`, every request needs it as a bearer token. */
export function buildApp(daemon: Daemon, logger: Logger, opts: { token?: string } = {}): FastifyInstance {
  const app = Fastify({
    logger: false,
    bodyLimit: 64 * 1024,
    forceCloseConnections: true,
    // fastify sets keepAliveTimeout on the server it is given, so it is a fastify option
    keepAliveTimeout: API_LIMITS.KEEPALIVE_TIMEOUT_MS,
    serverFactory: (handler) => {
      const server = http.createServer(
        {
          requestTimeout: API_LIMITS.REQUEST_TIMEOUT_MS,
          headersTimeout: API_LIMITS.REQUEST_TIMEOUT_MS,
          connectionsCheckingInterval: API_LIMITS.CHECK_INTERVAL_MS,
        },
        handler,
      );
      server.maxConnections = API_LIMITS.MAX_CONNECTIONS;
      return server;
    },
  });
  const want = opts.token !== undefined ? createHash('sha256').update(opts.token).digest() : undefined;
  if (want) {
    const warnRefused = rateLimitedWarn(logger);
    app.addHook('onRequest', async (req, reply) => {
      const h = req.headers.authorization;
      const m = typeof h === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(h) : null;
      const got = m ? createHash('sha256').update(m[1]!).digest() : undefined;
      if (!got || !timingSafeEqual(got, want)) {
        warnRefused(
          { remote: req.ip, url: urlForLog(req.url), reason: m ? 'wrong token' : 'no bearer token' },
          'control request refused (401)',
        );
        return reply
          .code(401)
          .header('www-authenticate', 'Bearer realm="srp-nbd"')
          .send({
            error: 'Unauthorized',
            message: m ? 'wrong bearer token' : 'this listener requires "Authorization: Bearer <token>"',
          });
      }
    });
  }
  app.setErrorHandler((err: Error & { statusCode?: number }, req, reply) => {
    const status = err instanceof DaemonError ? err.status : (err.statusCode ?? 500);
    const url = urlForLog(req.url);
    if (err instanceof DaemonError)
      logger.warn({ url, status, err: boundedField(err.message) }, 'control request refused');
    else if (status >= 500) logger.error({ err, url }, 'control request failed');
    const body: Record<string, unknown> = { error: REASONS[status] ?? 'Error', message: err.message };
    if (err instanceof DaemonError && err.details !== undefined) body.issues = err.details;
    void reply.code(status).send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    void reply
      .code(404)
      .send({ error: 'Not Found', message: `no route ${req.method} ${req.url} (GET /openapi.json lists them)` });
  });
  for (const [name, r] of Object.entries(ROUTES) as [RouteName, RouteDef][]) {
    app.route({
      method: r.method,
      url: r.url,
      handler: async (req: FastifyRequest, reply: FastifyReply) => {
        let body: unknown;
        if (r.body) {
          const raw = req.body ?? undefined;
          const parsed = (r.bodyFor?.(raw) ?? r.body).safeParse(raw);
          if (!parsed.success) {
            const issues = zodIssues(parsed.error);
            return reply.code(400).send({
              error: 'Bad Request',
              message: `invalid request body: ${issues.map((i) => `${i.path}: ${i.message} [${i.rule}]`).join('; ')}`,
              issues,
            });
          }
          body = parsed.data;
        }
        const params = req.params as Record<string, string>;
        const result = await HANDLERS[name](daemon, params, body);
        if (r.method !== 'GET') {
          const logged = Object.fromEntries(Object.entries(params).map(([k, v]) => [k, boundedField(v)]));
          logger.info({ route: name, params: logged, status: r.status }, `control: ${r.method} ${urlForLog(req.url)}`);
        }
        reply.code(r.status);
        if (r.text) return reply.type('text/plain; version=0.0.4; charset=utf-8').send(result);
        return reply.send(result);
      },
    });
  }
  return app;
}

/** Who may use the control socket: root and the uid the daemon runs as. */
export function controlPeerAllowed(cred: PeerCred, ownUid: number): boolean {
  return cred.uid === 0 || cred.uid === ownUid;
}

/**
 * Defence in depth behind the socket's mode 0600: reads SO_PEERCRED of every connection to the
 * control socket and answers each request of a peer that is neither root nor the daemon's uid with
 * 403 (and a log line naming its pid and uid) before any handler runs. Without the native addon
 * (`binding` undefined) the socket mode alone keeps others out; that is logged once here.
 * Call before the app listens.
 */
export function guardControlPeers(
  app: FastifyInstance,
  logger: Logger,
  binding: Pick<NativeBinding, 'getPeerCred'> | undefined,
  ownUid: number = process.getuid?.() ?? 0,
): void {
  if (!binding) {
    logger.warn(
      'native addon not loaded: control socket peers are not checked with SO_PEERCRED; the socket mode 0600 alone keeps other users out',
    );
    return;
  }
  /** refused connections -> the 403 message */
  const refused = new WeakMap<net.Socket, string>();
  const warnRefused = rateLimitedWarn(logger);
  app.server.on('connection', (s: net.Socket) => {
    // Linux: an accepted unix socket's fd is on its libuv pipe handle.
    const fd = (s as unknown as { _handle?: { fd?: number } })._handle?.fd;
    let cred: PeerCred;
    try {
      if (typeof fd !== 'number' || fd < 0) throw new Error('the accepted socket has no fd');
      cred = binding.getPeerCred(fd);
    } catch (e) {
      logger.error(
        { err: (e as Error).message },
        'control connection refused: cannot read its peer credentials (SO_PEERCRED)',
      );
      refused.set(
        s,
        'permission denied (root only): the daemon could not read the peer credentials of this connection',
      );
      return;
    }
    if (controlPeerAllowed(cred, ownUid)) return;
    warnRefused(
      { pid: cred.pid, uid: cred.uid, gid: cred.gid },
      `control connection refused: uid ${cred.uid} (pid ${cred.pid}) is neither root nor the daemon's uid ${ownUid}`,
    );
    refused.set(s, `permission denied (root only): refused uid ${cred.uid} (pid ${cred.pid})`);
  });
  app.addHook('onRequest', async (req, reply) => {
    const message = refused.get(req.raw.socket);
    if (message === undefined) return;
    return reply.code(403).header('connection', 'close').send({ error: 'Forbidden', message });
  });
}

export interface ApiListeners {
  tcpPort?: number;
  close(): Promise<void>;
}

/**
 * Listens on the control socket (created with mode CONTROL_SOCKET_MODE under a 0177 umask, so it is
 * never briefly accessible to others; peers checked by guardControlPeers) and on TCP if configured. Refuses to replace the socket of a
 * daemon that is still running.
 */
export async function startApi(daemon: Daemon, logger: Logger): Promise<ApiListeners> {
  const cfg = daemon.config;
  const apps: FastifyInstance[] = [];
  const unixApp = buildApp(daemon, logger);
  guardControlPeers(unixApp, logger, tryLoadNative());
  const closeAll = async (): Promise<void> => {
    await Promise.all(apps.map((a) => a.close()));
  };
  try {
    return await listenAll();
  } catch (e) {
    await closeAll(); // a listener that failed to start leaves nothing answering
    throw e;
  }

  async function listenAll(): Promise<ApiListeners> {
    await removeStaleSocket(cfg.control_socket);
    fs.mkdirSync(path.dirname(cfg.control_socket), { recursive: true, mode: 0o755 });
    const old = process.umask(0o177);
    try {
      await unixApp.listen({ path: cfg.control_socket });
    } finally {
      process.umask(old);
    }
    fs.chmodSync(cfg.control_socket, CONTROL_SOCKET_MODE);
    apps.push(unixApp);
    logger.info({ socket: cfg.control_socket, mode: CONTROL_SOCKET_MODE.toString(8) }, 'control API on unix socket');
    let tcpPort: number | undefined;
    if (cfg.tcp) {
      const tcpApp = buildApp(daemon, logger, { token: cfg.tcp.token });
      await tcpApp.listen({ host: cfg.tcp.host, port: cfg.tcp.port });
      tcpPort = (tcpApp.server.address() as net.AddressInfo).port;
      apps.push(tcpApp);
      logger.info({ host: cfg.tcp.host, port: tcpPort }, 'control API on TCP (bearer token required)');
    }
    return { ...(tcpPort !== undefined ? { tcpPort } : {}), close: closeAll };
  }
}
