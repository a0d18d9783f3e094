// Table-driven tests of ib_srp add_target string parsing (srp_parse_options semantics).
import t from 'tap';
import {
  TargetAddressError,
  formatTargetAddress,
  parseTargetAddress,
  srpPortIds,
  type SrpTargetAddress,
} from '../src/initiator/target-address.js';
import { SRP_REV10_IB_IO_CLASS, SRP_REV16A_IB_IO_CLASS } from '../src/initiator/srp-constants.js';

const IB =
  'id_ext=0002c90300a0b0c0,ioc_guid=0002c90300a0b0c1,dgid=fe800000000000000002c90300a0b0c1,pkey=ffff,service_id=0002c90300a0b0c0';
const CM = 'id_ext=0x1,ioc_guid=0x2,dest=192.0.2.1:5555';

t.test('valid strings', async (t) => {
  const cases: [string, string, Partial<SrpTargetAddress>][] = [
    [
      'IB CM, srp_daemon style',
      IB,
      {
        transport: 'ib-cm',
        idExt: 0x0002c90300a0b0c0n,
        iocGuid: 0x0002c90300a0b0c1n,
        dgid: Buffer.from('fe800000000000000002c90300a0b0c1', 'hex'),
        pkey: 0xffff,
        serviceId: 0x0002c90300a0b0c0n,
      },
    ],
    ['IB CM, limited-member P_Key with 0x', IB.replace('pkey=ffff', 'pkey=0x7fff'), { pkey: 0x7fff }],
    [
      'RDMA/CM IPv4',
      CM,
      { transport: 'rdma-cm', idExt: 1n, iocGuid: 2n, dest: { family: 4, address: '192.0.2.1', port: 5555 } },
    ],
    [
      'RDMA/CM IPv6',
      'id_ext=1,ioc_guid=2,dest=[2001:db8::1]:5555',
      { dest: { family: 6, address: '2001:db8::1', port: 5555 } },
    ],
    [
      'RDMA/CM IPv6 with scope',
      'id_ext=1,ioc_guid=2,dest=[fe80::1%eth0]:0',
      { dest: { family: 6, address: 'fe80::1', scopeId: 'eth0', port: 0 } },
    ],
    [
      'RDMA/CM with src (no port)',
      'id_ext=1,ioc_guid=2,src=192.0.2.2,dest=192.0.2.1:5555',
      { src: { family: 4, address: '192.0.2.2' } },
    ],
    ['dest wins over IB addressing when both given', `${IB},dest=192.0.2.1:1`, { transport: 'rdma-cm' }],
    [
      'every numeric option',
      `${CM},max_cmd_per_lun=32,max_sect=2048,queue_size=128,tl_retry_count=2,initiator_ext=00000000000000ab,ch_count=4,allow_ext_sg=1,sg_tablesize=256,comp_vector=3,cmd_sg_entries=255,target_can_queue=64,max_it_iu_size=8260,io_class=100`,
      {
        maxCmdPerLun: 32,
        maxSect: 2048,
        queueSize: 128,
        tlRetryCount: 2,
        initiatorExt: 0xabn,
        chCount: 4,
        allowExtSg: true,
        sgTablesize: 256,
        compVector: 3,
        cmdSgEntries: 255,
        targetCanQueue: 64,
        maxItIuSize: 8260,
        ioClass: 0x100,
      },
    ],
    ['match_int base 0: hex and octal', `${CM},queue_size=0x40,max_sect=010`, { queueSize: 64, maxSect: 8 }],
    [
      'newline separators and empty options, trailing newline',
      `id_ext=1\nioc_guid=2,,dest=192.0.2.1:1\n`,
      { transport: 'rdma-cm' },
    ],
    ['repeated option: last wins', `${CM},queue_size=4,queue_size=8`, { queueSize: 8 }],
    ['tl_retry_count upper bound 7', `${CM},tl_retry_count=7`, { tlRetryCount: 7 }],
    [
      '64-bit identifiers',
      'id_ext=ffffffffffffffff,ioc_guid=0,dest=10.0.0.1:65535',
      { idExt: (1n << 64n) - 1n, iocGuid: 0n },
    ],
  ];
  for (const [name, input, want] of cases) {
    const got = parseTargetAddress(input);
    t.match(got, want, name);
    // the canonical form parses back to the same thing
    t.same(parseTargetAddress(formatTargetAddress(got)), got, `${name}: format round trip`);
  }
});

t.test('malformed strings name the option', async (t) => {
  const cases: [string, string, RegExp][] = [
    [`${CM},bogus=1`, 'bogus', /unknown parameter 'bogus'/],
    [`${CM},Queue_size=1`, 'Queue_size', /unknown parameter/],
    [`${CM},queue_size`, 'queue_size', /missing value for queue_size/],
    [`${CM},queue_size=`, 'queue_size', /missing value/],
    [`${CM},queue_size=0`, 'queue_size', /bad queue_size parameter '0'/],
    [`${CM},queue_size=12abc`, 'queue_size', /expected an integer/],
    [`${CM},queue_size=99999999999`, 'queue_size', /out of range/],
    [`${CM},max_cmd_per_lun=-1`, 'max_cmd_per_lun', /bad max_cmd_per_lun/],
    [`${CM},max_sect=0`, 'max_sect', /bad max_sect/],
    [`${CM},tl_retry_count=1`, 'tl_retry_count', /between 2 and 7/],
    [`${CM},tl_retry_count=8`, 'tl_retry_count', /between 2 and 7/],
    [`${CM},cmd_sg_entries=256`, 'cmd_sg_entries', /1\.\.255/],
    [`${CM},sg_tablesize=4096`, 'sg_tablesize', /1\.\.2048/],
    [`${CM},ch_count=0`, 'ch_count', /bad ch_count/],
    [`${CM},comp_vector=-2`, 'comp_vector', /bad comp_vector/],
    [`${CM},io_class=1234`, 'io_class', /unknown IO class/],
    [`${CM},initiator_ext=xyz`, 'initiator_ext', /hexadecimal/],
    ['id_ext=12345678901234567,ioc_guid=2,dest=192.0.2.1:1', 'id_ext', /more than 64 bits/],
    ['id_ext=1,ioc_guid=0xg,dest=192.0.2.1:1', 'ioc_guid', /invalid ioc_guid/],
    [IB.replace(/dgid=[0-9a-f]+/, 'dgid=fe80'), 'dgid', /32 hex digits/],
    [IB.replace('pkey=ffff', 'pkey=10000'), 'pkey', /16-bit/],
    [IB.replace('pkey=ffff', 'pkey=zz'), 'pkey', /P_Key/],
    [IB.replace(/service_id=[0-9a-f]+/, 'service_id=-1'), 'service_id', /service_id/],
    ['id_ext=1,ioc_guid=2,dest=192.0.2.1', 'dest', /missing :port/],
    ['id_ext=1,ioc_guid=2,dest=192.0.2.1:70000', 'dest', /invalid port/],
    ['id_ext=1,ioc_guid=2,dest=192.0.2.300:1', 'dest', /IPv4:port or \[IPv6\]:port/],
    ['id_ext=1,ioc_guid=2,dest=2001:db8::1:5555', 'dest', /IPv4:port or \[IPv6\]:port/],
    ['id_ext=1,ioc_guid=2,dest=[2001:db8::zz]:1', 'dest', /bad dest/],
    ['id_ext=1,ioc_guid=2,src=host,dest=192.0.2.1:1', 'src', /bad src/],
    ['id_ext=1,ioc_guid=2', 'dest', /missing dest/],
    ['ioc_guid=2,dest=192.0.2.1:1', 'id_ext', /missing id_ext/],
    ['id_ext=1,ioc_guid=2,dgid=fe800000000000000002c90300a0b0c1,pkey=ffff', 'service_id', /missing service_id/],
    ['', 'id_ext', /missing id_ext, ioc_guid, dest/],
  ];
  for (const [input, option, msg] of cases) {
    let err: unknown;
    try {
      parseTargetAddress(input);
    } catch (e) {
      err = e;
    }
    t.ok(err instanceof TargetAddressError, `${input}: TargetAddressError`);
    t.equal((err as TargetAddressError).option, option, `${input}: names ${option}`);
    t.match((err as Error).message, msg, `${input}: message`);
  }
});

t.test('SRP port identifiers as ib_srp builds them (golden bytes, both io_class layouts)', async (t) => {
  // ib_srp srp_send_req(): r16a (SRP_REV16A_IB_IO_CLASS 0x0100, the default): ipi = initiator_ext ‖
  // port GUID, tpi = id_ext ‖ ioc_guid; rev. 10 (SRP_REV10_IB_IO_CLASS 0xff00): both halves swapped.
  t.equal(SRP_REV10_IB_IO_CLASS, 0xff00, 'include/scsi/srp.h SRP_REV10_IB_IO_CLASS');
  t.equal(SRP_REV16A_IB_IO_CLASS, 0x0100, 'include/scsi/srp.h SRP_REV16A_IB_IO_CLASS');
  const a = parseTargetAddress(`${IB},initiator_ext=00000000000000ab`);
  const ids = srpPortIds(a, 0x0002c90300112233n);
  t.equal(ids.targetPortId.toString('hex'), '0002c90300a0b0c0' + '0002c90300a0b0c1', 'r16a target: id_ext ‖ ioc_guid');
  t.equal(ids.initiatorPortId.toString('hex'), '00000000000000ab' + '0002c90300112233', 'r16a initiator');
  const r16 = srpPortIds(parseTargetAddress(`${IB},io_class=100,initiator_ext=ab`), 0x0002c90300112233n);
  t.same(r16, ids, 'io_class=100 is the default layout');
  const r10 = srpPortIds(parseTargetAddress(`${IB},io_class=ff00,initiator_ext=ab`), 0x0002c90300112233n);
  t.equal(r10.targetPortId.toString('hex'), '0002c90300a0b0c1' + '0002c90300a0b0c0', 'rev10 target: ioc_guid ‖ id_ext');
  t.equal(r10.initiatorPortId.toString('hex'), '0002c90300112233' + '00000000000000ab', 'rev10 initiator');
  const r10noExt = srpPortIds(parseTargetAddress(`${IB},io_class=ff00`), 0x5n);
  t.equal(r10noExt.initiatorPortId.toString('hex'), '0000000000000005' + '0000000000000000');
});
