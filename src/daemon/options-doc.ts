/**
 * Generates docs/options.md from the configuration schemas (each option's .describe() text, type
 * and default), so every option is documented exactly once. `npm run docs:options` rewrites the
 * file; test/daemon-config.test.ts fails when it is out of date.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { z } from 'zod';
import { configSchema, defaultsSchema, tcpListenerSchema, TARGET_OPTIONS, targetSpecSchema } from './config.js';
import { type JsonSchema, toJsonSchema, unwrap } from './json-schema.js';

function typeText(s: JsonSchema): string {
  if (Array.isArray(s.anyOf)) {
    const parts = (s.anyOf as JsonSchema[]).map(typeText);
    return parts.join(' \\| ');
  }
  if (Array.isArray(s.enum)) return (s.enum as string[]).map((e) => `"${e}"`).join(' \\| ');
  let t = String(s.type ?? 'any');
  const range: string[] = [];
  if (s.minimum !== undefined) range.push(`≥ ${String(s.minimum)}`);
  if (s.maximum !== undefined) range.push(`≤ ${String(s.maximum)}`);
  if (s.minLength !== undefined && (s.minLength as number) > 1) range.push(`length ≥ ${String(s.minLength)}`);
  if (s.pattern !== undefined) range.push(`matching \`${String(s.pattern).replace(/\|/g, '\\|')}\``);
  if (range.length) t += ` (${range.join(', ')})`;
  return t;
}

function rows(shape: Record<string, z.ZodTypeAny>, only?: string[]): string {
  const out = ['| key | type | default | description |', '|---|---|---|---|'];
  for (const [k, t] of Object.entries(shape)) {
    if (only && !only.includes(k)) continue;
    const u = unwrap(t);
    const js = toJsonSchema(u.inner);
    const kind =
      k === 'reconnect_delay' && k in TARGET_OPTIONS
        ? 'seconds (≥ 0.1) \\| "off"'
        : k in TARGET_OPTIONS && k.endsWith('_tmo')
          ? 'integer seconds \\| "off"'
          : typeText(js);
    const def = u.default === undefined ? (u.optional ? '—' : 'required') : `\`${JSON.stringify(u.default)}\``;
    const desc = (t.description ?? u.inner.description ?? '').replace(/\|/g, '\\|').replace(/\n/g, ' ');
    out.push(`| \`${k}\` | ${kind} | ${def} | ${desc} |`);
  }
  return out.join('\n');
}

/** The whole of docs/options.md. */
export function renderOptionsDoc(): string {
  const top = configSchema._def.schema.shape as Record<string, z.ZodTypeAny>;
  const defaults = defaultsSchema._def.schema.shape as Record<string, z.ZodTypeAny>;
  const target = targetSpecSchema.shape as Record<string, z.ZodTypeAny>;
  return `<!-- Generated from src/daemon/config.ts by \`npm run docs:options\`; do not edit by hand. -->
# srp-nbd configuration options

The daemon reads one JSON file (\`srp-nbd daemon --config /etc/srp-nbd/config.json\`). Unknown keys
are errors; every error names the key path and the rule it breaks, e.g.
\`targets[0].fast_io_fail_tmo: fast_io_fail_tmo=700 exceeds SCSI_DEVICE_BLOCK_MAX_TIMEOUT (600 s) … [fast-io-fail-too-long]\`.
\`srp-nbd daemon --config FILE --check\` validates a file and prints it with the defaults applied.

## Top level

${rows(top)}

## \`tcp\`

${rows(tcpListenerSchema.shape as Record<string, z.ZodTypeAny>)}

## Per-target options (\`defaults\`, each \`targets[]\` entry, \`srp-nbd attach\`, \`POST /targets\`)

\`defaults\` gives every option below a value; a target overrides any of them. The same names are the
fields of a \`POST /targets\` body and, with dashes (\`--fast-io-fail-tmo\`), the flags of \`srp-nbd attach\`.
The four timers can be changed at runtime (\`srp-nbd set\`, \`PATCH /targets/:id\`). Timer combinations
are checked like the kernel's \`srp_tmo_valid()\`: at least one of fast_io_fail_tmo/dev_loss_tmo set,
fast_io_fail_tmo < dev_loss_tmo, fast_io_fail_tmo ≤ 600, dev_loss_tmo ≤ 600 when fast_io_fail_tmo is off,
reconnect_delay not 0 and at least 0.1, reconnect_delay ≤ reconnect_delay_max.

${rows(defaults)}

## A target (\`targets[]\` entry, \`POST /targets\` body)

${rows(target, ['address', 'id'])}

plus any per-target option above.

## Example

\`\`\`json
{
  "control_socket": "/run/srp-nbd/control.sock",
  "state_dir": "/var/lib/srp-nbd",
  "defaults": { "fast_io_fail_tmo": 5, "dev_loss_tmo": 600, "ack_timeout": 14, "retry_count": 6 },
  "targets": [
    { "id": "array1", "address": "id_ext=0002c90300aabbcc,ioc_guid=0002c90300aabbcc,dest=192.0.2.2:5000", "dev_loss_tmo": 60 }
  ],
  "tcp": { "host": "127.0.0.1", "port": 8740, "token": "change-me-to-a-long-random-string" }
}
\`\`\`
`;
}

export const OPTIONS_DOC = 'docs/options.md';

if (process.argv[1] && fileURLToPath(import.meta.url) === path.resolve(process.argv[1])) {
  const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
  fs.writeFileSync(path.join(root, OPTIONS_DOC), renderOptionsDoc());
  process.stdout.write(`wrote ${OPTIONS_DOC}\n`);
}
