import assert from 'node:assert/strict'
import { mkdtemp, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { isIppTunnelError } from '../../src/errors/index.js'
import { queryStatus, StatusServer, type StatusReport } from '../../src/service/index.js'
import { runPython } from '../support/ipp.js'

const report: StatusReport = { pid: 1, since: '2026-01-01T00:00:00.000Z', dirs: ['/x'], links: 0, files: [] }

describe('the status socket', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ippt-status-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  test('answers with the report, mode 0600 in a 0700 directory; a second server is refused', async () => {
    const path = join(dir, 'run', 'service.sock')
    const server = await StatusServer.listen(path, () => report)
    try {
      assert.equal((await stat(path)).mode & 0o777, 0o600)
      assert.equal((await stat(join(dir, 'run'))).mode & 0o777, 0o700)
      assert.deepEqual(await queryStatus(path), report)
      await assert.rejects(
        StatusServer.listen(path, () => report),
        (err) => {
          assert.ok(isIppTunnelError(err))
          assert.equal(err.code, 'E_USAGE')
          assert.match(err.message, /already runs/)
          return true
        },
      )
      assert.deepEqual(await queryStatus(path), report, 'the live one still answers')
    } finally {
      await server.close()
    }
    await assert.rejects(stat(path), 'closing removes the socket file')
    await assert.rejects(queryStatus(path), (err) => isIppTunnelError(err) && err.code === 'E_SERVICE_DOWN')
  })

  test('a socket file left by a dead process does not block a new server', async () => {
    const path = join(dir, 'stale.sock')
    // Python binds a unix socket and exits without removing it, as a crashed service would
    const made = await runPython(
      `import socket, sys\ns = socket.socket(socket.AF_UNIX)\ns.bind(sys.argv[1])\ns.listen()`,
      { args: [path] },
    )
    assert.equal(made.code, 0, made.stderr)
    assert.ok((await stat(path)).isSocket())
    await assert.rejects(queryStatus(path), (err) => isIppTunnelError(err) && err.code === 'E_SERVICE_DOWN')
    const server = await StatusServer.listen(path, () => report)
    try {
      assert.deepEqual(await queryStatus(path), report)
    } finally {
      await server.close()
    }
  })
})
