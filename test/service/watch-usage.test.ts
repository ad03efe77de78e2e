import assert from 'node:assert/strict'
import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { runCli } from '../support/cli.js'

describe('ipp-tunnel watch: bad arguments', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ippt-watch-usage-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  test('an output directory that is a watched directory is refused with exit 2', async () => {
    const watched = join(dir, 'a')
    await mkdir(watched) // a --dir that does not exist is refused first
    const result = await runCli(['watch', '--dir', watched, '--out-dir', watched], {
      IPP_TUNNEL_RUNTIME_DIR: join(dir, 'run'),
    })
    assert.equal(result.code, 2)
    assert.match(result.stderr, /is a watched directory; choose another --out-dir/)
    assert.doesNotMatch(result.stderr, /\n\s+at /)
  })

  test('a watched directory that is the default copy directory of another is refused', async () => {
    const a = join(dir, 'b')
    await mkdir(a)
    await mkdir(`${a}-tunnel`)
    const result = await runCli(['watch', '--dir', a, '--dir', `${a}-tunnel`], {
      IPP_TUNNEL_RUNTIME_DIR: join(dir, 'run'),
    })
    assert.equal(result.code, 2)
    assert.match(result.stderr, /is a watched directory/)
  })
})
