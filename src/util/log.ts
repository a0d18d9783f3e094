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
