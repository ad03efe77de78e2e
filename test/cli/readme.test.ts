import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'

import { REPO_ROOT } from '../support/cli.js'
import { docPages } from '../support/docs.js'

const run = promisify(execFile)

/** The code blocks in JavaScript or TypeScript of README.md and docs/*.md: the library examples. */
async function libraryExamples(): Promise<{ page: string; code: string }[]> {
  const examples: { page: string; code: string }[] = []
  for (const page of await docPages()) {
    const text = await readFile(join(REPO_ROOT, page), 'utf8')
    for (const m of text.matchAll(/^```(?:js|ts|javascript|typescript|mjs)\n([\s\S]*?)^```$/gm)) {
      examples.push({ page, code: m[1] ?? '' })
    }
  }
  return examples
}

test("the README's and docs/' library examples are valid on this Node (no `await using`) and import what the package exports", async (t) => {
  const examples = await libraryExamples()
  assert.ok(examples.length >= 2, 'the docs show library examples')
  assert.ok(
    examples.some((e) => e.page === 'docs/library.md'),
    'docs/library.md shows library examples',
  )
  const dir = await mkdtemp(join(tmpdir(), 'ippt-readme-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const api = (await import(pathToFileURL(join(REPO_ROOT, 'dist', 'src', 'index.js')).href)) as Record<
    string,
    unknown
  >
  for (const [i, { page, code }] of examples.entries()) {
    const where = `${page}, example ${i}`
    assert.doesNotMatch(code, /\bawait using\b/, `${where}: a SyntaxError on Node 20`)
    // node --check parses the module as the Node running the tests would, without running it
    const file = join(dir, `example-${i}.mjs`)
    await writeFile(file, code)
    await run(process.execPath, ['--check', file])
    for (const [, names] of code.matchAll(/import\s*\{([^}]*)\}\s*from\s*'ipp-tunnel'/g)) {
      for (const name of (names ?? '')
        .split(',')
        .map((n) => n.trim())
        .filter(Boolean)) {
        assert.ok(name in api, `${where} imports ${name}, which ipp-tunnel does not export`)
      }
    }
  }
})

test("the README's and docs/' Python examples parse (Debian's python3)", async () => {
  let count = 0
  for (const page of await docPages()) {
    const text = await readFile(join(REPO_ROOT, page), 'utf8')
    for (const m of text.matchAll(/^```python\n([\s\S]*?)^```$/gm)) {
      count += 1
      const code = m[1] ?? ''
      const child = run('/usr/bin/python3', ['-c', 'import ast, sys; ast.parse(sys.stdin.read())'])
      child.child.stdin?.end(code)
      await assert.doesNotReject(child, `${page}: a Python example that does not parse:\n${code}`)
    }
  }
  assert.ok(count >= 4, 'the front page shows what to type in Python for each flow')
})
