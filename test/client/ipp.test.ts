import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'

import { IppClient, KernelClient } from '../../src/client/index.js'
import type { ConnectOptions } from '../../src/sockets/index.js'
import { openClientWhenReady } from '../engines/helpers.js'
import { runCli } from '../support/cli.js'
import type { Controller, Engines } from '../support/ipp.js'
import { hasCode, sshArgsOf, sshOptionsOf, startCluster, type Cluster, type Sshd } from '../support/index.js'

describe('IppClient and the ping/px commands against real ipcontroller + 2 ipengines through sshd', () => {
  let cluster: Cluster
  let sshd: Sshd
  let ctl: Controller
  let engines: Engines
  let options: ConnectOptions
  let sshArgs: string[]

  before(async () => {
    cluster = await startCluster({ engines: 2 })
    ;({ sshd, controller: ctl, engines } = cluster)
    options = sshOptionsOf(sshd)
    sshArgs = [...sshArgsOf(sshd)]
    await using client = await openClientWhenReady(ctl.clientFile, options)
    const deadline = Date.now() + 30_000
    while ((await client.engines()).ids.length < 2) {
      if (Date.now() > deadline) throw new Error(`engines did not register:\n${engines.log()}`)
      await sleep(200)
    }
  })
  after(() => cluster.close())

  test('engines() and queueStatus()', async () => {
    await using client = await IppClient.open(ctl.clientFile, options)
    const { ids, identities } = await client.engines()
    assert.deepEqual(ids, [0, 1])
    assert.match(identities[0] ?? '', /^[0-9a-f]{8}-[0-9a-f]{24}$/)
    assert.notEqual(identities[0], identities[1])
    const queues = await client.queueStatus()
    assert.equal(queues.status, 'ok')
    assert.ok('0' in queues && '1' in queues)
    assert.equal(typeof queues.unassigned, 'number')
  })

  test('execute on all engines: one result per engine with its own stdout, stderr and expressions', async () => {
    await using client = await IppClient.open(ctl.clientFile, options)
    const results = await client.execute(
      'import os, sys\npid = os.getpid()\nprint("pid", pid)\nprint("warn", file=sys.stderr)',
      { userExpressions: { pid: 'pid', twice: 'pid * 2' } },
    )
    assert.deepEqual(
      results.map((r) => r.engineId),
      [0, 1],
    )
    const pids = new Set<string>()
    for (const r of results) {
      assert.equal(r.status, 'ok')
      const pid = r.expressions.pid
      assert.ok(pid?.status === 'ok' && pid.text !== undefined)
      pids.add(pid.text)
      assert.equal(r.stdout, `pid ${pid.text}\n`, "each engine's own output, matched by parent msg_id")
      assert.equal(r.stderr, 'warn\n')
      const twice = r.expressions.twice
      assert.ok(twice?.status === 'ok')
      assert.equal(twice.text, String(Number(pid.text) * 2))
    }
    assert.equal(pids.size, 2, 'two different engine processes')
  })

  test('chosen targets only; unknown engine ids are refused', async () => {
    await using client = await IppClient.open(ctl.clientFile, options)
    const results = await client.execute('z = 1', { targets: [1] })
    assert.deepEqual(
      results.map((r) => r.engineId),
      [1],
    )
    await assert.rejects(client.execute('z = 1', { targets: [7] }), hasCode('E_USAGE', 'no engine 7'))
  })

  test('a kernel client refuses an ipyparallel file', async () => {
    await assert.rejects(KernelClient.open(ctl.clientFile, options), hasCode('E_CONNFILE_KIND'))
  })

  test('CLI ping: kind, engine ids and round trip, as one JSON object or a human line', async () => {
    const json = await runCli(['ping', ctl.clientFile, ...sshArgs, '--json'])
    assert.equal(json.code, 0, json.stderr)
    const lines = json.stdout.trim().split('\n')
    assert.equal(lines.length, 1, 'one JSON object on stdout')
    const pong = JSON.parse(lines[0] ?? '') as Record<string, unknown>
    assert.equal(pong.kind, 'ipp-client')
    assert.deepEqual(pong.engines, [0, 1])
    assert.equal(pong.tunnelled, true)
    assert.equal(typeof pong.roundTripMs, 'number')
    const human = await runCli(['ping', ctl.clientFile, ...sshArgs])
    assert.equal(human.code, 0, human.stderr)
    assert.match(human.stdout, /ipyparallel controller: 2 engines \[0, 1\], round trip [\d.]+ ms/)
  })

  test('CLI ping with a wrong key: no reply, and the message says the key or the controller may not match', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'ippt-wrong-key-'))
    try {
      const info = JSON.parse(await readFile(ctl.clientFile, 'utf8')) as Record<string, unknown>
      const file = join(dir, 'ipcontroller-client.json')
      await writeFile(file, JSON.stringify({ ...info, key: 'not-the-key' }), { mode: 0o600 })
      const result = await runCli(['ping', file, ...sshArgs, '--timeout', '2'])
      assert.equal(result.code, 1, result.stderr)
      assert.match(result.stderr, /no reply .*: the key or the controller may not match this file\n$/)
    } finally {
      await rm(dir, { recursive: true, force: true })
    }
  })

  test('CLI px: per-engine status, output and --expr; exit 1 when the code raised on an engine', async () => {
    const ok = await runCli([
      'px',
      ctl.clientFile,
      'n = 21\nprint("hello")',
      '--expr',
      'n',
      '--expr',
      'n * 2',
      ...sshArgs,
      '--json',
    ])
    assert.equal(ok.code, 0, ok.stderr)
    const out = JSON.parse(ok.stdout) as { kind: string; results: Record<string, unknown>[] }
    assert.equal(out.kind, 'ipp-client')
    assert.deepEqual(
      out.results.map((r) => [r.engine, r.status, r.stdout, r.expressions]),
      [
        [0, 'ok', 'hello\n', { n: '21', 'n * 2': '42' }],
        [1, 'ok', 'hello\n', { n: '21', 'n * 2': '42' }],
      ],
    )

    const code =
      'import os\nif os.getpid() % 2 == 0 or True:\n    pass\n{0: None}[int(os.environ.get("X", "1"))]'
    const failed = await runCli(['px', ctl.clientFile, code, '--targets', '1', ...sshArgs, '--json'])
    assert.equal(failed.code, 1, 'the code raised → exit 1')
    const bad = JSON.parse(failed.stdout) as {
      results: { engine: number; status: string; error: Record<string, unknown> }[]
    }
    assert.equal(bad.results.length, 1)
    const [first] = bad.results
    assert.ok(first)
    assert.equal(first.engine, 1)
    assert.equal(first.status, 'error')
    assert.equal(first.error.ename, 'KeyError')
    assert.ok(Array.isArray(first.error.traceback))

    const human = await runCli(['px', ctl.clientFile, 'print("hi")', '--targets', '0', ...sshArgs])
    assert.equal(human.code, 0, human.stderr)
    assert.match(human.stdout, /^\[engine 0\] ok\n {2}stdout:\n {4}hi$/m)

    const usage = await runCli(['px', ctl.clientFile, '1', '--targets', 'zero', ...sshArgs])
    assert.equal(usage.code, 2)
    assert.match(usage.stderr, /--targets/)
  })

  // Engine 1 sleeps far past the timeout, engine 0 answers at once.
  const SLOW_ON_1 = [
    'import time',
    'eid = get_ipython().kernel.engine_id',
    'print("engine", eid, "started")',
    'if eid == 1:',
    '    time.sleep(600)',
    'print("engine", eid, "done")',
  ].join('\n')

  test('CLI px --timeout: the fast engine is printed, the slow one named, exit 124; interrupt() frees it', async () => {
    const late = await runCli(['px', ctl.clientFile, SLOW_ON_1, '--timeout', '3', ...sshArgs])
    assert.equal(late.code, 124, late.stderr)
    assert.match(late.stdout, /^\[engine 0\] ok\n {2}stdout:\n {4}engine 0 started\n {4}engine 0 done$/m)
    assert.match(late.stdout, /^\[engine 1\] timeout: no reply within 3 s; it may still be running/m)
    assert.doesNotMatch(late.stdout, /engine 1 started/, 'no reply came from engine 1')

    await using client = await IppClient.open(ctl.clientFile, options)
    const queues = (await client.queueStatus([1])) as unknown as Record<string, { queue: number }>
    assert.equal(queues['1']?.queue, 1, 'the code still runs on engine 1')
    assert.deepEqual(await client.interrupt([1], { timeoutMs: 30_000 }), { 1: { status: 'ok' } })
    // Without the interrupt engine 1 would sleep for ten more minutes: this would time out.
    const [after] = await client.execute('print("free")', { targets: [1], timeoutMs: 60_000 })
    assert.equal(after?.status, 'ok')
    assert.equal(after.stdout, 'free\n')
  })

  test('CLI px --timeout --abort-on-timeout --json: results that came, timedOut and interrupted; engine free', async () => {
    const late = await runCli([
      'px',
      ctl.clientFile,
      SLOW_ON_1,
      '--timeout',
      '3',
      '--abort-on-timeout',
      ...sshArgs,
      '--json',
    ])
    assert.equal(late.code, 124, late.stderr)
    const out = JSON.parse(late.stdout) as {
      event: string
      results: { engine: number; status: string; stdout: string }[]
      timedOut: number[]
      interrupted: number[]
    }
    assert.equal(out.event, 'result')
    assert.deepEqual(
      out.results.map((r) => [r.engine, r.status, r.stdout]),
      [[0, 'ok', 'engine 0 started\nengine 0 done\n']],
    )
    assert.deepEqual(out.timedOut, [1])
    assert.deepEqual(out.interrupted, [1])
    await using client = await IppClient.open(ctl.clientFile, options)
    const [after] = await client.execute('print("free")', { targets: [1], timeoutMs: 60_000 })
    assert.equal(after?.status, 'ok', 'engine 1 takes work again')
    assert.equal(after.stdout, 'free\n')
  })

  test('executeSettled keeps the replies that came; execute names the engines that did not reply', async () => {
    await using client = await IppClient.open(ctl.clientFile, options)
    await assert.rejects(
      client.execute(SLOW_ON_1, { timeoutMs: 2000 }),
      hasCode('E_TIMEOUT', 'no reply from engine 1 within 2000 ms'),
    )
    assert.deepEqual(await client.interrupt([1], { timeoutMs: 30_000 }), { 1: { status: 'ok' } })
    const settled = await client.executeSettled('x = 1', { timeoutMs: 30_000 })
    assert.deepEqual(settled.timedOut, [])
    assert.deepEqual(
      settled.results.map((r) => [r.engineId, r.status]),
      [
        [0, 'ok'],
        [1, 'ok'],
      ],
    )
  })
})
