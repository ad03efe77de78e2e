import type { Argv } from 'yargs'

import { IppTunnelError } from '../errors/index.js'
import { loginToService, statusSocketPath, type PendingLogin } from '../service/index.js'
import { quotePrompts } from '../ssh/index.js'
import { EXIT, Output } from './output.js'
import { interrupted, untilSignal } from './signals.js'
import { answerOnTerminal } from './ssh-options.js'
import { visible } from './visible.js'

interface LoginArgs {
  readonly destination?: string | undefined
  readonly json: boolean
  readonly debug: boolean
}

/** `ipp-tunnel login [DEST]`: answers, on this terminal, the prompts of the service's links that wait for a login. */
export function registerLogin(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'login [destination]',
    "answer the login prompts (one-time code, password) of the running service's ssh links, on this terminal",
    (y) =>
      y.positional('destination', {
        type: 'string',
        describe: 'only the links to this destination (user@host:port, or a part of it); default: every one',
      }),
    (args) => run(() => login(args as unknown as LoginArgs)),
  )
}

function waitingLine(p: PendingLogin): string {
  const asks = p.prompts.length > 0 ? `, asks ${quotePrompts(p)}` : ''
  const via = p.host !== p.destination ? ` (through ${p.host})` : ''
  return `logging in to ${p.destination}${via}${asks}`
}

async function login(args: LoginArgs): Promise<number> {
  const output = new Output({ json: args.json, debug: args.debug })
  output
    .format('login', (e) => waitingLine(e as unknown as PendingLogin))
    .format('logged-in', (e) => `logged in to ${String(e.destination)}`)
    .format('refused', (e) => `${String(e.destination)}: ${String(e.message)}`)
  const signals = untilSignal()
  try {
    if (!process.stdin.isTTY) {
      throw new IppTunnelError(
        'E_USAGE',
        'login reads answers on a terminal; run it in one (its input is not a terminal)',
      )
    }
    let failed = 0
    let none: string | undefined
    const results = await loginToService(statusSocketPath(process.env), args.destination, {
      signal: signals.signal,
      answer: async (prompt) => {
        // the server's own words, as ssh(1) shows them (control characters escaped)
        if (prompt.host !== prompt.destination) process.stderr.write(`(${visible(prompt.host)})\n`)
        return answerOnTerminal(prompt)
      },
      note: (message) => {
        switch (message.type) {
          case 'none':
            none = message.message
            break
          case 'login':
            for (const p of message.destinations) output.emit({ event: 'login', ...p })
            break
          case 'result':
            if (message.ok) {
              output.emit({ event: 'logged-in', destination: message.destination })
            } else {
              failed++
              output.emit({
                event: 'refused',
                destination: message.destination,
                code: message.code,
                message: message.message,
              })
            }
            break
        }
      },
    })
    // Ctrl-C at a prompt (or anywhere): the socket is closed, the service hears no answer; 130
    const signal = signals.received()
    if (signal !== undefined) return interrupted(output, signal, {})
    if (none !== undefined && args.destination !== undefined) {
      // the user named a link that does not wait: a mistyped name must not look like success
      throw new IppTunnelError('E_USAGE', none)
    }
    if (none !== undefined) {
      output.result({ loggedIn: 0, message: none }, none)
      return EXIT.ok
    }
    if (failed > 0) return EXIT.runtime
    if (results.length === 0) {
      throw new IppTunnelError('E_REMOTE', 'the service ended the login before any result')
    }
    return EXIT.ok
  } catch (err) {
    return output.fail(err)
  } finally {
    signals.dispose()
  }
}
