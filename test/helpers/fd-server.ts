/**
 * Child-process fixture: serves a 1 MiB RAM export in transmission-only mode
 * on inherited fd 3, one end of a socketpair made by the parent's spawn(),
 * which is how the daemon serves the kernel's end after netlink CONNECT.
 */
import { MemoryBackend } from '../../src/nbd/memory-backend.js';
import { NbdServer } from '../../src/nbd/server.js';
import { socketFromFd } from '../../src/nbd/socket-input.js';
import { silentLogger } from '../../src/util/log.js';

const server = new NbdServer({ logger: silentLogger() });
server.addExport('k', new MemoryBackend({ size: 1 << 20 }));
const conn = server.serveTransmission((sink) => socketFromFd(3, sink), 'k');
await conn.closed;
process.stdout.write(`closed ${conn.stats.requests} requests\n`);
