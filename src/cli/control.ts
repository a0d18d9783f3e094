/**
 * CLI commands that talk to the daemon over the control socket with the shared route table:
 * attach, detach, list, status, path, set, reconnect, rescan (discover, local, is in discover.ts).
 *
 * Exit status like mdadm/nvme-cli: 0 ok, 1 the operation failed (daemon unreachable, no such
 * target, login failed, ...), 2 usage error (bad option or value, also when the daemon refuses a
 * request body with 400). Messages name the target and the problem. --json on every read command
 * prints the API's JSON instead of the table.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { TARGET_OPTIONS, targetSpecSchema, zodIssues } from '../daemon/config.js';
import { ApiError, ControlClient, UnreachableError } from '../daemon/client.js';
import { describeMembership } from '../daemon/md.js';
import type { DetachResult, LuPathsView, PathsResult, PathView, TargetSummary, TargetView } from '../daemon/views.js';
import { describeMemory, type MemoryReport } from '../daemon/memory.js';
import { BY_ID_DIR } from '../daemon/names.js';
import { normalizeAddressLine } from '../daemon/address.js';
import { timersPatchSchema } from '../daemon/routes.js';
import { UsageError } from './usage-error.js';

const CONNECTION_OPTIONS = {
  socket: { type: 'string' },
  url: { type: 'string' },
  token: { type: 'string' },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h' },
} as const satisfies ParseArgsConfig['options'];

const CONNECTION_USAGE = `common options:
  --socket PATH   control socket (default $SRP_NBD_SOCKET or /run/srp-nbd/control.sock)
  --url URL       TCP listener instead, e.g. http://127.0.0.1:8740 (with --token or $SRP_NBD_TOKEN)
  --json          print the daemon's JSON answer
`;

function client(values: { socket?: string; url?: string; token?: string }): ControlClient {
  const o: ConstructorParameters<typeof ControlClient>[0] = {};
  if (values.socket !== undefined) o.socket = values.socket;
  if (values.url !== undefined) o.url = values.url;
  const token = values.token ?? process.env.SRP_NBD_TOKEN;
  if (token !== undefined) o.token = token;
  return new ControlClient(o);
}

/** A 400 from the daemon is a usage problem (exit 2); anything else a failure (exit 1). */
async function call<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    if (e instanceof ApiError && e.status === 400) throw new UsageError(e.message);
    throw e;
  }
}

const flag = (key: string): string => `--${key.replace(/_/g, '-')}`;
const print = (s: string): void => void process.stdout.write(s.endsWith('\n') ? s : s + '\n');

/* ------------------------------------------------------------------ attach */

export const ATTACH_USAGE = `usage: srp-nbd attach [options] ADDRESS...
       srp-nbd attach [options] -                  (addresses from stdin, one per line: srp_daemon -o -n output)
       srp-nbd attach [options] --id-ext HEX --ioc-guid HEX (--dest IP:PORT | --dgid HEX --pkey HEX --service-id HEX)

ADDRESS is an ib_srp add_target string (id_ext=…,ioc_guid=…,dest=IP:PORT or …,dgid=…,pkey=…,service_id=…),
a line as srp_daemon prints it (also "echo … > …/add_target"), or test-target[,name=N,luns=N,lun_size=SIZE,
block_size=512|4096,image_dir=DIR] for the in-process test target.

  --id NAME                   target id (default: derived from the address); exports are NAME-lun<N>
${Object.entries(TARGET_OPTIONS)
  .map(([k]) => `  ${flag(k).padEnd(28)}${k} (docs/options.md)`)
  .join('\n')}
${CONNECTION_USAGE}
Prints each LUN's export name, device (or "-") and NBD URI.
`;

const OPTION_FLAGS = Object.fromEntries(
  Object.keys(TARGET_OPTIONS).map((k) => [flag(k).slice(2), { type: 'string' as const }]),
);

/** Converts --flag strings to the JSON types the schema expects; the schema then validates. */
function optionValue(key: keyof typeof TARGET_OPTIONS, text: string): unknown {
  if (typeof TARGET_OPTIONS[key].default === 'boolean') {
    if (/^(1|on|yes|true)$/i.test(text)) return true;
    if (/^(0|off|no|false)$/i.test(text)) return false;
    throw new UsageError(`${flag(key)}: expected on or off, got '${text}'`);
  }
  if (
    key === 'device' ||
    key === 'initiator_id' ||
    key === 'path_selector' ||
    key === 'reconnect_delay' ||
    key === 'fast_io_fail_tmo' ||
    key === 'dev_loss_tmo'
  )
    return text;
  if (key === 'failback' && !/^\d+(\.\d*)?$/.test(text.trim())) return text;
  const n = Number(text);
  if (text.trim() === '' || !Number.isFinite(n)) throw new UsageError(`${flag(key)}: expected a number, got '${text}'`);
  return n;
}

export async function attach(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      ...CONNECTION_OPTIONS,
      ...OPTION_FLAGS,
      id: { type: 'string' },
      'id-ext': { type: 'string' },
      'ioc-guid': { type: 'string' },
      dest: { type: 'string' },
      src: { type: 'string' },
      dgid: { type: 'string' },
      pkey: { type: 'string' },
      'service-id': { type: 'string' },
    },
    strict: true,
  });
  if (values.help) {
    print(ATTACH_USAGE);
    return 0;
  }
  const v = values as Record<string, string | boolean | undefined>;
  let addresses: string[] = [];
  const named = ['id-ext', 'ioc-guid', 'dest', 'src', 'dgid', 'pkey', 'service-id'].filter((k) => v[k] !== undefined);
  if (named.length > 0) {
    if (positionals.length > 0)
      throw new UsageError('attach: give an ADDRESS or named address flags (--id-ext …), not both');
    addresses = [named.map((k) => `${k.replace(/-/g, '_')}=${v[k] as string}`).join(',')];
  } else if (positionals.length === 1 && positionals[0] === '-') {
    const text = await readStdin();
    addresses = text
      .split('\n')
      .map((l) => l.trim())
      .filter((l) => l !== '' && !l.startsWith('#'));
    if (addresses.length === 0) throw new UsageError('attach: no address on standard input');
  } else {
    addresses = positionals;
  }
  if (addresses.length === 0) throw new UsageError('attach: missing ADDRESS (see srp-nbd attach --help)');
  if (addresses.length > 1 && v.id !== undefined)
    throw new UsageError('attach: --id names one target; give one ADDRESS');
  const overrides: Record<string, unknown> = {};
  for (const key of Object.keys(TARGET_OPTIONS) as (keyof typeof TARGET_OPTIONS)[]) {
    const text = v[flag(key).slice(2)];
    if (typeof text === 'string') overrides[key] = optionValue(key, text);
  }
  const bodies = addresses.map((raw) => {
    const body: Record<string, unknown> = { address: normalizeAddressLine(raw), ...overrides };
    if (v.id !== undefined) body.id = v.id;
    const r = targetSpecSchema.safeParse(body);
    if (!r.success) {
      throw new UsageError(
        zodIssues(r.error)
          .map(
            (i) =>
              `${i.path === 'address' ? `address '${body.address as string}'` : i.path in TARGET_OPTIONS ? flag(i.path) : i.path}: ${i.message}`,
          )
          .join('; '),
      );
    }
    return body;
  });
  const c = client(values);
  let failed = 0;
  const results: TargetView[] = [];
  for (const body of bodies) {
    try {
      const view = await call(() => c.call<TargetView>('attach', { body }));
      results.push(view);
      if (!values.json) {
        print(
          `${view.id}: attached (${view.lun_details.length} LUN${view.lun_details.length === 1 ? '' : 's'}${pathsNote(view)}, state ${view.state ?? view.status})`,
        );
        for (const l of view.lun_details) print(`  ${l.export}  ${l.device ?? '-'}  ${l.uri}`);
        for (const l of view.path_luns ?? [])
          print(`  LUN ${l.lun}: a path of ${l.export}  ${l.device ?? '-'}  (held by ${l.owner})`);
      }
    } catch (e) {
      if (bodies.length === 1) throw e;
      failed++;
      process.stderr.write(`srp-nbd attach: ${body.address as string}: ${(e as Error).message}\n`);
    }
  }
  if (values.json) print(JSON.stringify(bodies.length === 1 ? results[0] : results, null, 2));
  return failed > 0 ? 1 : 0;
}

/** ", 1 path of an attached LU" for a target whose LUNs joined LUs exported through another target. */
function pathsNote(view: TargetView): string {
  const n = view.path_luns?.length ?? 0;
  return n === 0 ? '' : `, ${n} path${n === 1 ? '' : 's'} of ${n === 1 ? 'an attached LU' : 'attached LUs'}`;
}

function readStdin(): Promise<string> {
  return new Promise((resolve, reject) => {
    let s = '';
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', (d: string) => (s += d));
    process.stdin.on('end', () => resolve(s));
    process.stdin.on('error', reject);
  });
}

/* ------------------------------------------------------------------ detach / reconnect */

export const DETACH_USAGE = `usage: srp-nbd detach [options] NAME...
       srp-nbd detach [options] --all

Removes the targets' exports and kernel devices (the only way a /dev/nbdN goes away), logs out.
NAME is a target id, a device (/dev/nbdN or nbdN), an export name or a stable name
(/dev/disk/by-id/srp-nbd-…); a device or an export detaches its whole target (every LUN).
Prints each target detached with its devices.

  --all           every target
${CONNECTION_USAGE}`;

export async function detach(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { ...CONNECTION_OPTIONS, all: { type: 'boolean', default: false } },
    strict: true,
  });
  if (values.help) {
    print(DETACH_USAGE);
    return 0;
  }
  if (values.all && positionals.length > 0) throw new UsageError('detach: give NAMEs or --all, not both');
  if (!values.all && positionals.length === 0) throw new UsageError('detach: missing NAME (or --all)');
  const c = client(values);
  const names = values.all ? (await call(() => c.call<TargetSummary[]>('listTargets'))).map((t) => t.id) : positionals;
  let failed = 0;
  const results: DetachResult[] = [];
  for (const name of names) {
    try {
      const r = await call(() => c.call<DetachResult>('detach', { params: { id: name } }));
      results.push(r);
      if (!values.json) {
        const what = r.devices.length > 0 ? ` (${r.devices.join(', ')})` : '';
        print(`${r.detached}: detached${what}${r.detached !== name ? ` [${name}]` : ''}`);
      }
    } catch (e) {
      if (names.length === 1 && !values.all) throw e;
      failed++;
      process.stderr.write(`srp-nbd detach: ${(e as Error).message}\n`);
    }
  }
  if (values.json) {
    print(JSON.stringify({ detached: results, devices: results.flatMap((r) => r.devices), failed }, null, 2));
  } else if (values.all && names.length === 0) print('no targets attached');
  return failed > 0 ? 1 : 0;
}

export const RECONNECT_USAGE = `usage: srp-nbd reconnect [options] TARGET

Reconnects now: cuts the back-off short, and brings a lost target (dev_loss_tmo expired or identity
mismatch fixed) back to blocked and running. The device is the same.
${CONNECTION_USAGE}`;

/**
 * `srp-nbd CMD [options] TARGET` for a command that only names a target: the target's view after
 * the route `route` ran on it, or undefined when --help printed `usage`.
 */
async function onOneTarget(
  argv: string[],
  cmd: string,
  usage: string,
  route: 'reconnect' | 'rescan',
): Promise<{ view: TargetView; json: boolean } | undefined> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: CONNECTION_OPTIONS,
    strict: true,
  });
  if (values.help) {
    print(usage);
    return undefined;
  }
  if (positionals.length !== 1) throw new UsageError(`${cmd}: give exactly one TARGET`);
  const view = await call(() => client(values).call<TargetView>(route, { params: { id: positionals[0]! } }));
  return { view, json: values.json === true };
}

export async function reconnect(argv: string[]): Promise<number> {
  const r = await onOneTarget(argv, 'reconnect', RECONNECT_USAGE, 'reconnect');
  if (!r) return 0;
  const { view } = r;
  print(
    r.json
      ? JSON.stringify(view, null, 2)
      : `${view.id}: reconnect requested (state ${view.state ?? view.status}, phase ${view.reconnect.phase})`,
  );
  return 0;
}

export const RESCAN_USAGE = `usage: srp-nbd rescan [options] TARGET

Follows LUN changes on the target now: re-reads every LUN's capacity (a LUN that grew gets its
export and /dev/nbdN resized; one that shrank is reported, not followed) and WP bit, then the LUN
list (new LUNs are exported on the lowest free /dev/nbdN; vanished ones fail I/O with EIO until
detach). The daemon does the same on its own for the unit attentions CAPACITY DATA HAS CHANGED and
REPORTED LUNS DATA HAS CHANGED.
${CONNECTION_USAGE}`;

export async function rescan(argv: string[]): Promise<number> {
  const r = await onOneTarget(argv, 'rescan', RESCAN_USAGE, 'rescan');
  if (!r) return 0;
  const { view } = r;
  print(
    r.json
      ? JSON.stringify(view, null, 2)
      : [
          `${view.id}: rescanned`,
          ...view.lun_details.map(
            (l) =>
              `  LUN ${l.lun}  ${l.export}  device ${l.device ?? '-'}  ${l.size} bytes  ${l.state}${l.read_only ? ', read-only' : ''}${l.capacity_note ? `; ${l.capacity_note}` : ''}`,
          ),
        ].join('\n'),
  );
  return 0;
}

/* ------------------------------------------------------------------ list / status */

export const LIST_USAGE = `usage: srp-nbd list [options]

One line per target: id, status, rport state, exports and devices, address.
${CONNECTION_USAGE}`;

export async function list(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: CONNECTION_OPTIONS,
    strict: true,
  });
  if (values.help) {
    print(LIST_USAGE);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`list: unexpected argument '${positionals[0]}'`);
  const rows = await call(() => client(values).call<TargetSummary[]>('listTargets'));
  if (values.json) {
    print(JSON.stringify(rows, null, 2));
    return 0;
  }
  const table: string[][] = [['TARGET', 'STATUS', 'STATE', 'EXPORT', 'DEVICE', 'BY-ID', 'ADDRESS']];
  for (const r of rows) {
    const luns = r.luns.length > 0 ? r.luns : [{ export: '-', device: null, by_id: null }];
    luns.forEach((l, i) => {
      // a LUN that is another path of an LU: the LU's export and device, marked with their target
      const pathOf = 'path_of' in l && l.path_of ? ` (path of ${l.path_of})` : '';
      const lun = [l.export + pathOf, l.device ?? '-', (l.device && l.by_id) ?? '-'];
      table.push(i === 0 ? [r.id, r.status, r.state ?? '-', ...lun, r.address] : ['', '', '', ...lun, '']);
    });
  }
  print(formatTable(table));
  return 0;
}

export function formatTable(rows: string[][]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows
    .map((r) =>
      r
        .map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

export const STATUS_USAGE = `usage: srp-nbd status [options] [NAME]

State, timers, reconnect counters, credits, I/O gate, time in each state and, per LUN, export,
device, stable name, md membership, identity and I/O counts. NAME is a target id, a device
(/dev/nbdN or nbdN), an export name or a stable name (/dev/disk/by-id/srp-nbd-…): the status of
its target. Without NAME: every target.
${CONNECTION_USAGE}`;

export async function status(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: CONNECTION_OPTIONS,
    strict: true,
  });
  if (values.help) {
    print(STATUS_USAGE);
    return 0;
  }
  if (positionals.length > 1) throw new UsageError('status: give at most one NAME');
  const c = client(values);
  const ids =
    positionals.length === 1
      ? positionals
      : (await call(() => c.call<TargetSummary[]>('listTargets'))).map((t) => t.id);
  const views: TargetView[] = [];
  for (const id of ids) views.push(await call(() => c.call<TargetView>('getTarget', { params: { id } })));
  if (values.json) {
    print(JSON.stringify(positionals.length === 1 ? views[0] : views, null, 2));
    return 0;
  }
  if (positionals.length === 0) {
    const h = await call(() => c.call<{ memory: MemoryReport | null }>('health'));
    if (h.memory) print(`daemon  memory: ${describeMemory(h.memory)}\n`);
  }
  if (views.length === 0) print('no targets attached');
  print(views.map(formatStatus).join('\n\n'));
  return 0;
}

function formatStatus(v: TargetView): string {
  const t = v.timers;
  const r = v.reconnect;
  const lines = [
    `${v.id}  ${v.address}`,
    `  status      ${v.status}${v.state ? `, state ${v.state}` : ''}${r.phase !== 'none' ? ` (reconnect ${r.phase}, attempt ${r.attempt})` : ''}${v.error ? `: ${v.error}` : ''}`,
    `  transport   ${v.transport}${v.via ? ` via ${v.via}` : ''}`,
    `  initiator   ${v.initiator_port_id ?? '(not logged in yet)'} (initiator_id=${v.options.initiator_id})`,
    `  timers      reconnect_delay=${t.reconnect_delay} reconnect_delay_max=${t.reconnect_delay_max} fast_io_fail_tmo=${t.fast_io_fail_tmo} dev_loss_tmo=${t.dev_loss_tmo}`,
    `  reconnects  ${r.reconnects_total} ok, ${r.failed_reconnects_total} failed (${r.failed_reconnects} in this outage), ${r.attempts_total} attempts, ${r.logins_total} logins${r.last_failure ? `; last failure: ${r.last_failure}` : ''}`,
  ];
  const lw = r.login_wait;
  if (lw)
    lines.push(
      `  login_wait  a reconnect login waits ${lw.next_wait_ms} ms for its answer (${lw.slowest_answer_ms !== null ? `the target's slowest recent answer: ${lw.slowest_answer_ms} ms` : 'no answer timed yet'})`,
    );
  const pc = v.path_check;
  if (pc)
    lines.push(
      `  path_check  ${pc.bound_ms !== null ? `a dead path is noticed within ${pc.bound_ms} ms` : 'keep-alive off: a silent dead path is noticed only by I/O'} (RC retry bound ${pc.rc_retry_ms} ms + keepalive_interval ${pc.keepalive_interval_s} s)`,
    );
  if (v.last_error) lines.push(`  last_error  ${v.last_error}`);
  if (v.md_readd.readds_total > 0)
    lines.push(
      `  md_readd    ${v.md_readd.readds_total} re-adds, the last ${v.md_readd.last_readd_ms} ms after the path returned`,
    );
  if (v.credits)
    lines.push(
      `  credits     req_lim ${v.credits.req_lim}, granted ${v.credits.granted_total}, stalls ${v.credits.zero_req_lim_total}`,
    );
  if (v.io)
    lines.push(
      `  io gate     in flight ${v.io.in_flight}, held ${v.io.held}, waiting ${v.io.waiting}, replayed ${v.io.replayed_total}, failed EIO ${v.io.failed_eio_total}`,
    );
  lines.push(
    `  time        ${
      Object.entries(v.time_in_state_s)
        .filter(([, s]) => s > 0)
        .map(([k, s]) => `${k} ${s.toFixed(1)} s`)
        .join(', ') || '-'
    }`,
  );
  for (const l of v.lun_details) {
    lines.push(
      `  LUN ${l.lun}       ${l.export}  device ${l.device ?? '-'}  ${(l.size / 1048576).toFixed(0)} MiB, ${l.block_size}-byte blocks`,
    );
    lines.push(`              ${l.identity}`);
    if (l.state === 'removed')
      lines.push('              removed: the target no longer reports it (I/O fails with EIO)');
    if (l.capacity_note) lines.push(`              ${l.capacity_note}`);
    if (l.read_only || l.write_protect) {
      const kernel =
        l.kernel_read_only === null ? '' : `, kernel device ${l.kernel_read_only ? 'read-only' : 'read-write'}`;
      lines.push(
        `              read-only (${l.read_only_reason ?? 'no'}; WP ${l.write_protect ? 'on' : 'off'}${kernel})`,
      );
    }
    if (l.device) lines.push(`              by-id ${BY_ID_DIR}/${l.by_id}`);
    for (const m of l.md) lines.push(`              md: ${describeMembership(m)}`);
    lines.push(
      `              ${
        Object.entries(l.io)
          .filter(([, s]) => s.ops + s.errors > 0)
          .map(([op, s]) => `${op} ${s.ops} (${s.bytes} B${s.errors ? `, ${s.errors} errors` : ''})`)
          .join(', ') || 'no I/O yet'
      }`,
    );
    if (l.device_note) lines.push(`              ${l.device_note}`);
    if (l.paths.length > 1) for (const p of l.paths) lines.push(`              path ${formatPath(p)}`);
  }
  for (const pl of v.path_luns ?? []) {
    lines.push(`  LUN ${pl.lun}       path of ${pl.export} (device ${pl.device ?? '-'}, target ${pl.owner})`);
    for (const p of pl.paths) lines.push(`              path ${formatPath(p)}`);
  }
  return lines.join('\n');
}

function formatPath(p: PathView): string {
  const failure = p.last_failure ? `; last failure ${p.last_failure.at}: ${p.last_failure.reason}` : '';
  return `${p.target}  ${p.state ?? '-'}  ${p.role}  prio ${p.priority}  ${p.commands} commands, ${p.errors} errors, ${p.in_flight} in flight${failure}`;
}

/* ------------------------------------------------------------------ path */

export const PATH_USAGE = `usage: srp-nbd path [options] NAME
       srp-nbd path [options] NAME fail PATH [--force]
       srp-nbd path [options] NAME reinstate PATH

Lists the paths of the LU(s) behind NAME (a target id, /dev/nbdN, an export name or a stable
name): per path its target, state, role (active, standby, or failed by the operator), priority,
commands, transport errors, requests in flight and last failure. \`fail\` takes a path out of use
(it stays logged in; no I/O goes to it), \`reinstate\` gives it back; PATH is the path's target id
or its index in the list. Failing the last running path of an LU needs --force (its I/O is then
held while another path is blocked, else fails with EIO).
${CONNECTION_USAGE}  --force         fail: also the last running path
`;

export async function path(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { ...CONNECTION_OPTIONS, force: { type: 'boolean', default: false } },
    strict: true,
  });
  if (values.help) {
    print(PATH_USAGE);
    return 0;
  }
  const [name, action, which, ...extra] = positionals;
  if (name === undefined) throw new UsageError('path: missing NAME (see srp-nbd path --help)');
  if (extra.length > 0) throw new UsageError(`path: unexpected argument '${extra[0]}'`);
  if (values.force && action !== 'fail') throw new UsageError('path: --force goes with fail');
  const c = client(values);
  let r: PathsResult;
  if (action === undefined) {
    r = await call(() => c.call<PathsResult>('listPaths', { params: { id: name } }));
  } else if (action === 'fail' || action === 'reinstate') {
    if (which === undefined) throw new UsageError(`path: ${action} needs a PATH (a target id or an index)`);
    const route = action === 'fail' ? 'failPath' : 'reinstatePath';
    const body = values.force ? { force: true } : undefined;
    r = await call(() => c.call<PathsResult>(route, { params: { id: name, path: which }, body }));
  } else {
    throw new UsageError(`path: unknown action '${action}' (fail or reinstate)`);
  }
  if (values.json) {
    print(JSON.stringify(r, null, 2));
    return 0;
  }
  print(r.lus.map(formatLu).join('\n\n'));
  return 0;
}

function formatLu(lu: LuPathsView): string {
  const fb = lu.selector === 'failover' ? `, failback ${lu.failback}` : '';
  const rows = [['#', 'TARGET', 'STATE', 'ROLE', 'PRIO', 'COMMANDS', 'ERRORS', 'IN-FLIGHT', 'LAST FAILURE']];
  lu.paths.forEach((p, i) =>
    rows.push([
      String(i),
      p.target,
      p.state ?? '-',
      p.role,
      String(p.priority),
      String(p.commands),
      String(p.errors),
      String(p.in_flight),
      p.last_failure ? `${p.last_failure.at} ${p.last_failure.reason}` : '-',
    ]),
  );
  return [
    `${lu.export}  device ${lu.device ?? '-'}  ${lu.identity}`,
    `selector ${lu.selector}${fb}; export and device held by ${lu.owner}`,
    formatTable(rows),
  ].join('\n');
}

/* ------------------------------------------------------------------ set */

export const SET_USAGE = `usage: srp-nbd set [options] TARGET [--reconnect-delay S|off] [--reconnect-delay-max S] [--fast-io-fail-tmo S|off] [--dev-loss-tmo S|off]
       srp-nbd set [options] TARGET dev_loss_tmo=60 fast_io_fail_tmo=off ...

Changes timers at runtime; the combination is checked like the kernel's srp_tmo_valid().
fast_io_fail_tmo and dev_loss_tmo apply from the next outage, reconnect_delay at once.
${CONNECTION_USAGE}`;

const TIMER_KEYS = ['reconnect_delay', 'reconnect_delay_max', 'fast_io_fail_tmo', 'dev_loss_tmo'] as const;

export async function set(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      ...CONNECTION_OPTIONS,
      ...Object.fromEntries(TIMER_KEYS.map((k) => [flag(k).slice(2), { type: 'string' as const }])),
    },
    strict: true,
  });
  if (values.help) {
    print(SET_USAGE);
    return 0;
  }
  const [id, ...pairs] = positionals;
  if (id === undefined) throw new UsageError('set: missing TARGET');
  const patch: Record<string, unknown> = {};
  const v = values as Record<string, unknown>;
  for (const k of TIMER_KEYS) if (typeof v[flag(k).slice(2)] === 'string') patch[k] = v[flag(k).slice(2)];
  for (const p of pairs) {
    const m = /^([a-z_]+)=(.*)$/.exec(p);
    if (!m || !(TIMER_KEYS as readonly string[]).includes(m[1]!))
      throw new UsageError(`set: '${p}' is not KEY=VALUE with KEY one of ${TIMER_KEYS.join(', ')}`);
    patch[m[1]!] = m[2]!;
  }
  if (patch.reconnect_delay_max !== undefined) patch.reconnect_delay_max = Number(patch.reconnect_delay_max);
  const r = timersPatchSchema.safeParse(patch);
  if (!r.success)
    throw new UsageError(
      `set: ${id}: ${zodIssues(r.error)
        .map((i) => `${i.path}: ${i.message}`)
        .join('; ')}`,
    );
  const view = await call(() => client(values).call<TargetView>('setTimers', { params: { id }, body: patch }));
  const t = view.timers;
  print(
    values.json
      ? JSON.stringify(view, null, 2)
      : `${view.id}: reconnect_delay=${t.reconnect_delay} reconnect_delay_max=${t.reconnect_delay_max} fast_io_fail_tmo=${t.fast_io_fail_tmo} dev_loss_tmo=${t.dev_loss_tmo}`,
  );
  return 0;
}

/* ------------------------------------------------------------------ wait-online */

export const WAIT_ONLINE_USAGE = `usage: srp-nbd wait-online [options] [--timeout S]

Waits until the daemon answers and none of its targets is still connecting: exit 0 when every
target is attached, 1 when one has failed or at the timeout (default 90 s), naming them. For
units that need the devices (packaging/srp-nbd-wait-online.service), like
systemd-networkd-wait-online.

  --timeout S     give up after S seconds (default 90)
${CONNECTION_USAGE}`;

export async function waitOnline(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: { ...CONNECTION_OPTIONS, timeout: { type: 'string', default: '90' } },
    strict: true,
  });
  if (values.help) {
    print(WAIT_ONLINE_USAGE);
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`wait-online: unexpected argument '${positionals[0]}'`);
  const timeout = Number(values.timeout);
  if (values.timeout.trim() === '' || !Number.isFinite(timeout) || timeout < 0)
    throw new UsageError(`wait-online: --timeout: expected seconds, got '${values.timeout}'`);
  const c = client(values);
  const deadline = Date.now() + timeout * 1000;
  let rows: TargetSummary[] | undefined;
  let lastError = '';
  for (;;) {
    try {
      rows = await c.call<TargetSummary[]>('listTargets');
      if (!rows.some((r) => r.status === 'connecting')) break;
    } catch (e) {
      // the daemon may still be starting; a refusal (403) will not change
      if (!(e instanceof UnreachableError) || /permission denied/.test(e.message)) throw e;
      lastError = e.message;
    }
    if (Date.now() >= deadline) break;
    await new Promise((r) => setTimeout(r, Math.min(250, Math.max(0, deadline - Date.now()))));
  }
  if (rows === undefined) throw new UnreachableError(`timed out after ${timeout} s: ${lastError}`);
  const notAttached = rows.filter((r) => r.status !== 'attached');
  if (values.json) print(JSON.stringify({ online: notAttached.length === 0, targets: rows }, null, 2));
  if (notAttached.length === 0) {
    if (!values.json) print(`online: ${rows.length} target${rows.length === 1 ? '' : 's'} attached`);
    return 0;
  }
  process.stderr.write(
    `srp-nbd wait-online: ${Date.now() >= deadline ? `timed out after ${timeout} s: ` : ''}not attached: ${notAttached
      .map((r) => `${r.id} (${r.status}${r.error ? `: ${r.error}` : ''})`)
      .join(', ')}\n`,
  );
  return 1;
}
