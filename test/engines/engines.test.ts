import assert from 'node:assert/strict'
import { stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'

import { exited } from '../support/cli.js'
import { runPython } from '../support/ipp.js'
import { alive, idsAndPidsScript, runPsum, startEnginesCli, startRemote, stopCli } from './helpers.js'

test('engines -n 2 --mpi: the controller sees 2 engines in one MPI world; Allreduce gives both the total', async (t) => {
  const remote = await startRemote(t)
  const { child, lines } = startEnginesCli(t, remote, ['-n', '2', '--mpi'])
  const ready = await lines.next('ready')
  assert.equal(ready.engines, 2)
  assert.equal(ready.mpi, true)
  const out = String(ready.out)
  assert.equal((await stat(out)).mode & 0o777, 0o600)
  assert.equal((await stat(dirname(out))).mode & 0o777, 0o700)
  await lines.next('registered', 60_000)
  assert.equal(lines.events.filter((e) => e.event === 'engine-started').length, 1, 'one mpiexec process')

  const { ids, results } = await runPsum(remote, 2)
  assert.deepEqual(ids, [0, 1])
  const n = 1000
  const expectedTotal = ((2 * n - 1) * (2 * n)) / 2
  assert.deepEqual(results.map((r) => r.rank).sort(), [0, 1], 'the MPI ranks are the engine ids')
  for (const r of results) {
    assert.equal(r.size, 2)
    assert.equal(r.total, expectedTotal)
    assert.notEqual(r.local, r.total)
  }
  assert.equal(await remote.sshd.sessionCount(), 1)

  const status = await stopCli(child, 'SIGINT')
  assert.equal(status.code, 0, lines.stderr.slice(-2000))
  const exit = lines.events.find((e) => e.event === 'engine-exited')
  assert.equal(exit?.stopped, true)
  assert.equal(lines.events.at(-1)?.event, 'closed')
  await assert.rejects(stat(dirname(out)), 'the private loopback directory is removed')
})

test('engines -n 8: eight engines through one ssh connection; nothing left behind on stop', async (t) => {
  const remote = await startRemote(t)
  const { child, lines } = startEnginesCli(t, remote, ['-n', '8'])
  const ready = await lines.next('ready')
  await lines.next('registered', 90_000)
  const started = lines.events.filter((e) => e.event === 'engine-started').map((e) => Number(e.pid))
  assert.equal(started.length, 8)
  assert.equal(await remote.sshd.sessionCount(), 1, 'one ssh connection carries every engine')

  const result = await runPython(idsAndPidsScript(remote.ctl.clientFile, 8), {
    netns: remote.ns,
    timeoutMs: 90_000,
  })
  assert.equal(result.code, 0, result.stderr)
  const { ids, pids } = JSON.parse(result.stdout) as { ids: number[]; pids: number[] }
  assert.deepEqual(ids, [0, 1, 2, 3, 4, 5, 6, 7])
  assert.deepEqual([...pids].sort(), [...started].sort(), 'the engines the controller runs are ours')
  assert.equal(await remote.sshd.sessionCount(), 1)

  const status = await stopCli(child, 'SIGTERM')
  assert.equal(status.code, 0, lines.stderr.slice(-2000))
  const exits = lines.events.filter((e) => e.event === 'engine-exited')
  assert.equal(exits.length, 8)
  assert.ok(exits.every((e) => e.stopped === true))
  assert.deepEqual(
    started.filter((pid) => alive(pid)),
    [],
    'no engine outlives the command',
  )
  await assert.rejects(stat(String(ready.out)))
})

test('engines that die on their own are reported, and the command exits 1', async (t) => {
  const remote = await startRemote(t)
  const { child, lines } = startEnginesCli(t, remote, [
    '-n',
    '2',
    '--engine-cmd',
    `/bin/sh -c 'echo bye from {}; exit 3'`,
  ])
  const status = await exited(child)
  assert.equal(status.code, 1, lines.stderr)
  const exits = lines.events.filter((e) => e.event === 'engine-exited')
  assert.equal(exits.length, 2)
  for (const e of exits) {
    assert.equal(e.code, 3)
    assert.equal(e.stopped, false)
  }
  const error = lines.events.find((e) => e.event === 'error')
  assert.ok(error, 'an error event')
  assert.equal(error.code, 'E_ENGINE_EXIT')
  assert.match(String(error.message), /2 of 2 engine processes died/)
  assert.match(lines.stderr, /\[process #0\] bye from \/tmp\/ipp-tunnel-engines-/)
})

test('a tunnel reconnect does not get the engines declared dead', async (t) => {
  // A fast heart: 1 s pings, dead after 3 missed. Heartbeats that did not pass would fail the engines in ~4 s.
  const remote = await startRemote(t, [
    '--HeartMonitor.period=1000',
    '--HeartMonitor.max_heartmonitor_misses=3',
  ])
  const { child, lines } = startEnginesCli(t, remote, ['-n', '2'])
  await lines.next('registered', 60_000)
  await sleep(5000) // longer than the controller's tolerance: heartbeats flow through the tunnel
  const reconnected = lines.waitNew((e) => e.event === 'reconnected', 30_000)
  await remote.sshd.killConnections()
  await reconnected
  await sleep(6000) // again longer than the tolerance, after the link came back

  const result = await runPython(idsAndPidsScript(remote.ctl.clientFile, 2), {
    netns: remote.ns,
    timeoutMs: 60_000,
  })
  assert.equal(result.code, 0, result.stderr)
  const { ids } = JSON.parse(result.stdout) as { ids: number[] }
  assert.deepEqual(ids, [0, 1], 'the same two engines, still registered')
  assert.doesNotMatch(remote.ctl.log(), /hearts stopped|unregister_engine/)
  assert.equal(lines.events.filter((e) => e.event === 'engine-exited').length, 0)
  assert.equal(await remote.sshd.sessionCount(), 1)
  const status = await stopCli(child)
  assert.equal(status.code, 0, lines.stderr.slice(-2000))
})
