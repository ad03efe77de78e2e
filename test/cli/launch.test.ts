import assert from 'node:assert/strict'
import { chmod, chown, copyFile, lstat, mkdir, mkdtemp, readdir, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'

import { REPO_ROOT, runCli } from '../support/cli.js'

const BUNDLE = join(REPO_ROOT, 'dist/src/cli/ipp-tunnel.cjs')
const NOBODY = 65534

async function cacheFiles(dir: string): Promise<string[]> {
  return (await readdir(dir)).filter((f) => f.endsWith('.v8cache')).map((f) => join(dir, f))
}

test('the one-file build runs with a code cache that is private, and one another user could write is not trusted', async (t) => {
  // npm run build (the test command) makes the one-file build; tsc alone does not, and then there is no cache
  const built = await stat(BUNDLE).catch(() => undefined)
  assert.ok(built, `${BUNDLE} is missing: the test command builds it with npm run build`)
  const home = await mkdtemp(join(tmpdir(), 'ippt-launch-'))
  t.after(() => rm(home, { recursive: true, force: true }))
  const env = { XDG_CACHE_HOME: join(home, 'cache') }
  const dir = join(home, 'cache', 'ipp-tunnel')
  const help = (): Promise<string> =>
    runCli(['status', '--help'], env).then((r) => {
      assert.equal(r.code, 0, r.stderr)
      return r.stdout
    })

  const expected = await help()
  assert.match(expected, /ipp-tunnel status/)
  assert.equal((await lstat(dir)).mode & 0o777, 0o700)
  const [first, ...more] = await cacheFiles(dir)
  assert.ok(first !== undefined && more.length === 0, 'one cache file')
  assert.equal((await lstat(first)).mode & 0o777, 0o600)

  // another user's copy of a good cache is ignored and replaced by one of ours
  const foreign = `${first}.copy`
  await copyFile(first, foreign)
  await rm(first)
  await copyFile(foreign, first)
  await rm(foreign)
  await chown(first, NOBODY, NOBODY)
  assert.equal(await help(), expected)
  assert.equal((await lstat(first)).uid, process.getuid?.())

  // a cache home where mkdir answers ENOENT under an existing directory: no cache, no hang (mkdirp loops there)
  const proc = await runCli(['status', '--help'], { XDG_CACHE_HOME: '/proc' })
  assert.equal(proc.code, 0, proc.stderr)
  assert.equal(proc.stdout, expected)

  // a cache directory others may write into is neither read nor written
  await rm(dir, { recursive: true })
  await mkdir(dir)
  await chmod(dir, 0o777)
  assert.equal(await help(), expected)
  assert.deepEqual(await cacheFiles(dir), [])
})
