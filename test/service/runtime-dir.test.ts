import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { chmod, chown, mkdir, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'

import { StatusServer } from '../../src/service/index.js'
import { exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import { hasCode, exists } from '../support/index.js'

const run = promisify(execFile)
const OTHER = 'ipptunnel-other'

/** A second local account, the adversary (created once, idempotent). */
async function otherUser(): Promise<{ uid: number; gid: number }> {
  try {
    await run('id', ['-u', OTHER])
  } catch {
    await run('useradd', ['--system', '--no-create-home', OTHER]).catch(async (err: unknown) => {
      // A concurrent run may have created it meanwhile.
      await run('id', ['-u', OTHER]).catch(() => Promise.reject(err as Error))
    })
  }
  const uid = Number((await run('id', ['-u', OTHER])).stdout.trim())
  const gid = Number((await run('id', ['-g', OTHER])).stdout.trim())
  return { uid, gid }
}

/** Runs a command as the other user. */
async function asOther(command: string, ...args: string[]): Promise<void> {
  await run('runuser', ['-u', OTHER, '--', command, ...args])
}

const myUid = process.getuid!()

describe('directories another local user planted are refused; the ledger deletes nothing outside its output dirs', () => {
  let base: string
  let other: { uid: number; gid: number }
  let victim: string
  /** The environment of a service whose runtime dir falls back to `<tmp>/ipp-tunnel-<uid>`, with tmp = `tmp`. */
  const fallbackEnv = (tmp: string): NodeJS.ProcessEnv => ({
    TMPDIR: tmp,
    XDG_RUNTIME_DIR: undefined,
    IPP_TUNNEL_RUNTIME_DIR: undefined,
  })
  /** A directory to watch: `watch --dir` refuses one that does not exist. */
  async function watchedDir(name: string): Promise<string> {
    const dir = join(base, name)
    await mkdir(dir, { recursive: true, mode: 0o700 })
    return dir
  }
  /** A shared temp dir like /tmp: world-writable, sticky. */
  async function sharedTmp(name: string): Promise<string> {
    const dir = join(base, name)
    await mkdir(dir)
    await chmod(dir, 0o1777)
    return dir
  }

  before(async () => {
    other = await otherUser()
    base = await mkdtemp(join(tmpdir(), 'ippt-runtime-'))
    await chmod(base, 0o755)
    await mkdir(join(base, 'mine'), { mode: 0o700 })
    victim = join(base, 'mine', 'precious.txt')
    await writeFile(victim, 'my thesis\n')
  })
  after(() => rm(base, { recursive: true, force: true }))

  test('a runtime dir planted by another user with a ledger naming a victim: refused naming the dir, victim kept', async () => {
    const tmp = await sharedTmp('planted')
    const planted = join(tmp, `ipp-tunnel-${myUid}`)
    await asOther('mkdir', '-m', '0777', planted)
    await asOther('sh', '-c', `printf '%s' '${JSON.stringify([victim])}' > ${planted}/copies.json`)
    const result = await runCli(['watch', '--dir', await watchedDir('watched-a')], fallbackEnv(tmp))
    assert.equal(result.code, 2, result.stderr)
    assert.equal(
      result.stderr.trim(),
      `ipp-tunnel: ${planted}: runtime directory is owned by uid ${other.uid}, not you (${myUid}); remove it or set IPP_TUNNEL_RUNTIME_DIR`,
    )
    assert.equal(await readFile(victim, 'utf8'), 'my thesis\n')
    // status refuses to talk to a socket in that directory too.
    const status = await runCli(['status'], fallbackEnv(tmp))
    assert.equal(status.code, 2, status.stderr)
    assert.match(status.stderr, /runtime directory is owned by uid/)
  })

  test('a runtime dir planted as a symlink to a directory of the other user is refused', async () => {
    const tmp = await sharedTmp('symlinked')
    const theirs = join(tmp, 'theirs')
    await asOther('mkdir', '-m', '0700', theirs)
    await asOther('ln', '-s', theirs, join(tmp, `ipp-tunnel-${myUid}`))
    const result = await runCli(['watch', '--dir', await watchedDir('watched-b')], fallbackEnv(tmp))
    assert.equal(result.code, 2, result.stderr)
    assert.match(
      result.stderr,
      /runtime directory is a symbolic link; remove it or set IPP_TUNNEL_RUNTIME_DIR/,
    )
  })

  test('a runtime dir of our own with mode 0755 is refused with what to do', async () => {
    const runtime = join(base, 'run-0755')
    await mkdir(runtime, { mode: 0o755 })
    await chmod(runtime, 0o755)
    const result = await runCli(['watch', '--dir', await watchedDir('watched-c')], {
      IPP_TUNNEL_RUNTIME_DIR: runtime,
    })
    assert.equal(result.code, 2, result.stderr)
    assert.match(result.stderr, /has mode 0755, not 0700; chmod 700/)
  })

  test('the runtime dir is created 0700 when missing (fallback under TMPDIR)', async () => {
    const tmp = await sharedTmp('fresh')
    const watched = await watchedDir('watched-d')
    const service = spawnCli(
      ['watch', '--dir', watched, '--json', '--ssh', 'nobody@127.0.0.1'],
      fallbackEnv(tmp),
    )
    const events = new JsonLines(service)
    await events.next('watching')
    service.kill('SIGTERM')
    assert.equal((await exited(service)).code, 0)
    const { stdout } = await run('stat', ['-c', '%a %u %F', join(tmp, `ipp-tunnel-${myUid}`)])
    assert.equal(stdout.trim(), `700 ${myUid} directory`)
  })

  test('a ledger naming files outside the output dirs removes only our own leftover copies; stale temp files go', async () => {
    const runtime = join(base, 'run-ledger')
    await mkdir(runtime, { mode: 0o700 })
    const watched = join(base, 'watched-e')
    const outDir = `${watched}-tunnel`
    await mkdir(watched, { mode: 0o700 })
    await mkdir(outDir, { mode: 0o700 })
    const leftover = join(outDir, 'kernel-1.json')
    await writeFile(leftover, '{}', { mode: 0o600 })
    // A file in the output dir that is not ours: not removed even though the ledger names it.
    const foreign = join(outDir, 'kernel-2.json')
    await writeFile(foreign, '{}')
    await chown(foreign, other.uid, other.gid)
    const staleTemp = join(outDir, '.kernel-1.json.0123456789ab.tmp')
    await writeFile(staleTemp, '{"key": "secret"}', { mode: 0o600 })
    const foreignTemp = join(outDir, '.kernel-3.json.0123456789ab.tmp')
    await writeFile(foreignTemp, '')
    await chown(foreignTemp, other.uid, other.gid)
    const staleLedgerTemp = join(runtime, '.copies.json.abcdefabcdef.tmp')
    await writeFile(staleLedgerTemp, '[]')
    // each named with the device and inode of the file now there, as if the service had written it
    const record = async (path: string) => {
      const { dev, ino } = await stat(path)
      return { path, written: [{ dev, ino }] }
    }
    const ledger = await Promise.all([victim, leftover, foreign].map(record))
    await writeFile(join(runtime, 'copies.json'), JSON.stringify(ledger), { mode: 0o600 })

    const service = spawnCli(['watch', '--dir', watched, '--json', '--ssh', 'nobody@127.0.0.1'], {
      IPP_TUNNEL_RUNTIME_DIR: runtime,
    })
    const events = new JsonLines(service)
    await events.next('watching')
    service.kill('SIGTERM')
    assert.equal((await exited(service)).code, 0, events.stderr)

    assert.equal(await readFile(victim, 'utf8'), 'my thesis\n')
    assert.equal(await exists(leftover), false, 'our leftover copy is removed')
    assert.equal(await exists(foreign), true, "another user's file is kept")
    assert.equal(await exists(staleTemp), false, 'a stale temp file of ours is removed')
    assert.equal(await exists(foreignTemp), true, "another user's temp-like file is kept")
    assert.equal(await exists(staleLedgerTemp), false)
  })

  test('an existing output dir that is group/other-writable or not ours is refused (watch and up), nothing written', async () => {
    const runtime = join(base, 'run-out')
    const watched = await watchedDir('watched-f')
    const open = join(base, 'open-out')
    await mkdir(open)
    await chmod(open, 0o777)
    const watchOpen = await runCli(['watch', '--dir', watched, '--out-dir', open], {
      IPP_TUNNEL_RUNTIME_DIR: runtime,
    })
    assert.equal(watchOpen.code, 2, watchOpen.stderr)
    assert.match(
      watchOpen.stderr,
      new RegExp(`${open}: output directory is writable by group or others \\(mode 0777\\)`),
    )

    const theirs = join(base, 'their-out')
    await mkdir(theirs, { mode: 0o755 })
    await chown(theirs, other.uid, other.gid)
    const watchTheirs = await runCli(['watch', '--dir', watched, '--out-dir', theirs], {
      IPP_TUNNEL_RUNTIME_DIR: runtime,
    })
    assert.equal(watchTheirs.code, 2, watchTheirs.stderr)
    assert.match(
      watchTheirs.stderr,
      new RegExp(`${theirs}: output directory is owned by uid ${other.uid}, not you`),
    )

    const source = join(base, 'mine', 'kernel-up.json')
    await writeFile(
      source,
      JSON.stringify({
        shell_port: 1,
        iopub_port: 2,
        stdin_port: 3,
        control_port: 4,
        hb_port: 5,
        ip: '127.0.0.1',
        key: 'k',
        transport: 'tcp',
        signature_scheme: 'hmac-sha256',
      }),
      { mode: 0o600 },
    )
    const up = await runCli([
      'up',
      source,
      '--ssh',
      'nobody@127.0.0.1',
      '--out',
      join(theirs, 'kernel-up.json'),
    ])
    assert.equal(up.code, 2, up.stderr)
    assert.match(up.stderr, /output directory is owned by uid/)
    assert.equal(await exists(join(theirs, 'kernel-up.json')), false)
  })

  test('the status socket path holding something else than a socket of ours is refused, not removed', async () => {
    const runtime = join(base, 'run-socket')
    await mkdir(runtime, { mode: 0o700 })
    const path = join(runtime, 'service.sock')
    await symlink(victim, path)
    const report = { pid: 1, since: '', dirs: [], links: 0, files: [] }
    await assert.rejects(
      StatusServer.listen(path, () => report),
      hasCode('E_UNSAFE_PATH', path, 'a symbolic link'),
    )
    assert.equal(await readFile(victim, 'utf8'), 'my thesis\n')
  })
})
