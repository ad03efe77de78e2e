import assert from 'node:assert/strict'
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'

import { RemoteProcesses, type RemoteAttachment } from '../../src/remote/index.js'
import { Link } from '../../src/ssh/index.js'
import { alive, createNetns, hasCode, hopOf, startSshd, type Netns, type Sshd } from '../support/index.js'

const PY = '/usr/bin/python3'

/** Waits until `check` holds, checking every 50 ms for at most `ms` (then fails naming `what`). */
async function until(check: () => Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

/** Reads `attached.stdout` until it holds `text`. */
function output(attached: RemoteAttachment, text: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let seen = ''
    attached.stdout.setEncoding('utf8')
    attached.stdout.on('data', (chunk: string) => {
      seen += chunk
      if (seen.includes(text)) resolve(seen)
    })
    attached.stdout.once('end', () => {
      if (!seen.includes(text)) reject(new Error(`output ended without ${JSON.stringify(text)}: ${seen}`))
    })
  })
}

// prints a line per tick on stdout, says so on stderr when interrupted, and runs a child in its own group
const TICKER = String.raw`
import os, signal, subprocess, sys, time
child = subprocess.Popen(['sleep', '300'])
print('child', child.pid, flush=True)
n = 0
while True:
    try:
        time.sleep(0.2)
        n += 1
        print('tick', n, flush=True)
    except KeyboardInterrupt:
        print('interrupted', flush=True)
        sys.stderr.write('interrupt seen\n')
        sys.stderr.flush()
`

describe('RemoteProcesses: processes on a real sshd in a network namespace, outliving the link', () => {
  let ns: Netns
  let sshd: Sshd
  let link: Link
  let root: string
  let procs: RemoteProcesses

  before(async () => {
    ns = await createNetns()
    sshd = await startSshd({ netns: ns })
    link = new Link({ hops: [hopOf(sshd)] }, { agent: false, backoff: { initialMs: 50, maxMs: 200 } })
    await link.connect()
    root = await mkdtemp(join(tmpdir(), 'ippt-remote-procs-'))
    procs = new RemoteProcesses(link, { dir: join(root, 'state'), python: PY })
  })
  after(async () => {
    await link.close()
    await sshd.close()
    await ns.close()
    await rm(root, { recursive: true, force: true })
  })

  test('start runs the process detached inside the namespace; attach streams its output; stop leaves nothing', async () => {
    const node = await procs.node()
    const started = await procs.start({ name: 'ticker', argv: [PY, '-c', TICKER] })
    assert.equal(started.state, 'running')
    assert.deepEqual(started.node, node)
    const pid = started.pid ?? assert.fail('no pid')
    const [inNs, here] = await Promise.all([stat(`/proc/${pid}/ns/net`), stat(`/run/netns/${ns.name}`)])
    assert.equal(inNs.ino, here.ino, 'the process runs in the server namespace')
    const dir = join(root, 'state')
    assert.equal((await stat(dir)).mode & 0o777, 0o700)
    assert.equal((await stat(join(dir, 'ticker'))).mode & 0o777, 0o700)

    const attached = await procs.attach('ticker')
    const seen = await output(attached, 'tick 2')
    const child = Number(/child (\d+)/u.exec(seen)?.[1])
    assert.ok(await alive(child))
    assert.equal((await procs.list()).map((p) => `${p.name} ${p.state}`).join(), 'ticker running')

    assert.equal(await procs.stop('ticker'), 'running')
    await attached.ended
    assert.equal(await alive(pid), false)
    assert.equal(await alive(child), false, 'the whole process group is stopped')
    assert.deepEqual(await readdir(dir), [])
    assert.equal((await procs.status('ticker')).state, 'none')
  })

  test('a process outlives a dropped link; attaching again with the offsets repeats no output', async () => {
    const { pid = 0 } = await procs.start({ name: 'survivor', argv: [PY, '-c', TICKER], persistSeconds: 600 })
    const first = await procs.attach('survivor')
    await output(first, 'tick 3')
    const reconnected = new Promise<void>((resolve) => link.once('reconnected', () => resolve()))
    await sshd.killConnections()
    await first.ended
    await reconnected
    assert.ok(await alive(pid), 'the process survived the drop')
    const offsets = first.offsets
    const again = await procs.attach('survivor', { offsets })
    const text = await output(again, 'tick')
    const seen = await readFile(join(root, 'state', 'survivor', 'out.log'), 'utf8')
    assert.ok(
      seen.slice(offsets.stdout).startsWith(text.slice(0, 5)),
      'resumes where the first attachment ended',
    )
    assert.equal(text.includes('child'), false)
    await procs.stop('survivor')
    await again.ended
  })

  test('interrupt reaches the process group as SIGINT, and the process keeps running', async () => {
    await procs.start({ name: 'intr', argv: [PY, '-c', TICKER] })
    const attached = await procs.attach('intr')
    await output(attached, 'tick 1')
    const stderr = new Promise<string>((resolve) => {
      attached.stderr.setEncoding('utf8')
      attached.stderr.on('data', (chunk: string) => chunk.includes('interrupt seen') && resolve(chunk))
    })
    await procs.interrupt('intr')
    await stderr
    assert.equal((await procs.status('intr')).state, 'running')
    await procs.stop('intr')
  })

  test('with no one attached the supervisor stops the process when its lease runs out, and removes its files', async () => {
    const { pid = 0 } = await procs.start({ name: 'leased', argv: ['sleep', '300'], persistSeconds: 1 })
    const attached = await procs.attach('leased', { heartbeatMs: 200 })
    // attached: the lease is renewed well past its length
    await sleep(1500)
    assert.ok(await alive(pid))
    await attached.detach()
    await until(async () => !(await alive(pid)), 'the lease to run out')
    await until(async () => (await readdir(join(root, 'state'))).length === 0, 'the files to go')
  })

  test('an exit is reported and kept until stop; a second start of a name in use is refused', async () => {
    await procs.start({ name: 'short', argv: ['sh', '-c', 'echo done; exit 3'] })
    await assert.rejects(procs.start({ name: 'short', argv: ['true'] }), hasCode('E_REMOTE_EXISTS'))
    const attached = await procs.attach('short')
    await output(attached, 'done')
    await attached.ended
    const status = await procs.status('short')
    assert.equal(status.state, 'exited')
    assert.deepEqual(status.exit, { code: 3 })
    assert.equal(await procs.stop('short'), 'exited')
    assert.deepEqual(await readdir(join(root, 'state')), [])
  })

  test('a killed supervisor leaves a stale entry; stop kills its process (same boot) and removes it', async () => {
    const { pid = 0 } = await procs.start({ name: 'orphan', argv: ['sleep', '300'] })
    const state = JSON.parse(await readFile(join(root, 'state', 'orphan', 'state.json'), 'utf8')) as {
      supervisor_pid: number
    }
    process.kill(state.supervisor_pid, 'SIGKILL')
    await until(async () => !(await alive(state.supervisor_pid)), 'the supervisor to die')
    assert.equal((await procs.status('orphan')).state, 'stale')
    assert.equal(await procs.stop('orphan'), 'stale')
    await until(async () => !(await alive(pid)), 'the orphan to be killed')
    assert.deepEqual(await readdir(join(root, 'state')), [])
  })

  test('refused: a program that does not exist, a name that is a path, a state dir others can read', async () => {
    await assert.rejects(procs.start({ name: 'nope', argv: ['/no/such/program'] }), hasCode('E_SPAWN'))
    assert.deepEqual(await readdir(join(root, 'state')), [])
    await assert.rejects(procs.start({ name: '../x', argv: ['true'] }), hasCode('E_USAGE'))
    const fresh = new RemoteProcesses(link, { dir: join(root, 'not-yet'), python: PY })
    assert.equal((await fresh.status('x')).state, 'none')
    assert.deepEqual(await fresh.list(), [])
    await assert.rejects(fresh.stop('x'), hasCode('E_REMOTE_GONE'))
    const open = join(root, 'open')
    await mkdir(open, { mode: 0o755 })
    await chmod(open, 0o755)
    const exposed = new RemoteProcesses(link, { dir: open, python: PY })
    await assert.rejects(exposed.start({ name: 'x', argv: ['true'] }), hasCode('E_UNSAFE_PATH', open))
    await assert.rejects(
      new RemoteProcesses(link, { dir: join(root, 'state'), python: '/no/python' }).list(),
      hasCode('E_REMOTE', '/no/python'),
    )
  })

  test('files reach the private directory 0600 (never a command line); {dir} names it; modules are probed', async () => {
    const secret = JSON.stringify({ key: 'not-on-any-command-line' })
    const started = await procs.start({
      name: 'files',
      argv: ['sh', '-c', 'cat "$1"; sleep 300', 'sh', '{dir}/kernel.json'],
      files: { 'kernel.json': secret },
    })
    const dir = started.dir ?? assert.fail('no dir')
    assert.equal((await stat(join(dir, 'kernel.json'))).mode & 0o777, 0o600)
    const attached = await procs.attach('files')
    assert.equal(await output(attached, '}'), secret)
    const cmdlines = await Promise.all(
      (await readdir('/proc'))
        .filter((e) => /^\d+$/u.test(e))
        .map((e) => readFile(`/proc/${e}/cmdline`, 'utf8').catch(() => '')),
    )
    assert.equal(cmdlines.filter((c) => c.includes('not-on-any-command-line')).length, 0)
    await procs.stop('files')
    await assert.rejects(
      procs.start({ name: 'bad', argv: ['true'], files: { '../x.json': '' } }),
      hasCode('E_USAGE'),
    )
    const found = await procs.modules(['json', 'no_such_module_here'])
    assert.equal(found.modules.no_such_module_here, null)
    assert.equal(typeof found.modules.json, 'string')
    assert.match(found.python, /^3\./u)
    // read from the installed metadata: the version an import gives, without importing (Debian's egg-info)
    const imported = await procs.modules(['ipyparallel'])
    const installed = await procs.modules(['ipyparallel', 'no_such_module_here'], { installed: true })
    assert.match(installed.modules.ipyparallel ?? '', /^\d+\.\d+/u)
    assert.equal(installed.modules.ipyparallel, imported.modules.ipyparallel)
    assert.equal(installed.modules.no_such_module_here, null)
    assert.equal(installed.ipythonDir, imported.ipythonDir)
    // a package whose import fails, with its metadata beside it: installed reads the metadata, never imports
    const site = join(root, 'site')
    await mkdir(join(site, 'brokenpkg'), { recursive: true })
    await mkdir(join(site, 'brokenpkg-1.2.3.dist-info'))
    await writeFile(join(site, 'brokenpkg', '__init__.py'), 'raise ImportError("imported")\n')
    await writeFile(
      join(site, 'brokenpkg-1.2.3.dist-info', 'METADATA'),
      'Metadata-Version: 2.1\nName: brokenpkg\nVersion: 1.2.3\n',
    )
    const onPath = new RemoteProcesses(link, {
      dir: join(root, 'state'),
      python: PY,
      setup: `export PYTHONPATH=${site}`,
    })
    assert.equal((await onPath.modules(['brokenpkg'], { installed: true })).modules.brokenpkg, '1.2.3')
    assert.equal((await onPath.modules(['brokenpkg'])).modules.brokenpkg, null)
  })

  test('setup lines run first in the same shell, and what they print does not disturb the answers', async () => {
    const withSetup = new RemoteProcesses(link, {
      dir: join(root, 'state'),
      python: '"$MYPY"',
      setup: 'echo noise from setup; MYPY=/usr/bin/python3; export GREETING=hello',
    })
    await assert.rejects(withSetup.list(), hasCode('E_REMOTE'), 'python is a word, not shell text')
    const viaEnv = new RemoteProcesses(link, {
      dir: join(root, 'state'),
      python: PY,
      setup: "echo noise; export GREETING='hello there'",
    })
    await viaEnv.start({ name: 'env', argv: ['sh', '-c', 'echo "$GREETING"'] })
    const attached = await viaEnv.attach('env')
    assert.match(await output(attached, 'hello there'), /^hello there\n$/u)
    await viaEnv.stop('env')
  })
})
