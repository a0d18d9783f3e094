/**
 * One daemon per state directory and per socket: an exclusive flock(2) on a lock file, taken
 * before the daemon reads its state or touches a socket. The kernel drops the lock when the
 * process dies (kill -9 included), so it can never go stale; the file keeps the holder's pid for
 * the error message only.
 */
import * as fs from 'node:fs';
import type { NativeBinding } from '../native/native.js';

export interface InstanceLock {
  readonly file: string;
  release(): void;
}

/** Another daemon holds the lock: the message names it and the file. */
export class InstanceLockedError extends Error {
  override readonly name = 'InstanceLockedError';
}

/**
 * Takes the lock on `file` (created 0600, never following a symlink) for `what` ("state
 * directory /var/lib/srp-nbd", …). Throws InstanceLockedError when another process holds it.
 */
export function acquireInstanceLock(
  file: string,
  what: string,
  binding: Pick<NativeBinding, 'flockExclusive'>,
): InstanceLock {
  const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
  let locked: boolean;
  try {
    locked = binding.flockExclusive(fd);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
  if (!locked) {
    let holder = '';
    try {
      const pid = Number.parseInt(fs.readFileSync(fd, 'utf8'), 10);
      if (Number.isInteger(pid) && pid > 0) holder = ` (pid ${pid})`;
    } catch {
      /* the pid is only for the message */
    }
    fs.closeSync(fd);
    throw new InstanceLockedError(`another srp-nbd daemon${holder} is using the ${what} (lock ${file} held)`);
  }
  fs.ftruncateSync(fd, 0);
  fs.writeSync(fd, `${process.pid}\n`, 0);
  let open = true;
  return {
    file,
    release: () => {
      if (!open) return;
      open = false;
      fs.closeSync(fd);
    },
  };
}
