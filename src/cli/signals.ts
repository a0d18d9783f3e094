/**
 * Signals of the long-running commands (`daemon`, `serve`), which run as root.
 *
 * Node starts its inspector on SIGUSR1 when no listener is installed: a `kill -USR1` (a common
 * log-rotation habit) would open 127.0.0.1:9229, where any local user can run code as root. A
 * listener replaces that handler, so SIGUSR1 is caught and logged instead. SIGHUP and SIGUSR2
 * would otherwise end the process without its clean shutdown; the logs go to stderr (the journal
 * under systemd), so there is nothing to reopen: they are logged and ignored.
 */
import type { Logger } from '../util/log.js';

export const IGNORED_SIGNALS = ['SIGUSR1', 'SIGUSR2', 'SIGHUP'] as const;

export interface SignalHandling {
  /** Resolves with SIGINT or SIGTERM: the caller's clean stop. */
  stop: Promise<NodeJS.Signals>;
  /** Where ignored signals are logged from now on (stderr until then). */
  setLogger(logger: Logger): void;
}

/** Installs the handlers at once: call it first, before anything slow. */
export function handleSignals(): SignalHandling {
  let logger: Logger | undefined;
  for (const signal of IGNORED_SIGNALS) {
    process.on(signal, () => {
      const msg = `${signal} ignored (logs go to stderr; stop with SIGTERM)`;
      if (logger) logger.warn({ signal }, msg);
      else process.stderr.write(`srp-nbd: ${msg}\n`);
    });
  }
  const stop = new Promise<NodeJS.Signals>((resolve) => {
    process.once('SIGINT', () => resolve('SIGINT'));
    process.once('SIGTERM', () => resolve('SIGTERM'));
  });
  return { stop, setLogger: (l) => (logger = l) };
}
