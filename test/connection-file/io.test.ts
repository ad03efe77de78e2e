import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { chmod, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test, type TestContext } from 'node:test'
import { promisify } from 'node:util'

import {
  parseConnectionFile,
  readConnectionFile,
  serializeConnectionFile,
  toLoopback,
  endpoints,
  writeConnectionFileAtomic,
  type ConnectionInfo,
} from '../../src/connection-file/index.js'
import { isIppTunnelError } from '../../src/errors/index.js'
import { fixturePath, fixtureText } from './helpers.js'

const run = promisify(execFile)

async function tempDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'ipp-connfile-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  return dir
}

const modeOf = async (path: string): Promise<number> => (await stat(path)).mode & 0o777

function clientInfo(): ConnectionInfo {
  return parseConnectionFile(fixtureText('ipp/ipcontroller-client.json'), 'ipcontroller-client.json')
}

test('readConnectionFile: a 0600 file reads without warnings', async (t) => {
  const dir = await tempDir(t)
  const path = join(dir, 'ipcontroller-client.json')
  await writeFile(path, fixtureText('ipp/ipcontroller-client.json'), { mode: 0o600 })
  await chmod(path, 0o600)
  const { info, warnings } = await readConnectionFile(path)
  assert.deepEqual(info, clientInfo())
  assert.deepEqual(warnings, [])
})

test('readConnectionFile warns when group or others can read or write the file', async (t) => {
  const dir = await tempDir(t)
  const path = join(dir, 'kernel-1.json')
  await writeFile(path, fixtureText('kernel/kernel-test.json'))
  for (const mode of [0o644, 0o640, 0o604, 0o620]) {
    await chmod(path, mode)
    const { info, warnings } = await readConnectionFile(path)
    assert.equal(info.kind, 'kernel')
    assert.equal(warnings.length, 1)
    const octal = `0${mode.toString(8)}`
    assert.equal(
      warnings[0],
      `${path} is readable or writable by group or others (mode ${octal}) and holds the session key: chmod 600 ${path}`,
    )
  }
  await chmod(path, 0o400)
  assert.deepEqual((await readConnectionFile(path)).warnings, [])
})

test('readConnectionFile: E_CONNFILE_READ names the path (missing file, directory)', async (t) => {
  const dir = await tempDir(t)
  const missing = join(dir, 'ipcontroller-client.json')
  await assert.rejects(readConnectionFile(missing), {
    code: 'E_CONNFILE_READ',
    message: `${missing}: cannot read connection file (no such file or directory)`,
  })
  await assert.rejects(readConnectionFile(dir), {
    code: 'E_CONNFILE_READ',
    message: `${dir}: cannot read connection file (it is a directory)`,
  })
})

test('readConnectionFile: parse errors name the path and field', async () => {
  const path = fixturePath('malformed/ipcontroller-port-70000-client.json')
  await assert.rejects(readConnectionFile(path), {
    code: 'E_CONNFILE_FIELD',
    message: `${path}: field "mux" must be a port 1–65535, got 70000`,
  })
})

test('writeConnectionFileAtomic: 0600 file, 0700 directories created, no temp file left', async (t) => {
  const dir = await tempDir(t)
  const previous = process.umask(0o200) // would leave 0400 files and 0500 directories without explicit chmod
  t.after(() => process.umask(previous))
  const path = join(dir, 'a', 'b', 'ipcontroller-client.json')
  const info = clientInfo()
  await writeConnectionFileAtomic(path, info)
  assert.equal(await modeOf(path), 0o600)
  assert.equal(await modeOf(join(dir, 'a')), 0o700)
  assert.equal(await modeOf(join(dir, 'a', 'b')), 0o700)
  assert.equal(await readFile(path, 'utf8'), serializeConnectionFile(info))
  assert.deepEqual(await readdir(join(dir, 'a', 'b')), ['ipcontroller-client.json'])
  const { info: back, warnings } = await readConnectionFile(path)
  assert.deepEqual(back, info)
  assert.deepEqual(warnings, [])
})

test('writeConnectionFileAtomic replaces an existing 0644 file with a 0600 one and leaves an existing directory mode alone', async (t) => {
  const dir = await tempDir(t)
  await chmod(dir, 0o755)
  const path = join(dir, 'ipcontroller-client.json')
  await writeFile(path, 'old contents')
  await chmod(path, 0o644)
  const info = clientInfo()
  const local = toLoopback(info, new Map(endpoints(info).map((e, i) => [e.channel, 40000 + i])))
  await writeConnectionFileAtomic(path, local)
  assert.equal(await modeOf(path), 0o600)
  assert.equal(await modeOf(dir), 0o755)
  assert.deepEqual((await readConnectionFile(path)).info, local)
  assert.deepEqual(await readdir(dir), ['ipcontroller-client.json'])
})

test('writeConnectionFileAtomic fails cleanly where a directory sits at the path', async (t) => {
  const dir = await tempDir(t)
  const path = join(dir, 'ipcontroller-client.json')
  await mkdir(path)
  await writeFile(join(path, 'inside'), 'keep me')
  await assert.rejects(writeConnectionFileAtomic(path, clientInfo()), (err: unknown) => {
    assert.ok(isIppTunnelError(err))
    assert.equal(err.code, 'E_CONNFILE_WRITE')
    assert.match(err.message, new RegExp(`^${path}: cannot write connection file \\(`))
    assert.doesNotMatch(err.message, /deadbeef/)
    return true
  })
  assert.deepEqual(await readdir(dir), ['ipcontroller-client.json'], 'no temp file left')
  assert.equal(await readFile(join(path, 'inside'), 'utf8'), 'keep me')
})

test('writeConnectionFileAtomic fails cleanly when the parent is a file', async (t) => {
  const dir = await tempDir(t)
  await writeFile(join(dir, 'notadir'), 'x')
  const path = join(dir, 'notadir', 'ipcontroller-client.json')
  await assert.rejects(writeConnectionFileAtomic(path, clientInfo()), { code: 'E_CONNFILE_WRITE' })
  assert.equal(await readFile(join(dir, 'notadir'), 'utf8'), 'x')
  assert.deepEqual(await readdir(dir), ['notadir'])
})

test('a write that fails midway (file size limit) leaves the existing file untouched and no temp file', async (t) => {
  const dir = await tempDir(t)
  const path = join(dir, 'ipcontroller-client.json')
  const original = fixtureText('ipp/ipcontroller-client.json')
  await writeFile(path, original, { mode: 0o600 })
  const moduleUrl = new URL('../../src/connection-file/index.js', import.meta.url).href
  const script = join(dir, 'write.mjs')
  await writeFile(
    script,
    `import { parseConnectionFile, writeConnectionFileAtomic } from ${JSON.stringify(moduleUrl)}
const info = parseConnectionFile(${JSON.stringify(fixtureText('ipp-wildcard/ipcontroller-client.json'))}, 'ipcontroller-client.json')
try { await writeConnectionFileAtomic(process.argv[2], info); console.log('written') }
catch (err) { console.log(JSON.stringify({ code: err.code, message: err.message, cause: err.cause?.code })) }
`,
  )
  // RLIMIT_FSIZE 0 with SIGXFSZ ignored: the temp file is created, then writing to it fails with EFBIG.
  // stdout is a pipe, which the limit does not cover.
  const { stdout } = await run('/bin/sh', [
    '-c',
    `trap '' XFSZ; ulimit -f 0; exec "$0" "$@"`,
    process.execPath,
    script,
    path,
  ])
  const result = JSON.parse(stdout) as { code: string; message: string; cause: string }
  assert.deepEqual(result, {
    code: 'E_CONNFILE_WRITE',
    message: `${path}: cannot write connection file (EFBIG)`,
    cause: 'EFBIG',
  })
  assert.equal(await readFile(path, 'utf8'), original)
  assert.deepEqual((await readdir(dir)).sort(), ['ipcontroller-client.json', 'write.mjs'])
})
