import assert from 'node:assert/strict'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'

import { CLI } from '../support/cli.js'
import { processesWith, remoteClusterArgs } from '../support/index.js'
import { startOtpSshd } from '../support/otp.js'
import { literal, runOnPty } from '../support/pty.js'

test('cluster start at a one-time-code server asks once for the whole start (one login in sshd’s log)', async (t) => {
  const { otp, sshd } = await startOtpSshd(t, { extraConfig: 'Subsystem sftp internal-sftp' })
  const root = await mkdtemp(join(tmpdir(), 'ippt-cluster-otp-'))
  t.after(() => rm(root, { recursive: true, force: true }))
  const code = await otp.code(await otp.counter())
  const session = await runOnPty(
    [
      process.execPath,
      CLI,
      'cluster',
      'start',
      ...remoteClusterArgs(sshd, root),
      '--local-python',
      '/usr/bin/python3',
      '-n',
      '2',
    ],
    [
      { expect: literal(otp.prompt), send: code },
      { expect: 'registered: 2 of 2 engines', signal: 'INT' },
      { expect: 'cluster stopped' },
    ],
    { IPYTHONDIR: join(root, 'local-ipython'), SSH_AUTH_SOCK: '' },
    150_000,
  )
  assert.equal(session.code, 0, session.output)
  // version check, controller, SFTP, tunnel, engines, registration, stop: all over the one login
  assert.equal(sshd.log().match(/Accepted keyboard-interactive/gu)?.length, 1, sshd.log())
  assert.deepEqual(await processesWith(join(root, 'remote')), [])
})
