/**
 * The daemon's configuration file (JSON) and the per-target options, validated with zod.
 *
 * Every option is declared once in TARGET_OPTIONS / configSchema with its .describe() text;
 * docs/options.md is generated from these schemas (scripts: `npm run docs:options`) and a test
 * checks it is up to date. Timer combinations are checked by the one validator, validateTmo()
 * (src/fsm/timers.ts), for the defaults and for each target with the defaults applied; the same
 * call checks attach requests and REST PATCHes.
 *
 * Errors name the key path and the rule: `targets[1].fast_io_fail_tmo: fast_io_fail_tmo=700 exceeds
 * SCSI_DEVICE_BLOCK_MAX_TIMEOUT (600 s): ... [fast-io-fail-too-long]`.
 */
import * as fs from 'node:fs';
import { z } from 'zod';
import {
  DEFAULT_TMO,
  RECONNECT_DELAY_DOC,
  RECONNECT_DELAY_MAX_DOC,
  reconnectDelayField,
  type Tmo,
  type TmoParams,
  tmoField,
  validateTmo,
} from '../fsm/timers.js';
import { type Failback, PATH_SELECTORS, type PathSelector } from '../fsm/multipath.js';
import { ACK_TIMEOUT, BUSY_POLL_MAX_US, RETRY_COUNT } from '../initiator/rdma/options.js';
import { parseAnyAddress } from './address.js';
import { addTargetConflicts, addTargetTuning } from './add-target-options.js';

/** Where the daemon listens for control requests by default; created with CONTROL_SOCKET_MODE. */
export const DEFAULT_CONTROL_SOCKET = '/run/srp-nbd/control.sock';
/** root-only: the control socket can attach and detach block devices. */
export const CONTROL_SOCKET_MODE = 0o600;
/** The NBD unix socket on which every LUN is exported by name. */
export const DEFAULT_NBD_SOCKET = '/run/srp-nbd/nbd.sock';
/** Attached targets are persisted here (state.json), written atomically. */
export const DEFAULT_STATE_DIR = '/var/lib/srp-nbd';

const DEVICE_RE = /^(auto|none|\/dev\/nbd\d+)$/;
export const TARGET_ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;

/**
 * Per-target options: one entry per option, with its schema (no default), its default and its
 * documentation. `defaults` in the config gives every one of them a value; a target (in the config or
 * in an attach request) may override any of them.
 */
export const TARGET_OPTIONS = {
  reconnect_delay: {
    schema: reconnectDelayField,
    default: DEFAULT_TMO.reconnectDelay as Tmo,
    doc: RECONNECT_DELAY_DOC,
  },
  reconnect_delay_max: {
    schema: z.number().int(),
    default: DEFAULT_TMO.reconnectDelayMax,
    doc: RECONNECT_DELAY_MAX_DOC,
  },
  fast_io_fail_tmo: {
    schema: tmoField,
    default: DEFAULT_TMO.fastIoFailTmo as Tmo,
    doc: 'Seconds after a transport failure until held and new I/O fail with EIO, or "off". At most 600; smaller than dev_loss_tmo.',
  },
  dev_loss_tmo: {
    schema: tmoField,
    default: DEFAULT_TMO.devLossTmo as Tmo,
    doc: 'Seconds after a transport failure until the port is lost (reconnecting stops, I/O fails, the device stays until detach), or "off". At most 600 when fast_io_fail_tmo is off.',
  },
  queue_size: {
    schema: z.number().int().min(1).max(4096),
    default: 62,
    doc: "SRP commands outstanding at most per target (ib_srp queue_size minus its reserved slots); the target's credits (req_lim) may lower it.",
  },
  immediate_data: {
    schema: z.boolean(),
    default: true,
    doc: 'Ask for SRP-2 immediate data at login (small writes travel inside the SRP_CMD).',
  },
  ack_timeout: {
    schema: z.number().int().min(ACK_TIMEOUT.min).max(ACK_TIMEOUT.max),
    default: ACK_TIMEOUT.default,
    doc: 'RDMA transport: local ACK timeout exponent, 4.096 µs × 2^n (14 = 67 ms). With retry_count it bounds how soon a silent path loss is noticed: (retry_count + 1) × 4.096 µs × 2^ack_timeout.',
  },
  retry_count: {
    schema: z.number().int().min(RETRY_COUNT.min).max(RETRY_COUNT.max),
    default: RETRY_COUNT.default,
    doc: 'RDMA transport: RC retry count 0..6 (7 means "retry forever" on rxe and is refused).',
  },
  initiator_id: {
    schema: z.enum(['port', 'host']),
    default: 'port' as 'port' | 'host',
    doc: 'The initiator port id the target sees (and its ACLs must name): "port" is ib_srp\'s, initiator_ext ‖ the port GUID (interface id of GID 0) of the local RDMA port the connection leaves from, so each local port is its own initiator; "host" is initiator_ext ‖ a fixed id of this host derived from /etc/machine-id (srp-nbd before 0.2), one initiator across all local ports.',
  },
  keepalive_interval: {
    schema: z.number().min(0).max(3600),
    default: 0.25,
    doc: 'RDMA transport: seconds between keep-alive ticks: a probe (a zero-length RDMA WRITE) when none is in flight, and a check that no send has waited for its completion beyond the RC retry bound, idle or under load. A dead path is noticed within (retry_count + 1) × 4.096 µs × 2^ack_timeout + keepalive_interval (status: path_check; 719.8 ms with the defaults). Cost when idle: one zero-length RDMA WRITE per tick per channel. 0 disables both.',
  },
  busy_poll: {
    schema: z.number().int().min(0).max(BUSY_POLL_MAX_US),
    default: 0,
    doc: "RDMA transport: microseconds to busy-poll the completion queue after posting commands before sleeping until the completion event, as the kernel's net.core.busy_poll does for sockets. A response within the budget costs no wake-up: lower latency at low queue depth for up to that much CPU per post (after a miss the next 1, 2, 4 … 32 posts do not spin). Pays where a core is free to spin; on an overcommitted host the spin can starve the target (docs/performance.md). 0 = off.",
  },
  max_hold_queue: {
    schema: z.number().int().min(1).max(65536),
    default: 256,
    doc: 'Block requests admitted at once per target (in flight plus held while the path is blocked); later ones wait, so memory stays bounded.',
  },
  command_timeout: {
    schema: z.number().int().min(1).max(3600),
    default: 30,
    doc: 'Seconds a SCSI command may take before it is aborted (ABORT TASK) and retried.',
  },
  device: {
    schema: z.string().regex(DEVICE_RE, 'must be "auto", "none" or "/dev/nbdN"'),
    default: 'auto',
    doc: 'Kernel block device for each LUN: "auto" (next free /dev/nbdN through NBD netlink when the kernel driver and the native addon are available, otherwise none), "/dev/nbdN" (this one; attach fails if it cannot be had; with several LUNs N, N+1, ...), or "none" (NBD unix socket export only).',
  },
  md_readd: {
    schema: z.boolean(),
    default: true,
    doc: 'When the path comes back (the LUN identity checked), re-add the device to every md array that failed it meanwhile, as `mdadm --re-add` would (with a write-intent bitmap md resyncs only what changed). false leaves that to the administrator.',
  },
  read_only: {
    schema: z.boolean(),
    default: false,
    doc: 'Export every LUN of the target read-only (NBD_FLAG_READ_ONLY, a read-only /dev/nbdN; writes, trims and write-zeroes fail with EPERM before reaching the target). A LUN that reports the WP bit (MODE SENSE) is read-only whatever this says.',
  },
  multipath: {
    schema: z.boolean(),
    default: true,
    doc: "A LUN whose logical unit (its designators and serial, as the identity check reads them) is already attached through another target becomes another path of that LU's device (docs/multipath.md) instead of being refused. false on either target keeps refusing it (409).",
  },
  path_selector: {
    schema: z.enum(PATH_SELECTORS),
    default: 'failover' as PathSelector,
    doc: 'How an LU with several paths spreads its I/O: "failover" (one active path, the highest path_priority, then the first attached; the others logged in and ready), "round-robin" (every running path in turn) or "queue-length" (the running path with the fewest requests in flight). Taken from the target that created the LU.',
  },
  failback: {
    schema: z.union([z.enum(['immediate', 'manual']), z.number().int().min(1).max(86400)]),
    default: 'immediate' as Failback,
    doc: 'failover selector: when the preferred path takes the I/O back after it returns: "immediate", "manual" (the active path stays until it fails or the operator fails or reinstates a path), or N seconds of the preferred path running without a break. Taken from the target that created the LU.',
  },
  path_priority: {
    schema: z.number().int().min(-1000).max(1000),
    default: 0,
    doc: "The target's paths' priority for the failover selector: the running path with the highest priority is the preferred one (ties: the first attached).",
  },
  dead_conn_timeout: {
    schema: z.number().int().min(1).max(3600),
    default: 30,
    doc: 'Kernel NBD DEAD_CONN_TIMEOUT in seconds: how long the kernel holds I/O for a /dev/nbdN whose server died (e.g. a daemon restart) before failing it.',
  },
  nbd_io_timeout: {
    schema: z.number().int().min(1).max(3600),
    default: 5,
    doc: 'The kernel request timer of each /dev/nbdN (/sys/block/nbdN/queue/io_timeout) in seconds, set after CONNECT and RECONFIGURE. srp-nbd connects with NBD TIMEOUT 0, so the timer never fails a request: when it fires, the kernel resends a request that was sent on a socket since replaced (the daemon was restarted), else logs "Possible stuck request" and re-arms it. It bounds how long a request in flight when the daemon died waits after the restart; a request held longer than this during a path outage logs one kernel info line per period.',
  },
} as const;

type OptionKey = keyof typeof TARGET_OPTIONS;
type OptionValue<K extends OptionKey> = z.output<(typeof TARGET_OPTIONS)[K]['schema']>;

/** Every per-target option with a value. */
export type TargetOptions = { [K in OptionKey]: OptionValue<K> };
/** Overrides of one target. */
export type TargetOverrides = Partial<TargetOptions>;

const optionKeys = Object.keys(TARGET_OPTIONS) as OptionKey[];

function optionShape(withDefaults: boolean): Record<OptionKey, z.ZodTypeAny> {
  const shape = {} as Record<OptionKey, z.ZodTypeAny>;
  for (const k of optionKeys) {
    const o = TARGET_OPTIONS[k];
    shape[k] = (
      withDefaults ? (o.schema as z.ZodTypeAny).default(o.default) : (o.schema as z.ZodTypeAny).optional()
    ).describe(o.doc);
  }
  return shape;
}

/** The timer parameters of a full option set. */
export function tmoOf(
  o: Pick<TargetOptions, 'reconnect_delay' | 'reconnect_delay_max' | 'fast_io_fail_tmo' | 'dev_loss_tmo'>,
): TmoParams {
  return {
    reconnectDelay: o.reconnect_delay,
    reconnectDelayMax: o.reconnect_delay_max,
    fastIoFailTmo: o.fast_io_fail_tmo,
    devLossTmo: o.dev_loss_tmo,
  };
}

/** Adds one issue per broken timer rule (validateTmo), at `path` + the first parameter the rule names. */
export function addTmoIssues(ctx: z.RefinementCtx, tmo: TmoParams, path: (string | number)[], note = ''): void {
  for (const v of validateTmo(tmo)) {
    ctx.addIssue({
      code: z.ZodIssueCode.custom,
      path: [...path, v.params[0]!],
      message: v.message + note,
      params: { rule: v.rule },
    });
  }
}

export const defaultsSchema = z
  .object(optionShape(true))
  .strict()
  .superRefine((o, ctx) => addTmoIssues(ctx, tmoOf(o as TargetOptions), []))
  .describe('Options applied to every target unless the target overrides them.');

/** A target: its address plus overrides. The body of POST /targets and an entry of `targets`. */
export const targetSpecSchema = z
  .object({
    address: z
      .string()
      .min(1)
      .superRefine((a, ctx) => {
        let parsed;
        try {
          parsed = parseAnyAddress(a);
        } catch (e) {
          ctx.addIssue({
            code: z.ZodIssueCode.custom,
            message: (e as Error).message,
            params: { rule: 'target-address' },
          });
          return;
        }
        // every add_target option is honoured or refused here (add-target-options.ts)
        if (parsed.kind === 'srp') {
          for (const r of addTargetTuning(parsed.addr).refused)
            ctx.addIssue({ code: z.ZodIssueCode.custom, message: r.message, params: { rule: 'add-target-option' } });
        }
      })
      .describe(
        'The target: an ib_srp add_target string (`id_ext=…,ioc_guid=…,dgid=…,pkey=…,service_id=…` or `id_ext=…,ioc_guid=…,dest=IP:port`), as srp_daemon prints it, or `test-target[,name=N,luns=N,lun_size=SIZE,block_size=512|4096,image_dir=DIR]` for the in-process test target.',
      ),
    id: z
      .string()
      .regex(
        TARGET_ID_RE,
        'must be 1-64 characters of letters, digits, "_", ".", ":" or "-", starting with a letter or digit',
      )
      .optional()
      .describe(
        'Stable name of the target in the CLI, the API and export names (`<id>-lun<N>`); derived from the address when omitted.',
      ),
    ...optionShape(false),
  })
  .strict();
export type TargetSpec = z.output<typeof targetSpecSchema>;

export const tcpListenerSchema = z
  .object({
    host: z.string().min(1).default('127.0.0.1').describe('Address to listen on.'),
    port: z.number().int().min(0).max(65535).describe('TCP port (0 picks a free one, logged at start).'),
    token: z
      .string()
      .min(16, 'must be at least 16 characters')
      .regex(/^[\x21-\x7e]+$/, 'printable ASCII without whitespace (a bearer token with whitespace can never match)')
      .refine(
        (t) => new Set(t).size >= 8,
        'too weak: use at least 8 different characters (e.g. `openssl rand -hex 24`)',
      )
      .describe(
        'Bearer token every request must carry (`Authorization: Bearer <token>`): printable ASCII, no whitespace, at least 8 different characters (e.g. `openssl rand -hex 24`); keep the config file mode 0600 (the daemon warns otherwise).',
      ),
  })
  .strict()
  .describe('Optional REST listener on TCP; only with a bearer token.');

export const configSchema = z
  .object({
    control_socket: z
      .string()
      .min(1)
      .default(DEFAULT_CONTROL_SOCKET)
      .describe('Control and REST API unix socket, created mode 0600 (root only).'),
    nbd_socket: z
      .string()
      .min(1)
      .default(DEFAULT_NBD_SOCKET)
      .describe(
        'NBD unix socket on which every LUN is exported by name (`nbd+unix:///<id>-lun<N>?socket=…`), mode 0600.',
      ),
    state_dir: z
      .string()
      .min(1)
      .default(DEFAULT_STATE_DIR)
      .describe('Directory of state.json, the attached set re-attached at start (and test-target LUN images).'),
    log_level: z
      .enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal'])
      .default('info')
      .describe('pino log level (logs go to stderr as JSON lines).'),
    tcp: tcpListenerSchema.optional(),
    ready_timeout: z
      .number()
      .min(0)
      .max(3600)
      .default(90)
      .describe(
        "Seconds the start may wait for the persisted and configured targets (each attached or its first attempt failed) before the daemon reports ready anyway (systemd READY=1, the `srp-nbd daemon ready` log line); keep it below the unit's TimeoutStartSec (120).",
      ),
    memory: z
      .object({
        lock: z
          .boolean()
          .default(true)
          .describe(
            "Lock the daemon's file-backed mappings (node, its libraries, the addon) in memory with mlock once it is up, so that memory pressure cannot evict the code that serves the devices (mlockall is not used: V8 aborts under it; docs/operations.md#memory-pressure).",
          ),
        io_flusher: z
          .boolean()
          .default(true)
          .describe(
            "Mark the daemon an I/O flusher (prctl PR_SET_IO_FLUSHER, Linux 5.6+, CAP_SYS_RESOURCE): the kernel's allocations for it do not wait on writeback to its own devices.",
          ),
      })
      .strict()
      .default({})
      .describe('Protections against memory pressure; what was applied is shown by `srp-nbd status` and GET /health.'),
    test_targets: z
      .object({
        enabled: z
          .boolean()
          .default(false)
          .describe('Allow `test-target` addresses (in-process RAM LUNs, for tests and demos).'),
        memory_budget_mib: z
          .number()
          .int()
          .min(1)
          .max(1024 * 1024)
          .default(1024)
          .describe('RAM all attached test targets may hold together, MiB; an attach beyond it is refused.'),
      })
      .strict()
      .default({})
      .describe(
        'The in-process test target: off unless enabled, and bounded in memory (the daemon is shielded from the OOM killer).',
      ),
    defaults: defaultsSchema.default({}),
    targets: z
      .array(targetSpecSchema)
      .default([])
      .describe(
        'Targets attached at start (if not already in the persisted state), each `{ "address": …, "id"?: …, <any per-target option> }`.',
      ),
  })
  .strict()
  .superRefine((c, ctx) => {
    const defaults = c.defaults as TargetOptions;
    c.targets.forEach((t, i) => {
      const merged = resolveOptions(defaults, t);
      addTmoIssues(ctx, tmoOf(merged), ['targets', i], ' (with the defaults applied)');
      let a;
      try {
        a = parseAnyAddress(t.address);
      } catch {
        return; // reported on the address
      }
      if (a.kind !== 'srp') return;
      for (const r of addTargetConflicts(a.addr, t))
        ctx.addIssue({
          code: z.ZodIssueCode.custom,
          path: ['targets', i, 'address'],
          message: r.message,
          params: { rule: 'add-target-option' },
        });
    });
  });

export type DaemonConfig = z.output<typeof configSchema>;

/** Options of a target: the defaults with its overrides applied. */
export function resolveOptions(defaults: TargetOptions, overrides: TargetOverrides): TargetOptions {
  const out = { ...defaults } as Record<string, unknown>;
  for (const k of optionKeys)
    if ((overrides as Record<string, unknown>)[k] !== undefined) out[k] = (overrides as Record<string, unknown>)[k];
  return out as TargetOptions;
}

/** Just the option overrides of a spec (drops address and id). */
export function overridesOf(spec: Record<string, unknown>): TargetOverrides {
  const out: Record<string, unknown> = {};
  for (const k of optionKeys) if (spec[k] !== undefined) out[k] = spec[k];
  return out as TargetOverrides;
}

/** One problem: where (key path), which rule, and the message. */
export interface ConfigIssue {
  path: string;
  rule: string;
  message: string;
}

/** `targets[0].dev_loss_tmo` from a zod path. */
export function formatPath(path: readonly (string | number)[]): string {
  let s = '';
  for (const p of path) s += typeof p === 'number' ? `[${p}]` : s === '' ? p : `.${p}`;
  return s === '' ? '(top level)' : s;
}

const TIMER_KEYS: readonly string[] = ['reconnect_delay', 'reconnect_delay_max', 'fast_io_fail_tmo', 'dev_loss_tmo'];

const RULE_OF_CODE: Record<string, string> = {
  invalid_type: 'type',
  invalid_enum_value: 'enum',
  invalid_literal: 'literal',
  unrecognized_keys: 'unknown-key',
  too_small: 'minimum',
  too_big: 'maximum',
  invalid_string: 'format',
  not_multiple_of: 'multiple',
  invalid_union: 'type',
};

/** Flattens a ZodError into issues naming the key path and the rule (unknown keys each named). */
export function zodIssues(err: z.ZodError, prefix: (string | number)[] = []): ConfigIssue[] {
  const out: ConfigIssue[] = [];
  for (const i of err.issues) {
    if (i.code === 'unrecognized_keys') {
      for (const k of i.keys)
        out.push({
          path: formatPath([...prefix, ...i.path, k]),
          rule: 'unknown-key',
          message: `unknown option '${k}'`,
        });
      continue;
    }
    if (i.code === 'invalid_union') {
      // tmo fields: string | number; say what is accepted instead of zod's union summary.
      out.push({
        path: formatPath([...prefix, ...i.path]),
        rule: 'type',
        message: 'expected an integer number of seconds or "off"',
      });
      continue;
    }
    let message = i.message;
    if (i.code === 'invalid_type' && i.received === 'undefined') message = 'required';
    const last = i.path[i.path.length - 1];
    const rule =
      (i.code === 'custom' && (i.params as { rule?: string } | undefined)?.rule) ||
      (i.code === 'custom' && typeof last === 'string' && TIMER_KEYS.includes(last) ? 'timeout-syntax' : undefined) ||
      RULE_OF_CODE[i.code] ||
      i.code;
    out.push({ path: formatPath([...prefix, ...i.path]), rule, message });
  }
  return out;
}

/** A configuration that cannot be used: every issue, one per line. */
export class ConfigError extends Error {
  constructor(
    readonly file: string,
    readonly issues: ConfigIssue[],
  ) {
    super(`${file}: invalid configuration:\n${issues.map((i) => `  ${i.path}: ${i.message} [${i.rule}]`).join('\n')}`);
    this.name = 'ConfigError';
  }
}

/** Validates a parsed config object; throws ConfigError. */
export function parseConfig(raw: unknown, file = 'config'): DaemonConfig {
  const r = configSchema.safeParse(raw);
  if (!r.success) throw new ConfigError(file, zodIssues(r.error));
  return r.data;
}

/** Reads and validates a JSON config file; a missing file with `optional` gives the defaults. */
export function loadConfig(file: string | undefined): DaemonConfig {
  if (file === undefined) return parseConfig({}, '(built-in defaults)');
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError(file, [
      { path: '(file)', rule: 'readable', message: `cannot read: ${(e as Error).message}` },
    ]);
  }
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(file, [{ path: '(file)', rule: 'json', message: `not valid JSON: ${(e as Error).message}` }]);
  }
  return parseConfig(raw, file);
}
