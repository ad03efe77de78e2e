import { readdir, readFile } from 'node:fs/promises'
import { dirname, join, normalize } from 'node:path'

import { REPO_ROOT } from './cli.js'

/** README.md and every docs/*.md page, as repository-relative paths. */
export async function docPages(): Promise<string[]> {
  const docs = (await readdir(join(REPO_ROOT, 'docs'))).filter((f) => f.endsWith('.md')).sort()
  return ['README.md', ...docs.map((f) => `docs/${f}`)]
}

/** A page's text with its fenced code blocks blanked out (their lines kept, so line numbers hold). */
function outsideFences(text: string): string[] {
  let fence = false
  return text.split('\n').map((line) => {
    if (line.startsWith('```')) {
      fence = !fence
      return ''
    }
    return fence ? '' : line
  })
}

/**
 * GitHub's anchor for a heading: lowercase, inline markup and punctuation dropped (letters, digits, `-` and `_`
 * kept), each space a `-`; a repeated anchor gets `-1`, `-2`, ….
 */
export function headingAnchors(text: string): Set<string> {
  const anchors = new Set<string>()
  const seen = new Map<string, number>()
  for (const line of outsideFences(text)) {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line)
    if (!m) continue
    const slug = (m[1] ?? '')
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, '')
      .replace(/ /g, '-')
    const n = seen.get(slug) ?? 0
    seen.set(slug, n + 1)
    anchors.add(n === 0 ? slug : `${slug}-${String(n)}`)
  }
  return anchors
}

/** One relative link that does not resolve: the page, its line, the target and why. */
export interface BrokenLink {
  page: string
  line: number
  target: string
  problem: string
}

/**
 * Every relative link (`[text](path)`, `[text](path#anchor)`, `[text](#anchor)`) of the pages that names no file,
 * or a heading the target page does not have. Links in code are not links; `http(s):`/`mailto:` are not checked.
 * `pages` maps repository-relative paths to their text; `exists` says whether another repository file exists.
 */
export function brokenLinks(pages: Map<string, string>, exists: (path: string) => boolean): BrokenLink[] {
  const broken: BrokenLink[] = []
  for (const [page, text] of pages) {
    for (const [i, raw] of outsideFences(text).entries()) {
      const line = raw.replace(/`[^`]*`/g, (code) => (code.includes('](') ? '' : code))
      for (const m of line.matchAll(/\]\(([^)\s]+)\)/g)) {
        const target = m[1] ?? ''
        if (/^[a-z][a-z+.-]*:/i.test(target)) continue
        const [file = '', anchor] = target.split('#', 2)
        const path = file === '' ? page : normalize(join(dirname(page), file))
        const at = { page, line: i + 1, target }
        if (path.startsWith('..')) {
          broken.push({ ...at, problem: 'points outside the repository' })
          continue
        }
        const text = pages.get(path)
        if (text === undefined && !exists(path)) {
          broken.push({ ...at, problem: `no file ${path}` })
          continue
        }
        if (anchor === undefined) continue
        if (text === undefined) broken.push({ ...at, problem: `${path} is not a checked page: no anchors` })
        else if (!headingAnchors(text).has(anchor))
          broken.push({ ...at, problem: `${path} has no heading #${anchor}` })
      }
    }
  }
  return broken
}

/** The pages' texts, read from the repository. */
export async function readPages(paths: string[]): Promise<Map<string, string>> {
  return new Map(
    await Promise.all(paths.map(async (p) => [p, await readFile(join(REPO_ROOT, p), 'utf8')] as const)),
  )
}
