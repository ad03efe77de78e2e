import assert from 'node:assert/strict'
import { mkdtemp, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'

import { FIXTURES, runCli } from '../support/cli.js'

const malformed = [
  ['not-json.json', /not valid JSON/i],
  ['empty.json', /empty|not valid JSON/i],
  ['ipcontroller-truncated-client.json', /not valid JSON|truncated/i],
  ['ipcontroller-missing-mux-client.json', /"mux"/],
  ['ipcontroller-port-70000-client.json', /70000/],
  ['ipcontroller-port-zero-client.json', /port/],
  ['ipcontroller-unknown-scheme-client.json', /signature_scheme/],
  ['kernel-port-string.json', /port/],
  ['not-a-connection-file.json', /connection file/i],
] as const

for (const [name, pattern] of malformed) {
  test(`up on ${name}: one line naming the file, exit 2, nothing written`, async (t) => {
    const outDir = await mkdtemp(join(tmpdir(), 'ippt-bad-'))
    t.after(() => rm(outDir, { recursive: true, force: true }))
    const result = await runCli(['up', `${FIXTURES}malformed/${name}`, '--out', join(outDir, 'out.json')])
    assert.equal(result.code, 2, result.stderr)
    const lines = result.stderr.trimEnd().split('\n')
    assert.equal(lines.length, 1, `expected one line, got:\n${result.stderr}`)
    assert.match(lines[0]!, new RegExp(name.replace(/[.]/g, '\\.')))
    assert.match(lines[0]!, pattern)
    assert.doesNotMatch(result.stderr, /\n\s+at /)
    assert.deepEqual(await readdir(outDir), [])
  })
}

test('up on a missing file: exit 2 naming the path', async () => {
  const result = await runCli(['up', '/nonexistent/ipcontroller-client.json'])
  assert.equal(result.code, 2)
  assert.match(result.stderr, /\/nonexistent\/ipcontroller-client\.json/)
  assert.equal(result.stderr.trimEnd().split('\n').length, 1)
})

test('--debug adds the stack trace', async () => {
  const result = await runCli(['up', `${FIXTURES}malformed/not-json.json`, '--debug'])
  assert.equal(result.code, 2)
  assert.match(result.stderr, /\n\s+at /)
})

test('--json reports the error as one JSON object with its code', async () => {
  const result = await runCli(['up', `${FIXTURES}malformed/ipcontroller-missing-mux-client.json`, '--json'])
  assert.equal(result.code, 2)
  const event = JSON.parse(result.stdout) as { event: string; code: string; message: string }
  assert.equal(event.event, 'error')
  assert.equal(event.code, 'E_CONNFILE_FIELD')
  assert.match(event.message, /mux/)
})

test('unknown command and missing argument are usage errors (exit 2)', async () => {
  const unknown = await runCli(['frobnicate'])
  assert.equal(unknown.code, 2)
  const missing = await runCli(['up'])
  assert.equal(missing.code, 2)
  assert.doesNotMatch(missing.stderr, /\n\s+at /)
})
