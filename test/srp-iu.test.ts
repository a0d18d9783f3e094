// Golden-byte tests of the SRP IU codec. Expected bytes are written out by hand from the T10 SRP
// r16a layouts (as mirrored by Linux include/scsi/srp.h), never produced by the encoder.
import t from 'tap';
import {
  SrpDecodeError,
  cmdLength,
  decodeAerReq,
  decodeAerRsp,
  decodeCmd,
  decodeCredReq,
  decodeCredRsp,
  decodeILogout,
  decodeIu,
  decodeLoginRej,
  decodeLoginReq,
  decodeLoginReqRdma,
  decodeLoginRsp,
  decodeRsp,
  decodeTLogout,
  decodeTskMgmt,
  encodeAerReq,
  encodeAerRsp,
  encodeCmd,
  encodeCredReq,
  encodeCredRsp,
  encodeILogout,
  encodeLoginRej,
  encodeLoginReq,
  encodeLoginReqRdma,
  encodeLoginRsp,
  encodeRsp,
  encodeTLogout,
  encodeTskMgmt,
  type SrpCmd,
} from '../src/initiator/srp-iu.js';
import {
  SRP_AER_REQ_LEN,
  SRP_AER_RSP_LEN,
  SRP_CMD_LEN,
  SRP_CRED_REQ_LEN,
  SRP_CRED_RSP_LEN,
  SRP_I_LOGOUT_LEN,
  SRP_IMM_DATA_OFFSET,
  SRP_LOGIN_REJ_LEN,
  SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE,
  SRP_LOGIN_REQ_LEN,
  SRP_LOGIN_REQ_RDMA_LEN,
  SRP_LOGIN_RSP_LEN,
  SRP_RSP_LEN,
  SRP_TSK_MGMT_LEN,
  SRP_T_LOGOUT_LEN,
  nameOfSrpLoginRejReason,
  nameOfSrpOpcode,
  nameOfSrpTskMgmtFunc,
  SRP_TSK_LUN_RESET,
} from '../src/initiator/srp-constants.js';

/** Hex string with arbitrary whitespace -> Buffer; `zeros(n)` for runs of reserved bytes. */
function h(...parts: string[]): Buffer {
  const s = parts.join(' ').replace(/\s+/g, '');
  if (s.length % 2) throw new Error('odd hex');
  return Buffer.from(s, 'hex');
}
const z = (n: number) => '00'.repeat(n);
const seq = (from: number, n: number) =>
  Array.from({ length: n }, (_, i) => (from + i).toString(16).padStart(2, '0')).join('');

const TAG = 0x0102030405060708n;
const TAG_HEX = '01 02 03 04 05 06 07 08';
const initiatorPortId = h(seq(0x00, 16));
const targetPortId = h(seq(0x10, 16));

t.test('named fixed sizes match the spec', async (t) => {
  t.equal(SRP_LOGIN_REQ_LEN, 64);
  t.equal(SRP_LOGIN_REQ_RDMA_LEN, 56);
  t.equal(SRP_LOGIN_RSP_LEN, 52);
  t.equal(SRP_LOGIN_REJ_LEN, 32);
  t.equal(SRP_I_LOGOUT_LEN, 16);
  t.equal(SRP_T_LOGOUT_LEN, 16);
  t.equal(SRP_TSK_MGMT_LEN, 48);
  t.equal(SRP_CMD_LEN, 48);
  t.equal(SRP_RSP_LEN, 36);
  t.equal(SRP_CRED_REQ_LEN, 16);
  t.equal(SRP_CRED_RSP_LEN, 16);
  t.equal(SRP_AER_REQ_LEN, 36);
  t.equal(SRP_AER_RSP_LEN, 16);
  t.equal(SRP_IMM_DATA_OFFSET, 68);
  t.equal(nameOfSrpOpcode(0xc1), 'SRP_RSP');
  t.equal(nameOfSrpOpcode(0x77), 'SRP_UNKNOWN_OPCODE(0x77)');
  t.equal(nameOfSrpLoginRejReason(0x00010002), 'SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE');
  t.equal(nameOfSrpTskMgmtFunc(SRP_TSK_LUN_RESET), 'SRP_TSK_LUN_RESET');
});

const loginReq = {
  tag: TAG,
  reqItIuLen: 8276,
  reqBufFmt: 0x0006,
  reqFlags: 0x81,
  immDataOffset: 68,
  initiatorPortId,
  targetPortId,
};

t.test('SRP_LOGIN_REQ (64 bytes)', async (t) => {
  const golden = h(
    '00',
    z(7),
    TAG_HEX,
    '00 00 20 54',
    z(4),
    '00 06',
    '81',
    '00',
    '00 44',
    z(2),
    seq(0x00, 16),
    seq(0x10, 16),
  );
  t.equal(golden.length, 64);
  t.same(encodeLoginReq(loginReq), golden);
  t.same(decodeLoginReq(golden), loginReq);
  t.same(decodeIu(golden), { type: 'SRP_LOGIN_REQ', ...loginReq });
});

t.test('srp_login_req_rdma (56 bytes, opcode at byte 11)', async (t) => {
  const golden = h(TAG_HEX, '00 06', '81', '00', '00 00 20 54', seq(0x00, 16), seq(0x10, 16), '00 44', z(6));
  t.equal(golden.length, 56);
  t.same(encodeLoginReqRdma(loginReq), golden);
  t.same(decodeLoginReqRdma(golden), loginReq);
  const bad = Buffer.from(golden);
  bad[11] = 0xc1;
  t.throws(() => decodeLoginReqRdma(bad), SrpDecodeError);
  t.throws(() => decodeLoginReqRdma(golden.subarray(0, 55)), SrpDecodeError);
});

t.test('SRP_LOGIN_RSP (52 bytes)', async (t) => {
  const m = { reqLimDelta: 128, tag: TAG, maxItIuLen: 8276, maxTiIuLen: 1024, bufFmt: 6, rspFlags: 0x81 };
  const golden = h('c0', z(3), '00 00 00 80', TAG_HEX, '00 00 20 54', '00 00 04 00', '00 06', '81', z(25));
  t.equal(golden.length, 52);
  t.same(encodeLoginRsp(m), golden);
  t.same(decodeLoginRsp(golden), m);
  // IB CM REP private data is padded: trailing bytes are accepted
  t.same(decodeLoginRsp(Buffer.concat([golden, Buffer.alloc(144)])), m);
  t.throws(() => decodeLoginRsp(golden.subarray(0, 51)), SrpDecodeError);
});

t.test('SRP_LOGIN_REJ (32 bytes)', async (t) => {
  const m = { reason: SRP_LOGIN_REJ_REQ_IT_IU_LENGTH_TOO_LARGE, tag: 0n, bufFmt: 6 };
  const golden = h('c2', z(3), '00 01 00 02', z(8), z(8), '00 06', z(6));
  t.equal(golden.length, 32);
  t.same(encodeLoginRej(m), golden);
  t.same(decodeLoginRej(golden), m);
});

t.test('SRP_I_LOGOUT and SRP_T_LOGOUT (16 bytes)', async (t) => {
  const il = h('03', z(7), TAG_HEX);
  t.same(encodeILogout({ tag: TAG }), il);
  t.same(decodeILogout(il), { tag: TAG });
  const tl = h('80', '01', z(2), '00 00 00 01', TAG_HEX);
  t.same(encodeTLogout({ solNot: 1, reason: 1, tag: TAG }), tl);
  t.same(decodeTLogout(tl), { solNot: 1, reason: 1, tag: TAG });
});

t.test('SRP_TSK_MGMT (48 bytes)', async (t) => {
  const m = { solNot: 0, tag: 0x1112131415161718n, lun: 0x0001000000000000n, func: 0x01, taskTag: 0x2122232425262728n };
  const golden = h(
    '01',
    '00',
    z(6),
    '11 12 13 14 15 16 17 18',
    z(4),
    '00 01 00 00 00 00 00 00',
    z(2),
    '01',
    '00',
    '21 22 23 24 25 26 27 28',
    z(8),
  );
  t.equal(golden.length, 48);
  t.same(encodeTskMgmt(m), golden);
  t.same(decodeTskMgmt(golden), m);
});

t.test('SRP_CMD with a direct data-in descriptor (READ(16))', async (t) => {
  const cdb = h('88 00 00 00 00 00 00 00 00 10 00 00 00 08 00 00');
  const m: SrpCmd = {
    solNot: 0,
    tag: TAG,
    lun: 0n,
    taskAttr: 0,
    cdb,
    dataOut: { format: 'none' },
    dataIn: { format: 'direct', buf: { va: 0x1000n, key: 0x1234, len: 4096 } },
  };
  const golden = h(
    '02',
    '00',
    z(3),
    '01',
    '00',
    '00',
    TAG_HEX,
    z(4),
    z(8),
    '00',
    '00',
    '00',
    '00',
    '88 00 00 00 00 00 00 00 00 10 00 00 00 08 00 00',
    '00 00 00 00 00 00 10 00',
    '00 00 12 34',
    '00 00 10 00',
  );
  t.equal(golden.length, 64);
  t.same(encodeCmd(m), golden);
  t.same(decodeCmd(golden), m);
});

t.test('SRP_CMD with an indirect data-out descriptor, two entries in the IU', async (t) => {
  const cdb = h('8a 08 00 00 00 00 00 00 00 00 00 00 00 18 00 00');
  const m: SrpCmd = {
    solNot: 0,
    tag: 5n,
    lun: 0x0002000000000000n,
    taskAttr: 2,
    cdb,
    dataOut: {
      format: 'indirect',
      table: { va: 0x2000n, key: 0x55, len: 32 },
      totalLen: 0x3000,
      descs: [
        { va: 0xa000n, key: 0x55, len: 0x1000 },
        { va: 0xb000n, key: 0x55, len: 0x2000 },
      ],
    },
    dataIn: { format: 'none' },
  };
  const golden = h(
    '02',
    '00',
    z(3),
    '20',
    '02',
    '00',
    '00 00 00 00 00 00 00 05',
    z(4),
    '00 02 00 00 00 00 00 00',
    '00',
    '02',
    '00',
    '00',
    '8a 08 00 00 00 00 00 00 00 00 00 00 00 18 00 00',
    // table descriptor, total length
    '00 00 00 00 00 00 20 00',
    '00 00 00 55',
    '00 00 00 20',
    '00 00 30 00',
    '00 00 00 00 00 00 a0 00',
    '00 00 00 55',
    '00 00 10 00',
    '00 00 00 00 00 00 b0 00',
    '00 00 00 55',
    '00 00 20 00',
  );
  t.equal(golden.length, 100);
  t.same(encodeCmd(m), golden);
  t.same(decodeCmd(golden), m);
});

t.test('SRP_CMD with SRP-2 immediate data and a 32-byte CDB', async (t) => {
  const cdb = h(seq(0xa0, 32));
  const data = h('de ad be ef');
  const m: SrpCmd = {
    solNot: 0,
    tag: 7n,
    lun: 0n,
    taskAttr: 0,
    cdb,
    dataOut: { format: 'imm', data },
    dataIn: { format: 'none' },
  };
  const golden = h(
    '02',
    '00',
    z(3),
    '30',
    '00',
    '00',
    '00 00 00 00 00 00 00 07',
    z(4),
    z(8),
    '00',
    '00',
    '00',
    '10',
    seq(0xa0, 32),
    '00 00 00 04', // srp_imm_buf at 64
    'de ad be ef', // at imm_data_offset 68
  );
  t.equal(golden.length, 72);
  t.equal(cmdLength(m, { immDataOffset: 68 }), 72);
  t.same(encodeCmd(m, { immDataOffset: 68 }), golden);
  t.same(decodeCmd(golden, 0, undefined, { immDataOffset: 68 }), m);
  // a 16-byte CDB leaves a reserved gap between the imm descriptor and the data (ib_srp layout)
  const short = encodeCmd({ ...m, cdb: cdb.subarray(0, 16) }, { immDataOffset: 68 });
  t.same(short.subarray(48, 72), h('00 00 00 04', z(16), 'de ad be ef'));
  t.throws(() => decodeCmd(golden), SrpDecodeError, 'immediate data without a negotiated offset');
  t.throws(() => decodeCmd(golden.subarray(0, 71), 0, undefined, { immDataOffset: 68 }), SrpDecodeError);
});

t.test('SRP_CMD decode rejects descriptors beyond the IU', async (t) => {
  const golden = h('02', z(4), '01', z(2), z(8), z(4), z(8), z(4), z(16), z(15));
  t.throws(() => decodeCmd(golden), SrpDecodeError);
  const badFmt = h('02', z(4), '0f', z(2), z(40));
  t.throws(() => decodeCmd(badFmt), /unsupported data-in descriptor format 15/);
  const addCdbTooLong = h('02', z(30), '40', z(16));
  t.throws(() => decodeCmd(addCdbTooLong), /additional CDB/);
});

t.test('SRP_RSP with sense data and a data-in underflow', async (t) => {
  const sense = h('70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 00 00 00');
  const golden = h(
    'c1',
    '00',
    z(2),
    '00 00 00 01',
    TAG_HEX,
    z(2),
    '22',
    '02',
    '00 00 00 00',
    '00 00 02 00',
    '00 00 00 12',
    '00 00 00 00',
    '70 00 05 00 00 00 00 0a 00 00 00 00 24 00 00 00 00 00',
  );
  t.equal(golden.length, 54);
  const m = { solNot: 0, reqLimDelta: 1, tag: TAG, flags: 0x20, status: 2, dataOutResCnt: 0, dataInResCnt: 512, sense };
  t.same(encodeRsp(m), golden);
  t.same(decodeRsp(golden), { ...m, flags: 0x22 });
  const lying = Buffer.from(golden);
  lying.writeUInt32BE(19, 28);
  t.throws(() => decodeRsp(lying), /exceed IU/);
});

t.test('SRP_RSP for task management: response data, negative credit delta', async (t) => {
  const golden = h(
    'c1',
    '00',
    z(2),
    'ff ff ff ff',
    TAG_HEX,
    z(2),
    '01',
    '00',
    z(8),
    '00 00 00 00',
    '00 00 00 04',
    '00 00 00 05',
  );
  const m = {
    solNot: 0,
    reqLimDelta: -1,
    tag: TAG,
    flags: 0,
    status: 0,
    dataOutResCnt: 0,
    dataInResCnt: 0,
    responseData: h('00 00 00 05'),
  };
  t.same(encodeRsp(m), golden);
  t.same(decodeRsp(golden), { ...m, flags: 1 });
});

t.test('SRP_CRED_REQ/RSP and SRP_AER_REQ/RSP', async (t) => {
  const cr = h('81', '00', z(2), '00 00 00 05', TAG_HEX);
  t.same(encodeCredReq({ solNot: 0, reqLimDelta: 5, tag: TAG }), cr);
  t.same(decodeCredReq(cr), { solNot: 0, reqLimDelta: 5, tag: TAG });
  const crsp = h('41', z(7), TAG_HEX);
  t.same(encodeCredRsp({ tag: TAG }), crsp);
  t.same(decodeCredRsp(crsp), { tag: TAG });
  const aer = h(
    '82',
    '00',
    z(2),
    '00 00 00 00',
    TAG_HEX,
    z(4),
    '00 03 00 00 00 00 00 00',
    '00 00 00 04',
    z(4),
    '70 00 06 00',
  );
  const am = { solNot: 0, reqLimDelta: 0, tag: TAG, lun: 0x0003000000000000n, sense: h('70 00 06 00') };
  t.same(encodeAerReq(am), aer);
  t.same(decodeAerReq(aer), am);
  t.throws(() => decodeAerReq(aer.subarray(0, 39)), SrpDecodeError);
  const arsp = h('42', z(7), TAG_HEX);
  t.same(encodeAerRsp({ tag: TAG }), arsp);
  t.same(decodeAerRsp(arsp), { tag: TAG });
});

t.test('decoders honour offset and length; encoders write in place', async (t) => {
  const crsp = h('41', z(7), TAG_HEX);
  const big = Buffer.concat([h('ff ff ff'), crsp, h('ee')]);
  t.same(decodeIu(big, 3, 16), { type: 'SRP_CRED_RSP', tag: TAG });
  t.throws(() => decodeIu(big, 3, 15), SrpDecodeError, 'length bounds the view');
  t.throws(() => decodeIu(big, 3, 100), SrpDecodeError, 'length beyond the buffer');
  t.throws(() => decodeIu(big, 40), SrpDecodeError);
  const dst = Buffer.alloc(20, 0xaa);
  encodeCredRsp({ tag: TAG }, dst, 2);
  t.same(dst, Buffer.concat([h('aa aa'), crsp, h('aa aa')]));
  t.throws(() => decodeIu(h('77', z(40))), /unknown IU type SRP_UNKNOWN_OPCODE\(0x77\)/);
  t.throws(() => decodeRsp(crsp), /expected SRP_RSP, got SRP_CRED_RSP/);
});
