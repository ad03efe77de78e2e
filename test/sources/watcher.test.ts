import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'

import { DirectoryWatcher } from '../../src/sources/index.js'

test('a file rewritten right after a change is seen with its new content (chokidar drops changes within 50 ms)', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-watcher-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const file = join(dir, 'ipcontroller-client.json')
  /** What the file held each time the watcher reported it, read at once as the service does. */
  const seen: string[] = []
  let wanted: { text: string; resolve: () => void } | undefined
  const watcher = await DirectoryWatcher.start([dir], {
    onFile: (path) => {
      void readFile(path, 'utf8').then(
        (text) => {
          seen.push(text)
          if (wanted !== undefined && text === wanted.text) wanted.resolve()
        },
        () => undefined,
      )
    },
    onRemoved: () => undefined,
    onError: () => undefined,
  })
  t.after(() => watcher.close())
  const until = (text: string) => new Promise<void>((resolve) => (wanted = { text, resolve }))

  const first = until('{"n": 1}')
  await writeFile(file, '{"n": 1}')
  await first
  const changed = until('{"n": 1, "more": true}')
  await writeFile(file, '{"n": 1, "more": true}')
  await changed // chokidar just emitted a 'change': for 50 ms it drops the next one of this file
  const last = until('{"n": 2}')
  await writeFile(file, '{"n": 2}')
  await last
  assert.equal(seen.at(-1), '{"n": 2}')
})
