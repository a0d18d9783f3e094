/**
 * Probe 3 of the security review: test-target images (image_dir). The review planted a symlink
 * (as uid nobody, in an image_dir anyone could write) and made the root daemon truncate and then
 * overwrite a root-owned file through NBD writes. Now images live only inside the state directory
 * (mode 0700), are opened with O_NOFOLLOW and created with O_EXCL, must be regular files owned by
 * the daemon's uid and of the LUN's size (never truncated), have one live user, and a refused open
 * leaks no fd.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import t from 'tap';
import { parseAnyAddress, type TestTargetSpec } from '../src/daemon/address.js';
import { createTestFabric } from '../src/daemon/test-target.js';

const MiB = 1 << 20;
const base = fs.mkdtempSync(path.join(os.tmpdir(), 'srp-nbd-images-'));
t.teardown(() => fs.rmSync(base, { recursive: true, force: true }));
const stateDir = path.join(base, 'state');
const outside = path.join(base, 'outside');
fs.mkdirSync(outside, { recursive: true });

const spec = (name: string, imageDir: string, lunSize = MiB): TestTargetSpec =>
  (
    parseAnyAddress(`test-target,name=${name},luns=1,lun_size=${lunSize},image_dir=${imageDir}`) as {
      spec: TestTargetSpec;
    }
  ).spec;
const fds = (): number => fs.readdirSync('/proc/self/fd').length;

t.test("address: image_dir with '..' or not normalized is refused", async (t) => {
  t.throws(() => parseAnyAddress(`test-target,image_dir=${stateDir}/../outside`), /without '\.\.'/);
  t.throws(() => parseAnyAddress(`test-target,image_dir=${stateDir}//images`), /normalized/);
  t.throws(() => parseAnyAddress('test-target,image_dir=rel'), /absolute/);
});

t.test('image_dir outside the state directory: refused, nothing created', async (t) => {
  const before = fds();
  await t.rejects(createTestFabric(spec('a', path.join(outside, 'imgs')), stateDir), /outside the state directory/);
  t.notOk(fs.existsSync(path.join(outside, 'imgs')), 'no directory created outside');
  // a directory inside the state directory that is a symlink to the outside
  fs.mkdirSync(stateDir, { recursive: true });
  fs.symlinkSync(outside, path.join(stateDir, 'link'));
  await t.rejects(
    createTestFabric(spec('a', path.join(stateDir, 'link')), stateDir),
    /resolves to .*outside the state directory/,
  );
  t.same(fs.readdirSync(outside), [], 'nothing written through the link');
  t.equal(fds(), before, 'no fd leaked');
});

t.test('a planted symlink as the image: refused, its target untouched', async (t) => {
  const victim = path.join(outside, 'victim');
  fs.writeFileSync(victim, 'precious');
  const dir = path.join(stateDir, 'planted');
  fs.mkdirSync(dir, { recursive: true });
  fs.symlinkSync(victim, path.join(dir, 'p-lun0.img'));
  const before = fds();
  await t.rejects(createTestFabric(spec('p', dir), stateDir), /is a symbolic link: refused/);
  t.equal(fs.readFileSync(victim, 'utf8'), 'precious', 'not truncated, not written');
  t.equal(fds(), before, 'no fd leaked');
});

t.test('not a regular file, or an image of another size: refused, never truncated', async (t) => {
  const dir = path.join(stateDir, 'imgs');
  fs.mkdirSync(path.join(dir, 'd-lun0.img'), { recursive: true });
  await t.rejects(createTestFabric(spec('d', dir), stateDir), /EISDIR|not a regular file/);
  fs.writeFileSync(path.join(dir, 's-lun0.img'), Buffer.alloc(4096, 7));
  const before = fds();
  await t.rejects(
    createTestFabric(spec('s', dir), stateDir),
    /holds 4096 bytes but the LUN has 1048576: refused \(attach with lun_size=4096/,
  );
  t.equal(fs.statSync(path.join(dir, 's-lun0.img')).size, 4096, 'the image keeps its size');
  t.equal(fds(), before, 'no fd leaked');
});

t.test('one live user per image; a new image is created 0600 and reused after close', async (t) => {
  const dir = path.join(stateDir, 'imgs');
  const a = await createTestFabric(spec('u', dir), stateDir);
  const img = path.join(fs.realpathSync(dir), 'u-lun0.img');
  t.equal(fs.statSync(img).size, MiB);
  t.equal(fs.statSync(img).mode & 0o777, 0o600);
  await t.rejects(createTestFabric(spec('u', dir), stateDir), /in use by another attached test target/);
  a.close();
  const b = await createTestFabric(spec('u', dir), stateDir);
  t.pass('open again after the first user closed it');
  b.close();
});

t.test('an image owned by another uid is refused', async (t) => {
  if (process.getuid?.() !== 0) return void t.plan(0, 'needs root to chown');
  const dir = path.join(stateDir, 'imgs');
  const f = path.join(dir, 'o-lun0.img');
  fs.writeFileSync(f, Buffer.alloc(MiB));
  fs.chownSync(f, 65534, 65534);
  await t.rejects(createTestFabric(spec('o', dir), stateDir), /belongs to uid 65534/);
});
