import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { appendFile, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { promisify } from 'node:util'

import { readNewLines } from '../../src/engines/index.js'

const run = promisify(execFile)

test("following a batch job's output file: complete lines only, bounded pieces, never blocked by a FIFO", async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-job-out-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'job.out')

  assert.deepEqual(await readNewLines(file, 0), { lines: [], offset: 0 }, 'not there yet')
  await writeFile(file, '{"event":"node-ready"}\npartial')
  const first = await readNewLines(file, 0)
  assert.deepEqual(first, { lines: ['{"event":"node-ready"}'], offset: 23 })
  await appendFile(file, ' line\n')
  assert.deepEqual(await readNewLines(file, first.offset), { lines: ['partial line'], offset: 36 })

  // one line longer than a piece is skipped, and what follows it is read
  const long = join(dir, 'long.out')
  await writeFile(long, `${'x'.repeat(1024 * 1024 + 10)}\nafter\n`)
  let at = 0
  const lines: string[] = []
  for (let i = 0; i < 4; i++) {
    const got = await readNewLines(long, at)
    lines.push(...got.lines)
    at = got.offset
  }
  assert.deepEqual(lines.slice(-1), ['after'])

  const fifo = join(dir, 'fifo.out')
  await run('mkfifo', [fifo])
  assert.deepEqual(await readNewLines(fifo, 0), { lines: [], offset: 0 })
})
