#!/usr/bin/env node
// Entry point of the srp-nbd command; the code lives in dist/ (built by `npm run build`).
import { main } from '../dist/src/cli/main.js';

main(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => {
    process.stderr.write(`srp-nbd: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);
