#!/usr/bin/env node
// Reads a tap run's output and prints one plain line "N passed, N failed".
// Usage: tap-summary.js LOGFILE EXIT_CODE. Exits non-zero when the run failed,
// when anything failed, or when no test ran at all.
import { readFileSync } from 'node:fs';

const [logFile, rcArg] = process.argv.slice(2);
const text = readFileSync(logFile, 'utf8');
const rc = Number(rcArg ?? 1);
// tap's final summary: "# { total: 7, pass: 6, fail: 1, ... }"
const m = [...text.matchAll(/^# \{ total: (\d+)(.*)\}$/gm)].pop();
let pass = 0;
let fail = 0;
if (m) {
  const field = (name) => Number(new RegExp(`${name}: (\\d+)`).exec(m[2])?.[1] ?? 0);
  pass = field('pass');
  fail = Number(m[1]) - pass - field('todo') - field('skip');
}
if (rc !== 0 && fail === 0) fail = 1; // a crashed run is a failure even if it counted none
console.log(`${pass} passed, ${fail} failed`);
process.exit(rc !== 0 || fail > 0 || pass === 0 ? 1 : 0);
