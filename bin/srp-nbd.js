#!/usr/bin/env node
// Entry point of the srp-nbd command; the code lives in dist/ (built by `npm run build`).
import { existsSync } from 'node:fs';

const main = new URL('../dist/src/cli/main.js', import.meta.url);
if (!existsSync(main)) {
  process.stderr.write(
    'srp-nbd: not built yet (no dist/): run `npm ci` (installs and builds the addon) and `npm run build` ' +
      'in the repository, or `npm test` / `npm run demo`, which do both\n',
  );
  process.exit(1);
}
const { main: run } = await import(main.href);
run(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err) => {
    process.stderr.write(`srp-nbd: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
