import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { after, before, describe, test, type TestContext } from 'node:test'

import { IppClient } from '../../src/client/index.js'
import { exited } from '../support/cli.js'
import { sshOptionsOf } from '../support/index.js'
import { openClientWhenReady, startEnginesCli, startRemote, type Remote } from './helpers.js'

describe('engines -n 2 against a real controller: registered means usable, stopped means gone', () => {
  let remote: Remote
  let client: IppClient | undefined
  const cleanups: (() => Promise<void>)[] = []

  before(async () => {
    // One controller for the file: startRemote registers its cleanup with whatever has an after().
    remote = await startRemote({
      after: (fn: () => Promise<void>) => cleanups.push(fn),
    } as unknown as TestContext)
    client = await openClientWhenReady(remote.ctl.clientFile, {
      ...sshOptionsOf(remote.sshd),
      ssh: `${remote.sshd.user}@${remote.sshd.host}:${String(remote.sshd.port)}`,
    })
  })
  after(async () => {
    await client?.close()
    for (const cleanup of cleanups.reverse()) await cleanup()
  })

  test('on `registered` the engines take work at once; after SIGTERM the controller lists none of them', async (t) => {
    const { child, lines } = startEnginesCli(t, remote, ['-n', '2'])
    const registered = await lines.next('registered', 90_000)
    // No wait at all: a script that waits for `registered` uses the engines right away.
    assert.ok(client)
    const results = await client.execute('import os\nprint(os.getpid())', { timeoutMs: 30_000 })
    assert.equal(results.length, 2, 'both engines took the work')
    assert.ok(results.every((r) => r.status === 'ok'))
    const ids = results.map((r) => r.engineId)
    assert.deepEqual(registered.ids, ids, 'the ids the event names are the engines the controller runs')
    const pids = lines.events.filter((e) => e.event === 'engine-started').map((e) => String(e.pid))
    assert.deepEqual(
      results.map((r) => r.stdout.trim()).sort(),
      [...pids].sort(),
      'the engines are the processes engines started',
    )
    const announced = lines.events.filter((e) => e.event === 'engine-registered')
    assert.deepEqual(announced.map((e) => e.id).sort(), [...ids].sort())

    const started = performance.now()
    const done = exited(child)
    child.kill('SIGTERM')
    const status = await done
    const stopMs = Math.round(performance.now() - started)
    const left = await client.engines({ timeoutMs: 10_000 })
    t.diagnostic(
      `engines stopped ${String(stopMs)} ms after SIGTERM; the controller then listed ${JSON.stringify(left.ids)}`,
    )
    assert.equal(status.code, 0, lines.stderr.slice(-2000))
    assert.deepEqual(left.ids, [], 'the controller lists none of the engines right after the command exited')
    const unregistered = lines.events.find((e) => e.event === 'unregistered')
    assert.deepEqual(unregistered?.remaining, [])
    assert.equal(lines.events.at(-1)?.event, 'closed')
    assert.doesNotMatch(lines.stderr, /Looking for ipython_config|Connecting shell to|Config changed/)
    assert.doesNotMatch(lines.stderr, /Debugger warning: It seems that frozen modules/)
    assert.match(
      lines.stderr,
      /\[process #\d\] .*CRITICAL \| received signal 15/,
      'warnings and above are shown',
    )
  })

  test("--verbose shows the engines' routine logging, with the file's key redacted", async (t) => {
    assert.ok(client)
    const { key } = JSON.parse(await readFile(remote.ctl.engineFile, 'utf8')) as { key: string }
    const { child, lines } = startEnginesCli(t, remote, ['-n', '1', '--verbose'])
    await lines.next('registered', 90_000)
    const done = exited(child)
    child.kill('SIGTERM')
    assert.equal((await done).code, 0, lines.stderr.slice(-2000))
    assert.match(lines.stderr, /\[process #0\] .*Looking for ipython_config/)
    assert.match(lines.stderr, /\[process #0\] .*'key': b'<redacted>'/)
    assert.ok(!lines.stderr.includes(key), 'the HMAC key is not printed')
    assert.deepEqual((await client.engines({ timeoutMs: 10_000 })).ids, [])
  })
})
