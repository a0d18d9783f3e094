/**
 * Target addresses the daemon accepts: ib_srp add_target strings (IB CM and RDMA/CM, see
 * src/initiator/target-address.ts), lines as srp_daemon prints them, and the in-process test target:
 *
 *   test-target[,name=NAME][,luns=N][,lun_size=SIZE][,block_size=512|4096][,image_dir=DIR]
 *
 * image_dir keeps each test LUN in a file (DIR/<name>-lun<N>.img, written through before a write is
 * acknowledged), so a daemon killed with -9 finds its data again at restart. DIR is absolute and
 * normalized here; that it lies inside the state directory is checked when the images are opened
 * (test-target.ts).
 */
import * as path from 'node:path';
import {
  formatTargetAddress,
  parseTargetAddress,
  type SrpTargetAddress,
  TargetAddressError,
} from '../initiator/target-address.js';
import { parseSize } from '../util/size.js';

export interface TestTargetSpec {
  name: string;
  luns: number;
  lunSize: number;
  blockSize: 512 | 4096;
  imageDir?: string;
}

export type AnyAddress = { kind: 'test'; spec: TestTargetSpec } | { kind: 'srp'; addr: SrpTargetAddress };

export const TEST_TARGET_PREFIX = 'test-target';

/**
 * Reduces a line srp_daemon/ibsrpdm may print to the add_target string:
 * `echo id_ext=…,… > /sys/class/infiniband_srp/srp-mlx5_0-1/add_target` → `id_ext=…,…`.
 */
export function normalizeAddressLine(line: string): string {
  let s = line.trim();
  const echo = /^echo\s+(.*?)\s*>\s*\S*add_target\s*$/.exec(s);
  if (echo) s = echo[1]!;
  if ((s.startsWith('"') && s.endsWith('"')) || (s.startsWith("'") && s.endsWith("'"))) s = s.slice(1, -1);
  return s;
}

/** Parses an address of any kind; throws TargetAddressError naming the option. */
export function parseAnyAddress(input: string): AnyAddress {
  const s = normalizeAddressLine(input);
  if (s === TEST_TARGET_PREFIX || s.startsWith(`${TEST_TARGET_PREFIX},`))
    return { kind: 'test', spec: parseTestTarget(s) };
  return { kind: 'srp', addr: parseTargetAddress(s) };
}

function parseTestTarget(s: string): TestTargetSpec {
  const spec: TestTargetSpec = { name: 'target', luns: 1, lunSize: 64 * 1024 * 1024, blockSize: 512 };
  for (const part of s.split(',').slice(1)) {
    if (part === '') continue;
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    const v = eq < 0 ? '' : part.slice(eq + 1);
    if (v === '') throw new TargetAddressError(`missing value for ${key} in test-target address`, key);
    switch (key) {
      case 'name':
        if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/.test(v))
          throw new TargetAddressError(`bad name '${v}': letters, digits, "_", ".", "-" (at most 32)`, key);
        spec.name = v;
        break;
      case 'luns': {
        const n = Number(v);
        if (!Number.isInteger(n) || n < 1 || n > 16)
          throw new TargetAddressError(`bad luns '${v}': an integer 1..16`, key);
        spec.luns = n;
        break;
      }
      case 'lun_size': {
        let n: number;
        try {
          n = parseSize(v);
        } catch (e) {
          throw new TargetAddressError(`bad lun_size '${v}': ${(e as Error).message}`, key);
        }
        if (n < 1024 * 1024 || n > 4 * 1024 ** 3 || n % 4096 !== 0)
          throw new TargetAddressError(`bad lun_size '${v}': a multiple of 4K between 1M and 4G`, key);
        spec.lunSize = n;
        break;
      }
      case 'block_size':
        if (v !== '512' && v !== '4096') throw new TargetAddressError(`bad block_size '${v}': 512 or 4096`, key);
        spec.blockSize = Number(v) as 512 | 4096;
        break;
      case 'image_dir':
        if (!v.startsWith('/')) throw new TargetAddressError(`bad image_dir '${v}': an absolute path`, key);
        if (v.split('/').includes('..') || path.posix.normalize(v).replace(/\/+$/, '') !== v.replace(/\/+$/, '')) {
          throw new TargetAddressError(
            `bad image_dir '${v}': a normalized path without '..' (inside the state directory)`,
            key,
          );
        }
        spec.imageDir = v;
        break;
      default:
        throw new TargetAddressError(
          `unknown parameter '${key}' in test-target address (name, luns, lun_size, block_size, image_dir)`,
          key,
        );
    }
  }
  return spec;
}

/** Canonical text of an address (what is persisted and shown). */
export function formatAnyAddress(a: AnyAddress): string {
  if (a.kind === 'srp') return formatTargetAddress(a.addr);
  const t = a.spec;
  return `${TEST_TARGET_PREFIX},name=${t.name},luns=${t.luns},lun_size=${t.lunSize},block_size=${t.blockSize}${t.imageDir ? `,image_dir=${t.imageDir}` : ''}`;
}

/** A stable target id when the operator gives none: test-<name>, or srp-<id_ext>-<dest or GID tail>. */
export function deriveTargetId(a: AnyAddress): string {
  if (a.kind === 'test') return `test-${a.spec.name}`;
  const ext = a.addr.idExt.toString(16).padStart(16, '0');
  if (a.addr.dest)
    return `srp-${ext}-${a.addr.dest.address.replace(/[^0-9A-Za-z]/g, '.')}-${a.addr.dest.port}`.slice(0, 64);
  return `srp-${ext}-${(a.addr.dgid ?? Buffer.alloc(16)).subarray(8).toString('hex')}`;
}
