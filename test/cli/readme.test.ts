import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'

import { REPO_ROOT } from '../support/cli.js'

const run = promisify(execFile)

/** The README's code blocks in JavaScript or TypeScript: the library examples. */
async function libraryExamples(): Promise<string[]> {
  const readme = await readFile(join(REPO_ROOT, 'README.md'), 'utf8')
  return [...readme.matchAll(/^```(?:js|ts|javascript|typescript|mjs)\n([\s\S]*?)^```$/gm)].map(
    (m) => m[1] ?? '',
  )
}

test("the README's library examples are valid on this Node (no `await using`) and import what the package exports", async (t) => {
  const examples = await libraryExamples()
  assert.ok(examples.length >= 2, 'the README shows library examples')
  const dir = await mkdtemp(join(tmpdir(), 'ippt-readme-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const api = (await import(pathToFileURL(join(REPO_ROOT, 'dist', 'src', 'index.js')).href)) as Record<
    string,
    unknown
  >
  for (const [i, code] of examples.entries()) {
    assert.doesNotMatch(code, /\bawait using\b/, `example ${i}: a SyntaxError on Node 20`)
    // node --check parses the module as the Node running the tests would, without running it
    const file = join(dir, `example-${i}.mjs`)
    await writeFile(file, code)
    await run(process.execPath, ['--check', file])
    for (const [, names] of code.matchAll(/import\s*\{([^}]*)\}\s*from\s*'ipp-tunnel'/g)) {
      for (const name of (names ?? '')
        .split(',')
        .map((n) => n.trim())
        .filter(Boolean)) {
        assert.ok(name in api, `example ${i} imports ${name}, which ipp-tunnel does not export`)
      }
    }
  }
})
