/** The fixed-newstyle handshake, spoken by hand against the real server. */
import t from 'tap';
import { encodeInfoRequest } from '../src/nbd/codec.js';
import { MemoryBackend } from '../src/nbd/memory-backend.js';
import * as C from '../src/nbd/nbd-constants.js';
import { RawClient, startServer } from './helpers/nbd.js';

const srv = await startServer({
  disk: new MemoryBackend({ size: 1 << 20, minimumBlockSize: 512, description: 'the disk' }),
  ro: new MemoryBackend({ size: 4096, readOnly: true }),
});
t.teardown(() => srv.close());

t.test('greeting advertises fixed newstyle and no zeroes', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  t.equal(await c.greet(), C.NBD_FLAG_FIXED_NEWSTYLE | C.NBD_FLAG_NO_ZEROES);
  c.close();
});

t.test('unknown client flags end the connection', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  await c.greet(0x80000001);
  t.ok(await c.reader.closed());
});

t.test('NBD_OPT_LIST names every export, then ACK', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  await c.greet();
  c.option(C.NBD_OPT_LIST);
  const replies = await c.optionReplies();
  t.same(
    replies.map((r) => r.type),
    [C.NBD_REP_SERVER, C.NBD_REP_SERVER, C.NBD_REP_ACK],
  );
  t.same(
    replies.slice(0, 2).map((r) => r.data.toString('utf8', 4, 4 + r.data.readUInt32BE(0))),
    ['disk', 'ro'],
  );
  t.ok(replies.every((r) => r.option === C.NBD_OPT_LIST));
  c.option(C.NBD_OPT_LIST, Buffer.from('x'));
  t.equal((await c.optionReply()).type, C.NBD_REP_ERR_INVALID, 'LIST with data is invalid');
  c.close();
});

t.test('NBD_OPT_INFO: export, name, description, block size; connection stays in negotiation', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  await c.greet();
  c.option(C.NBD_OPT_INFO, encodeInfoRequest('disk', [C.NBD_INFO_NAME, C.NBD_INFO_DESCRIPTION, C.NBD_INFO_BLOCK_SIZE]));
  const replies = await c.optionReplies();
  const infos = new Map(replies.filter((r) => r.type === C.NBD_REP_INFO).map((r) => [r.data.readUInt16BE(0), r.data]));
  const exp = infos.get(C.NBD_INFO_EXPORT)!;
  t.equal(Number(exp.readBigUInt64BE(2)), 1 << 20);
  const flags = exp.readUInt16BE(10);
  for (const f of [
    C.NBD_FLAG_HAS_FLAGS,
    C.NBD_FLAG_SEND_FLUSH,
    C.NBD_FLAG_SEND_FUA,
    C.NBD_FLAG_SEND_TRIM,
    C.NBD_FLAG_SEND_WRITE_ZEROES,
    C.NBD_FLAG_CAN_MULTI_CONN,
  ]) {
    t.ok(flags & f, `flag 0x${f.toString(16)} set`);
  }
  t.notOk(flags & C.NBD_FLAG_READ_ONLY);
  t.equal(infos.get(C.NBD_INFO_NAME)!.toString('utf8', 2), 'disk');
  t.equal(infos.get(C.NBD_INFO_DESCRIPTION)!.toString('utf8', 2), 'the disk');
  const bs = infos.get(C.NBD_INFO_BLOCK_SIZE)!;
  t.same([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)], [512, 4096, C.NBD_MAX_REQUEST_SIZE]);
  t.equal(replies[replies.length - 1]!.type, C.NBD_REP_ACK);
  // still negotiating: another option is answered
  c.option(C.NBD_OPT_LIST);
  t.equal((await c.optionReplies()).pop()!.type, C.NBD_REP_ACK);
  c.close();
});

t.test('read-only export advertises READ_ONLY and no write features', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  const { flags } = await c.go('ro');
  t.ok(flags & C.NBD_FLAG_READ_ONLY);
  t.notOk(flags & (C.NBD_FLAG_SEND_TRIM | C.NBD_FLAG_SEND_WRITE_ZEROES | C.NBD_FLAG_SEND_FUA));
  c.close();
});

t.test('unknown export: NBD_REP_ERR_UNKNOWN for INFO and GO', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  await c.greet();
  for (const opt of [C.NBD_OPT_INFO, C.NBD_OPT_GO]) {
    c.option(opt, encodeInfoRequest('nope', []));
    const r = await c.optionReply();
    t.equal(r.type, C.NBD_REP_ERR_UNKNOWN);
    t.equal(r.option, opt);
    t.match(r.data.toString(), /nope/);
  }
  c.close();
});

t.test('malformed GO payload: NBD_REP_ERR_INVALID, negotiation continues', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  await c.greet();
  c.option(C.NBD_OPT_GO, Buffer.from([0, 0, 0, 9, 1]));
  t.equal((await c.optionReply()).type, C.NBD_REP_ERR_INVALID);
  const { size } = await (async () => {
    c.option(C.NBD_OPT_GO, encodeInfoRequest('', []));
    const rs = await c.optionReplies();
    t.equal(rs.pop()!.type, C.NBD_REP_ACK, 'default export reachable by empty name');
    return { size: Number(rs[0]!.data.readBigUInt64BE(2)) };
  })();
  t.equal(size, 1 << 20, 'default export is the first one');
  c.close();
});

t.test('unknown and unsupported options get NBD_REP_ERR_UNSUP', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  await c.greet();
  for (const opt of [C.NBD_OPT_STARTTLS, C.NBD_OPT_SET_META_CONTEXT, 0x7777]) {
    c.option(opt, Buffer.from('abc'));
    const r = await c.optionReply();
    t.equal(r.type, C.NBD_REP_ERR_UNSUP, C.nameOfNbdOpt(opt));
    t.equal(r.option, opt);
  }
  c.close();
});

t.test('NBD_OPT_STRUCTURED_REPLY: ACK once, INVALID twice or with data', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  await c.greet();
  c.option(C.NBD_OPT_STRUCTURED_REPLY, Buffer.from('x'));
  t.equal((await c.optionReply()).type, C.NBD_REP_ERR_INVALID);
  c.option(C.NBD_OPT_STRUCTURED_REPLY);
  t.equal((await c.optionReply()).type, C.NBD_REP_ACK);
  c.option(C.NBD_OPT_STRUCTURED_REPLY);
  t.equal((await c.optionReply()).type, C.NBD_REP_ERR_INVALID);
  c.close();
});

t.test('NBD_OPT_ABORT: ACK, then the server closes', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  await c.greet();
  c.option(C.NBD_OPT_ABORT);
  const r = await c.optionReply();
  t.equal(r.type, C.NBD_REP_ACK);
  t.ok(await c.reader.closed());
});

t.test('NBD_OPT_EXPORT_NAME with NO_ZEROES: size and flags only', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  await c.greet();
  c.option(C.NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
  const r = await c.reader.read(10);
  t.equal(Number(r.readBigUInt64BE(0)), 1 << 20);
  t.ok(r.readUInt16BE(8) & C.NBD_FLAG_HAS_FLAGS);
  c.request(C.NBD_CMD_READ, 1n, 0, 512);
  const reply = await c.simpleReply(512);
  t.equal(reply.error, 0, 'in transmission right after the reply');
  t.equal(c.reader.buffered, 0, 'no zero padding was sent');
  c.close();
});

t.test('NBD_OPT_EXPORT_NAME without NO_ZEROES: 124 zero bytes follow', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  await c.greet(C.NBD_FLAG_C_FIXED_NEWSTYLE);
  c.option(C.NBD_OPT_EXPORT_NAME, Buffer.from('disk'));
  const r = await c.reader.read(134);
  t.ok(r.subarray(10).every((b) => b === 0));
  c.close();
});

t.test('NBD_OPT_EXPORT_NAME of an unknown export closes the connection', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  await c.greet();
  c.option(C.NBD_OPT_EXPORT_NAME, Buffer.from('nope'));
  t.ok(await c.reader.closed());
});

t.test('wrong option magic closes the connection', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  await c.greet();
  c.write(Buffer.alloc(16, 0x41));
  t.ok(await c.reader.closed());
});

t.test('an option too large to accept: NBD_REP_ERR_TOO_BIG, then close', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  await c.greet();
  const h = Buffer.alloc(16);
  h.writeBigUInt64BE(C.IHAVEOPT, 0);
  h.writeUInt32BE(C.NBD_OPT_GO, 8);
  h.writeUInt32BE(0xffffffff, 12);
  c.write(h);
  t.equal((await c.optionReply()).type, C.NBD_REP_ERR_TOO_BIG);
  t.ok(await c.reader.closed());
});

t.test('an option split into single bytes is reassembled', async (t) => {
  const c = await RawClient.connect(srv.socketPath);
  await c.greet();
  const msg = Buffer.concat([
    Buffer.from('49484156454f5054', 'hex'),
    Buffer.from([0, 0, 0, C.NBD_OPT_LIST, 0, 0, 0, 0]),
  ]);
  for (const byte of msg) {
    c.write(Buffer.from([byte]));
    await new Promise((r) => setImmediate(r));
  }
  t.equal((await c.optionReplies()).pop()!.type, C.NBD_REP_ACK);
  c.close();
});
