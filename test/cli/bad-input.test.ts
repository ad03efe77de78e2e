import assert from 'node:assert/strict'
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises'
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

test('ipp-tunnel bogus: "unknown command bogus", exit 2, one line; a near miss gets a suggestion', async () => {
  const result = await runCli(['bogus'])
  assert.equal(result.code, 2)
  assert.match(result.stderr, /^ipp-tunnel: unknown command "bogus"; commands: up, exec, watch, status/)
  assert.equal(result.stderr.trimEnd().split('\n').length, 1, result.stderr)
  const typo = await runCli(['stauts'])
  assert.equal(typo.code, 2)
  assert.match(typo.stderr, /unknown command "stauts"; did you mean status\?/)
})

test('watch --dir on a file or a missing directory: one clear line, exit 2, nothing created', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-watchdir-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const env = { IPP_TUNNEL_RUNTIME_DIR: join(dir, 'run') }
  const file = join(dir, 'hostname')
  await writeFile(file, 'node1\n')
  const notDir = await runCli(['watch', '--dir', file], env)
  assert.equal(notDir.code, 2, notDir.stderr)
  assert.equal(
    notDir.stderr,
    `ipp-tunnel: watch --dir ${file}: not a directory; name the directory that holds the connection files\n`,
  )
  const typo = join(dir, 'secuirty')
  const missing = await runCli(['watch', '--dir', typo], env)
  assert.equal(missing.code, 2, missing.stderr)
  assert.match(missing.stderr, /^ipp-tunnel: watch --dir .*secuirty: no such directory; check the spelling/)
  assert.equal(missing.stderr.trimEnd().split('\n').length, 1)
  assert.deepEqual(await readdir(dir), ['hostname'])
})

test('a kernel "ip" that is not an address: exit 2, one bounded line, no injected newline', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-ip-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const kernel = JSON.parse(await readFile(`${FIXTURES}kernel/kernel-test.json`, 'utf8')) as Record<
    string,
    unknown
  >
  for (const ip of ['127.0.0.1\nipp-tunnel: everything is fine', `tcp://${'a'.repeat(5000)}`, 'bad host!']) {
    const file = join(dir, 'kernel-bad-ip.json')
    await writeFile(file, JSON.stringify({ ...kernel, ip }))
    const result = await runCli(['up', file, '--ssh', 'nobody@127.0.0.1:1', '--out', join(dir, 'out.json')])
    assert.equal(result.code, 2, result.stderr)
    assert.equal(result.stderr.trimEnd().split('\n').length, 1, result.stderr)
    assert.ok(result.stderr.length < 400, `bounded: ${result.stderr.length}`)
    assert.match(result.stderr, /field "ip" must be an IP address or a host name/)
    assert.doesNotMatch(result.stderr, /\nipp-tunnel: everything/)
  }
  const json = await runCli(['up', join(dir, 'kernel-bad-ip.json'), '--json'])
  assert.equal(json.code, 2)
  assert.equal((JSON.parse(json.stdout) as { code: string }).code, 'E_CONNFILE_FIELD')
})

test('wording: every command says what it does in --help; a missing -n is named -n; no doubled "ipp-tunnel:" prefix', async () => {
  for (const command of ['up', 'exec', 'ping', 'px', 'engines']) {
    const help = await runCli([command, '--help'])
    assert.equal(help.code, 0, help.stderr)
    const head = help.stdout.slice(0, help.stdout.indexOf('Positionals:')).trim().split('\n')
    assert.ok(head[0]?.startsWith('ipp-tunnel '), help.stdout)
    assert.equal(head.at(-2), '', help.stdout)
    assert.ok((head.at(-1) ?? '').length > 20, `${command} --help has a description:\n${help.stdout}`)
    assert.ok(!(head.at(-1) ?? '').startsWith('ipp-tunnel '), help.stdout)
  }
  const missing = await runCli(['engines', 'x.json'])
  assert.equal(missing.code, 2)
  assert.equal(missing.stderr, 'ipp-tunnel: Missing required argument: -n (see ipp-tunnel --help)\n')
  const login = await runCli(['login'])
  assert.equal(login.code, 2)
  assert.match(login.stderr, /^ipp-tunnel: login reads answers on a terminal/u)
})
