import t from 'tap';
import * as c from '../src/nbd/nbd-constants.js';

t.test('magic numbers spell what the protocol says', async (t) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(c.NBDMAGIC);
  t.equal(b.toString('latin1'), 'NBDMAGIC');
  b.writeBigUInt64BE(c.IHAVEOPT);
  t.equal(b.toString('latin1'), 'IHAVEOPT');
});

t.test('names for logs', async (t) => {
  t.equal(c.nameOfNbdCmd(c.NBD_CMD_WRITE_ZEROES), 'NBD_CMD_WRITE_ZEROES');
  t.equal(c.nameOfNbdCmd(99), 'NBD_CMD_<99>');
  t.equal(c.nameOfNbdOpt(c.NBD_OPT_GO), 'NBD_OPT_GO');
  t.equal(c.nameOfNbdRep(c.NBD_REP_ERR_UNKNOWN), 'NBD_REP_ERR_UNKNOWN');
  t.equal(c.nameOfNbdRep(c.NBD_REP_ACK), 'NBD_REP_ACK');
});
