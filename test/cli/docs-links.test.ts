import assert from 'node:assert/strict'
import { existsSync } from 'node:fs'
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { test } from 'node:test'

import { REPO_ROOT } from '../support/cli.js'
import { brokenLinks, docPages, headingAnchors, readPages } from '../support/docs.js'

const inRepo = (path: string): boolean => existsSync(join(REPO_ROOT, path))

test('every relative link in README.md and docs/*.md names an existing file and heading', async () => {
  const pages = await readPages(await docPages())
  assert.ok(pages.size > 1, 'docs/ has pages')
  const broken = brokenLinks(pages, inRepo)
  assert.deepEqual(
    broken.map((b) => `${b.page}:${String(b.line)}: ${b.target}: ${b.problem}`),
    [],
  )
})

test('every docs/ page is linked from README.md', async () => {
  const readme = await readFile(join(REPO_ROOT, 'README.md'), 'utf8')
  for (const page of (await docPages()).filter((p) => p !== 'README.md')) {
    assert.ok(
      readme.includes(`](${page})`) || readme.includes(`](${page}#`),
      `README.md does not link ${page}`,
    )
  }
})

test('README.md shows the test command that .ci/run runs, and the front page stays short', async () => {
  const readme = await readFile(join(REPO_ROOT, 'README.md'), 'utf8')
  const ci = await readFile(join(REPO_ROOT, '.ci', 'run'), 'utf8')
  const command = 'npm install && npm test'
  assert.match(ci, /^npm install && npm test$/m)
  assert.match(
    readme,
    new RegExp(`^\`\`\`sh\\n${command.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\n\`\`\`$`, 'm'),
  )
  assert.ok(readme.split('\n').length <= 200, 'README.md is a front page of at most 200 lines')
})

test('the link check reports a missing file, a missing heading and a link outside the repository', () => {
  const pages = new Map([
    [
      'README.md',
      '# Top\n\n[a](docs/a.md) [b](docs/a.md#nowhere) [c](docs/gone.md) [d](#top) [e](https://x.org/y)\n',
    ],
    [
      'docs/a.md',
      '# A page: `x` — y\n\n```sh\n[not a link](gone.md)\n```\n[f](../../etc/passwd) [g](a.md#a-page-x--y)\n',
    ],
  ])
  const broken = brokenLinks(pages, () => false).map((b) => `${b.page}:${String(b.line)} ${b.target}`)
  assert.deepEqual(broken, [
    'README.md:3 docs/a.md#nowhere',
    'README.md:3 docs/gone.md',
    'docs/a.md:6 ../../etc/passwd',
  ])
})

test("anchors follow GitHub's rules", () => {
  const anchors = headingAnchors(
    '# `ipp-tunnel watch` — the service\n## Across nodes: `--mpi --host`, `--slurm`\n## Twice\n## Twice\n',
  )
  assert.deepEqual(
    [...anchors],
    ['ipp-tunnel-watch--the-service', 'across-nodes---mpi---host---slurm', 'twice', 'twice-1'],
  )
})
