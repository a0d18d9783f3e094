/**
 * The control API in one table, shared by the server (api.ts) and the client (client.ts, the CLI):
 * method, path, request body schema (zod) and a summary. The OpenAPI document served at
 * GET /openapi.json is generated from this table.
 *
 * Framing: one JSON document per HTTP request and response; errors are
 * `{ "error": <HTTP reason>, "message": <text naming the target/field>, "issues"?: [{ path, rule, message }] }`.
 */
import { z } from 'zod';
import { reconnectDelayField, tmoField } from '../fsm/timers.js';
import { TARGET_OPTIONS, targetSpecSchema } from './config.js';
import { type JsonSchema, toJsonSchema } from './json-schema.js';

/** The most targets one POST /targets array may carry. */
export const MAX_TARGETS_PER_ATTACH = 16;
const targetSpecsSchema = z.array(targetSpecSchema).min(1).max(MAX_TARGETS_PER_ATTACH);

/** PATCH /targets/:id body: any of the four timers; the combination is checked with validateTmo. */
export const timersPatchSchema = z
  .object({
    reconnect_delay: reconnectDelayField.optional().describe(TARGET_OPTIONS.reconnect_delay.doc),
    reconnect_delay_max: z.number().int().optional().describe(TARGET_OPTIONS.reconnect_delay_max.doc),
    fast_io_fail_tmo: tmoField.optional().describe(TARGET_OPTIONS.fast_io_fail_tmo.doc),
    dev_loss_tmo: tmoField.optional().describe(TARGET_OPTIONS.dev_loss_tmo.doc),
  })
  .strict()
  .refine((o) => Object.values(o).some((v) => v !== undefined), {
    message: 'give at least one of reconnect_delay, reconnect_delay_max, fast_io_fail_tmo, dev_loss_tmo',
    params: { rule: 'non-empty' },
  });
export type TimersPatch = z.output<typeof timersPatchSchema>;

/** POST /targets/:id/paths/:path/fail|reinstate body (optional). */
export const pathControlSchema = z
  .object({
    force: z
      .boolean()
      .optional()
      .describe('fail: also the last running path of the LU (its I/O is then held or fails with EIO)'),
  })
  .strict()
  .optional();

export interface RouteDef {
  method: 'GET' | 'POST' | 'PATCH' | 'DELETE';
  url: string;
  summary: string;
  body?: z.ZodTypeAny;
  /**
   * The schema a given body is validated with when `body` is a union of shapes (so a bad body's
   * errors name its fields, not "Invalid input"); default `body`.
   */
  bodyFor?: (raw: unknown) => z.ZodTypeAny;
  /** Success status. */
  status: number;
  /** Response content type (default JSON). */
  text?: boolean;
}

export const ROUTES = {
  health: {
    method: 'GET',
    url: '/health',
    status: 200,
    summary: 'Liveness and readiness: { status: "ok", version, uptime_s, targets }.',
  },
  listTargets: {
    method: 'GET',
    url: '/targets',
    status: 200,
    summary: 'Every target: id, status (connecting|attached|failed), rport state, address, LUN exports and devices.',
  },
  getTarget: {
    method: 'GET',
    url: '/targets/:id',
    status: 200,
    summary:
      'One target (:id is a target id, /dev/nbdN, nbdN, an export name or a /dev/disk/by-id/srp-nbd-… name) in detail: state, timers, options, reconnect counters, credits, I/O gate, session counters, time in each state, LUNs with identity, export URI, device and I/O counts.',
  },
  attach: {
    method: 'POST',
    url: '/targets',
    status: 201,
    body: z.union([targetSpecSchema, targetSpecsSchema]),
    bodyFor: (raw) => (Array.isArray(raw) ? targetSpecsSchema : targetSpecSchema),
    summary:
      'Attach a target: log in, export every LUN as <id>-lun<N> (and /dev/nbdN per `device`), persist; a LUN that reaches an attached LU becomes a path of its device (multipath). 409 if the id or address is attached, 502 if the login fails, 503 if its transport is not available. A JSON array of targets (several addresses, e.g. the paths of one LU) attaches them in order and answers an array; the first failure stops it with that error, naming the entry and the targets already attached (they stay).',
  },
  detach: {
    method: 'DELETE',
    url: '/targets/:id',
    status: 200,
    summary:
      'Detach a target (:id as for GET; a device or an export names its whole target): remove its exports and kernel devices, log out, forget it. Answers { detached: <id>, exports, devices }.',
  },
  getLun: {
    method: 'GET',
    url: '/luns/:name',
    status: 200,
    summary:
      'One LUN by /dev/nbdN, nbdN, export name or /dev/disk/by-id/srp-nbd-… name: target, export, device, stable name (by_id), size, identity.',
  },
  setTimers: {
    method: 'PATCH',
    url: '/targets/:id',
    status: 200,
    body: timersPatchSchema,
    summary:
      'Change timers at runtime (validated like srp_tmo_valid); fast_io_fail_tmo/dev_loss_tmo apply from the next outage, reconnect_delay at once.',
  },
  reconnect: {
    method: 'POST',
    url: '/targets/:id/reconnect',
    status: 200,
    summary: 'Reconnect now (also from lost; a target still connecting after a restart retries at once).',
  },
  rescan: {
    method: 'POST',
    url: '/targets/:id/rescan',
    status: 200,
    summary:
      "Follow LUN changes now: re-read every LUN's capacity (a grown LUN's export and /dev/nbdN are resized) and WP bit, and REPORT LUNS (new LUNs exported, vanished ones fail I/O with EIO until detach).",
  },
  listPaths: {
    method: 'GET',
    url: '/targets/:id/paths',
    status: 200,
    summary:
      'The paths of the LU(s) behind :id (a target id, /dev/nbdN, an export or a stable name): per LU its export, device, selector, failback and paths (target, address, state, role, commands, errors, in_flight, last_failure); with one LU its fields are also at the top level.',
  },
  failPath: {
    method: 'POST',
    url: '/targets/:id/paths/:path/fail',
    status: 200,
    body: pathControlSchema,
    summary:
      'Fail a path (:path is its target id or its index in the paths list): it stays logged in but carries no I/O. Failing the last running path of an LU is refused (409) unless { "force": true }.',
  },
  reinstatePath: {
    method: 'POST',
    url: '/targets/:id/paths/:path/reinstate',
    status: 200,
    body: pathControlSchema,
    summary: 'Give a path failed by the operator back to the LU (the failover selector chooses its active path again).',
  },
  metrics: {
    method: 'GET',
    url: '/metrics',
    status: 200,
    text: true,
    summary:
      'Prometheus text exposition: state, reconnects, failed reconnects, credits, I/O gate, per-LUN I/O counts and latency histograms, time in each state.',
  },
  openapi: { method: 'GET', url: '/openapi.json', status: 200, summary: 'This API as an OpenAPI 3.0 document.' },
} as const satisfies Record<string, RouteDef>;

export type RouteName = keyof typeof ROUTES;

/** Fills `:param`s of a route URL. */
export function routePath(name: RouteName, params: Record<string, string> = {}): string {
  return ROUTES[name].url.replace(/:([a-z]+)/g, (_, p: string) => {
    const v = params[p];
    if (v === undefined) throw new Error(`route ${name}: missing parameter ${p}`);
    return encodeURIComponent(v);
  });
}

/** OpenAPI 3.0 description generated from ROUTES. */
export function openApiDocument(version: string): JsonSchema {
  const paths: Record<string, Record<string, unknown>> = {};
  const errorSchema = {
    type: 'object',
    properties: {
      error: { type: 'string' },
      message: { type: 'string', description: 'What went wrong, naming the target or the field.' },
      issues: {
        type: 'array',
        items: {
          type: 'object',
          properties: { path: { type: 'string' }, rule: { type: 'string' }, message: { type: 'string' } },
        },
      },
    },
  };
  for (const [name, r] of Object.entries(ROUTES) as [RouteName, RouteDef][]) {
    const p = r.url.replace(/:([a-z]+)/g, '{$1}');
    const op: Record<string, unknown> = {
      operationId: name,
      summary: r.summary,
      responses: {
        [String(r.status)]: {
          description: 'OK',
          content: r.text
            ? { 'text/plain; version=0.0.4': { schema: { type: 'string' } } }
            : { 'application/json': { schema: {} } },
        },
        400: {
          description: 'Invalid request body (the message names the field)',
          content: { 'application/json': { schema: errorSchema } },
        },
        401: { description: 'TCP listener: missing or wrong bearer token' },
        404: {
          description: 'No such target or LUN (the message lists what exists)',
          content: { 'application/json': { schema: errorSchema } },
        },
      },
    };
    const params = [...r.url.matchAll(/:([a-z]+)/g)].map((m) => m[1]!);
    if (params.length > 0)
      op.parameters = params.map((name) => ({ name, in: 'path', required: true, schema: { type: 'string' } }));
    if (r.body) op.requestBody = { required: true, content: { 'application/json': { schema: toJsonSchema(r.body) } } };
    (paths[p] ??= {})[r.method.toLowerCase()] = op;
  }
  return {
    openapi: '3.0.3',
    info: { title: 'srp-nbd control API', version },
    servers: [
      {
        url: 'http://localhost',
        description:
          'unix socket /run/srp-nbd/control.sock (root only), or the optional TCP listener with a bearer token',
      },
    ],
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    paths,
  };
}
