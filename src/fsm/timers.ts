/**
 * Transport-layer timer parameters of an SRP remote port: reconnect_delay, fast_io_fail_tmo,
 * dev_loss_tmo (plus our reconnect_delay_max back-off cap).
 *
 * Mirrors Linux drivers/scsi/scsi_transport_srp.c: `srp_parse_tmo()` (seconds or "off") and
 * `srp_tmo_valid()` (the cross-field rules). validateTmo() is the ONE place these rules live; config
 * loading and the REST PATCH both call it (or go through tmoParamsSchema, which calls it).
 */
import { z } from 'zod';

/** A timeout in whole seconds, or 'off' (the kernel stores -1 and prints "off"). */
export type Tmo = number | 'off';

/** Timer parameters of one rport, in seconds. */
export interface TmoParams {
  /**
   * Period of reconnect attempts while blocked, and the base of the back-off in fail-fast; may be
   * fractional (at least RECONNECT_DELAY_MIN); 'off' = only explicit reconnects.
   */
  reconnectDelay: Tmo;
  /** Cap of the exponential reconnect back-off in fail-fast (our addition; the kernel has a linear ramp). */
  reconnectDelayMax: number;
  /** Time from transport failure until held and new I/O fail with EIO. */
  fastIoFailTmo: Tmo;
  /** Time from transport failure until the port is declared lost (reconnecting stops, I/O fails). */
  devLossTmo: Tmo;
}

/**
 * Defaults: while blocked a reconnect attempt every 1 s, so an outage shorter than fast_io_fail_tmo
 * ends within a second of the target's return; in fail-fast the back-off doubles up to 30 s, so a
 * long outage is not hammered; fail fast after 5 s, so md fails the member and serves from its
 * mirror instead of stalling the array, while shorter outages stay invisible (I/O held and
 * replayed); lost after 600 s, ib_srp's dev_loss_tmo default.
 */
export const DEFAULT_TMO: Readonly<TmoParams> = Object.freeze({
  reconnectDelay: 1,
  reconnectDelayMax: 30,
  fastIoFailTmo: 5,
  devLossTmo: 600,
});

/** The shortest reconnect_delay, in seconds: sub-second periods are allowed, a busy loop is not. */
export const RECONNECT_DELAY_MIN = 0.1;

/** include/scsi/scsi_device.h: the longest a SCSI device may stay blocked, in seconds. */
export const SCSI_DEVICE_BLOCK_MAX_TIMEOUT = 600;

/**
 * Upper bound (exclusive) for any timer, in seconds: floor((2^31 - 1) / 1000) = 2147483.
 * It is the kernel's `LONG_MAX / HZ` on a 32-bit kernel with HZ=1000 (srp_tmo_valid refuses
 * dev_loss_tmo >= LONG_MAX / HZ), and also the longest delay Node's setTimeout honours (2^31 - 1 ms).
 */
export const SRP_TMO_MAX = Math.floor((2 ** 31 - 1) / 1000);

const INT_MAX = 2 ** 31 - 1;
const INT_MIN = -(2 ** 31);

/** A timeout string that srp_parse_tmo() would refuse. */
export class TmoParseError extends Error {
  constructor(
    readonly input: string,
    message: string,
  ) {
    super(message);
    this.name = 'TmoParseError';
  }
}

/**
 * Parse a timeout like the kernel's srp_parse_tmo(): "off" or an integer in kstrtoint(s, 0) syntax
 * (optional sign, "0x" hex, leading-0 octal, decimal; one trailing newline allowed, nothing else).
 *
 * Differences, on purpose: the kernel treats any string *starting* with "off" as off ("offset"
 * too); we accept only "off" (plus one newline). Negative values, which the kernel stores and then
 * treats as off everywhere (`tmo >= 0` tests, "off" when shown), are normalised to 'off'.
 * A number argument (from JSON) must be an integer; negative numbers are 'off' likewise.
 * @throws TmoParseError naming the input and why.
 */
export function parseTmo(input: string | number): Tmo {
  if (typeof input === 'number') {
    if (!Number.isInteger(input) || input > INT_MAX || input < INT_MIN) {
      throw new TmoParseError(
        String(input),
        `invalid timeout ${input}: expected an integer number of seconds or "off"`,
      );
    }
    return input < 0 ? 'off' : input;
  }
  const s = input.endsWith('\n') ? input.slice(0, -1) : input;
  if (s === 'off') return 'off';
  const m = /^([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(s);
  if (!m) {
    throw new TmoParseError(
      input,
      `invalid timeout ${JSON.stringify(input)}: expected an integer number of seconds or "off"`,
    );
  }
  const digits = m[2]!;
  const magnitude = /^0[xX]/.test(digits)
    ? parseInt(digits.slice(2), 16)
    : digits.length > 1 && digits.startsWith('0')
      ? parseInt(digits.slice(1), 8)
      : parseInt(digits, 10);
  const value = m[1] === '-' ? -magnitude : magnitude;
  if (value > INT_MAX || value < INT_MIN) {
    throw new TmoParseError(input, `timeout ${JSON.stringify(input)} out of range for an int (ERANGE)`);
  }
  return value < 0 ? 'off' : Math.max(0, value); // max() turns "-0" into 0
}

/**
 * reconnect_delay as configured: what parseTmo() accepts, plus a decimal fraction of a second
 * ("0.5", or a JSON number 0.25). Whether it is long enough is validateTmo's call.
 * @throws TmoParseError naming the input and why.
 */
export function parseReconnectDelay(input: string | number): Tmo {
  if (typeof input === 'number') {
    if (Number.isFinite(input) && !Number.isInteger(input)) return input < 0 ? 'off' : input;
    return parseTmo(input);
  }
  const s = input.endsWith('\n') ? input.slice(0, -1) : input;
  if (/^\+?[0-9]*\.[0-9]+$/.test(s)) return Number(s);
  return parseTmo(input);
}

/** Show a timeout like srp_show_tmo(): the number, or "off". */
export function formatTmo(tmo: Tmo): string {
  return tmo === 'off' ? 'off' : String(tmo);
}

/** The rule a timer combination breaks; one message per rule. */
export type TmoRule =
  /** a value is not an integer >= 0 or 'off' (or reconnect_delay_max is 'off'/not an integer >= 1) */
  | 'not-a-timeout'
  /** srp_tmo_valid: reconnect_delay == 0 */
  | 'reconnect-delay-zero'
  /** ours: 0 < reconnect_delay < RECONNECT_DELAY_MIN (sub-second is allowed, a busy loop is not) */
  | 'reconnect-delay-too-short'
  /**
   * ours, stricter than srp_tmo_valid's "not all three off": fast_io_fail_tmo and dev_loss_tmo both
   * off, which would leave I/O blocked forever during an outage
   */
  | 'no-io-timeout'
  /** srp_tmo_valid: fast_io_fail_tmo > SCSI_DEVICE_BLOCK_MAX_TIMEOUT */
  | 'fast-io-fail-too-long'
  /** srp_tmo_valid: fast_io_fail_tmo off and dev_loss_tmo > SCSI_DEVICE_BLOCK_MAX_TIMEOUT */
  | 'dev-loss-too-long-without-fast-io-fail'
  /** srp_tmo_valid: dev_loss_tmo >= LONG_MAX / HZ (SRP_TMO_MAX here) */
  | 'dev-loss-too-long'
  /** srp_tmo_valid: fast_io_fail_tmo >= dev_loss_tmo with both set */
  | 'fast-io-fail-not-before-dev-loss'
  /** ours: reconnect_delay or reconnect_delay_max >= SRP_TMO_MAX (setTimeout limit) */
  | 'reconnect-delay-too-long'
  /** ours: reconnect_delay_max < reconnect_delay */
  | 'reconnect-delay-max-below-delay';

/** One broken rule: which, the parameters involved (kernel sysfs names), and a message naming both. */
export interface TmoViolation {
  rule: TmoRule;
  params: string[];
  message: string;
}

/** Thrown by assertValidTmo(); `violations` lists every rule broken, the message all of them. */
export class TmoValidationError extends Error {
  constructor(readonly violations: TmoViolation[]) {
    super(violations.map((v) => v.message).join('; '));
    this.name = 'TmoValidationError';
  }
}

const isTmo = (v: unknown): v is Tmo => v === 'off' || (typeof v === 'number' && Number.isInteger(v) && v >= 0);

/**
 * Check a timer combination with the rules of the kernel's srp_tmo_valid() plus ours (see TmoRule).
 * Returns every rule broken (empty = valid). The input is `unknown`-tolerant so a REST PATCH body
 * can be checked before it is trusted.
 */
export function validateTmo(p: TmoParams): TmoViolation[] {
  const out: TmoViolation[] = [];
  const add = (rule: TmoRule, params: string[], message: string) => out.push({ rule, params, message });
  const { reconnectDelay: rd, reconnectDelayMax: rdMax, fastIoFailTmo: fio, devLossTmo: dl } = p;

  const shapeOk = (name: string, v: unknown): boolean => {
    if (isTmo(v)) return true;
    add(
      'not-a-timeout',
      [name],
      `${name}=${String(v)} is not a timeout: use an integer number of seconds >= 0 or "off"`,
    );
    return false;
  };
  let okRd = true;
  if (!(rd === 'off' || (typeof rd === 'number' && Number.isFinite(rd) && rd >= 0))) {
    okRd = false;
    add(
      'not-a-timeout',
      ['reconnect_delay'],
      `reconnect_delay=${String(rd)} is not a timeout: use a number of seconds >= ${RECONNECT_DELAY_MIN} or "off"`,
    );
  }
  const okFio = shapeOk('fast_io_fail_tmo', fio);
  const okDl = shapeOk('dev_loss_tmo', dl);
  let okMax = true;
  if (!(typeof rdMax === 'number' && Number.isInteger(rdMax) && rdMax >= 1)) {
    okMax = false;
    add(
      'not-a-timeout',
      ['reconnect_delay_max'],
      `reconnect_delay_max=${String(rdMax)} is not a timeout: use an integer number of seconds >= 1`,
    );
  }

  if (okRd && rd === 0) {
    add(
      'reconnect-delay-zero',
      ['reconnect_delay'],
      `reconnect_delay=0 is invalid: use a delay of at least ${RECONNECT_DELAY_MIN} s, or "off" to reconnect only when asked (srp_tmo_valid)`,
    );
  }
  if (okRd && rd !== 'off' && rd > 0 && rd < RECONNECT_DELAY_MIN) {
    add(
      'reconnect-delay-too-short',
      ['reconnect_delay'],
      `reconnect_delay=${rd} is below the minimum of ${RECONNECT_DELAY_MIN} s`,
    );
  }
  if (okFio && okDl && fio === 'off' && dl === 'off') {
    add(
      'no-io-timeout',
      ['fast_io_fail_tmo', 'dev_loss_tmo'],
      'fast_io_fail_tmo and dev_loss_tmo are both "off": set at least one, otherwise I/O stays blocked forever during an outage',
    );
  }
  if (okFio && fio !== 'off' && fio > SCSI_DEVICE_BLOCK_MAX_TIMEOUT) {
    add(
      'fast-io-fail-too-long',
      ['fast_io_fail_tmo'],
      `fast_io_fail_tmo=${fio} exceeds SCSI_DEVICE_BLOCK_MAX_TIMEOUT (${SCSI_DEVICE_BLOCK_MAX_TIMEOUT} s): I/O must not stay blocked longer`,
    );
  }
  if (okFio && okDl && fio === 'off' && dl !== 'off' && dl > SCSI_DEVICE_BLOCK_MAX_TIMEOUT) {
    add(
      'dev-loss-too-long-without-fast-io-fail',
      ['dev_loss_tmo', 'fast_io_fail_tmo'],
      `dev_loss_tmo=${dl} with fast_io_fail_tmo=off exceeds SCSI_DEVICE_BLOCK_MAX_TIMEOUT (${SCSI_DEVICE_BLOCK_MAX_TIMEOUT} s): without fast_io_fail, dev_loss_tmo bounds how long I/O stays blocked`,
    );
  }
  if (okDl && dl !== 'off' && dl >= SRP_TMO_MAX) {
    add(
      'dev-loss-too-long',
      ['dev_loss_tmo'],
      `dev_loss_tmo=${dl} must be below ${SRP_TMO_MAX} s (the kernel's LONG_MAX/HZ limit)`,
    );
  }
  if (okFio && okDl && fio !== 'off' && dl !== 'off' && fio >= dl) {
    add(
      'fast-io-fail-not-before-dev-loss',
      ['fast_io_fail_tmo', 'dev_loss_tmo'],
      `fast_io_fail_tmo=${fio} must be smaller than dev_loss_tmo=${dl}`,
    );
  }
  if ((okRd && rd !== 'off' && rd >= SRP_TMO_MAX) || (okMax && rdMax >= SRP_TMO_MAX)) {
    add(
      'reconnect-delay-too-long',
      ['reconnect_delay', 'reconnect_delay_max'],
      `reconnect_delay=${formatTmo(rd)} and reconnect_delay_max=${rdMax} must be below ${SRP_TMO_MAX} s`,
    );
  }
  if (okRd && okMax && rd !== 'off' && rdMax < rd) {
    add(
      'reconnect-delay-max-below-delay',
      ['reconnect_delay_max', 'reconnect_delay'],
      `reconnect_delay_max=${rdMax} must not be smaller than reconnect_delay=${rd}`,
    );
  }
  return out;
}

/** validateTmo() that throws a TmoValidationError listing every broken rule. */
export function assertValidTmo(p: TmoParams): TmoParams {
  const v = validateTmo(p);
  if (v.length > 0) throw new TmoValidationError(v);
  return p;
}

/** reconnect_delay as configured: tmoField's forms plus fractions of a second ("0.5", 0.25). */
export const reconnectDelayField = z.union([z.string(), z.number()]).transform((v, ctx): Tmo => {
  try {
    return parseReconnectDelay(v);
  } catch (e) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: (e as Error).message });
    return z.NEVER;
  }
});

/** A timeout as configured: "off", a decimal/hex/octal string, or a JSON integer (negative = off). */
export const tmoField = z.union([z.string(), z.number()]).transform((v, ctx): Tmo => {
  try {
    return parseTmo(v);
  } catch (e) {
    ctx.addIssue({ code: z.ZodIssueCode.custom, message: (e as Error).message });
    return z.NEVER;
  }
});

/** The documentation of reconnect_delay (config, REST, docs/options.md). */
export const RECONNECT_DELAY_DOC = `Seconds between reconnect attempts while the port is blocked (no growth), and the base of the exponential back-off (with ±20 % jitter, up to reconnect_delay_max) once fast_io_fail_tmo has expired; fractions allowed, at least ${RECONNECT_DELAY_MIN}; or "off" to reconnect only on request. A sign that the path is back (PORT_ACTIVE, another channel to the same destination connecting) triggers an attempt at once.`;

/** The documentation of reconnect_delay_max. */
export const RECONNECT_DELAY_MAX_DOC =
  'Cap in seconds of the exponential reconnect back-off in fail-fast; at least reconnect_delay.';

/**
 * zod schema of the timer parameters (sysfs names, as in Documentation/ABI/stable/sysfs-transport-srp),
 * with defaults; refined by validateTmo(), one issue per broken rule.
 */
export const tmoParamsSchema = z
  .object({
    reconnect_delay: reconnectDelayField.default(DEFAULT_TMO.reconnectDelay).describe(RECONNECT_DELAY_DOC),
    reconnect_delay_max: z.number().int().default(DEFAULT_TMO.reconnectDelayMax).describe(RECONNECT_DELAY_MAX_DOC),
    fast_io_fail_tmo: tmoField
      .default(DEFAULT_TMO.fastIoFailTmo)
      .describe(
        `Seconds after a transport failure until held and new I/O fail with EIO, or "off". At most ${SCSI_DEVICE_BLOCK_MAX_TIMEOUT}; smaller than dev_loss_tmo.`,
      ),
    dev_loss_tmo: tmoField
      .default(DEFAULT_TMO.devLossTmo)
      .describe(
        `Seconds after a transport failure until the port is lost (reconnecting stops, I/O fails, the device stays), or "off". Below ${SRP_TMO_MAX}; at most ${SCSI_DEVICE_BLOCK_MAX_TIMEOUT} when fast_io_fail_tmo is off.`,
      ),
  })
  .transform((o, ctx): TmoParams => {
    const p: TmoParams = {
      reconnectDelay: o.reconnect_delay,
      reconnectDelayMax: o.reconnect_delay_max,
      fastIoFailTmo: o.fast_io_fail_tmo,
      devLossTmo: o.dev_loss_tmo,
    };
    for (const v of validateTmo(p))
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: v.message, path: v.params.slice(0, 1) });
    return p;
  });

/**
 * Delay in ms of back-off step `step` (1-based) in fail-fast: min(cap, base * 2^step), then varied
 * by ±`jitter` (fraction in [0, 1)) with `random()` in [0, 1) (0.5 = no change), and never above
 * the cap. Step 1 (the first failure in fail-fast) is twice reconnect_delay. Precondition:
 * reconnectDelay is not 'off'.
 */
export function backoffDelayMs(
  step: number,
  params: Pick<TmoParams, 'reconnectDelay' | 'reconnectDelayMax'>,
  jitter: number,
  random: () => number,
): number {
  if (params.reconnectDelay === 'off') throw new Error('backoffDelayMs: reconnect_delay is off');
  if (!Number.isInteger(step) || step < 1) throw new Error(`backoffDelayMs: step ${step} < 1`);
  const baseMs = params.reconnectDelay * 1000;
  const capMs = Math.max(params.reconnectDelayMax * 1000, baseMs);
  // 2^step overflows to Infinity for huge step numbers; min() keeps the cap.
  const d = Math.min(capMs, baseMs * 2 ** Math.min(step, 1024));
  return Math.round(Math.min(capMs, d * (1 + jitter * (2 * random() - 1))));
}
