import { readdir, stat } from 'node:fs/promises'
import path from 'node:path'

/* The two pattern languages of ssh_config: ssh's own (`*`, `?`, `!`, lists) for hosts and users, glob(3) for Include. */

const GLOB_MAGIC = /[*?[]/u

/** The files an Include glob names, sorted per directory like glob(3); a pattern that matches nothing gives none. */
export async function globFiles(pattern: string): Promise<string[]> {
  const parts = pattern.split('/').filter((p) => p !== '')
  let candidates = ['/']
  for (const part of parts) {
    const next: string[] = []
    if (!GLOB_MAGIC.test(part)) {
      for (const dir of candidates) next.push(path.join(dir, part))
    } else {
      const re = globSegment(part)
      for (const dir of candidates) {
        let names: string[]
        try {
          names = await readdir(dir)
        } catch {
          continue
        }
        names.sort()
        for (const name of names) {
          if (name.startsWith('.') && !part.startsWith('.')) continue
          if (re.test(name)) next.push(path.join(dir, name))
        }
      }
    }
    candidates = next
  }
  const files: string[] = []
  for (const file of candidates) {
    try {
      if ((await stat(file)).isFile()) files.push(file)
    } catch {
      // a name that does not exist matches nothing, as in glob(3)
    }
  }
  return files
}

function globSegment(part: string): RegExp {
  let re = ''
  for (let i = 0; i < part.length; i++) {
    const c = part[i] ?? ''
    if (c === '*') re += '.*'
    else if (c === '?') re += '.'
    else if (c === '[') {
      const close = part.indexOf(']', i + 2)
      if (close < 0) {
        re += '\\['
        continue
      }
      let body = part.slice(i + 1, close)
      const negated = body.startsWith('!') || body.startsWith('^')
      if (negated) body = body.slice(1)
      re += `[${negated ? '^' : ''}${body.replace(/[\\\]^]/gu, '\\$&')}]`
      i = close
    } else re += c.replace(/[.*+?^${}()|[\]\\]/gu, '\\$&')
  }
  return new RegExp(`^${re}$`, 'su')
}

/**
 * Matches `text` against one ssh pattern (`*` any run, `?` one character), case-insensitively.
 *
 * @example
 * matchPattern('node7.lab', '*.lab') // true
 */
export function matchPattern(text: string, pattern: string, caseSensitive = false): boolean {
  const t = caseSensitive ? text : text.toLowerCase()
  const p = caseSensitive ? pattern : pattern.toLowerCase()
  // iterative wildcard match with backtracking on the last '*'
  let ti = 0
  let pi = 0
  let star = -1
  let mark = 0
  while (ti < t.length) {
    if (pi < p.length && (p[pi] === '?' || p[pi] === t[ti])) {
      ti++
      pi++
    } else if (pi < p.length && p[pi] === '*') {
      star = pi++
      mark = ti
    } else if (star >= 0) {
      pi = star + 1
      ti = ++mark
    } else {
      return false
    }
  }
  while (pi < p.length && p[pi] === '*') pi++
  return pi === p.length
}

/**
 * Matches `text` against a comma-separated ssh pattern list: true when some pattern matches and no `!pattern` does.
 *
 * @example
 * matchPatternList('db.lab', '*.lab,!db.lab') // false
 */
export function matchPatternList(text: string, list: string): boolean {
  return matchPatterns(text, list.split(','))
}

export function matchPatterns(text: string, patterns: readonly string[], caseSensitive = false): boolean {
  let matched = false
  for (const pattern of patterns) {
    if (pattern.startsWith('!')) {
      if (matchPattern(text, pattern.slice(1), caseSensitive)) return false
    } else if (matchPattern(text, pattern, caseSensitive)) {
      matched = true
    }
  }
  return matched
}
