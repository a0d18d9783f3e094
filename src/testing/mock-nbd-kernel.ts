/**
 * A stand-in for the kernel NBD driver as the daemon uses it (DaemonOptions.nbdKernel), for tests
 * without root or the nbd module: CONNECT takes the given /dev/nbdN or the lowest free one (as
 * nbd_genl_connect does), RECONFIGURE takes back a connected one or resizes it, DISCONNECT frees it. Nothing is
 * served to a kernel; `devices` says which export each /dev/nbdN carries.
 */
import type { NbdKernel } from '../daemon/daemon.js';
import type { AttachOptions, NbdAttachment } from '../nbd/netlink.js';
import { NbdNetlinkError } from '../nbd/netlink.js';
import type { NbdConnection } from '../nbd/connection.js';

export interface MockNbdDevice {
  exportName: string;
  backendId: string;
  sizeBytes: number;
}

export class MockNbdKernel implements NbdKernel {
  /** connected devices by index */
  readonly devices = new Map<number, MockNbdDevice>();
  /** every call, in order ("connect 0 t-lun0", "disconnect 0", ...) */
  readonly calls: string[] = [];

  /** @param nbdsMax devices the module was loaded with (nbds_max) */
  constructor(readonly nbdsMax = 16) {}

  attach(o: AttachOptions): Promise<NbdAttachment> {
    const found = o.server.lookup(o.exportName);
    if (!found) return Promise.reject(new Error(`attach: no export named '${o.exportName}'`));
    let index = o.index;
    if (index === undefined) {
      index = 0;
      while (this.devices.has(index)) index++;
    }
    if (index >= this.nbdsMax)
      return Promise.reject(new NbdNetlinkError(`NBD_CMD_CONNECT: /dev/nbd${index}: no such device`, 'EINVAL', 22));
    if (this.devices.has(index))
      return Promise.reject(new NbdNetlinkError(`NBD_CMD_CONNECT: /dev/nbd${index} is in use`, 'EBUSY', 16));
    const backendId = o.backendId ?? `srp-nbd:${found.name}`;
    this.devices.set(index, { exportName: found.name, backendId, sizeBytes: found.backend.size });
    this.calls.push(`connect ${index} ${found.name}`);
    return Promise.resolve(this.attachment(index, backendId));
  }

  reattach(o: AttachOptions & { index: number }): Promise<NbdAttachment> {
    const d = this.devices.get(o.index);
    const backendId = o.backendId ?? `srp-nbd:${o.exportName}`;
    if (!d || d.backendId !== backendId)
      return Promise.reject(new NbdNetlinkError(`NBD_CMD_RECONFIGURE: /dev/nbd${o.index} not ours`, 'EINVAL', 22));
    this.calls.push(`reconfigure ${o.index} ${o.exportName}`);
    return Promise.resolve(this.attachment(o.index, backendId));
  }

  detach(att: NbdAttachment): Promise<void> {
    this.devices.delete(att.index);
    this.calls.push(`disconnect ${att.index}`);
    return Promise.resolve();
  }

  resize(att: NbdAttachment, sizeBytes: number): Promise<void> {
    const d = this.devices.get(att.index);
    if (!d || d.backendId !== att.backendId)
      return Promise.reject(new NbdNetlinkError(`NBD_CMD_RECONFIGURE: /dev/nbd${att.index} not ours`, 'EINVAL', 22));
    d.sizeBytes = sizeBytes;
    this.calls.push(`resize ${att.index} ${sizeBytes}`);
    return Promise.resolve();
  }

  close(): void {}

  /** "/dev/nbd0=t-lun0 /dev/nbd1=t-lun1" */
  describe(): string {
    return [...this.devices.entries()]
      .sort(([a], [b]) => a - b)
      .map(([i, d]) => `/dev/nbd${i}=${d.exportName}`)
      .join(' ');
  }

  private attachment(index: number, backendId: string): NbdAttachment {
    const connection = { close() {}, abort() {} } as unknown as NbdConnection;
    return { index, device: `/dev/nbd${index}`, backendId, connection };
  }
}
