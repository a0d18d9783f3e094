/** srp-nbd command line: dispatches to lazily loaded command handlers. */

const USAGE = `usage: srp-nbd <command> [options]

commands:
  serve     serve a RAM disk or a file over NBD (unix socket or TCP)

Run 'srp-nbd <command> --help' for a command's options.
`;

type Handler = (argv: string[]) => Promise<number>;

const COMMANDS: Record<string, () => Promise<Handler>> = {
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
    return await (await load())(rest);
  } catch (err) {
    const usage = err instanceof Error && (err.name === 'UsageError' || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS'));
    process.stderr.write(`srp-nbd ${cmd}: ${err instanceof Error ? err.message : String(err)}\n`);
    return usage ? 2 : 1;
  }
}
