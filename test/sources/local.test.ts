import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { chmod, mkdtemp, rm, unlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { promisify } from 'node:util'

import { LocalDirectorySource, type SourceEvents, type SourceFile } from '../../src/sources/index.js'

const run = promisify(execFile)

type Seen = { [K in keyof SourceEvents]: { type: K; args: SourceEvents[K][0] } }[keyof SourceEvents]

/** Starts a source on `dir` with every event recorded, and a way to wait for the next one that matches. */
async function watch(dir: string) {
  const seen: Seen[] = []
  const waiters: { match: (e: Seen) => boolean; resolve: (e: Seen) => void }[] = []
  const source = await LocalDirectorySource.start([dir], (s) => {
    for (const type of ['watching', 'file', 'removed', 'file:error', 'dir:error', 'warning'] as const) {
      s.on(type, (args: unknown) => {
        const event = { type, args } as Seen
        seen.push(event)
        for (const w of waiters.splice(0).filter((w) => !w.match(event) || (w.resolve(event), false)))
          waiters.push(w)
      })
    }
  })
  const next = (match: (e: Seen) => boolean): Promise<Seen> => {
    const already = seen.find(match)
    if (already !== undefined) return Promise.resolve(already)
    return new Promise((resolve) => waiters.push({ match, resolve }))
  }
  return { source, seen, next }
}

const fileWith = (text: string) => (e: Seen) => e.type === 'file' && e.args.text === text

test('a local directory reports files with their content, as a remote source does, and their removal', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-local-src-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const present = join(dir, 'kernel-1.json')
  await writeFile(present, '{"a": 1}', { mode: 0o600 })
  await writeFile(join(dir, 'notes.txt'), 'not a connection file')
  const { source, seen, next } = await watch(dir)
  t.after(() => source.close())

  // Files already there are reported as new ones are.
  const first = await next(fileWith('{"a": 1}'))
  assert.ok(first.type === 'file')
  const file: SourceFile = first.args
  assert.deepEqual(
    { id: file.id, path: file.path, origin: file.origin, settled: file.settled },
    { id: present, path: present, origin: { kind: 'local' }, settled: false },
  )
  assert.deepEqual(
    seen.filter((e) => e.type === 'watching').map((e) => e.args),
    [{ kind: 'local', dir }],
  )
  // The watcher looks once more after each report: the same size and mtime again is a settled file.
  const settled = await next((e) => e.type === 'file' && e.args.id === present && e.args.settled)
  assert.ok(settled.type === 'file' && settled.args.shape === file.shape)

  // A file readable by others holds the session key: a warning, once for that mode.
  const open = join(dir, 'ipcontroller-client.json')
  await writeFile(open, '{"b": 2}')
  await chmod(open, 0o644)
  const warning = await next((e) => e.type === 'warning' && e.args.id === open)
  assert.match(warning.type === 'warning' ? warning.args.message : '', /mode 0644.*chmod 600/)
  await next(fileWith('{"b": 2}'))

  await unlink(present)
  await next((e) => e.type === 'removed' && e.args.id === present)
  assert.equal(seen.filter((e) => 'id' in e.args && e.args.id.endsWith('.txt')).length, 0)
  assert.equal(seen.filter((e) => e.type === 'warning').length, 1)
})

test('a FIFO named like a connection file is an error, not a hang; lookAgain reads a file again', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-local-src-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const { source, next } = await watch(dir)
  t.after(() => source.close())

  const fifo = join(dir, 'kernel-fifo.json')
  await run('mkfifo', [fifo])
  const error = await next((e) => e.type === 'file:error' && e.args.id === fifo)
  assert.ok(error.type === 'file:error')
  assert.equal(error.args.code, 'E_CONNFILE_READ')
  assert.match(error.args.message, /FIFO/)

  const good = join(dir, 'kernel-2.json')
  await writeFile(good, '{"c": 3}', { mode: 0o600 })
  await next(fileWith('{"c": 3}'))
  const again = new Promise<SourceFile>((resolve) => source.once('file', resolve))
  source.lookAgain(good, 1)
  assert.equal((await again).id, good)
})
