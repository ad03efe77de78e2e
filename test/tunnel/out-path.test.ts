import assert from 'node:assert/strict'
import { chown, mkdir, mkdtemp, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { exited, JsonLines, runCli, spawnCli } from '../support/cli.js'
import {
  sshArgsOf,
  startEchoServer,
  startSshd,
  type EchoServer,
  type Sshd,
  exists,
} from '../support/index.js'
import { kernelFileText } from '../support/kernel.js'

describe('the loopback copy never lands on its source and is removed only when it is the file written', () => {
  let sshd: Sshd
  let echo: EchoServer
  let base: string
  /** The watched/source directory. */
  let dir: string
  let source: string
  let sourceText: string
  let ssh: string[]

  before(async () => {
    sshd = await startSshd()
    echo = await startEchoServer()
    base = await mkdtemp(join(tmpdir(), 'ippt-out-path-'))
    dir = join(base, 'src')
    await mkdir(dir, { mode: 0o700 })
    source = join(dir, 'kernel-1.json')
    const port = echo.port
    sourceText = kernelFileText(port)
    await writeFile(source, sourceText, { mode: 0o600 })
    ssh = ['--ssh', `root@${sshd.host}:${sshd.port}`, ...sshArgsOf(sshd)]
  })
  after(async () => {
    await rm(base, { recursive: true, force: true })
    await echo.close()
    await sshd.close()
  })

  const sourceIntact = async () => {
    assert.equal(await readFile(source, 'utf8'), sourceText)
    assert.deepEqual(await readdir(dir), ['kernel-1.json'], 'nothing else written beside the source')
  }

  test('up D/x.json --out D/x.json: exit 2 before writing anything, source intact', async () => {
    const result = await runCli(['up', source, '--out', source, ...ssh])
    assert.equal(result.code, 2, result.stderr)
    assert.equal(
      result.stderr.trim(),
      `ipp-tunnel: ${source} is the connection file itself (${source}); the loopback copy would overwrite it: choose another --out`,
    )
    await sourceIntact()
  })

  test('up through a symlinked --out directory that is the source directory: exit 2, source intact', async () => {
    const link = join(base, 'link-up')
    await symlink(dir, link)
    const result = await runCli(['up', source, '--out', join(link, 'kernel-1.json'), ...ssh])
    assert.equal(result.code, 2, result.stderr)
    assert.match(result.stderr, /is the connection file itself/)
    await sourceIntact()
  })

  test('exec --out naming the source: exit 2, the command never runs, source intact', async () => {
    const marker = join(base, 'ran')
    const result = await runCli(['exec', source, '--out', source, ...ssh, '--', 'touch', marker])
    assert.equal(result.code, 2, result.stderr)
    assert.equal(await exists(marker), false)
    await sourceIntact()
  })

  test('watch --dir D --out-dir L with L a symlink to D: exit 2, source intact', async () => {
    const link = join(base, 'link-watch')
    await symlink(dir, link)
    const result = await runCli(['watch', '--dir', dir, '--out-dir', link, ...ssh], {
      IPP_TUNNEL_RUNTIME_DIR: join(base, 'run'),
    })
    assert.equal(result.code, 2, result.stderr)
    assert.match(
      result.stderr,
      new RegExp(`output directory ${link} is a watched directory \\(${dir}, through a symlink\\)`),
    )
    await sourceIntact()
  })

  test("a SIGKILLed up's copy and stale temp file are removed by the next up for the same output", async () => {
    const outDir = join(base, 'out-kill')
    const out = join(outDir, 'kernel-1.json')
    const first = spawnCli(['up', source, '--out', out, '--json', ...ssh])
    await new JsonLines(first).next('ready')
    first.kill('SIGKILL')
    await exited(first)
    assert.equal(await exists(out), true, 'the killed up left its copy')
    const staleTemp = join(outDir, '.kernel-1.json.00112233aabb.tmp')
    await writeFile(staleTemp, sourceText, { mode: 0o600 })

    // The next up removes both before it even connects: here its server refuses, and nothing stale is left.
    const refused = await runCli([
      'up',
      source,
      '--out',
      out,
      '--ssh',
      `root@127.0.0.1:1`,
      ...sshArgsOf(sshd),
    ])
    assert.notEqual(refused.code, 0)
    assert.deepEqual(await readdir(outDir), [])

    // A copy left by a kill is replaced by a working up, which removes its own copy on SIGTERM.
    const second = spawnCli(['up', source, '--out', out, '--json', ...ssh])
    const events = new JsonLines(second)
    await events.next('ready')
    assert.match(await readFile(out, 'utf8'), /"shell_port"/)
    second.kill('SIGTERM')
    assert.equal((await exited(second)).code, 0, events.stderr)
    assert.deepEqual(await readdir(outDir), [])
  })

  test('a file put at the copy path while up runs is not the one written: it survives up stopping', async () => {
    const outDir = join(base, 'out-swap')
    const out = join(outDir, 'kernel-1.json')
    const child = spawnCli(['up', source, '--out', out, '--json', ...ssh])
    const events = new JsonLines(child)
    await events.next('ready')
    const mine = join(outDir, 'notes.txt')
    await writeFile(mine, 'not a copy\n')
    await rename(mine, out)
    child.kill('SIGTERM')
    assert.equal((await exited(child)).code, 0, events.stderr)
    assert.equal(await readFile(out, 'utf8'), 'not a copy\n')
  })

  test('an existing file at --out owned by another user is refused, not replaced', async () => {
    const outDir = join(base, 'out-foreign')
    await mkdir(outDir, { mode: 0o700 })
    const out = join(outDir, 'kernel-1.json')
    await writeFile(out, 'theirs\n')
    await chown(out, 65534, 65534)
    const result = await runCli(['up', source, '--out', out, ...ssh])
    assert.equal(result.code, 2, result.stderr)
    assert.match(result.stderr, new RegExp(`${out}: is owned by uid 65534, not you`))
    assert.equal(await readFile(out, 'utf8'), 'theirs\n')
  })
})
