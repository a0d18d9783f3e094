/**
 * The persisted attached set: <state_dir>/state.json, rewritten atomically (write a temporary
 * file, fsync, rename over the old one, fsync the directory) after every attach, detach and timer
 * change, so a daemon killed at any moment finds either the old or the new set, never half of one.
 *
 * Per target: its id, canonical address and option overrides; per LUN: the SAM LUN, the export
 * name, the kernel device (if any), the NBD backend identifier and the LUN identity recorded at
 * first attach. A restart re-attaches each target under the same export names and devices and
 * refuses a LUN whose identity changed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { z } from 'zod';
import { zodIssues } from './config.js';

export const STATE_FILE = 'state.json';
export const STATE_VERSION = 1;

const identitySchema = z
  .object({
    designators: z.array(z.object({ designatorType: z.number(), codeSet: z.number(), value: z.string() })),
    serial: z.string().optional(),
    blockSize: z.number(),
    blockCount: z.string(),
    vendor: z.string().optional(),
    product: z.string().optional(),
    revision: z.string().optional(),
  })
  .passthrough();

export const persistedLunSchema = z.object({
  /** SAM LUN, 16 hex digits */
  lun: z.string().regex(/^[0-9a-f]{16}$/),
  export: z.string(),
  device: z.string().nullable(),
  backendId: z.string(),
  identity: identitySchema,
});
export type PersistedLun = z.output<typeof persistedLunSchema>;

export const persistedTargetSchema = z.object({
  id: z.string(),
  address: z.string(),
  overrides: z.record(z.unknown()),
  attachedAt: z.string(),
  luns: z.array(persistedLunSchema),
});
export type PersistedTarget = z.output<typeof persistedTargetSchema>;

export const stateSchema = z.object({
  version: z.literal(STATE_VERSION),
  targets: z.array(persistedTargetSchema),
});
export type PersistedState = z.output<typeof stateSchema>;

export class StateStore {
  readonly file: string;

  constructor(readonly dir: string) {
    this.file = path.join(dir, STATE_FILE);
  }

  /** The persisted set; empty when there is no file yet. Throws naming the file and key on a damaged one. */
  load(): PersistedState {
    let text: string;
    try {
      text = fs.readFileSync(this.file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { version: STATE_VERSION, targets: [] };
      throw e;
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch (e) {
      throw new Error(
        `${this.file}: not valid JSON (${(e as Error).message}); move it away to start with an empty set`,
      );
    }
    const r = stateSchema.safeParse(raw);
    if (!r.success) {
      throw new Error(
        `${this.file}: ${zodIssues(r.error)
          .map((i) => `${i.path}: ${i.message}`)
          .join('; ')}; move it away to start with an empty set`,
      );
    }
    return r.data;
  }

  /** Replaces the file atomically. */
  save(state: PersistedState): void {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const tmp = `${this.file}.${process.pid}.tmp`;
    const fd = fs.openSync(tmp, 'w', 0o600);
    try {
      fs.writeSync(fd, JSON.stringify(state, null, 2) + '\n');
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, this.file);
    const dfd = fs.openSync(this.dir, 'r');
    try {
      fs.fsyncSync(dfd);
    } finally {
      fs.closeSync(dfd);
    }
  }
}
