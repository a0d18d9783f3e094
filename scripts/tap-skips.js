#!/usr/bin/env node
// Lists the tests a tap run skipped, with the reason each gave ("# SKIP reason", or a
// "# skipped: reason" comment inside a test). Usage: tap-skips.js LOGFILE
import { readFileSync } from 'node:fs';

const lines = readFileSync(process.argv[2], 'utf8').split('\n');
const skipped = [];
let file = '';
for (const line of lines) {
  const sub = /^# Subtest: (dist\/test\/\S+)/.exec(line);
  if (sub) file = sub[1].replace(/^dist\//, '').replace(/\.js$/, '.ts');
  const skip = /^\s*ok \d+ - (.*?) # SKIP\s*(.*)$/.exec(line);
  if (skip) skipped.push(`${file}: ${skip[1]}: ${skip[2] || 'no reason given'}`);
  const comment = /^\s*# skipped: (.*)$/.exec(line);
  if (comment) skipped.push(`${file}: ${comment[1]}`);
}
if (skipped.length > 0) console.log(`skipped (${skipped.length}):\n${skipped.map((s) => `  ${s}`).join('\n')}`);
else console.log('skipped: none');
