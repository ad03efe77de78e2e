import assert from 'node:assert/strict'
import type { ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { exited, JsonLines, spawnCli } from '../support/cli.js'
import { sshArgsOf, startCluster, type Cluster } from '../support/index.js'

type Event = Record<string, unknown>
const forFile = (name: string, file: string) => (e: Event) => e.event === name && e.file === file

describe('an engine file with "ssh": "" (as ipcontroller writes it) takes the server from its client file', () => {
  let cluster: Cluster
  let dropDir: string
  let runtimeDir: string
  let watch: ChildProcess
  let events: JsonLines

  before(async () => {
    cluster = await startCluster({ engines: 0 })
    dropDir = await mkdtemp(join(tmpdir(), 'ippt-sibling-drop-'))
    runtimeDir = await mkdtemp(join(tmpdir(), 'ippt-sibling-run-'))
    // no --ssh: the server must come from the files themselves
    watch = spawnCli(
      [
        'watch',
        '--json',
        '--dir',
        cluster.controller.securityDir,
        '--dir',
        dropDir,
        ...sshArgsOf(cluster.sshd),
      ],
      { IPP_TUNNEL_RUNTIME_DIR: runtimeDir },
    )
    events = new JsonLines(watch)
  })
  after(async () => {
    watch.kill('SIGINT')
    await exited(watch)
    await cluster.close()
    for (const d of [dropDir, `${dropDir}-tunnel`, runtimeDir]) await rm(d, { recursive: true, force: true })
  })

  test('watch: both files of a real controller get ready; the engine’s ready says where ssh came from', async () => {
    const { clientFile, engineFile } = cluster.controller
    const engine = JSON.parse(await readFile(engineFile, 'utf8')) as { ssh: string }
    assert.equal(engine.ssh, '', 'ipcontroller 7.1 leaves the engine file without a server')
    const clientReady = await events.next(forFile('ready', clientFile))
    assert.equal(clientReady.sshFrom, undefined)
    const engineReady = await events.next(forFile('ready', engineFile))
    assert.equal(engineReady.sshFrom, clientFile)
    assert.equal(
      events.events.some((e) => e.event === 'error' && e.file === engineFile),
      false,
      JSON.stringify(events.events),
    )
  })

  test('watch: an engine file that arrives before its client file is taken once the client file is there', async () => {
    const engineText = await readFile(cluster.controller.engineFile, 'utf8')
    const clientText = await readFile(cluster.controller.clientFile, 'utf8')
    const engine = join(dropDir, 'ipcontroller-late-engine.json')
    const client = join(dropDir, 'ipcontroller-late-client.json')
    await writeFile(engine, engineText, { mode: 0o600 })
    const error = await events.next(forFile('error', engine))
    assert.equal(error.code, 'E_DESTINATION')
    assert.match(String(error.message), /ipcontroller-late-client\.json names none either/)
    await writeFile(client, clientText, { mode: 0o600 })
    await events.next(forFile('ready', client))
    const ready = await events.next(forFile('ready', engine))
    assert.equal(ready.sshFrom, client)

    // the client file names the server another way: the engine file follows it
    const parsed = JSON.parse(clientText) as { ssh: string }
    const moved = { ...parsed, ssh: `ssh://${parsed.ssh}` }
    const changed = events.waitNew(forFile('changed', engine))
    await writeFile(client, JSON.stringify(moved, null, 2), { mode: 0o600 })
    await changed
  })

  test('up on the engine file: ready names the client file it took the server from', async (t) => {
    const outDir = await mkdtemp(join(tmpdir(), 'ippt-sibling-up-'))
    t.after(() => rm(outDir, { recursive: true, force: true }))
    const out = join(outDir, 'ipcontroller-engine.json')
    const child = spawnCli([
      'up',
      cluster.controller.engineFile,
      '--json',
      '--out',
      out,
      ...sshArgsOf(cluster.sshd),
    ])
    const lines = new JsonLines(child)
    const ready = await lines.next('ready')
    assert.equal(ready.sshFrom, cluster.controller.clientFile)
    const copy = JSON.parse(await readFile(out, 'utf8')) as { ssh: string; registration: number }
    assert.equal(copy.ssh, '')
    child.kill('SIGINT')
    assert.equal((await exited(child)).code, 0, lines.stderr)
  })
})
