/**
 * `srp-nbd serve`: export a RAM disk or a file over NBD on a unix socket
 * and/or TCP, for testing, benchmarks and clients such as qemu or nbdcopy.
 */
import { parseArgs } from 'node:util';
import type { Backend } from '../nbd/backend.js';
import { FileBackend } from '../nbd/file-backend.js';
import { MemoryBackend } from '../nbd/memory-backend.js';
import { NbdServer } from '../nbd/server.js';
import { DEFAULT_TMO, parseReconnectDelay, parseTmo, type TmoParams, validateTmo } from '../fsm/timers.js';
import { startTestTarget } from '../testing/test-fabric.js';
import { createLogger } from '../util/log.js';
import { parseSize } from '../util/size.js';
import { handleSignals } from './signals.js';
import { UsageError } from './usage-error.js';

export const SERVE_USAGE = `usage: srp-nbd serve (--memory SIZE | --file PATH | --test-target) [--unix PATH] [--tcp [HOST:]PORT]
                     [--name NAME] [--read-only] [--block-size N] [--log-level LEVEL]
                     [--lun-size SIZE] [--reconnect-delay S] [--fast-io-fail-tmo S|off] [--dev-loss-tmo S|off]

  --memory SIZE      serve a sparse RAM disk of SIZE bytes (suffixes K, M, G, T)
  --file PATH        serve an existing regular file
  --test-target      log in to an in-process test SRP target through the real
                     initiator (SRP session, SCSI layer, transport state machine)
                     and export its LUNs: "lun0" (512-byte blocks) and "lun1"
                     (4096-byte blocks), each --lun-size bytes (default 64M)
  --unix PATH        listen on a unix socket (mode 0600)
  --tcp [HOST:]PORT  listen on TCP (HOST defaults to 127.0.0.1; PORT 0 picks one)
  --name NAME        export name (default "srp-nbd"; "" also reaches it)
  --read-only        refuse writes with EPERM
  --block-size N     minimum block size to advertise and enforce (default 1)
  --log-level LEVEL  trace, debug, info, warn, error (default info)
  --reconnect-delay, --fast-io-fail-tmo, --dev-loss-tmo
                     transport timers of the test target's port, seconds or "off"
                     (defaults 1, 5, 600)

Without --unix or --tcp the server listens on TCP 127.0.0.1:10809.
Prints one line per listener ("listening on unix:PATH" / "listening on tcp:HOST:PORT")
and runs until SIGINT or SIGTERM (SIGHUP, SIGUSR1 and SIGUSR2 are logged and ignored).
`;

export async function serve(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      memory: { type: 'string' },
      file: { type: 'string' },
      unix: { type: 'string' },
      tcp: { type: 'string' },
      name: { type: 'string', default: 'srp-nbd' },
      'read-only': { type: 'boolean', default: false },
      'block-size': { type: 'string', default: '1' },
      'log-level': { type: 'string' },
      'test-target': { type: 'boolean', default: false },
      'lun-size': { type: 'string', default: '64M' },
      'reconnect-delay': { type: 'string' },
      'fast-io-fail-tmo': { type: 'string' },
      'dev-loss-tmo': { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(SERVE_USAGE);
    return 0;
  }
  const sources = [values.memory !== undefined, values.file !== undefined, values['test-target']].filter(
    Boolean,
  ).length;
  if (sources !== 1) throw new UsageError('serve: give exactly one of --memory SIZE, --file PATH or --test-target');
  const minimumBlockSize = sizeArg('--block-size', values['block-size']!);
  const readOnly = values['read-only']!;
  const signals = handleSignals();
  const logger = createLogger(values['log-level']);
  signals.setLogger(logger);
  const server = new NbdServer({ logger });
  let stop = async (): Promise<void> => {};
  if (values['test-target']) {
    const lunSize = sizeArg('--lun-size', values['lun-size']!);
    const tmo = parseTmoOptions(values);
    const { port, exports } = await startTestTarget({
      luns: [
        { blockSize: 512, sizeBytes: lunSize, serial: 'SRPNBD-TEST-0' },
        { blockSize: 4096, sizeBytes: lunSize, serial: 'SRPNBD-TEST-1' },
      ],
      logger,
      tmo,
    });
    for (const [name, backend] of exports) server.addExport(name, backend);
    stop = () => port.close();
  } else {
    const backend: Backend =
      values.memory !== undefined
        ? new MemoryBackend({ size: sizeArg('--memory', values.memory), readOnly, minimumBlockSize })
        : await FileBackend.open(values.file!, { readOnly, minimumBlockSize });
    server.addExport(values.name!, backend);
  }
  if (values.unix !== undefined) {
    await server.listenUnix(values.unix);
    process.stdout.write(`listening on unix:${values.unix}\n`);
  }
  if (values.tcp !== undefined || values.unix === undefined) {
    const { host, port } = parseHostPort(values.tcp ?? '10809');
    const bound = await server.listenTcp(port, host);
    process.stdout.write(`listening on tcp:${host}:${bound}\n`);
  }
  logger.info({ exports: server.list().map((e) => ({ name: e.name, size: e.backend.size })) }, 'serving');
  await signals.stop;
  await server.close();
  await stop();
  return 0;
}

/** Reads --reconnect-delay / --fast-io-fail-tmo / --dev-loss-tmo; the FSM validates the combination. */
function parseTmoOptions(values: Record<string, unknown>): Partial<TmoParams> {
  const tmo: Partial<TmoParams> = {};
  const keys = [
    ['reconnect-delay', 'reconnectDelay'],
    ['fast-io-fail-tmo', 'fastIoFailTmo'],
    ['dev-loss-tmo', 'devLossTmo'],
  ] as const;
  for (const [flag, key] of keys) {
    const v = values[flag];
    if (typeof v !== 'string') continue;
    try {
      tmo[key] = key === 'reconnectDelay' ? parseReconnectDelay(v) : parseTmo(v);
    } catch (err) {
      throw new UsageError(`--${flag}: ${(err as Error).message}`);
    }
  }
  const problems = validateTmo({ ...DEFAULT_TMO, ...tmo });
  if (problems.length > 0) throw new UsageError(problems.map((p) => p.message).join('; '));
  return tmo;
}

/** Parses "[HOST:]PORT"; IPv6 hosts are written in brackets: "[::1]:10809". */
export function parseHostPort(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]:|([^:]+):)?(\d+)$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new UsageError(`invalid --tcp '${text}' (expected [HOST:]PORT with PORT 0..65535)`);
  return { host: m[1] ?? m[2] ?? '127.0.0.1', port };
}

/** Parses a size option; a malformed one is a usage error naming the option. */
function sizeArg(option: string, text: string): number {
  try {
    return parseSize(text);
  } catch (err) {
    throw new UsageError(`${option}: ${(err as Error).message}`);
  }
}
