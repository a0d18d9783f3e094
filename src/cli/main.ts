/** srp-nbd command line: command definitions here, handlers loaded lazily from their modules. */

const USAGE = `usage: srp-nbd <command> [options]

commands:
  daemon     run the daemon: owns every target, serves exports and the control API
  attach     attach a target (ib_srp add_target string, srp_daemon line, or named flags)
  detach     detach a target: remove its exports and devices
  list       list attached targets (table; --json)
  status     state, timers, credits and counters of one or every target (--json)
  path       list, fail and reinstate the paths of an LU (multipath)
  set        change a target's timers at runtime
  reconnect  reconnect a target now (also from lost)
  rescan     follow LUN changes now: capacity, write protect, new and vanished LUNs
  wait-online  wait until every target is attached (for units ordered after the devices)
  discover   log in to a target and list its LUNs (local, no daemon)
  udev-info  udev properties of an srp-nbd device (for packaging/60-srp-nbd.rules)
  serve      serve a RAM disk, a file or the test target over NBD, without the daemon

Run 'srp-nbd <command> --help' for a command's options.
Exit status: 0 success, 1 failure, 2 usage error.
`;

type Handler = (argv: string[]) => Promise<number>;

const COMMANDS: Record<string, () => Promise<Handler>> = {
  daemon: async () => (await import('./daemon.js')).daemon,
  attach: async () => (await import('./control.js')).attach,
  detach: async () => (await import('./control.js')).detach,
  list: async () => (await import('./control.js')).list,
  status: async () => (await import('./control.js')).status,
  path: async () => (await import('./control.js')).path,
  set: async () => (await import('./control.js')).set,
  reconnect: async () => (await import('./control.js')).reconnect,
  rescan: async () => (await import('./control.js')).rescan,
  'wait-online': async () => (await import('./control.js')).waitOnline,
  discover: async () => (await import('./discover.js')).discover,
  'udev-info': async () => (await import('./udev-info.js')).udevInfo,
  serve: async () => (await import('./serve.js')).serve,
};

/** Runs one command; returns the process exit status (0 ok, 1 failure, 2 usage error). */
export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (cmd === undefined || cmd === '-h' || cmd === '--help' || cmd === 'help') {
    process.stdout.write(USAGE);
    return cmd === undefined ? 2 : 0;
  }
  const load = COMMANDS[cmd];
  if (!load) {
    process.stderr.write(`srp-nbd: unknown command '${cmd}'\n${USAGE}`);
    return 2;
  }
  try {
    return await (
      await load()
    )(rest);
  } catch (err) {
    const usage =
      err instanceof Error &&
      (err.name === 'UsageError' || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS'));
    // "the daemon cannot be reached" is not about the command: mdadm-style `srp-nbd: …`
    const prefix = err instanceof Error && err.name === 'UnreachableError' ? 'srp-nbd' : `srp-nbd ${cmd}`;
    if ((err as { code?: string }).code === 'ERR_MODULE_NOT_FOUND') {
      // a checkout built without its node modules (or with stale ones): say how to install
      const what = /Cannot find (?:package|module) '([^']+)'/.exec((err as Error).message)?.[1] ?? 'a module';
      process.stderr.write(
        `srp-nbd: ${what} is not installed: run \`npm ci\` and \`npm run build\` in the repository (or \`npm test\` / \`npm run demo\`, which do both)\n`,
      );
      return 1;
    }
    process.stderr.write(`${prefix}: ${err instanceof Error ? err.message : String(err)}\n`);
    return usage ? 2 : 1;
  }
}
