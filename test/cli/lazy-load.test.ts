import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { promisify } from 'node:util'

import { CLI, FIXTURES } from '../support/cli.js'

const run = promisify(execFile)

/**
 * Runs the CLI with a module hook that records every module URL it loads, and every file require() loaded (the
 * one-file build requires only what stays outside it: native addons, zeromq, chokidar); resolves with them.
 */
async function modulesLoadedBy(args: readonly string[]): Promise<string[]> {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-lazy-'))
  try {
    const log = join(dir, 'loaded.txt')
    const hooks = join(dir, 'hooks.mjs')
    await writeFile(
      hooks,
      `import { appendFileSync } from 'node:fs'
export async function resolve(specifier, context, next) {
  const result = await next(specifier, context)
  appendFileSync(${JSON.stringify(log)}, result.url + '\\n')
  return result
}
`,
    )
    const register = join(dir, 'register.mjs')
    await writeFile(
      register,
      `import { register, createRequire } from 'node:module'
import { appendFileSync } from 'node:fs'
register(${JSON.stringify(`file://${hooks}`)})
const cache = createRequire(import.meta.url).cache
process.on('exit', () => appendFileSync(${JSON.stringify(log)}, Object.keys(cache).map((f) => 'file://' + f + '\\n').join('')))
`,
    )
    await run(process.execPath, ['--import', register, CLI, ...args]).catch((err: unknown) => err)
    return (await readFile(log, 'utf8')).split('\n').filter((l) => l !== '')
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

test('up loads neither zeromq nor chokidar; --version loads neither yargs nor any command module', async () => {
  const up = await modulesLoadedBy([
    'up',
    `${FIXTURES}ipp/ipcontroller-client.json`,
    '--ssh',
    'nobody@127.0.0.1:1',
    '--ssh-config',
    '/dev/null',
    '--out',
    join(tmpdir(), 'ippt-lazy-never-written.json'),
  ])
  // from the one-file build (npm run build) ssh2's native binding shows it was loaded; else its modules and ours do
  const bundled = !up.some((url) => url.endsWith('/dist/src/cli/index.js'))
  if (!bundled)
    assert.ok(
      up.some((url) => url.endsWith('/dist/src/cli/up.js')),
      'the up module was loaded',
    )
  assert.ok(
    up.some((url) => (bundled ? /\/ssh2\/.*\.node$/ : /\/ssh2\//).test(url)),
    'ssh2 was loaded',
  )
  assert.deepEqual(
    up.filter((url) => /\/node_modules\/(zeromq|chokidar)\//.test(url)),
    [],
  )
  const version = await modulesLoadedBy(['--version'])
  assert.deepEqual(
    version.filter(
      (url) =>
        /\/node_modules\/yargs\//.test(url) ||
        /\/dist\/src\/cli\/(?!launch|index|output)[^/]+\.(c?js)$/.test(url),
    ),
    [],
  )
})
