/** Structured logging: pino to stderr, level from the caller or SRP_NBD_LOG. */
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(level = process.env.SRP_NBD_LOG ?? 'info', name = 'srp-nbd'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination({ fd: 2, sync: false }));
}

/** A logger that discards everything (tests that assert on behaviour, not logs). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}

/** Longest string a log field carries from outside input (export names, URLs, reasons). */
export const MAX_LOG_FIELD = 256;

/** A string from outside input cut to MAX_LOG_FIELD characters, saying how long it was. */
export function boundedField(s: string, max = MAX_LOG_FIELD): string {
  return s.length <= max ? s : `${s.slice(0, max)}… (${s.length} characters)`;
}

/** A URL for the log without its query string (which may carry a token). */
export function urlForLog(url: string): string {
  const q = url.indexOf('?');
  return boundedField(q < 0 ? url : `${url.slice(0, q)}?…`);
}

/**
 * A warning that outside input can trigger at any rate (refused requests, refused connections):
 * the first one of each `intervalMs` is logged, the others are counted and the count goes with the
 * next line (`suppressed`).
 */
export function rateLimitedWarn(logger: Logger, intervalMs = 10_000): (obj: object, msg: string) => void {
  let last = -Infinity;
  let suppressed = 0;
  return (obj, msg) => {
    const now = Date.now();
    if (now - last < intervalMs) {
      suppressed++;
      return;
    }
    last = now;
    logger.warn(suppressed > 0 ? { ...obj, suppressed } : obj, msg);
    suppressed = 0;
  };
}
