import t from 'tap';
import {
  assertValidTmo,
  backoffDelayMs,
  DEFAULT_TMO,
  formatTmo,
  parseTmo,
  SCSI_DEVICE_BLOCK_MAX_TIMEOUT,
  SRP_TMO_MAX,
  TmoParseError,
  tmoParamsSchema,
  TmoValidationError,
  validateTmo,
  type Tmo,
  type TmoParams,
  type TmoRule,
} from '../src/fsm/timers.js';
import { mulberry32 } from '../src/fsm/prng.js';

t.test('limits match the kernel', async (t) => {
  t.equal(SCSI_DEVICE_BLOCK_MAX_TIMEOUT, 600, 'include/scsi/scsi_device.h');
  // LONG_MAX / HZ for a 32-bit long and HZ=1000, and setTimeout's (2^31-1) ms limit in seconds.
  t.equal(SRP_TMO_MAX, 2147483);
  t.ok(SRP_TMO_MAX * 1000 <= 2147483647 && (SRP_TMO_MAX + 1) * 1000 > 2147483647);
});

t.test('parseTmo follows srp_parse_tmo / kstrtoint(s, 0)', async (t) => {
  const good: [string | number, Tmo][] = [
    ['off', 'off'],
    ['off\n', 'off'],
    ['0', 0],
    ['5', 5],
    ['5\n', 5],
    ['+7', 7],
    ['600', 600],
    ['0x10', 16],
    ['0X1f', 31],
    ['010', 8], // leading 0: octal
    ['-1', 'off'], // the kernel stores -1 and shows "off"
    ['-0', 0],
    ['0', 0],
    ['2147483647', 2147483647],
    [15, 15],
    [0, 0],
    [-1, 'off'],
  ];
  for (const [input, want] of good)
    t.ok(Object.is(parseTmo(input), want), `parseTmo(${JSON.stringify(input)}) is ${String(want)}`);

  const bad: (string | number)[] = [
    '',
    ' 5',
    '5 ',
    '5\n\n',
    'offset',
    'OFF',
    '1.5',
    '08',
    '0x',
    'abc',
    '2147483648',
    '-2147483649',
    '5s',
    1.5,
    NaN,
    Infinity,
  ];
  for (const input of bad) {
    t.throws(() => parseTmo(input), TmoParseError, `parseTmo(${JSON.stringify(input)}) refused`);
  }
  try {
    parseTmo('5s');
    t.fail('no throw');
  } catch (e) {
    t.match((e as Error).message, /"5s".*seconds or "off"/, 'message names the input and the syntax');
  }
  t.equal(formatTmo('off'), 'off');
  t.equal(formatTmo(600), '600');
});

t.test('validateTmo: one rule per case, messages name parameters and rule', async (t) => {
  const P = (rd: Tmo, fio: Tmo, dl: Tmo, max = 30): TmoParams => ({
    reconnectDelay: rd,
    fastIoFailTmo: fio,
    devLossTmo: dl,
    reconnectDelayMax: max,
  });
  const cases: { name: string; p: TmoParams; rules: TmoRule[]; msg?: RegExp }[] = [
    { name: 'defaults', p: { ...DEFAULT_TMO }, rules: [] },
    { name: 'ib_srp defaults (10/15/600)', p: P(10, 15, 600, 10), rules: [] },
    { name: 'reconnect off is allowed', p: P('off', 5, 600), rules: [] },
    { name: 'fast_io_fail 0 is allowed', p: P(1, 0, 600), rules: [] },
    { name: 'dev_loss 0 with fio off is allowed', p: P(1, 'off', 0), rules: [] },
    { name: 'dev_loss off, fio set', p: P(1, 5, 'off'), rules: [] },
    { name: 'fio at the block maximum', p: P(1, 600, 601), rules: [] },
    { name: 'dev_loss just below the limit', p: P(1, 5, SRP_TMO_MAX - 1), rules: [] },
    { name: 'dev_loss 600 with fio off', p: P(1, 'off', 600), rules: [] },
    {
      name: 'reconnect_delay 0',
      p: P(0, 5, 600),
      rules: ['reconnect-delay-zero'],
      msg: /reconnect_delay=0.*srp_tmo_valid/,
    },
    {
      name: 'all three off (kernel rule)',
      p: P('off', 'off', 'off'),
      rules: ['no-io-timeout'],
      msg: /fast_io_fail_tmo and dev_loss_tmo.*both "off"/,
    },
    { name: 'both I/O timers off (stricter than the kernel)', p: P(1, 'off', 'off'), rules: ['no-io-timeout'] },
    {
      name: 'fio above SCSI_DEVICE_BLOCK_MAX_TIMEOUT',
      p: P(1, 601, 700),
      rules: ['fast-io-fail-too-long'],
      msg: /fast_io_fail_tmo=601 exceeds SCSI_DEVICE_BLOCK_MAX_TIMEOUT \(600 s\)/,
    },
    {
      name: 'dev_loss above 600 with fio off',
      p: P(1, 'off', 601),
      rules: ['dev-loss-too-long-without-fast-io-fail'],
      msg: /dev_loss_tmo=601 with fast_io_fail_tmo=off/,
    },
    {
      name: 'dev_loss at LONG_MAX/HZ',
      p: P(1, 5, SRP_TMO_MAX),
      rules: ['dev-loss-too-long'],
      msg: /dev_loss_tmo=2147483 must be below 2147483 s/,
    },
    {
      name: 'fio == dev_loss',
      p: P(1, 10, 10),
      rules: ['fast-io-fail-not-before-dev-loss'],
      msg: /fast_io_fail_tmo=10 must be smaller than dev_loss_tmo=10/,
    },
    { name: 'fio > dev_loss', p: P(1, 15, 5), rules: ['fast-io-fail-not-before-dev-loss'] },
    { name: 'dev_loss 0 with fio 0', p: P(1, 0, 0), rules: ['fast-io-fail-not-before-dev-loss'] },
    {
      name: 'reconnect_delay_max below delay',
      p: P(10, 5, 600, 5),
      rules: ['reconnect-delay-max-below-delay'],
      msg: /reconnect_delay_max=5 must not be smaller than reconnect_delay=10/,
    },
    { name: 'reconnect_delay too long', p: P(SRP_TMO_MAX, 5, 600, SRP_TMO_MAX), rules: ['reconnect-delay-too-long'] },
    {
      name: 'not timeouts',
      p: P(Number.NaN as Tmo, -1 as Tmo, 'never' as unknown as Tmo),
      rules: ['not-a-timeout', 'not-a-timeout', 'not-a-timeout'],
    },
    { name: 'fio not an integer', p: P(1, 1.5 as Tmo, 600), rules: ['not-a-timeout'] },
    { name: 'sub-second reconnect_delay', p: P(0.25, 5, 600), rules: [] },
    { name: 'reconnect_delay at the minimum', p: P(0.1, 5, 600), rules: [] },
    {
      name: 'reconnect_delay below the minimum',
      p: P(0.05, 5, 600),
      rules: ['reconnect-delay-too-short'],
      msg: /reconnect_delay=0.05 is below the minimum of 0.1 s/,
    },
    { name: 'reconnect_delay_max 0', p: P(1, 5, 600, 0), rules: ['not-a-timeout'], msg: /reconnect_delay_max=0/ },
    {
      name: 'several rules at once',
      p: P(0, 700, 650),
      rules: ['reconnect-delay-zero', 'fast-io-fail-too-long', 'fast-io-fail-not-before-dev-loss'],
    },
  ];
  for (const c of cases) {
    const v = validateTmo(c.p);
    t.same(
      v.map((x) => x.rule),
      c.rules,
      c.name,
    );
    if (c.msg) t.match(v[0]?.message, c.msg, `${c.name}: message`);
    for (const x of v) {
      t.ok(x.params.length > 0, `${c.name}: ${x.rule} names parameters`);
      for (const p of x.params) t.ok(x.message.includes(p), `${c.name}: message mentions ${p}`);
    }
    if (c.rules.length === 0) t.equal(assertValidTmo(c.p), c.p);
    else t.throws(() => assertValidTmo(c.p), TmoValidationError);
  }
});

t.test('tmoParamsSchema: defaults, "off", kernel syntax, cross-field rules', async (t) => {
  t.same(tmoParamsSchema.parse({}), DEFAULT_TMO);
  t.same(
    tmoParamsSchema.parse({
      reconnect_delay: 'off',
      fast_io_fail_tmo: '0x0f',
      dev_loss_tmo: -1,
      reconnect_delay_max: 60,
    }),
    {
      reconnectDelay: 'off',
      fastIoFailTmo: 15,
      devLossTmo: 'off',
      reconnectDelayMax: 60,
    },
  );
  t.equal(tmoParamsSchema.parse({ reconnect_delay: '0.5' }).reconnectDelay, 0.5, 'reconnect_delay "0.5"');
  t.equal(tmoParamsSchema.parse({ reconnect_delay: 0.25 }).reconnectDelay, 0.25, 'reconnect_delay 0.25');
  t.equal(tmoParamsSchema.safeParse({ reconnect_delay: '0.01' }).success, false, 'below 0.1 s refused');
  t.equal(tmoParamsSchema.safeParse({ reconnect_delay: '1.5s' }).success, false, 'units refused');
  t.equal(tmoParamsSchema.safeParse({ fast_io_fail_tmo: '1.5' }).success, false, 'fractional fio refused');
  const r = tmoParamsSchema.safeParse({ fast_io_fail_tmo: 'off', dev_loss_tmo: 'off' });
  t.equal(r.success, false);
  if (!r.success) t.match(r.error.issues[0]?.message, /both "off"/);
  const r2 = tmoParamsSchema.safeParse({ dev_loss_tmo: 'soon' });
  t.equal(r2.success, false);
  if (!r2.success) t.same(r2.error.issues[0]?.path, ['dev_loss_tmo']);
  const r3 = tmoParamsSchema.safeParse({ fast_io_fail_tmo: 20, dev_loss_tmo: 20 });
  t.equal(r3.success, false);
  if (!r3.success) t.same(r3.error.issues[0]?.path, ['fast_io_fail_tmo']);
});

t.test('back-off: min(cap, base * 2^step), ±jitter, never above the cap', async (t) => {
  const p = { reconnectDelay: 1, reconnectDelayMax: 30 } as const;
  const noJitter = [2000, 4000, 8000, 16000, 30000, 30000, 30000];
  noJitter.forEach((want, i) =>
    t.equal(
      backoffDelayMs(i + 1, p, 0.2, () => 0.5),
      want,
      `step ${i + 1} without jitter (random 0.5)`,
    ),
  );
  t.equal(
    backoffDelayMs(1, p, 0.2, () => 0),
    1600,
    'random 0 shortens by 20 %',
  );
  t.equal(
    backoffDelayMs(1, p, 0.2, () => 0.999999),
    2400,
    'random -> 1 lengthens by 20 %',
  );
  t.equal(
    backoffDelayMs(10, p, 0.2, () => 0.999999),
    30000,
    'lengthened, still capped',
  );
  t.equal(
    backoffDelayMs(10, p, 0.2, () => 0),
    24000,
  );
  t.equal(
    backoffDelayMs(5000, p, 0.2, () => 0.5),
    30000,
    'huge step numbers stay at the cap',
  );
  t.equal(
    backoffDelayMs(1, { reconnectDelay: 0.25, reconnectDelayMax: 30 }, 0, () => 0.3),
    500,
    'sub-second base',
  );
  t.equal(
    backoffDelayMs(3, { reconnectDelay: 7, reconnectDelayMax: 10 }, 0, () => 0.3),
    10000,
  );
  const rnd = mulberry32(42);
  let below = 0;
  let above = 0;
  for (let n = 1; n <= 200; n++) {
    const ideal = Math.min(30000, 1000 * 2 ** n);
    const d = backoffDelayMs(n, p, 0.2, rnd);
    t.ok(
      d <= Math.min(30000, Math.ceil(ideal * 1.2)) && d >= Math.floor(ideal * 0.8),
      `step ${n}: ${d} within ±20 % of ${ideal}`,
    );
    if (d < ideal) below++;
    if (d > ideal) above++;
  }
  t.ok(below > 50 && above > 0, `jitter goes both ways (${below} shorter, ${above} longer)`);
  t.throws(() => backoffDelayMs(1, { reconnectDelay: 'off', reconnectDelayMax: 30 }, 0, () => 0));
  t.throws(() => backoffDelayMs(0, p, 0, () => 0));
});
