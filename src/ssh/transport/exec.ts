import { spawn } from 'node:child_process'
import type { Readable, Writable } from 'node:stream'
import type { Client } from 'ssh2'
import { IppTunnelError } from '../../errors/index.js'
import { describe } from './channels.js'

/** How a remote command ended: its exit code, or the signal that ended it; both null when the link went first. */
export interface RemoteExit {
  readonly code: number | null
  readonly signal: string | null
}

/**
 * A command running on the ssh server (an `exec` session channel, as `ssh host CMD` opens): its stdio as streams.
 * Ending `stdin` sends EOF; `close()` ends the session (the server then closes the command's pipes).
 */
export interface RemoteCommand {
  readonly stdin: Writable
  readonly stdout: Readable
  readonly stderr: Readable
  /** Resolves once the session is closed (never rejects). */
  readonly exited: Promise<RemoteExit>
  close(): void
}

/** Runs `command` (parsed by the user's login shell on the server) in a session channel of `client`. */
export function execOnClient(client: Client, command: string, where: string): Promise<RemoteCommand> {
  return new Promise((resolve, reject) => {
    const fail = (err: unknown): void =>
      reject(
        new IppTunnelError('E_REMOTE', `${where} refused to run a command: ${describe(err)}`, {
          cause: err,
        }),
      )
    try {
      client.exec(command, (err, channel) => {
        if (err) {
          fail(err)
          return
        }
        let code: number | null = null
        let signal: string | null = null
        channel.once('exit', (c: number | null, s?: string) => {
          code = c
          signal = s ?? null
        })
        channel.on('error', () => undefined)
        channel.stderr.on('error', () => undefined)
        const exited = new Promise<RemoteExit>((done) => channel.once('close', () => done({ code, signal })))
        resolve({
          stdin: channel,
          stdout: channel,
          stderr: channel.stderr,
          exited,
          close: () => channel.close(),
        })
      })
    } catch (err) {
      fail(err)
    }
  })
}

/** Runs `command` through the OpenSSH master at `argv` (`ssh -S PATH … DEST`), as a session of that master. */
export function execThroughMaster(
  argv: readonly string[],
  command: string,
  env: Readonly<Record<string, string | undefined>> | undefined,
  detached = false,
): RemoteCommand {
  const [file = 'ssh', ...args] = argv
  const child = spawn(file, [...args, '-T', '--', command], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...(env ?? process.env) },
    detached,
  })
  child.stdin.on('error', () => undefined)
  const exited = new Promise<RemoteExit>((done) => {
    child.once('error', () => done({ code: null, signal: null }))
    // ssh's own failures (the master went away) are 255: the command did not end on the server
    child.once('close', (code, signal) =>
      done(
        code === 255
          ? { code: null, signal: null }
          : { code, signal: signal === null ? null : signal.replace(/^SIG/u, '') },
      ),
    )
  })
  return {
    stdin: child.stdin,
    stdout: child.stdout,
    stderr: child.stderr,
    exited,
    close: () => child.kill('SIGTERM'),
  }
}
