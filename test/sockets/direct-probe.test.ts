import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { parseConnectionFile } from '../../src/connection-file/index.js'
import { connect } from '../../src/sockets/index.js'
import { FIXTURES, runCli } from '../support/cli.js'
import { hasCode, freePort } from '../support/index.js'

describe('a direct connection to ports nothing listens on is refused at once, pointing at --ssh', () => {
  let dir: string
  let file: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ippt-probe-'))
    const kernel = JSON.parse(await readFile(join(FIXTURES, 'kernel/kernel-test.json'), 'utf8')) as Record<
      string,
      unknown
    >
    for (const field of ['shell_port', 'iopub_port', 'stdin_port', 'control_port', 'hb_port'])
      kernel[field] = await freePort()
    file = join(dir, 'kernel-gone.json')
    await writeFile(file, JSON.stringify({ ...kernel, ip: '127.0.0.1' }), { mode: 0o600 })
  })
  after(() => rm(dir, { recursive: true, force: true }))

  test('connect() rejects E_CONNECT naming the address and --ssh, long before its handshake timeout', async () => {
    const info = parseConnectionFile(await readFile(file, 'utf8'), file)
    // with a 10-minute handshake timeout, only the probe can end this within the test's own timeout
    await assert.rejects(
      connect(info, { handshakeTimeoutMs: 600_000 }),
      hasCode('E_CONNECT', 'nothing listens at 127.0.0.1:', 'channel shell', '--ssh user@host'),
    )
  })

  test('ping: one line saying to pass --ssh, exit 1', async () => {
    const result = await runCli(['ping', file, '--timeout', '600'])
    assert.equal(result.code, 1, result.stderr)
    const lines = result.stderr.trim().split('\n')
    assert.equal(lines.length, 1, result.stderr)
    assert.match(lines[0] ?? '', /nothing listens at 127\.0\.0\.1:\d+ .*--ssh user@host/)
  })
})
