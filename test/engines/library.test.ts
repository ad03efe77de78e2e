import assert from 'node:assert/strict'
import { stat } from 'node:fs/promises'
import { dirname } from 'node:path'
import { test } from 'node:test'

import {
  startEngines,
  type SupervisedEngines,
  type SupervisedEnginesEvents,
} from '../../src/engines/index.js'
import { alive, hasCode, processesWith, sshOptionsOf } from '../support/index.js'
import { startRemote } from './helpers.js'

/** The next `event` of `engines`, typed by {@link SupervisedEnginesEvents}. */
function next<K extends 'ready' | 'registered' | 'unregistered'>(
  engines: SupervisedEngines,
  event: K,
): Promise<SupervisedEnginesEvents[K][0]> {
  return new Promise((resolve) => engines.once(event, resolve as never))
}

test('startEngines: 2 engines on a real controller through the library; registered, then stop() leaves nothing', async (t) => {
  const remote = await startRemote(t)
  const engines = startEngines({ file: remote.ctl.engineFile, n: 2, ssh: sshOptionsOf(remote.sshd) })
  t.after(() => engines.stop())
  const started: number[] = []
  engines.on('engine-started', (e) => started.push(e.pid))
  const unregistered = next(engines, 'unregistered')
  const ready = await next(engines, 'ready')
  assert.equal(ready.direct, false)
  assert.ok(ready.tunnel, 'the engine file is tunnelled')
  assert.equal((await stat(ready.out)).mode & 0o777, 0o600)
  assert.equal(engines.file, remote.ctl.engineFile)

  const registered = await next(engines, 'registered')
  assert.deepEqual([...registered.ids].sort(), [0, 1])
  assert.deepEqual(engines.ids, [0, 1])
  assert.equal(started.length, 2)
  assert.ok((await Promise.all(started.map((pid) => alive(pid)))).every(Boolean))
  assert.equal(await remote.sshd.sessionCount(), 1, 'one ssh connection carries both engines')

  await engines.stop()
  const ending = await engines.done
  assert.equal(ending.reason, 'stopped')
  assert.equal(ending.error, undefined)
  assert.deepEqual(
    ending.exits.map((e) => e.stopped),
    [true, true],
  )
  const { remaining } = await unregistered
  assert.deepEqual(remaining, [], 'the controller lists none of them')
  assert.deepEqual(await processesWith(dirname(ready.out)), [], 'no engine left')
  assert.deepEqual(
    (await Promise.all(started.map((pid) => alive(pid)))).filter(Boolean),
    [],
    'every process we started has ended',
  )
  await assert.rejects(stat(dirname(ready.out)), 'the private loopback directory is removed')
})

test("startEngines: a start that cannot be made rejects done with the CLI's error, and stop() still resolves", async () => {
  const engines = startEngines({
    file: '/nonexistent/ipcontroller-engine.json',
    n: 2,
    hosts: { kind: 'host', value: 'a:2' },
  })
  await assert.rejects(engines.done, hasCode('E_USAGE', 'add --mpi'))
  await engines.stop()
})
