/**
 * systemd's notification protocol (sd_notify(3)), for `Type=notify`: newline-separated
 * `KEY=value` assignments in one datagram to the unix socket named by $NOTIFY_SOCKET (a path, or
 * `@name` in the abstract namespace), sent by the daemon's main process (NotifyAccess=main). The
 * addon sends the datagram (Node has no unix datagram sockets); what to say and when is here.
 *
 * The daemon says READY=1 once every persisted target is attached or its first attempt failed (at
 * most `ready_timeout` after the start), STATUS= with the targets' count by status and paths not
 * running (refreshed every STATUS_INTERVAL_MS when it changes), STOPPING=1 at SIGTERM. Outside systemd (no $NOTIFY_SOCKET) nothing is sent.
 */
import type { Logger } from 'pino';
import type { NativeBinding } from '../native/native.js';
import type { TargetSummary } from './views.js';

/** How often the daemon refreshes STATUS= (sent only when it changed). */
export const STATUS_INTERVAL_MS = 2000;

export class SystemdNotifier {
  private warned = false;

  constructor(
    private readonly socket: string | undefined,
    private readonly binding: Pick<NativeBinding, 'unixDgramSend'> | undefined,
    private readonly log: Logger,
  ) {}

  /** True when the daemon runs under systemd with Type=notify. */
  get enabled(): boolean {
    return this.socket !== undefined && this.socket !== '';
  }

  /** Sends the assignments; a failure is logged (once), never thrown: readiness is advisory here. */
  notify(fields: Record<string, string | number>): boolean {
    if (!this.enabled) return false;
    const text = Object.entries(fields)
      .map(([k, v]) => `${k}=${String(v).replace(/\n/g, ' ')}`)
      .join('\n');
    try {
      if (!this.binding || typeof this.binding.unixDgramSend !== 'function')
        throw new Error('the native addon is not built or out of date (npm run build:native)');
      this.binding.unixDgramSend(this.socket!, Buffer.from(text));
      return true;
    } catch (e) {
      if (!this.warned)
        this.log.error({ err: (e as Error).message, socket: this.socket }, 'cannot notify systemd (sd_notify)');
      this.warned = true;
      return false;
    }
  }

  ready(targets: readonly TargetSummary[], timedOut: boolean): boolean {
    const status = `${timedOut ? 'ready (ready_timeout reached): ' : 'ready: '}${describeTargets(targets)}`;
    return this.notify({ READY: 1, STATUS: status, MAINPID: process.pid });
  }

  private lastStatus = '';

  /** STATUS=text, unless it is what was sent last. */
  status(text: string): boolean {
    if (text === this.lastStatus) return false;
    this.lastStatus = text;
    return this.notify({ STATUS: text });
  }

  stopping(): boolean {
    return this.notify({ STOPPING: 1, STATUS: 'stopping: exports closed, kernel devices kept' });
  }
}

/** "3 targets: 2 attached, 1 connecting" or "no targets". */
export function describeTargets(targets: readonly TargetSummary[]): string {
  if (targets.length === 0) return 'no targets';
  const by = new Map<string, number>();
  for (const t of targets) by.set(t.status, (by.get(t.status) ?? 0) + 1);
  const parts = [...by].map(([s, n]) => `${n} ${s}`);
  const paths = new Map<string, number>();
  for (const t of targets)
    if (t.status === 'attached' && t.state && t.state !== 'running') paths.set(t.state, (paths.get(t.state) ?? 0) + 1);
  const down = [...paths].map(([s, n]) => `${n} ${s}`);
  return `${targets.length} target${targets.length === 1 ? '' : 's'}: ${parts.join(', ')}${down.length > 0 ? `; paths: ${down.join(', ')}` : ''}`;
}

/**
 * Resolves when `settled` does, or after `timeoutMs`: true when the timeout came first. The
 * daemon's readiness waits for the persisted targets' first attempts, boundedly.
 */
export async function settledWithin(settled: Promise<unknown>, timeoutMs: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<true>((resolve) => {
    timer = setTimeout(() => resolve(true), timeoutMs);
  });
  try {
    return await Promise.race([settled.then(() => false), timeout]);
  } finally {
    clearTimeout(timer);
  }
}
