/**
 * The stale-socket check the daemon makes before anything else (src/cli/daemon.ts), apart from the
 * API server (api.ts) so that the start does not load fastify to make it.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';

/**
 * Removes a socket file nobody listens on; throws if a daemon answers on it. Only ECONNREFUSED
 * proves the socket stale: a daemon too busy to accept (EAGAIN, a full backlog) is alive, and
 * any other error leaves the file alone.
 */
export async function removeStaleSocket(file: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = fs.lstatSync(file);
  } catch {
    return;
  }
  if (!st.isSocket()) throw new Error(`${file} exists and is not a socket; remove it or choose another path`);
  const probe = await new Promise<string | undefined>((resolve) => {
    const s = net.connect(file);
    s.once('connect', () => {
      s.destroy();
      resolve(undefined);
    });
    s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
  if (probe === undefined || probe === 'EAGAIN') throw new Error(`another srp-nbd daemon is listening on ${file}`);
  if (probe !== 'ECONNREFUSED')
    throw new Error(`cannot tell whether ${file} is in use (${probe}); remove it if no daemon runs`);
  fs.unlinkSync(file);
}
