import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { readdir } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { test } from 'node:test'
import { promisify } from 'node:util'

import { runDemo } from '../../src/demo/index.js'

const run = promisify(execFile)

async function leftovers(): Promise<string[]> {
  const dirs = (await readdir(tmpdir())).filter((d) => /^ipp-tunnel-(demo|engines)-/.test(d))
  const { stdout } = await run('ip', ['netns', 'list'])
  return [...dirs, ...stdout.split('\n').filter((l) => l.startsWith('ipptd-'))]
}

test('the demo: π on two MPI engines through the tunnel, and nothing left behind', async () => {
  const before = await leftovers()
  const lines: string[] = []
  const result = await runDemo({ log: (line) => lines.push(line) })
  assert.ok(Math.abs(result.pi - Math.PI) < 1e-9, `π ≈ ${result.pi}`)
  assert.deepEqual(result.parts.map((p) => p.rank).sort(), [0, 1])
  const sum = result.parts.reduce((s, p) => s + p.part, 0)
  assert.ok(Math.abs(sum - result.pi) < 1e-9, 'the shares add up to the allreduced total')
  for (const key of ['remoteMs', 'tunnelMs', 'registeredMs', 'pxMs', 'stopMs', 'totalMs']) {
    assert.ok((result.timings[key] ?? -1) > 0, key)
  }
  assert.match(lines.join('\n'), /π ≈ 3\.14159/)
  assert.deepEqual(await leftovers(), before)
})

test('the demo, aborted midway, still removes everything', async () => {
  const before = await leftovers()
  const abort = new AbortController()
  const demo = runDemo({
    signal: abort.signal,
    log: (line) => {
      if (line.includes('tunnel ready')) abort.abort()
    },
  })
  await assert.rejects(demo)
  assert.deepEqual(await leftovers(), before)
})
