/** srp-nbd command line: dispatches to lazily loaded command handlers. */
export async function main(argv: string[]): Promise<number> {
  const [cmd] = argv;
  switch (cmd) {
    case undefined:
    case '-h':
    case '--help':
      process.stdout.write(USAGE);
      return cmd === undefined ? 2 : 0;
    default:
      process.stderr.write(`srp-nbd: unknown command '${cmd}'\n${USAGE}`);
      return 2;
  }
}

const USAGE = `usage: srp-nbd <command> [options]

commands:
  serve     serve an export over NBD (unix socket or TCP)
`;
