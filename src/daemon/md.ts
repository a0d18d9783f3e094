/**
 * md RAID membership of our block devices, read from sysfs, and re-adding a member that md failed
 * while its path was down.
 *
 * When a path stays down past fast_io_fail_tmo, I/O on /dev/nbdN fails with EIO and md marks the
 * member faulty; the array keeps serving from the other mirror. md then removes the faulty member
 * from the personality (its slot becomes "none") but keeps it bound to the array, remembering the
 * slot it had (saved_raid_disk). When the path returns and the LUN identity check has passed, writing
 * "re-add" to /sys/block/mdX/md/dev-nbdN/state puts it back into its old slot; with a write-intent
 * bitmap md resyncs only the regions written meanwhile. That is what `mdadm /dev/mdX --re-add` does
 * for a member still bound to the array.
 *
 * MdReaddPolicy decides when to do that for one target (option md_readd): the daemon tells it when
 * the target is attached and when its path goes down and comes back.
 *
 * Everything here reads and writes plain sysfs files under a root directory (default /sys), so the
 * logic is tested against a fake tree; the qemu guest scenario `md-raid1` proves it on a real kernel.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Logger } from 'pino';
import type { RportState } from '../fsm/rport.js';

/** One md array holding a device, as sysfs describes it. */
export interface MdMembership {
  /** Array name, e.g. "md0" (the device is /dev/md0). */
  array: string;
  /** Member name in the array, e.g. "nbd0" (sysfs md/dev-nbd0). */
  member: string;
  /** Member state flags (md/dev-X/state): in_sync, faulty, spare, write_mostly, blocked, ... */
  state: string[];
  /** Slot in the array (md/dev-X/slot); null while the member is not active ("none"). */
  slot: number | null;
  /** md/array_state: clean, active, degraded is in `degraded`, ... */
  array_state: string | null;
  /** md/level, e.g. raid1. */
  level: string | null;
  /** md/degraded: members missing from the array. */
  degraded: number | null;
  /** md/sync_action: idle, resync, recover, check, ... */
  sync_action: string | null;
  /** md/sync_completed: "none" or "done / total" sectors. */
  sync_completed: string | null;
}

const read = async (file: string): Promise<string | null> => {
  try {
    return (await fs.promises.readFile(file, 'utf8')).trim();
  } catch {
    return null;
  }
};

const num = (s: string | null): number | null => (s !== null && /^\d+$/.test(s) ? Number(s) : null);

/**
 * The md arrays holding `device` (/dev/nbdN or nbdN) or one of its partitions (nbdNp1, ...), from
 * /sys/block/nbdN/holders and /sys/block/nbdN/nbdNpK/holders.
 *
 * Asynchronous on purpose, like every md sysfs access here: md may hold its reconfiguration lock
 * while it waits for I/O to our own devices (a superblock write), and that I/O is served by this
 * process's event loop. A synchronous read or write that waits for md would deadlock the daemon
 * with md (seen in the guest with a synchronous "re-add"). The libuv thread pool waits instead.
 */
export async function mdMemberships(device: string, sysfs = '/sys'): Promise<MdMembership[]> {
  const disk = path.basename(device);
  const diskDir = path.join(sysfs, 'block', disk);
  let entries: string[];
  try {
    entries = await fs.promises.readdir(diskDir);
  } catch {
    return [];
  }
  const parts = entries.filter((n) => n.startsWith(`${disk}p`) && /^\d+$/.test(n.slice(disk.length + 1))).sort();
  const members: [string, string][] = [
    [disk, path.join(diskDir, 'holders')],
    ...parts.map((p): [string, string] => [p, path.join(diskDir, p, 'holders')]),
  ];
  const found: [string, string][] = [];
  for (const [member, holdersDir] of members) {
    const holders = await fs.promises.readdir(holdersDir).catch(() => [] as string[]);
    for (const array of holders.filter((n) => /^md\d+$|^md_/.test(n)).sort()) found.push([member, array]);
  }
  return Promise.all(
    found.map(async ([member, array]) => {
      const md = path.join(sysfs, 'block', array, 'md');
      const dev = path.join(md, `dev-${member}`);
      const [state, slot, arrayState, level, degraded, syncAction, syncCompleted] = await Promise.all(
        [
          path.join(dev, 'state'),
          path.join(dev, 'slot'),
          ...['array_state', 'level', 'degraded', 'sync_action', 'sync_completed'].map((f) => path.join(md, f)),
        ].map(read),
      );
      return {
        array,
        member,
        state: (state ?? '').split(',').filter((s) => s.length > 0),
        slot: num(slot ?? null),
        array_state: arrayState ?? null,
        level: level ?? null,
        degraded: num(degraded ?? null),
        sync_action: syncAction ?? null,
        sync_completed: syncCompleted ?? null,
      };
    }),
  );
}

/** One line for people: `md0 raid1 slot 0 in_sync (array clean, recover 1024 / 131072)`; a partition: `nbd0p1 in md3 ...`. */
export function describeMembership(m: MdMembership): string {
  const sync =
    m.sync_action && m.sync_action !== 'idle' ? `, ${m.sync_action} ${m.sync_completed ?? ''}`.trimEnd() : '';
  const degraded = m.degraded ? `, ${m.degraded} missing` : '';
  const part = /p\d+$/.test(m.member) ? `${m.member} in ` : ''; // a partition of the device
  return `${part}${m.array}${m.level ? ` ${m.level}` : ''} slot ${m.slot ?? 'none'} ${m.state.join(',') || '?'} (array ${m.array_state ?? '?'}${degraded}${sync})`;
}

export type ReaddOutcome =
  /** Not faulty in this array: nothing to do. */
  | 'in-array'
  /** "re-add" accepted: the member is back in its slot; md recovers it (bitmap: only dirty regions). */
  | 're-added'
  /**
   * "faulty" but md has not released the slot within the wait: I/O still pending on it, or md is
   * only recording unacknowledged bad blocks on a member it did not fail (state_show() prints
   * "faulty" for those too).
   */
  | 'still-busy'
  /** The array or the member disappeared (stopped, removed by the administrator). */
  | 'gone'
  /** md refused the re-add (e.g. no saved slot: the member was removed, or an array without metadata). */
  | 'refused'
  /** `signal` aborted (path lost again, target detached, daemon stopping): nothing written. */
  | 'cancelled';

export interface ReaddResult {
  array: string;
  member: string;
  outcome: ReaddOutcome;
  /** md's error for 'refused', or the last state seen for 'still-busy'. */
  detail?: string;
  /** The command an administrator can run instead. */
  hint?: string;
}

export interface ReaddOptions {
  sysfs?: string;
  /** How long to wait for md to release a faulty member's slot (ms). Default 30 s. */
  waitMs?: number;
  /** Poll interval while waiting (ms). Default 250. */
  pollMs?: number;
  /**
   * Cancels the re-add (outcome 'cancelled', nothing written): the path went down again, the
   * target was detached or the daemon is stopping. Checked right before the write too, so a slot
   * md released meanwhile is not filled with a device that can no longer do I/O.
   */
  signal?: AbortSignal;
  /** Only these arrays (names like "md0"); default every array holding the device. */
  arrays?: string[];
  /**
   * Writes a sysfs attribute; default fs.promises.writeFile, never a synchronous write (see
   * mdMemberships). Tests inject md's refusals.
   */
  writeAttr?: (file: string, text: string) => Promise<void> | void;
}

const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(t);
        resolve();
      },
      { once: true },
    );
  });

/**
 * Re-adds `device` to every md array holding it where md has marked it faulty. Waits (up to waitMs)
 * for md to take a faulty member out of its slot before writing "re-add", since md refuses a re-add
 * of a member that is still active. Never removes a member and never touches a member in sync.
 */
export async function readdFaultyMember(device: string, opts: ReaddOptions = {}): Promise<ReaddResult[]> {
  const sysfs = opts.sysfs ?? '/sys';
  const waitMs = opts.waitMs ?? 30_000;
  const pollMs = opts.pollMs ?? 250;
  const results: ReaddResult[] = [];
  for (const first of await mdMemberships(device, sysfs)) {
    const { array, member } = first;
    if (opts.arrays && !opts.arrays.includes(array)) continue;
    const hint = `mdadm /dev/${array} --re-add /dev/${member}`;
    if (!first.state.includes('faulty')) {
      results.push({ array, member, outcome: 'in-array' });
      continue;
    }
    const stateFile = path.join(sysfs, 'block', array, 'md', `dev-${member}`, 'state');
    const deadline = Date.now() + waitMs;
    let m: MdMembership | undefined = first;
    while (m && m.state.includes('faulty') && m.slot !== null && Date.now() < deadline && !opts.signal?.aborted) {
      await sleep(pollMs, opts.signal);
      m = (await mdMemberships(device, sysfs)).find((x) => x.array === array && x.member === member);
    }
    if (opts.signal?.aborted) {
      results.push({ array, member, outcome: 'cancelled' });
    } else if (!m) {
      results.push({ array, member, outcome: 'gone' });
    } else if (!m.state.includes('faulty')) {
      results.push({ array, member, outcome: 'in-array' }); // somebody (mdadm --re-add) was quicker
    } else if (m.slot !== null) {
      results.push({
        array,
        member,
        outcome: 'still-busy',
        detail: `state ${m.state.join(',')}, slot ${m.slot}`,
        hint,
      });
    } else {
      try {
        await (opts.writeAttr ?? fs.promises.writeFile)(stateFile, 're-add');
        results.push({ array, member, outcome: 're-added' });
      } catch (e) {
        const err = e as NodeJS.ErrnoException;
        results.push({
          array,
          member,
          outcome: err.code === 'ENOENT' ? 'gone' : 'refused',
          detail: err.code ?? err.message,
          hint,
        });
      }
    }
  }
  return results;
}

/** A kernel device of one of the target's LUNs. */
export interface MdDevice {
  /** /dev/nbdN */
  device: string;
  /** The daemon serves the device (its NBD connection is attached): I/O can reach the target. */
  connected: boolean;
}

/** Per device (/dev/nbdN), the names of the md arrays in which md has it marked faulty. */
type FaultyArrays = Map<string, Set<string>>;

/** The daemon's side of one target, as the re-add policy sees it. */
export interface MdReaddTarget {
  /** The target's logger. */
  readonly log: Logger;
  /** Option md_readd, read at each decision. */
  readdEnabled(): boolean;
  /** The target is still attached and the daemon is not stopping. */
  active(): boolean;
  /** The target's path is running. */
  running(): boolean;
  /** The kernel devices of the target's LUNs, read as iterated. */
  devices(): Iterable<MdDevice>;
}

export interface MdReaddPolicyOptions {
  /** sysfs root; default /sys. */
  sysfs?: string;
  /** How long after the path returns (or the target is attached) md's member states are watched (ms); default 10 s. */
  watchMs?: number;
  /** How often they are read meanwhile, and while a faulty member waits for md to release it (ms); default 100. */
  pollMs?: number;
}

/** Defaults of MdReaddPolicyOptions: md usually releases a failed member within a second of the path's return. */
export const MD_WATCH_MS = 10_000;
export const MD_POLL_MS = 100;

/**
 * When to re-add one target's devices to the md arrays that failed them (option md_readd).
 *
 * An outage makes md fail a member only once I/O on it fails, that is after the path went from
 * blocked to fail-fast (or lost). So the devices are re-added when the path returns from fail-fast
 * or lost, once the identity check has passed (the LUN is the one md knew), and when the target
 * is attached (at daemon start the daemon cannot know what happened while it was away). A member
 * that was already faulty in an array when the path went down was failed for another reason
 * (mdadm --fail, medium errors) and is left alone, with a warning. md may fail a member a moment
 * after the path is back (its error handling is asynchronous), and releases its slot only once no
 * I/O is pending on it, so the policy watches the members' states (md/dev-X/state, slot) every
 * pollMs for watchMs after the return and writes "re-add" as soon as md has released the member;
 * the time from the return to that write is lastReaddMs. A path loss cancels the re-adds in progress, so no "re-add" is written for a device that
 * cannot do I/O; a cancelled re-add is tried again at the next return to running, even from
 * blocked.
 */
export class MdReaddPolicy {
  private readded = 0;
  /** Devices whose re-add is in progress (one at a time per device). */
  private readonly busy = new Set<string>();
  /** Cancels the re-adds in progress: aborted when the path leaves running, and by cancel(). */
  private controller?: AbortController;
  /** A re-add was cancelled by a path loss: the next return to running (even from blocked) tries again. */
  private retry = false;
  /** Per device, the arrays in which it was already faulty when the path left running. */
  private faultyBefore?: Promise<FaultyArrays>;
  /** Watches the members' states for a while after the path came back. */
  private watchTimer?: NodeJS.Timeout;
  /** When the path came back (or the target was attached): performance.now(). */
  private returnedAt = 0;
  private lastMs: number | undefined;
  /** "already faulty before the outage" warnings given in this watch (device:array), said once. */
  private readonly warned = new Set<string>();

  constructor(
    private readonly target: MdReaddTarget,
    private readonly opts: MdReaddPolicyOptions = {},
  ) {}

  /** Devices re-added so far (srp_nbd_md_readds_total). */
  get readds(): number {
    return this.readded;
  }

  /** Milliseconds from the path's return (or the attach) to the last re-add written; undefined before the first. */
  get lastReaddMs(): number | undefined {
    return this.lastMs;
  }

  /** The target is attached with its devices: re-adds each member md failed while the daemon was away. */
  onAttached(): void {
    this.watch();
  }

  /** The path left running: no re-add while it is down; notes the members md has failed already. */
  onPathDown(): void {
    // A re-add still waiting for md (its cancellation sets `retry` only later, asynchronously) means
    // the members md failed are ours to re-add: the snapshot of the first outage stays.
    if (this.busy.size > 0) this.retry = true;
    this.controller?.abort();
    this.stopWatch();
    if (!this.retry) this.faultyBefore = this.faultyNow();
  }

  /** The path is running again, coming from state `from`. */
  onPathReturned(from: RportState): void {
    if (from !== 'fail-fast' && from !== 'lost' && !this.retry) return;
    this.retry = false;
    this.watch(this.faultyBefore);
  }

  /** Cancels the re-adds in progress and the watch (detach, teardown, daemon stop). */
  cancel(): void {
    this.controller?.abort();
    this.stopWatch();
  }

  /** md's member states are being watched (after a return or an attach). */
  get watching(): boolean {
    return this.watchTimer !== undefined;
  }

  private stopWatch(): void {
    clearInterval(this.watchTimer);
    this.watchTimer = undefined;
  }

  /** readd() now and every pollMs for watchMs while the path runs: a member is re-added as soon as md releases it. */
  private watch(exclude?: Promise<FaultyArrays>): void {
    this.stopWatch();
    this.returnedAt = performance.now();
    this.warned.clear();
    this.readd(exclude);
    const until = this.returnedAt + (this.opts.watchMs ?? MD_WATCH_MS);
    this.watchTimer = setInterval(() => {
      if (performance.now() >= until || !this.target.active()) this.stopWatch();
      else if (this.target.running()) this.readd(exclude);
    }, this.opts.pollMs ?? MD_POLL_MS);
    this.watchTimer.unref();
  }

  /**
   * Puts each device back into the md arrays that have it marked faulty, except those in `exclude`.
   * Callers make sure the LUN is the one md knew (identity check passed).
   */
  private readd(exclude?: Promise<FaultyArrays>): void {
    if (!this.target.readdEnabled() || !this.target.active()) return;
    if (!this.controller || this.controller.signal.aborted) this.controller = new AbortController();
    const signal = this.controller.signal;
    const log = this.target.log;
    for (const { device, connected } of this.target.devices()) {
      if (!connected || this.busy.has(device)) continue;
      this.busy.add(device);
      void this.readdDevice(device, signal, exclude)
        .catch((e: unknown) => log.error({ device, err: (e as Error).message }, 'md: re-add failed'))
        .finally(() => this.busy.delete(device));
    }
  }

  /** readd() for one device; every sysfs access is asynchronous (see mdMemberships()). */
  private async readdDevice(device: string, signal: AbortSignal, exclude?: Promise<FaultyArrays>): Promise<void> {
    const log = this.target.log;
    const sysfs = this.opts.sysfs;
    const now = await mdMemberships(device, sysfs);
    const faulty = now.filter((m) => m.state.includes('faulty'));
    if (faulty.length === 0) return;
    const already = (await exclude)?.get(device) ?? new Set<string>();
    for (const m of faulty.filter((x) => already.has(x.array))) {
      const where = { device, member: `/dev/${m.member}`, array: `/dev/${m.array}` };
      if (this.warned.has(`${m.member}:${m.array}`)) continue;
      this.warned.add(`${m.member}:${m.array}`);
      log.warn(
        where,
        `md: /dev/${m.member} was already faulty in /dev/${m.array} before the path went down ` +
          '(mdadm --fail? medium errors?); not re-adding it',
      );
    }
    const arrays = faulty.filter((m) => !already.has(m.array)).map((m) => m.array);
    if (arrays.length === 0) return;
    const md = now.map(describeMembership);
    log.info({ device, md }, 'md: the device is faulty in an array; re-adding it now that the path is back');
    const pollMs = this.opts.pollMs ?? MD_POLL_MS;
    for (const r of await readdFaultyMember(device, { sysfs, signal, arrays, pollMs })) {
      const member = `/dev/${r.member}`; // the device or one of its partitions
      const where = { device, member, array: `/dev/${r.array}` };
      if (r.outcome === 're-added') {
        this.readded++;
        this.lastMs = Math.round(performance.now() - this.returnedAt);
        const now = (await mdMemberships(device, sysfs)).find((m) => m.array === r.array && m.member === r.member);
        log.info(
          { ...where, md: now ? describeMembership(now) : null, ms: this.lastMs },
          `md: re-added ${member} to /dev/${r.array}; ` +
            'md resyncs what changed (write-intent bitmap) or the whole member',
        );
      } else if (r.outcome === 'still-busy') {
        // md/dev-X/state also says "faulty" for unacknowledged bad blocks on a member still in its slot
        log.warn(
          { ...where, outcome: r.outcome, detail: r.detail },
          `md: ${member} is marked faulty but md kept it in its slot (${r.detail ?? ''}): ` +
            'md may be recording bad blocks rather than failing it; ' +
            `if \`mdadm --detail /dev/${r.array}\` lists it as faulty, run: ${r.hint}`,
        );
      } else if (r.outcome === 'refused') {
        log.error(
          { ...where, outcome: r.outcome, detail: r.detail },
          `md: could not re-add ${member} to /dev/${r.array} (md refused: ${r.detail ?? ''}); run: ${r.hint}`,
        );
      } else if (r.outcome === 'gone') {
        log.warn(where, `md: /dev/${r.array} or its member ${member} went away before the re-add`);
      } else if (r.outcome === 'cancelled') {
        this.retry = true;
        log.info(
          where,
          `md: re-add of ${member} to /dev/${r.array} cancelled (path lost again, detached or stopping); ` +
            'it is tried again when the path is back',
        );
      }
    }
  }

  /** Per device, the md arrays in which md has it marked faulty now. */
  private async faultyNow(): Promise<FaultyArrays> {
    const out: FaultyArrays = new Map();
    for (const { device } of this.target.devices()) {
      const ms = await mdMemberships(device, this.opts.sysfs).catch(() => []);
      out.set(device, new Set(ms.filter((m) => m.state.includes('faulty')).map((m) => m.array)));
    }
    return out;
  }
}
