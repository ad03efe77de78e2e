import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import {
  exists,
  sshArgsOf,
  startEchoServer,
  startSshd,
  type EchoServer,
  type Sshd,
} from '../support/index.js'
import { stopProcess } from '../support/ipp.js'
import { kernelFileText } from '../support/kernel.js'

type Event = Record<string, unknown>
const on = (name: string, file: string) => (e: Event) => e.event === name && e.file === file

describe('a copy path belongs to one process at a time; the service keeps its copies and lets go of nothing else', () => {
  let sshd: Sshd
  let echo: EchoServer
  let base: string
  let ssh: string[]
  let text: string
  const running: ChildProcess[] = []

  before(async () => {
    sshd = await startSshd()
    echo = await startEchoServer()
    base = await mkdtemp(join(tmpdir(), 'ippt-claims-'))
    ssh = ['--ssh', `root@${sshd.host}:${sshd.port}`, ...sshArgsOf(sshd)]
    const port = echo.port
    text = kernelFileText(port)
  })
  after(async () => {
    for (const child of running) await stopProcess(child, 'SIGKILL')
    await rm(base, { recursive: true, force: true })
    await echo.close()
    await sshd.close()
  })

  /** A watched directory with one kernel file, its copy path, and a runtime directory of its own. */
  async function setup(name: string) {
    const dir = join(base, name)
    await mkdir(dir, { mode: 0o700 })
    const source = join(dir, 'kernel-1.json')
    await writeFile(source, text, { mode: 0o600 })
    return {
      dir,
      source,
      // a kernel file's copy goes beside it, named as jupyter_client names a tunnelled copy
      copy: join(dir, 'kernel-1-ssh.json'),
      env: { IPP_TUNNEL_RUNTIME_DIR: join(base, `${name}-run`) },
    }
  }

  function start(args: string[], env: NodeJS.ProcessEnv) {
    const child = spawnCli([...args, '--json', ...ssh], env)
    running.push(child)
    return { child, events: new JsonLines(child) }
  }

  test('after a SIGKILLed service, a file the user put at the old copy path survives the next start', async () => {
    const { dir, source, copy, env } = await setup('crash')
    const first = start(['watch', '--dir', dir], env)
    await first.events.next(on('ready', source))
    first.child.kill('SIGKILL')
    await exited(first.child)
    await rm(source)
    // the user's own file, at the path of the old copy
    await rm(copy)
    await writeFile(copy, 'my notes\n', { mode: 0o600 })
    const second = start(['watch', '--dir', dir], env)
    await second.events.next('watching')
    assert.equal(await readFile(copy, 'utf8'), 'my notes\n')
    second.child.kill('SIGTERM')
    assert.equal((await exited(second.child)).code, 0, second.events.stderr)
    assert.equal(await readFile(copy, 'utf8'), 'my notes\n')
  })

  test('a copy the crashed service wrote is removed by the next start', async () => {
    const { dir, source, copy, env } = await setup('leftover')
    const first = start(['watch', '--dir', dir], env)
    await first.events.next(on('ready', source))
    first.child.kill('SIGKILL')
    await exited(first.child)
    await rm(source)
    assert.equal(await exists(copy), true)
    const second = start(['watch', '--dir', dir], env)
    await second.events.next('watching')
    assert.equal(await exists(copy), false)
    second.child.kill('SIGTERM')
    await exited(second.child)
  })

  test('up on a file whose copy watch holds: E_COPY_CONFLICT naming watch and --out, exit 2, the copy untouched', async () => {
    const { dir, source, copy, env } = await setup('up-vs-watch')
    const watch = start(['watch', '--dir', dir], env)
    await watch.events.next(on('ready', source))
    const before = await readFile(copy, 'utf8')
    const { ino } = await stat(copy)
    const up = await runCli(['up', source, ...ssh], env)
    assert.equal(up.code, 2, up.stderr)
    assert.equal(
      up.stderr.trim(),
      `ipp-tunnel: ${copy}: this copy is held by ipp-tunnel watch (pid ${String(watch.child.pid)}); give --out to write the copy elsewhere, or stop that process`,
    )
    const exec = await runCli(['exec', source, '--out', copy, ...ssh, '--', 'true'], env)
    assert.equal(exec.code, 2, exec.stderr)
    assert.match(exec.stderr, /held by ipp-tunnel watch/)
    assert.equal(await readFile(copy, 'utf8'), before)
    assert.equal((await stat(copy)).ino, ino, 'the very file watch wrote')
    const status = await runCli(['status', '--json'], env)
    const report = JSON.parse(status.stdout) as { files: { copy: string; state: string }[] }
    assert.deepEqual(
      report.files.map((f) => [f.state, f.copy]),
      [['ready', 'written']],
    )
    watch.child.kill('SIGTERM')
    await exited(watch.child)
  })

  test('watch on a file whose copy up holds: one conflict error naming up; the copy is written once up stops', async () => {
    const { dir, source, copy, env } = await setup('watch-vs-up')
    const up = start(['up', source], env)
    await up.events.next('ready')
    const upCopy = await readFile(copy, 'utf8')
    const watch = start(['watch', '--dir', dir], env)
    const error = await watch.events.next(on('error', source))
    assert.equal(error.code, 'E_COPY_CONFLICT')
    assert.match(
      String(error.message),
      new RegExp(`held by ipp-tunnel up \\(pid ${String(up.child.pid)}\\); give --out-dir`),
    )
    assert.equal(await readFile(copy, 'utf8'), upCopy)
    up.child.kill('SIGTERM')
    assert.equal((await exited(up.child)).code, 0, up.events.stderr)
    // the source never changed: the service takes the path as soon as up lets go
    const ready = await watch.events.next(on('ready', source))
    assert.equal(ready.out, copy)
    assert.notEqual(await readFile(copy, 'utf8'), upCopy, 'its own ports, not up’s')
    assert.equal(watch.events.events.filter(on('error', source)).length, 1, 'the conflict is said once')
    watch.child.kill('SIGTERM')
    await exited(watch.child)
  })

  test('a copy removed behind the service is written again; one replaced is left alone until it goes', async () => {
    const { dir, source, copy, env } = await setup('behind')
    const watch = start(['watch', '--dir', dir], env)
    await watch.events.next(on('ready', source))
    const written = await readFile(copy, 'utf8')
    await rm(copy)
    const back = await watch.events.next(on('warning', source))
    assert.equal(back.message, `${copy}: the loopback copy was removed; written again`)
    assert.equal(await readFile(copy, 'utf8'), written)

    await writeFile(join(dir, 'mine'), 'mine\n', { mode: 0o600 })
    await rename(join(dir, 'mine'), copy)
    const replaced = await watch.events.next(on('error', source))
    assert.equal(replaced.code, 'E_COPY_CONFLICT')
    assert.match(String(replaced.message), /was replaced by another file, which is left alone/)
    const status = await runCli(['status'], env)
    assert.match(status.stdout, /copy {2}\(replaced by another file: /)
    assert.equal(await readFile(copy, 'utf8'), 'mine\n')
    await rename(copy, join(base, 'moved-away'))
    const again = await watch.events.waitNew(on('warning', source))
    assert.match(String(again.message), /written again/)
    assert.equal(await readFile(copy, 'utf8'), written)
    watch.child.kill('SIGTERM')
    await exited(watch.child)
    assert.equal(await exists(copy), false)
  })

  test('two files of one service for one copy: the second is taken when the first goes, unchanged', async () => {
    const { dir, source, env } = await setup('twins-a')
    const other = join(base, 'twins-b')
    await mkdir(other, { mode: 0o700 })
    const outDir = join(base, 'twins-out')
    const twin = join(other, 'kernel-1.json')
    await writeFile(twin, text, { mode: 0o600 })
    const both = start(['watch', '--dir', dir, '--dir', other, '--out-dir', outDir], env)
    const first = await both.events.next((e) => e.event === 'ready')
    const second = first.file === source ? twin : source
    const conflict = await both.events.next(on('error', second))
    assert.equal(conflict.code, 'E_COPY_CONFLICT')
    await rm(String(first.file))
    await both.events.next(on('closed', String(first.file)))
    const ready = await both.events.next(on('ready', second))
    assert.equal(ready.out, join(outDir, 'kernel-1.json'))
    assert.equal(await exists(join(outDir, 'kernel-1.json')), true)
    both.child.kill('SIGTERM')
    await exited(both.child)
  })
})
