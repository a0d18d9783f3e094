/**
 * Golden bytes for every NBD handshake message, request and reply the
 * server encodes or decodes. Expected bytes are written out from the NBD
 * protocol document's layouts, not produced by the code under test.
 */
import t from 'tap';
import {
  NbdDecodeError,
  decodeInfoRequest,
  decodeOptionHeader,
  decodeRequest,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoRequest,
  encodeInfoString,
  encodeOption,
  encodeOptionReply,
  encodeRepServer,
  encodeRequest,
  encodeStructuredError,
  nbdErrno,
  readU64,
  writeSimpleReply,
  writeStructuredReply,
} from '../src/nbd/codec.js';
import * as C from '../src/nbd/nbd-constants.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

t.test('server greeting: NBDMAGIC IHAVEOPT flags', async (t) => {
  t.same(
    encodeGreeting(C.NBD_FLAG_FIXED_NEWSTYLE | C.NBD_FLAG_NO_ZEROES),
    hex('4e42444d41474943 49484156454f5054 0003'),
  );
});

t.test('client option and option header', async (t) => {
  const golden = hex('49484156454f5054 00000007 00000008 0000000000000000');
  t.same(encodeOption(C.NBD_OPT_GO, Buffer.alloc(8)), golden);
  t.same(decodeOptionHeader(golden), { magic: C.IHAVEOPT, option: 7, length: 8 });
  t.throws(() => decodeOptionHeader(golden.subarray(0, 15)), NbdDecodeError);
});

t.test('option replies', async (t) => {
  t.same(encodeOptionReply(C.NBD_OPT_LIST, C.NBD_REP_ACK), hex('0003e889045565a9 00000003 00000001 00000000'));
  t.same(
    encodeOptionReply(C.NBD_OPT_GO, C.NBD_REP_ERR_UNKNOWN, Buffer.from('x')),
    hex('0003e889045565a9 00000007 80000006 00000001 78'),
  );
  t.same(encodeOptionReply(9, C.NBD_REP_ERR_UNSUP), hex('0003e889045565a9 00000009 80000001 00000000'));
});

t.test('NBD_REP_SERVER payload', async (t) => {
  t.same(encodeRepServer('disk'), hex('00000004 6469736b'));
  t.same(encodeRepServer('a', 'b'), hex('00000001 61 62'));
});

t.test('NBD_OPT_EXPORT_NAME reply with and without zeroes', async (t) => {
  t.same(encodeExportNameReply(0x100000, 0x016d, true), hex('0000000000100000 016d'));
  const padded = encodeExportNameReply(512, 1, false);
  t.equal(padded.length, 8 + 2 + 124);
  t.same(padded.subarray(0, 10), hex('0000000000000200 0001'));
  t.ok(padded.subarray(10).every((b) => b === 0));
});

t.test('NBD_REP_INFO payloads', async (t) => {
  t.same(encodeInfoExport(2 ** 40 + 5, 0x0003), hex('0000 0000010000000005 0003'));
  t.same(encodeInfoString(C.NBD_INFO_NAME, 'ab'), hex('0001 6162'));
  t.same(encodeInfoString(C.NBD_INFO_DESCRIPTION, 'z'), hex('0002 7a'));
  t.same(encodeInfoBlockSize(512, 4096, 33554432), hex('0003 00000200 00001000 02000000'));
});

t.test('NBD_OPT_INFO / NBD_OPT_GO request payload', async (t) => {
  const golden = hex('00000003 616263 0002 0001 0003');
  t.same(encodeInfoRequest('abc', [1, 3]), golden);
  t.same(decodeInfoRequest(golden), { name: 'abc', requests: [1, 3] });
  t.same(decodeInfoRequest(hex('00000000 0000')), { name: '', requests: [] });
  t.throws(() => decodeInfoRequest(hex('0000')), NbdDecodeError, 'too short');
  t.throws(() => decodeInfoRequest(hex('00000009 616263 0000')), NbdDecodeError, 'name too long');
  t.throws(() => decodeInfoRequest(hex('00000001 61 0002 0001')), NbdDecodeError, 'count mismatch');
  t.throws(() => decodeInfoRequest(hex('00000001 61 0000 00')), NbdDecodeError, 'trailing byte');
});

t.test('request header', async (t) => {
  const golden = hex('25609513 0001 0001 0102030405060708 0000000000001000 00001000');
  t.same(encodeRequest(C.NBD_CMD_WRITE, C.NBD_CMD_FLAG_FUA, 0x0102030405060708n, 4096, 4096), golden);
  const r = decodeRequest(golden, 0, { magic: 0, flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, length: 0 });
  t.same(r, {
    magic: C.NBD_REQUEST_MAGIC,
    flags: 1,
    type: 1,
    cookieHi: 0x01020304,
    cookieLo: 0x05060708,
    offset: 4096,
    length: 4096,
  });
  t.equal(golden.length, C.NBD_REQUEST_SIZE);
  // decoding at an offset inside a larger chunk
  const chunk = Buffer.concat([hex('ffff'), golden]);
  t.equal(decodeRequest(chunk, 2, { ...r }).offset, 4096);
});

t.test('u64 offsets beyond 2^53 are never mistaken for small ones', async (t) => {
  t.equal(readU64(hex('001fffffffffffff'), 0), Number.MAX_SAFE_INTEGER);
  t.equal(readU64(hex('0020000000000000'), 0), Infinity);
  t.equal(readU64(hex('ffffffffffffffff'), 0), Infinity);
});

t.test('simple reply', async (t) => {
  const b = Buffer.alloc(16);
  writeSimpleReply(b, 0, C.NBD_EINVAL, 0xdeadbeef, 0x00000001);
  t.same(b, hex('67446698 00000016 deadbeef 00000001'));
  t.equal(b.length, C.NBD_SIMPLE_REPLY_SIZE);
});

t.test('errno names map to the NBD error values (protocol "Error values", Linux numbers)', async (t) => {
  const golden: [string | undefined, number][] = [
    ['EPERM', 1],
    ['EACCES', 1],
    ['EROFS', 1],
    ['EIO', 5],
    ['ENOMEM', 12],
    ['EINVAL', 22],
    ['ENOSPC', 28],
    ['EFBIG', 28],
    ['EDQUOT', 28],
    ['EOVERFLOW', 75],
    ['ESHUTDOWN', 108],
    // Not NBD_ENOTSUP (95): that one answers NBD_CMD_FLAG_FAST_ZERO only, which was not set.
    ['ENOTSUP', 22],
    ['EOPNOTSUPP', 22],
    // Anything else is EIO.
    ['ENOENT', 5],
    ['disconnected', 5],
    [undefined, 5],
  ];
  for (const [code, want] of golden) t.equal(nbdErrno(code, 0), want, `${code}`);
  t.equal(nbdErrno('ENOTSUP', C.NBD_CMD_FLAG_FAST_ZERO), 95, 'ENOTSUP with FAST_ZERO set');
  t.equal(nbdErrno('EOPNOTSUPP', C.NBD_CMD_FLAG_FAST_ZERO | C.NBD_CMD_FLAG_FUA), 95, 'EOPNOTSUPP with FAST_ZERO set');
  t.equal(nbdErrno('ENOTSUP', C.NBD_CMD_FLAG_FUA | C.NBD_CMD_FLAG_NO_HOLE), 22, 'other flags do not matter');
});

t.test('structured reply chunks', async (t) => {
  const b = Buffer.alloc(20);
  writeStructuredReply(b, 0, C.NBD_REPLY_FLAG_DONE, C.NBD_REPLY_TYPE_OFFSET_DATA, 1, 2, 8 + 512);
  t.same(b, hex('668e33ef 0001 0001 00000001 00000002 00000208'));
  t.same(
    encodeStructuredError(C.NBD_REPLY_FLAG_DONE, 0, 7, C.NBD_EIO, 'bad'),
    hex('668e33ef 0001 8001 00000000 00000007 00000009 00000005 0003 626164'),
  );
});
