/**
 * Characters that mean nothing to a POSIX shell in any quoting context (and not at a word's start either): letters
 * and digits of any script (their UTF-8 bytes are all above ASCII), `_ . , : @ % + / -`.
 */
const PLAIN = /^[\p{L}\p{N}_.,:@%+/-]*$/u

/**
 * `word` as one `/bin/sh` word: as it is when it holds only characters the shell reads literally anywhere
 * (letters, digits, `_ . , : @ % + / -`), else in single quotes (`'` written `'\''`).
 *
 * @example
 * shellQuote('login.example.org') // 'login.example.org'
 * shellQuote("it's $(id)") // `'it'\''s $(id)'`
 */
export function shellQuote(word: string): string {
  if (word !== '' && PLAIN.test(word)) return word
  return `'${word.replaceAll("'", `'\\''`)}'`
}

/** Where a `%` token stands in a shell command line, as far as a left-to-right reading can tell. */
export type ShellContext = 'plain' | 'single' | 'double' | 'unknown'

/**
 * Scans a shell command line from the left and calls `onToken(name, context)` for each `%X` in it, pasting what it
 * returns in place of the two characters. The context says how the shell reads the token's place: outside quotes,
 * in '…', in "…", or `unknown` — after a backslash, or once `$(`, a backquote, `${`, `$'` or a here-document makes
 * the nesting more than a left-to-right reading of quotes can follow.
 */
export function expandShellTokens(
  command: string,
  onToken: (name: string | undefined, context: ShellContext) => string,
): string {
  let out = ''
  let quote: 'single' | 'double' | undefined
  let nested = false
  for (let i = 0; i < command.length; i++) {
    const c = command.charAt(i)
    if (c === '%') {
      const escaped = i > 0 && command.charAt(i - 1) === '\\' && quote !== 'single'
      const context: ShellContext = nested || escaped ? 'unknown' : (quote ?? 'plain')
      out += onToken(command[i + 1], context)
      i++
      continue
    }
    out += c
    if (quote === 'single') {
      if (c === "'") quote = undefined
    } else if (c === '\\') {
      // the escaped character is copied as it is; a "%" after the backslash is still a token (as in ssh(1))
      const next = command[i + 1]
      if (next !== undefined && next !== '%') {
        out += next
        i++
      }
    } else if (c === '"') {
      quote = quote === 'double' ? undefined : 'double'
    } else if (c === "'" && quote === undefined) {
      quote = 'single'
    } else if (c === '`' || (c === '$' && (command[i + 1] === '(' || command[i + 1] === '{'))) {
      nested = true
    } else if (c === '$' && command[i + 1] === "'" && quote === undefined) {
      // bash's $'…' (when /bin/sh is bash) reads backslashes in its own way
      nested = true
    } else if (c === '<' && command[i + 1] === '<' && quote === undefined) {
      nested = true
    }
  }
  return out
}

/**
 * `value` written for its place in a shell command line so that the shell reads back exactly `value`; undefined
 * when that place is `unknown` and the value is not plain (see {@link shellQuote}).
 *
 * @example
 * quoteFor('a"b', 'double') // 'a\\"b'
 */
export function quoteFor(value: string, context: ShellContext): string | undefined {
  if (PLAIN.test(value)) return value
  switch (context) {
    case 'plain':
      return shellQuote(value)
    case 'single':
      return value.replaceAll("'", `'\\''`)
    case 'double':
      return value.replace(/[$`"\\]/gu, '\\$&')
    case 'unknown':
      return undefined
  }
}
