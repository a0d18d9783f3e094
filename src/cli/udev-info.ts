/**
 * `srp-nbd udev-info nbdN`: the udev properties of an srp-nbd device, for the rule's
 * IMPORT{program} (packaging/60-srp-nbd.rules), which links /dev/disk/by-id/$SRP_NBD_BY_ID (and
 * -partN) to it. The device's export is read from the kernel (/sys/block/nbdN/backend holds the
 * BACKEND_IDENTIFIER `srp-nbd:<export>`), so the answer does not depend on the daemon having
 * recorded the device yet: udev runs this while the attach is still in progress. The LUN's
 * identity comes from the daemon (GET /luns/<export>).
 *
 * Output, one KEY=value a line (values restricted to [A-Za-z0-9._:-]): SRP_NBD_BY_ID, SRP_NBD_TARGET,
 * SRP_NBD_EXPORT, ID_SERIAL, ID_SERIAL_SHORT, ID_WWN (NAA), ID_VENDOR, ID_MODEL, ID_REVISION.
 * Nothing (exit 0) for an nbd device that is not srp-nbd's or not connected; exit 1 when the
 * daemon cannot say.
 */
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { ApiError, ControlClient, UnreachableError } from '../daemon/client.js';
import type { LunView } from '../daemon/views.js';
import { UsageError } from './usage-error.js';

export const UDEV_INFO_USAGE = `usage: srp-nbd udev-info [--socket PATH] [--sysfs DIR] [--wait S] nbdN

Prints udev properties (KEY=value) of an srp-nbd device: SRP_NBD_BY_ID (the stable name,
linked as /dev/disk/by-id/<it> by packaging/60-srp-nbd.rules), SRP_NBD_TARGET, SRP_NBD_EXPORT,
ID_SERIAL, ID_SERIAL_SHORT, ID_WWN, ID_VENDOR, ID_MODEL, ID_REVISION. Nothing for another nbd
device. For udev's IMPORT{program}. A daemon that cannot be reached is retried for S seconds
(--wait, default 10: a restart), then it is an error (exit 1).
`;

const BACKEND_PREFIX = 'srp-nbd:';

/** A udev property value: anything outside the safe set becomes '_'. */
const udevValue = (s: string): string => s.trim().replace(/[^A-Za-z0-9._:-]/g, '_');

/** The KEY=value lines for a LUN. */
export function udevProperties(l: LunView): string[] {
  const props: [string, string | null][] = [
    ['SRP_NBD_BY_ID', l.by_id],
    ['SRP_NBD_TARGET', l.target],
    ['SRP_NBD_EXPORT', l.export],
    ['ID_SERIAL', l.by_id.replace(/^srp-nbd-/, '')],
    ['ID_SERIAL_SHORT', l.serial],
    ['ID_WWN', l.designators.find((d) => d.startsWith('naa.'))?.replace(/^naa\./, '0x') ?? null],
    ['ID_VENDOR', l.vendor],
    ['ID_MODEL', l.product],
    ['ID_REVISION', l.revision],
  ];
  return props
    .filter((p): p is [string, string] => p[1] !== null && p[1] !== '')
    .map(([k, v]) => `${k}=${udevValue(v)}`);
}

export async function udevInfo(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      wait: { type: 'string', default: '10' },
      socket: { type: 'string' },
      sysfs: { type: 'string', default: '/sys' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(UDEV_INFO_USAGE);
    return 0;
  }
  const m = positionals.length === 1 ? /^(?:\/dev\/)?(nbd\d+)$/.exec(positionals[0]!) : null;
  if (!m) throw new UsageError('udev-info: give one device, nbdN or /dev/nbdN');
  const dev = m[1]!;
  let backend: string | undefined;
  try {
    backend = fs.readFileSync(`${values.sysfs}/block/${dev}/backend`, 'utf8').trim();
  } catch {
    backend = undefined; // a kernel without the attribute, or a device not connected
  }
  if (backend !== undefined && !backend.startsWith(BACKEND_PREFIX)) return 0; // another nbd user
  const name = backend !== undefined ? backend.slice(BACKEND_PREFIX.length) : `/dev/${dev}`;
  const c = new ControlClient({ ...(values.socket !== undefined ? { socket: values.socket } : {}), timeoutMs: 20_000 });
  const wait = Number(values.wait);
  if (values.wait.trim() === '' || !Number.isFinite(wait) || wait < 0)
    throw new UsageError(`udev-info: --wait: expected seconds, got '${values.wait}'`);
  const deadline = Date.now() + wait * 1000;
  let lun: LunView;
  for (;;) {
    try {
      lun = await c.call<LunView>('getLun', { params: { name } });
      break;
    } catch (e) {
      if (e instanceof ApiError && e.status === 404 && backend === undefined) return 0; // not ours
      // a daemon restarting (Restart=always) answers again within seconds
      if (!(e instanceof UnreachableError) || /permission denied/.test(e.message) || Date.now() >= deadline) throw e;
      await new Promise((r) => setTimeout(r, 500));
    }
  }
  process.stdout.write(udevProperties(lun).join('\n') + '\n');
  return 0;
}
