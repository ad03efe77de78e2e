import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { promisify } from 'node:util'

import { REPO_ROOT } from '../support/cli.js'

const run = promisify(execFile)

async function filesUnder(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true })
  return entries.filter((e) => e.isFile()).map((e) => join(e.parentPath, e.name))
}

test('npm pack + npm install -g of the tarball: ipp-tunnel --help runs; LICENSE, no source maps, no build step but the optional binding', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-pack-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  // dist/ is built by the test command already; prepack would build it again
  const { stdout } = await run('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', dir], {
    cwd: REPO_ROOT,
  })
  const [packed] = JSON.parse(stdout) as { filename: string; files: { path: string }[] }[]
  assert.ok(packed)
  const paths = packed.files.map((f) => f.path)
  assert.ok(paths.includes('LICENSE'), paths.join(' '))
  assert.ok(paths.includes('bin/ipp-tunnel.js'))
  assert.ok(paths.includes('dist/src/index.js'))
  assert.ok(paths.includes('bin/package.json'), 'bin/ipp-tunnel.js is CommonJS by bin/package.json')
  assert.ok(paths.includes('dist/src/cli/launch.cjs'))
  assert.ok(paths.includes('src/native/binding.gyp') && paths.includes('src/native/native.c'))
  assert.deepEqual(
    paths.filter((p) => p.endsWith('.map') || (p.endsWith('.ts') && !p.endsWith('.d.ts'))),
    [],
  )

  const prefix = join(dir, 'prefix')
  // Dependencies come from the npm cache when it has them; their own install scripts are not ours to test.
  await run(
    'npm',
    [
      'install',
      '-g',
      '--prefix',
      prefix,
      '--prefer-offline',
      '--ignore-scripts',
      '--no-audit',
      '--no-fund',
      join(dir, packed.filename),
    ],
    { cwd: dir, timeout: 300_000 },
  )
  const help = await run(join(prefix, 'bin', 'ipp-tunnel'), ['--help'], { cwd: dir })
  assert.match(help.stdout, /ipp-tunnel up <file>/)

  const installed = join(prefix, 'lib', 'node_modules', 'ipp-tunnel')
  const manifest = JSON.parse(await readFile(join(installed, 'package.json'), 'utf8')) as {
    license: string
    scripts: Record<string, string>
  }
  for (const hook of ['preinstall', 'postinstall', 'prepare']) {
    assert.equal(manifest.scripts[hook], undefined, `installing the package must not run ${hook}`)
  }
  // the one install step builds the optional native binding, and cannot fail the install (this one skipped it)
  assert.match(manifest.scripts.install ?? '', /^node-gyp rebuild --directory=src\/native \|\| echo /)
  assert.match(manifest.scripts.prepack ?? '', /tsc/)
  assert.equal(manifest.license, 'BSD-3-Clause')
  assert.match(
    await readFile(join(installed, 'LICENSE'), 'utf8'),
    /BSD 3-Clause License[\s\S]*the ipp-tunnel authors/,
  )
  for (const file of await filesUnder(join(installed, 'dist'))) {
    if (file.endsWith('.js')) assert.doesNotMatch(await readFile(file, 'utf8'), /sourceMappingURL/, file)
  }
})
