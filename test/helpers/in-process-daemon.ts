/**
 * In-process daemons for tests: one temporary directory for the sockets, the state and the sysfs
 * stand-in, the test target enabled and no kernel devices (`device: none`). Every daemon made is
 * closed at teardown, then the directory is removed.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { pino } from 'pino';
import { type DaemonConfig, parseConfig } from '../../src/daemon/config.js';
import { Daemon, type DaemonOptions } from '../../src/daemon/daemon.js';

export interface InProcessDaemons {
  dir: string;
  config: DaemonConfig;
  /** A daemon over the shared config and directory (not started); `sysfs` defaults to `<dir>/sys`. */
  make: (opts?: Omit<DaemonOptions, 'config' | 'logger'>) => Daemon;
}

export function inProcessDaemons(
  t: { teardown: (fn: () => Promise<void>) => void },
  prefix = 'srp-nbd-daemon-',
): InProcessDaemons {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const config = parseConfig({
    control_socket: path.join(dir, 'control.sock'),
    nbd_socket: path.join(dir, 'nbd.sock'),
    state_dir: path.join(dir, 'state'),
    test_targets: { enabled: true },
    defaults: { device: 'none' },
  });
  const made: Daemon[] = [];
  t.teardown(async () => {
    for (const d of made) await d.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return {
    dir,
    config,
    make: (opts = {}) => {
      const d = new Daemon({ config, logger: pino({ level: 'silent' }), sysfs: path.join(dir, 'sys'), ...opts });
      made.push(d);
      return d;
    },
  };
}
