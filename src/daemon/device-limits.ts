/**
 * The kernel NBD device's largest request. nbd creates its devices with max_sectors_kb 128, so a
 * 1 MiB write reached the target as eight 128 KiB commands. After CONNECT (and RECONFIGURE) the
 * daemon sets the device's limit from the LUN's: the largest transfer of one SCSI command (the
 * target's Block Limits VPD page, the max_sect option), at most DEVICE_MAX_IO_BYTES (ib_srp's
 * default max_sect, 1024 sectors) and at most what the device allows (max_hw_sectors_kb).
 * Its request timer too (setDeviceIoTimeout, option nbd_io_timeout).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

export const DEVICE_MAX_IO_BYTES = 512 * 1024;

/** The max_sectors_kb value for a LUN whose commands carry at most maxTransferBytes. */
export function deviceMaxSectorsKb(maxTransferBytes: number, maxHwSectorsKb: number, blockSize: number): number {
  const want = Math.floor(Math.min(maxTransferBytes, DEVICE_MAX_IO_BYTES) / 1024);
  const hw = maxHwSectorsKb > 0 ? maxHwSectorsKb : want;
  return Math.max(Math.ceil(blockSize / 1024), Math.min(want, hw));
}

/**
 * Writes /sys/block/nbdN/queue/max_sectors_kb for `device` (/dev/nbdN); returns the value set.
 * Asynchronous sysfs access only (see md.ts). Throws what the kernel refuses.
 */
export async function limitDeviceIo(
  device: string,
  maxTransferBytes: number,
  blockSize: number,
  sysfs = '/sys',
): Promise<number> {
  const queue = path.join(sysfs, 'block', path.basename(device), 'queue');
  const hw = Number((await fs.promises.readFile(path.join(queue, 'max_hw_sectors_kb'), 'utf8')).trim());
  const kb = deviceMaxSectorsKb(maxTransferBytes, Number.isFinite(hw) ? hw : 0, blockSize);
  await fs.promises.writeFile(path.join(queue, 'max_sectors_kb'), String(kb));
  return kb;
}

/**
 * Writes /sys/block/nbdN/queue/io_timeout (milliseconds) for `device`: the block layer's request
 * timer. srp-nbd connects its devices with NBD TIMEOUT 0, and then Linux's nbd_xmit_timeout()
 * never fails a request: it requeues one whose socket was replaced since it was sent (a daemon
 * restart's RECONFIGURE), so it is resent on the new socket, and otherwise logs "Possible stuck
 * request" (dev_info, once per request and period) and re-arms the timer. Without this the timer
 * is nbd's 30 s, and a write in flight when the daemon died waited that long.
 */
export async function setDeviceIoTimeout(device: string, seconds: number, sysfs = '/sys'): Promise<void> {
  if (!Number.isInteger(seconds) || seconds < 1) throw new RangeError(`io_timeout ${seconds} s: a whole number >= 1`);
  const file = path.join(sysfs, 'block', path.basename(device), 'queue', 'io_timeout');
  await fs.promises.writeFile(file, String(seconds * 1000));
}
