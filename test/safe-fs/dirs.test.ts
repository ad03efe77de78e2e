import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { chmod, chown, mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { promisify } from 'node:util'

import { checkWritableDir, writeFileAtomic } from '../../src/safe-fs/index.js'
import { hasCode } from '../support/index.js'

const run = promisify(execFile)

/** Any uid that is neither ours nor root: `nobody`. */
async function nobody(): Promise<number> {
  return Number((await run('id', ['-u', 'nobody'])).stdout.trim())
}

test('output directories: a sticky shared dir like /tmp is accepted, a world-writable one without the sticky bit or one of another user is not', async (t) => {
  const base = await mkdtemp(join(tmpdir(), 'ippt-dirs-'))
  t.after(() => rm(base, { recursive: true, force: true }))
  const other = await nobody()

  // /tmp itself, and a directory made like it.
  await checkWritableDir(tmpdir())
  const shared = join(base, 'shared')
  await mkdir(shared)
  await chmod(shared, 0o1777)
  await checkWritableDir(shared)
  const out = join(shared, 'ipcontroller-client.json')
  await writeFileAtomic(out, '{}', 'connection file')
  assert.equal((await stat(out)).mode & 0o777, 0o600)
  assert.equal(await readFile(out, 'utf8'), '{}')

  const open = join(base, 'open')
  await mkdir(open)
  await chmod(open, 0o777)
  await assert.rejects(
    checkWritableDir(open),
    hasCode(
      'E_UNSAFE_PATH',
      `${open}: output directory is writable by group or others (mode 0777) without the sticky bit`,
    ),
  )

  // The owner of a sticky directory may remove anything in it: another user's is refused.
  const theirs = join(base, 'theirs')
  await mkdir(theirs)
  await chmod(theirs, 0o1777)
  await chown(theirs, other, other)
  await assert.rejects(checkWritableDir(theirs), hasCode('E_UNSAFE_PATH', `owned by uid ${String(other)}`))
})
