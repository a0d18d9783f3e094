/**
 * `srp-nbd daemon`: loads the configuration, re-attaches the persisted set, serves the control API
 * and the NBD exports until SIGTERM/SIGINT (SIGHUP, SIGUSR1 and SIGUSR2 are
 * logged and ignored: src/cli/signals.ts). Ready (systemd Type=notify: src/daemon/systemd.ts) once
 * the control socket accepts requests and every persisted target is attached or had its first
 * attempt, at most `ready_timeout` after the start.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { startApi } from '../daemon/api.js';
import { ConfigError, type DaemonConfig, loadConfig, parseConfig } from '../daemon/config.js';
import { Daemon } from '../daemon/daemon.js';
import { acquireInstanceLock, type InstanceLock } from '../daemon/instance-lock.js';
import { applyIoFlusher, lockMappings, memoryReport } from '../daemon/memory.js';
import { removeStaleSocket } from '../daemon/stale-socket.js';
import { describeTargets, settledWithin, STATUS_INTERVAL_MS, SystemdNotifier } from '../daemon/systemd.js';
import { tryLoadNative } from '../native/native.js';
import { createLogger } from '../util/log.js';
import { UsageError } from './usage-error.js';
import { handleSignals } from './signals.js';

export const DAEMON_USAGE = `usage: srp-nbd daemon [--config FILE] [--socket PATH] [--nbd-socket PATH] [--state-dir DIR] [--log-level LEVEL] [--check]

  --config FILE      JSON configuration (docs/options.md); without it, built-in defaults
  --socket PATH      control socket (overrides control_socket)
  --nbd-socket PATH  NBD export socket (overrides nbd_socket)
  --state-dir DIR    persisted state (overrides state_dir)
  --log-level LEVEL  trace, debug, info, warn, error (overrides log_level)
  --check            validate the configuration, print it with defaults applied, and exit

Exit status: 0 after a clean stop, 1 on a runtime failure, 2 for a usage or configuration error.
`;

export async function daemon(argv: string[]): Promise<number> {
  const signals = handleSignals();
  const { values } = parseArgs({
    args: argv,
    options: {
      config: { type: 'string', short: 'c' },
      socket: { type: 'string' },
      'nbd-socket': { type: 'string' },
      'state-dir': { type: 'string' },
      'log-level': { type: 'string' },
      check: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(DAEMON_USAGE);
    return 0;
  }
  let cfg: DaemonConfig;
  try {
    cfg = loadConfig(values.config);
    const over: Record<string, unknown> = { ...cfg };
    if (values.socket !== undefined) over.control_socket = values.socket;
    if (values['nbd-socket'] !== undefined) over.nbd_socket = values['nbd-socket'];
    if (values['state-dir'] !== undefined) over.state_dir = values['state-dir'];
    if (values['log-level'] !== undefined) over.log_level = values['log-level'];
    cfg = parseConfig(over, values.config ?? 'command line');
  } catch (e) {
    if (e instanceof ConfigError) throw new UsageError(e.message);
    throw e;
  }
  if (values.check) {
    process.stdout.write(JSON.stringify(cfg, null, 2) + '\n');
    return 0;
  }
  const logger = createLogger(cfg.log_level, 'srp-nbd');
  signals.setLogger(logger);
  const memory = memoryReport(cfg.memory);
  applyIoFlusher(memory, tryLoadNative(), logger); // first: threads created later inherit it
  warnAboutExposure(cfg, values.config, logger);
  const locks = takeInstanceLocks(cfg, logger);
  const systemd = new SystemdNotifier(process.env.NOTIFY_SOCKET, tryLoadNative(), logger);
  let d: Daemon | undefined;
  let api;
  try {
    // refuse to start next to a running daemon (an older one that takes no locks included)
    await removeStaleSocket(cfg.control_socket);
    await removeStaleSocket(cfg.nbd_socket);
    d = new Daemon({ config: cfg, logger });
    await d.start({ waitForTargets: false });
    systemd.status(`starting: ${describeTargets(d.list())}`);
    api = await startApi(d, logger);
  } catch (e) {
    await d?.close();
    for (const l of locks) l.release();
    throw e;
  }
  // Ready once every target is attached or its first attempt failed, at most ready_timeout later;
  // a SIGTERM meanwhile stops the daemon without waiting.
  const timedOut = await settledWithin(Promise.race([d.settled, signals.stop]), cfg.ready_timeout * 1000);
  if (timedOut) {
    logger.warn(
      { ready_timeout: cfg.ready_timeout, targets: describeTargets(d.list()) },
      'ready_timeout reached: reporting ready while targets are still connecting',
    );
  }
  lockMappings(memory, tryLoadNative(), logger); // start-up done: its code is mapped
  d.memory = memory;
  logger.info(
    {
      control: cfg.control_socket,
      nbd: cfg.nbd_socket,
      state: d.store.file,
      tcp: api.tcpPort ?? null,
      targets: d.list().length,
      systemd: systemd.enabled,
    },
    'srp-nbd daemon ready',
  );
  systemd.ready(d.list(), timedOut);
  const daemonRef = d;
  const statusTimer = systemd.enabled
    ? setInterval(() => systemd.status(`running: ${describeTargets(daemonRef.list())}`), STATUS_INTERVAL_MS)
    : undefined;
  statusTimer?.unref();
  const signal = await signals.stop;
  clearInterval(statusTimer);
  systemd.stopping();
  logger.info({ signal }, 'stopping: exports closed, kernel devices kept for the next start');
  await api.close();
  await d.close();
  for (const l of locks) l.release();
  logger.flush();
  return 0;
}

/** Warnings about a TCP listener whose token others could learn: no TLS off loopback, a readable config. */
function warnAboutExposure(cfg: DaemonConfig, file: string | undefined, logger: ReturnType<typeof createLogger>): void {
  if (!cfg.tcp) return;
  const loopback = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/.test(cfg.tcp.host);
  if (!loopback) {
    logger.warn(
      { host: cfg.tcp.host },
      'control API on TCP off loopback without TLS: the bearer token and every request travel in clear; ' +
        'listen on 127.0.0.1 and reach it through an SSH tunnel or a TLS proxy',
    );
  }
  if (file !== undefined) {
    const mode = fs.statSync(file).mode & 0o777;
    if (mode & 0o044) {
      logger.warn(
        { config: file, mode: mode.toString(8) },
        `the configuration holds the TCP bearer token and is readable by others: chmod 600 ${file}`,
      );
    }
  }
}

/**
 * One daemon per state directory, control socket and NBD socket: flock(2) on daemon.lock in the
 * state directory and on a `.lock` file beside each socket, taken before anything else is read or
 * touched (src/daemon/instance-lock.ts). Without the native addon there is no flock: logged, and
 * only the live-socket check guards.
 */
function takeInstanceLocks(cfg: DaemonConfig, logger: ReturnType<typeof createLogger>): InstanceLock[] {
  const binding = tryLoadNative();
  if (!binding) {
    logger.warn('native addon not loaded: no instance lock (flock); only a live control socket stops a second daemon');
    return [];
  }
  fs.mkdirSync(cfg.state_dir, { recursive: true, mode: 0o700 });
  const wanted: [string, string][] = [
    [path.join(cfg.state_dir, 'daemon.lock'), `state directory ${cfg.state_dir}`],
    [`${cfg.control_socket}.lock`, `control socket ${cfg.control_socket}`],
    [`${cfg.nbd_socket}.lock`, `NBD socket ${cfg.nbd_socket}`],
  ];
  const locks: InstanceLock[] = [];
  try {
    for (const [file, what] of wanted) {
      fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o755 });
      locks.push(acquireInstanceLock(file, what, binding));
    }
  } catch (e) {
    for (const l of locks) l.release();
    throw e;
  }
  return locks;
}
