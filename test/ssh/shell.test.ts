// Properties of what reaches /bin/sh: a ProxyCommand's expanded tokens read back byte for byte, whatever they hold
// and wherever they stand; a host or user the destination rule lets through needs no quoting at all.
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { test } from 'node:test'

import fc from 'fast-check'

import { emptySshConfig } from '../../src/ssh/config/parse.js'
import { destinationProblem, lookupHost, shellQuote } from '../../src/ssh/index.js'

/** What `sh -c SCRIPT` prints, as bytes. */
function sh(script: string): Buffer {
  return execFileSync('/bin/sh', ['-c', script])
}

/** Shell syntax first, then anything (NUL cannot be in an argument, so it cannot be in a value either). */
const shellish = fc.constantFrom(...`'"\`$\\;&|<>(){}[]*?~#!=% \t\n-.,:@/+aZ9é`.split(''))
const value = fc
  .oneof(fc.string({ unit: shellish, maxLength: 24 }), fc.string({ unit: 'binary', maxLength: 24 }))
  .filter((v) => !v.includes('\0'))

/** The ProxyCommand `command` with `%r` = `user`, expanded as a hop's would be. */
function expanded(command: string, user: string): string {
  const s = lookupHost(emptySshConfig, 'h', {
    user,
    proxyCommand: command,
    localUser: 'me',
    home: '/home/me',
  })
  assert.ok(s.proxyCommand)
  return s.proxyCommand.command
}

test('a ProxyCommand token reads back byte for byte outside quotes, in "…", in \'…\' and glued to other text', () => {
  // %% is ssh's own escape: the shell sees printf %s
  const command = `printf %%s %r; printf '\\0'; printf %%s "%r"; printf '\\0'; printf %%s '%r'; printf '\\0'; printf %%s x%r"y%r"'z%r'`
  fc.assert(
    fc.property(value, (v) => {
      const want = Buffer.from([v, v, v, `x${v}y${v}z${v}`].join('\0'))
      assert.deepEqual(sh(expanded(command, v)), want)
    }),
    { numRuns: 300 },
  )
})

test('shellQuote: any word reads back byte for byte, and a plain one is left as it is', () => {
  fc.assert(
    fc.property(fc.array(value, { maxLength: 4 }), (words) => {
      const script = words.map((w) => `printf %s ${shellQuote(w)}; printf '\\0'`).join('; ')
      assert.deepEqual(sh(script === '' ? ':' : script), Buffer.from(words.map((w) => `${w}\0`).join('')))
    }),
    { numRuns: 200 },
  )
  assert.equal(shellQuote('root@login-2.example.org:22'), 'root@login-2.example.org:22')
  assert.equal(shellQuote(''), "''")
})

test('a host or user that the destination rule accepts is the same word to the shell unquoted, as ssh(1) pastes it', () => {
  const part = fc.string({ unit: shellish, minLength: 1, maxLength: 12 })
  fc.assert(
    fc.property(part, part, (user, host) => {
      const text = `${user}@${host}`
      // the rule reads a destination trimmed (a tab before the user is no part of it), and a rejected one not at all
      if (text.trim() !== text || destinationProblem(text) !== undefined) return
      assert.deepEqual(
        sh(`printf %s ${user}; printf '\\0'; printf %s ${host}`),
        Buffer.from(`${user}\0${host}`),
      )
    }),
    { numRuns: 500 },
  )
  // OpenSSH >= 9.6's own list of what a command-line host or user may not hold, and more
  for (const c of `'\`"$\\;&<>|(){}*?~ \t\n`) {
    assert.notEqual(destinationProblem(`u${c}x@host`), undefined, JSON.stringify(c))
    assert.notEqual(destinationProblem(`user@h${c}x`), undefined, JSON.stringify(c))
  }
})

test('a value that needs quoting where the quoting cannot be told (after \\, in $(…), `…`, ${…}) is refused', () => {
  for (const command of ['nc \\%r', 'sh -c "nc $(echo %r)"', 'nc `echo %r`', 'nc ${x:-%r}', "nc $'%r'"]) {
    assert.throws(() => expanded(command, "it's"), {
      code: 'E_SSH_CONFIG',
      message: /ProxyCommand: %r is "it's", which cannot be quoted safely where it stands/,
    })
    // plain values are pasted as they are, as ssh(1) does
    assert.equal(expanded(command, 'alice'), command.replace('%r', 'alice'))
  }
})
