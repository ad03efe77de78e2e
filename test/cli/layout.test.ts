import assert from 'node:assert/strict'
import { readdir, readFile } from 'node:fs/promises'
import { dirname, join, relative, resolve, sep } from 'node:path'
import { test } from 'node:test'

import ts from 'typescript'

import { REPO_ROOT } from '../support/cli.js'

/*
 * The house's layout rules (ARCHITECTURE.md), checked on the source: a folder's index.ts is its only door, no two
 * modules import each other (directly or round a circle; type-only imports count), and no file in src/ssh grows
 * past LINE_LIMIT lines without saying why at its top. Breaches that predate this test are listed by name: the lists
 * only shrink (a listed breach that is gone fails the test too, so that it is taken off).
 */

/**
 * Door breaches, each for a reason: the command line's entry takes only the heap release of src/tunnel, as its door
 * would load ssh2 and zeromq before any command is parsed (test/cli/lazy-load.test.ts).
 */
const KNOWN_DOOR_BREACHES: readonly string[] = ['src/cli/index.ts imports src/tunnel/heap-release.ts']
/** Import circles that predate this test (none left). */
const KNOWN_CIRCLES: readonly string[] = []
const LINE_LIMIT = 450
/** What a longer file in src/ssh says in its first lines: `Over 450 lines: <why>`. */
const REASON = new RegExp(`Over ${LINE_LIMIT} lines: \\S`)

/** Module → the modules it imports (relative specifiers; `export … from` and `import()` included), repo-relative. */
type Graph = ReadonlyMap<string, readonly string[]>

async function sourceGraph(root: string): Promise<{ graph: Graph; texts: ReadonlyMap<string, string> }> {
  const names = (await readdir(join(root, 'src'), { recursive: true }))
    .filter((n) => n.endsWith('.ts') && !n.endsWith('.d.ts'))
    .map((n) => join('src', n).split(sep).join('/'))
    .sort()
  const graph = new Map<string, string[]>()
  const texts = new Map<string, string>()
  for (const name of names) {
    const text = await readFile(join(root, name), 'utf8')
    texts.set(name, text)
    const imports = ts
      .preProcessFile(text, true, true)
      .importedFiles.map((f) => f.fileName)
      .filter((s) => s.startsWith('.'))
      .map((s) =>
        relative(root, resolve(root, dirname(name), s.replace(/\.js$/, '.ts')))
          .split(sep)
          .join('/'),
      )
    graph.set(name, imports)
  }
  return { graph, texts }
}

/**
 * Imports that enter a folder other than through its index.ts: below the nearest folder that holds both modules, the
 * imported one must be a file right there or the index.ts of a folder right there.
 */
function doorBreaches(graph: Graph): string[] {
  const breaches: string[] = []
  for (const [from, imports] of graph) {
    for (const to of imports) {
      const a = from.split('/').slice(0, -1)
      const b = to.split('/')
      let common = 0
      while (common < a.length && common < b.length - 1 && a[common] === b[common]) common++
      const below = b.slice(common)
      if (below.length > 2 || (below.length === 2 && below[1] !== 'index.ts')) {
        breaches.push(`${from} imports ${to}`)
      }
    }
  }
  return breaches.sort()
}

/** Every circle of imports, as the sorted modules of each strongly connected component (Tarjan), joined by ` -> `. */
function circles(graph: Graph): string[] {
  const index = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: string[] = []
  const onStack = new Set<string>()
  const found: string[] = []
  let next = 0
  const visit = (v: string): void => {
    index.set(v, next)
    low.set(v, next)
    next++
    stack.push(v)
    onStack.add(v)
    for (const w of graph.get(v) ?? []) {
      if (!graph.has(w)) continue
      if (!index.has(w)) {
        visit(w)
        low.set(v, Math.min(low.get(v) ?? 0, low.get(w) ?? 0))
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v) ?? 0, index.get(w) ?? 0))
      }
    }
    if (low.get(v) !== index.get(v)) return
    const component: string[] = []
    for (;;) {
      const w = stack.pop()
      if (w === undefined) break
      onStack.delete(w)
      component.push(w)
      if (w === v) break
    }
    if (component.length > 1 || (graph.get(v) ?? []).includes(v)) found.push(component.sort().join(' -> '))
  }
  for (const v of graph.keys()) if (!index.has(v)) visit(v)
  return found.sort()
}

test("every import between folders of src/ goes through the folder's index.ts", async () => {
  const { graph } = await sourceGraph(REPO_ROOT)
  assert.ok(graph.size > 100, `src/ has ${graph.size} modules`)
  assert.deepEqual(doorBreaches(graph), KNOWN_DOOR_BREACHES)
})

test('no import circle in src/ (type-only imports count)', async () => {
  const { graph } = await sourceGraph(REPO_ROOT)
  assert.deepEqual(circles(graph), KNOWN_CIRCLES)
})

test(`src/ssh: sub-folders by concern, each with its door; no file over ${LINE_LIMIT} lines without a reason at its top`, async () => {
  const { graph, texts } = await sourceGraph(REPO_ROOT)
  const ssh = [...graph.keys()].filter((m) => m.startsWith('src/ssh/'))
  const rooms = [
    ...new Set(
      ssh
        .map((m) => m.split('/'))
        .filter((p) => p.length > 3)
        .map((p) => p[2]),
    ),
  ]
  assert.ok(rooms.length >= 3, `src/ssh has rooms: ${rooms.join(', ')}`)
  for (const room of rooms)
    assert.ok(graph.has(`src/ssh/${room}/index.ts`), `src/ssh/${room}/ has an index.ts`)
  const long = ssh.flatMap((m) => {
    const text = texts.get(m) ?? ''
    const lines = text.split('\n').length - 1
    const head = text.split('\n').slice(0, 15).join('\n')
    return lines > LINE_LIMIT && !REASON.test(head) ? [`${m}: ${lines} lines`] : []
  })
  assert.deepEqual(long, [])
})

test('the checks find a door breach and a circle, and pass what the rules allow', () => {
  const graph: Graph = new Map([
    // through doors, to a sibling file, and up to a shared file beside the rooms: allowed
    ['src/a/index.ts', ['src/a/x.ts', 'src/a/room/index.ts']],
    ['src/a/x.ts', ['src/b/index.ts', 'src/a/shared.ts']],
    ['src/a/room/index.ts', ['src/a/room/y.ts']],
    ['src/a/room/y.ts', ['src/a/shared.ts', 'src/a/other/index.ts']],
    ['src/a/shared.ts', []],
    ['src/a/other/index.ts', []],
    // around a door: from outside, from a sibling room, into a room's room
    ['src/b/index.ts', ['src/a/x.ts']],
    ['src/b/z.ts', ['src/a/room/y.ts', 'src/b/deep/er/index.ts']],
    ['src/b/deep/er/index.ts', ['src/b/deep/er/index.ts']],
  ])
  assert.deepEqual(doorBreaches(graph), [
    'src/b/index.ts imports src/a/x.ts',
    'src/b/z.ts imports src/a/room/y.ts',
    'src/b/z.ts imports src/b/deep/er/index.ts',
  ])
  assert.deepEqual(circles(graph), ['src/a/x.ts -> src/b/index.ts', 'src/b/deep/er/index.ts'])
})
