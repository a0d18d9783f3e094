/**
 * Daemon configuration: every error names the key path and the rule; per-target overrides; the
 * timer rules come from the one validator; docs/options.md is generated from the schemas and up
 * to date; addresses; the OpenAPI document covers the route table; the Prometheus exposition.
 */
import * as fs from 'node:fs';
import t from 'tap';
import {
  ConfigError,
  loadConfig,
  parseConfig,
  resolveOptions,
  type TargetOptions,
  targetSpecSchema,
  zodIssues,
} from '../src/daemon/config.js';
import { deriveTargetId, normalizeAddressLine, parseAnyAddress } from '../src/daemon/address.js';
import { OPTIONS_DOC, renderOptionsDoc } from '../src/daemon/options-doc.js';
import { openApiDocument, ROUTES, timersPatchSchema } from '../src/daemon/routes.js';
import { Exposition, Histogram } from '../src/daemon/metrics.js';

const repo = new URL('../../', import.meta.url).pathname;

function issues(raw: unknown): { path: string; rule: string; message: string }[] {
  try {
    parseConfig(raw, 'test.json');
  } catch (e) {
    if (e instanceof ConfigError) return e.issues;
    throw e;
  }
  return [];
}

t.test('an empty config gives the documented defaults', async (t) => {
  const c = parseConfig({});
  t.equal(c.control_socket, '/run/srp-nbd/control.sock');
  t.equal(c.state_dir, '/var/lib/srp-nbd');
  t.equal(c.defaults.fast_io_fail_tmo, 5);
  t.equal(c.defaults.dev_loss_tmo, 600);
  t.equal(c.defaults.device, 'auto');
  t.same(c.targets, []);
});

t.test('errors name the key path and the rule (table)', async (t) => {
  const cases: [string, unknown, string, string, RegExp][] = [
    ['unknown top-level key', { contol_socket: '/x' }, 'contol_socket', 'unknown-key', /unknown option/],
    [
      'unknown per-target key',
      { targets: [{ address: 'test-target', dev_los_tmo: 5 }] },
      'targets[0].dev_los_tmo',
      'unknown-key',
      /unknown option 'dev_los_tmo'/,
    ],
    ['wrong type', { defaults: { queue_size: 'many' } }, 'defaults.queue_size', 'type', /Expected number/],
    ['below minimum', { defaults: { queue_size: 0 } }, 'defaults.queue_size', 'minimum', /greater than or equal to 1/],
    [
      'retry_count 7 refused',
      { defaults: { retry_count: 7 } },
      'defaults.retry_count',
      'maximum',
      /less than or equal to 6/,
    ],
    [
      'timeout syntax',
      { defaults: { dev_loss_tmo: 'never' } },
      'defaults.dev_loss_tmo',
      'timeout-syntax',
      /expected an integer number of seconds or "off"/,
    ],
    [
      'srp_tmo_valid rule in defaults',
      { defaults: { fast_io_fail_tmo: 700 } },
      'defaults.fast_io_fail_tmo',
      'fast-io-fail-too-long',
      /SCSI_DEVICE_BLOCK_MAX_TIMEOUT/,
    ],
    [
      'rule with defaults applied',
      { targets: [{ address: 'test-target', dev_loss_tmo: 3 }] },
      'targets[0].fast_io_fail_tmo',
      'fast-io-fail-not-before-dev-loss',
      /fast_io_fail_tmo=5 must be smaller than dev_loss_tmo=3 \(with the defaults applied\)/,
    ],
    [
      'both off',
      { defaults: { fast_io_fail_tmo: 'off', dev_loss_tmo: 'off' } },
      'defaults.fast_io_fail_tmo',
      'no-io-timeout',
      /both "off"/,
    ],
    [
      'bad address',
      { targets: [{ address: 'id_ext=1,ioc_guid=2,dest=192.0.2.2' }] },
      'targets[0].address',
      'target-address',
      /dest.*missing :port/,
    ],
    [
      'bad device',
      { defaults: { device: '/dev/sda' } },
      'defaults.device',
      'format',
      /"auto", "none" or "\/dev\/nbdN"/,
    ],
    ['tcp without token', { tcp: { port: 8740 } }, 'tcp.token', 'type', /required/],
    ['short token', { tcp: { port: 8740, token: 'abc' } }, 'tcp.token', 'minimum', /at least 16/],
    ['missing address', { targets: [{ id: 'x' }] }, 'targets[0].address', 'type', /required/],
  ];
  for (const [name, raw, path, rule, msg] of cases) {
    const found = issues(raw).find((i) => i.path === path);
    t.ok(found, `${name}: an issue at ${path} (got ${JSON.stringify(issues(raw))})`);
    if (found) {
      t.equal(found.rule, rule, `${name}: rule`);
      t.match(found.message, msg, `${name}: message`);
    }
  }
});

t.test('the ConfigError message lists every issue with file, path and rule', async (t) => {
  const e = t.throws(() =>
    parseConfig({ defaults: { queue_size: 0, dev_loss_tmo: 'x' } }, '/etc/srp-nbd/config.json'),
  ) as Error;
  t.match(e.message, /^\/etc\/srp-nbd\/config.json: invalid configuration:/);
  t.match(e.message, /defaults\.queue_size: .* \[minimum\]/);
  t.match(e.message, /defaults\.dev_loss_tmo: .* \[timeout-syntax\]/);
});

t.test('loadConfig: unreadable and malformed files are named', async (t) => {
  const dir = fs.mkdtempSync('/tmp/srp-nbd-cfg-');
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(`${dir}/broken.json`, '{ "defaults": ');
  t.throws(() => loadConfig(`${dir}/broken.json`), /broken\.json: invalid configuration:\n\s+\(file\): not valid JSON/);
  t.throws(() => loadConfig(`${dir}/absent.json`), /absent\.json: .*\n.*cannot read: ENOENT/);
  t.equal(loadConfig(undefined).defaults.queue_size, 62);
});

t.test('per-target overrides win over the defaults', async (t) => {
  const c = parseConfig({
    defaults: { dev_loss_tmo: 120, queue_size: 32 },
    targets: [{ address: 'test-target', dev_loss_tmo: 'off', fast_io_fail_tmo: 3 }],
  });
  const o = resolveOptions(c.defaults as TargetOptions, c.targets[0]!);
  t.equal(o.dev_loss_tmo, 'off');
  t.equal(o.fast_io_fail_tmo, 3);
  t.equal(o.queue_size, 32);
});

t.test('PATCH body schema: the same timer parser, at least one key, no others', async (t) => {
  t.ok(timersPatchSchema.safeParse({ dev_loss_tmo: '0x3c' }).success);
  const bad = timersPatchSchema.safeParse({ dev_loss_tmo: 'soon', colour: 'red' });
  t.notOk(bad.success);
  if (!bad.success) {
    const i = zodIssues(bad.error);
    t.ok(i.some((x) => x.path === 'dev_loss_tmo' && x.rule === 'timeout-syntax'));
    t.ok(i.some((x) => x.path === 'colour' && x.rule === 'unknown-key'));
  }
  t.notOk(timersPatchSchema.safeParse({}).success);
});

t.test('addresses: add_target strings, srp_daemon lines, test-target', async (t) => {
  const line =
    'echo id_ext=0002c90300aabbcc,ioc_guid=0002c90300aabbcc,dgid=fe800000000000000002c90300aabbcd,pkey=ffff,service_id=0002c90300aabbcc > /sys/class/infiniband_srp/srp-mlx5_0-1/add_target';
  t.equal(normalizeAddressLine(line).startsWith('id_ext='), true);
  const ib = parseAnyAddress(line);
  t.equal(ib.kind === 'srp' && ib.addr.transport, 'ib-cm');
  t.equal(deriveTargetId(ib), 'srp-0002c90300aabbcc-0002c90300aabbcd');
  const cm = parseAnyAddress('id_ext=1,ioc_guid=2,dest=192.0.2.2:5000');
  t.equal(deriveTargetId(cm), 'srp-0000000000000001-192.0.2.2-5000');
  const tt = parseAnyAddress('test-target,name=a,luns=2,lun_size=8M,block_size=4096');
  t.same(tt.kind === 'test' && tt.spec, { name: 'a', luns: 2, lunSize: 8 << 20, blockSize: 4096 });
  t.equal(deriveTargetId(tt), 'test-a');
  t.throws(() => parseAnyAddress('test-target,luns=99'), /bad luns/);
  t.throws(() => parseAnyAddress('test-target,image_dir=rel'), /absolute/);
  t.ok(targetSpecSchema.safeParse({ address: 'test-target', id: 'ok-1' }).success);
  t.notOk(targetSpecSchema.safeParse({ address: 'test-target', id: '-bad' }).success);
});

t.test(`${OPTIONS_DOC} is generated from the schemas and up to date (npm run docs:options)`, async (t) => {
  const onDisk = fs.readFileSync(repo + OPTIONS_DOC, 'utf8');
  t.equal(onDisk, renderOptionsDoc(), 'run `npm run docs:options` and commit docs/options.md');
  for (const k of [
    'fast_io_fail_tmo',
    'ack_timeout',
    'retry_count',
    'keepalive_interval',
    'max_hold_queue',
    'queue_size',
    'immediate_data',
    'control_socket',
    'state_dir',
    'token',
  ]) {
    t.match(onDisk, new RegExp(`\\| \`${k}\` \\|`), `${k} documented`);
  }
});

interface BodySchema {
  type?: string;
  properties?: Record<string, unknown>;
  anyOf?: BodySchema[];
  items?: BodySchema;
}

t.test('OpenAPI document: every route, bodies from the shared zod schemas', async (t) => {
  const doc = openApiDocument('test') as {
    paths: Record<
      string,
      Record<
        string,
        {
          operationId: string;
          requestBody?: { content: Record<string, { schema: BodySchema }> };
        }
      >
    >;
  };
  const ops = Object.values(doc.paths).flatMap((p) => Object.values(p).map((o) => o.operationId));
  t.same(ops.sort(), Object.keys(ROUTES).sort());
  const attach = doc.paths['/targets']!.post!.requestBody!.content['application/json']!.schema;
  const [one, many] = attach.anyOf!;
  t.ok(one!.properties!.dev_loss_tmo, 'attach body: a target, with the per-target options');
  t.equal(many!.type, 'array', 'or an array of targets');
  t.same(many!.items, one, 'of the same shape');
  t.ok(doc.paths['/targets/{id}']!.patch, 'PATCH with the path parameter');
});

t.test('Prometheus exposition: HELP/TYPE once, labels escaped, cumulative histogram buckets', async (t) => {
  const e = new Exposition();
  e.family('x_total', 'counter', 'X.');
  e.sample('x_total', '', { target: 'a"b' }, 3);
  e.sample('x_total', '', { target: 'c' }, 4);
  const h = new Histogram();
  h.observe(0.0002);
  h.observe(0.003);
  h.observe(100);
  e.family('lat_seconds', 'histogram', 'Latency.');
  e.histogram('lat_seconds', { op: 'read' }, h);
  const text = e.render();
  t.equal(text.match(/# TYPE x_total counter/g)?.length, 1);
  t.match(text, /x_total\{target="a\\"b"\} 3/);
  t.match(text, /lat_seconds_bucket\{op="read",le="0.00025"\} 1/);
  t.match(text, /lat_seconds_bucket\{op="read",le="0.005"\} 2/);
  t.match(text, /lat_seconds_bucket\{op="read",le="30"\} 2/);
  t.match(text, /lat_seconds_bucket\{op="read",le="\+Inf"\} 3/);
  t.match(text, /lat_seconds_count\{op="read"\} 3/);
});
