import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { copyFile, mkdtemp, rm, symlink, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'

import { MAX_LIST_PORTS, parseConnectionFile, readConnectionFile } from '../../src/connection-file/index.js'
import { hasCode } from '../support/index.js'
import { runCli } from '../support/cli.js'
import { fixturePath, fixtureText } from './helpers.js'

const run = promisify(execFile)

describe('only regular files of at most 1 MiB are read', () => {
  let dir: string
  let fifo: string
  let zero: string
  let big: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ippt-safe-read-'))
    fifo = join(dir, 'ipcontroller-client.json')
    await run('mkfifo', [fifo])
    zero = join(dir, 'kernel-zero.json')
    await symlink('/dev/zero', zero)
    big = join(dir, 'kernel-big.json')
    await writeFile(big, '')
    await truncate(big, 2 * 1024 * 1024)
  })
  after(() => rm(dir, { recursive: true, force: true }))

  test('a FIFO is refused at once with E_CONNFILE_READ naming the kind (no writer: it would block forever)', async () => {
    await assert.rejects(
      readConnectionFile(fifo),
      hasCode('E_CONNFILE_READ', fifo, 'a FIFO', 'not a regular file'),
    )
  })

  test('/dev/zero behind a symlink is refused as a character device, nothing read', async () => {
    await assert.rejects(readConnectionFile(zero), hasCode('E_CONNFILE_READ', zero, 'a character device'))
  })

  test('a regular file over 1 MiB is refused before it is read', async () => {
    await assert.rejects(
      readConnectionFile(big),
      hasCode('E_CONNFILE_READ', big, 'larger than 1048576 bytes'),
    )
  })

  test('a symlink to a regular connection file is still followed', async () => {
    const link = join(dir, 'ipcontroller-linked-client.json')
    await symlink(fixturePath('ipp/ipcontroller-client.json'), link)
    const { info } = await readConnectionFile(link)
    assert.equal(info.kind, 'ipp-client')
  })

  for (const [command, extra] of [
    ['up', ['--ssh', 'nobody@127.0.0.1']],
    ['ping', []],
    ['px', ['1+1']],
    ['exec', ['--', 'true']],
  ] as const) {
    test(`${command} FIFO fails at once: E_CONNFILE_READ, exit 2`, async () => {
      const result = await runCli([command, fifo, '--json', ...extra])
      assert.equal(result.code, 2, result.stdout + result.stderr)
      // exec keeps stdout for its command: its events, the error too, go to stderr
      const lines = (command === 'exec' ? result.stderr : result.stdout).split('\n')
      const last = lines.filter((line) => line.startsWith('{')).at(-1) ?? ''
      const event = JSON.parse(last) as { code: string; message: string }
      assert.equal(event.code, 'E_CONNFILE_READ')
      assert.match(event.message, /a FIFO, not a regular file/)
    })
  }

  test('engines FIFO fails at once: E_CONNFILE_READ, exit 2', async () => {
    const engineFifo = join(dir, 'ipcontroller-engine.json')
    await run('mkfifo', [engineFifo])
    const result = await runCli(['engines', engineFifo, '-n', '1', '--json'])
    assert.equal(result.code, 2, result.stdout + result.stderr)
    assert.match(result.stdout, /"code":"E_CONNFILE_READ".*a FIFO, not a regular file/)
  })

  test('up on /dev/zero behind a symlink: exit 2 naming a character device', async () => {
    const result = await runCli(['up', zero, '--ssh', 'nobody@127.0.0.1'])
    assert.equal(result.code, 2, result.stderr)
    assert.match(result.stderr, /a character device/)
    assert.equal(result.stderr.trimEnd().split('\n').length, 1)
  })

  test('an ordinary regular file still reads', async () => {
    const copy = join(dir, 'kernel-test.json')
    await copyFile(fixturePath('kernel/kernel-test.json'), copy)
    assert.equal((await readConnectionFile(copy)).info.kind, 'kernel')
  })
})

describe('endpoint cap', () => {
  const engine = JSON.parse(fixtureText('ipp/ipcontroller-engine.json')) as Record<string, unknown>
  const withBroadcast = (n: number) =>
    JSON.stringify({ ...engine, broadcast: Array.from({ length: n }, (_, i) => 20000 + i) })

  test(`${MAX_LIST_PORTS} broadcast ports are accepted`, () => {
    const info = parseConnectionFile(withBroadcast(MAX_LIST_PORTS), 'ipcontroller-engine.json')
    assert.equal(info.kind === 'ipp-engine' && info.broadcast.length, MAX_LIST_PORTS)
  })

  test('25 000 broadcast ports are refused as E_CONNFILE_FIELD naming the field', () => {
    assert.throws(
      () => parseConnectionFile(withBroadcast(25_000), 'ipcontroller-engine.json'),
      hasCode(
        'E_CONNFILE_FIELD',
        'ipcontroller-engine.json',
        '"broadcast"',
        '25000 ports',
        `${MAX_LIST_PORTS}`,
      ),
    )
  })
})
