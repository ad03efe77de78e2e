import { readFile } from 'node:fs/promises'
import { createInterface } from 'node:readline'
import { Writable } from 'node:stream'

import type { Argv } from 'yargs'

import { IppTunnelError } from '../errors/index.js'
import type { HostKeyPolicy, PassphraseProvider, SshOptions } from '../ssh/index.js'

/** The ssh flags every tunnel-opening command takes. */
export interface SshArgs {
  readonly ssh?: string | undefined
  readonly identity?: string | undefined
  readonly 'known-hosts'?: string | undefined
  readonly 'host-key-check': HostKeyPolicy
  readonly 'passphrase-file'?: string | undefined
  readonly 'ssh-config'?: string | undefined
}

/** Adds the shared ssh flags to a command. */
export function withSshOptions<T>(yargs: Argv<T>) {
  return yargs
    .option('ssh', {
      type: 'string',
      describe: "ssh server to forward through (overrides the file's ssh field)",
    })
    .option('identity', {
      alias: 'i',
      type: 'string',
      describe: 'private key to use (tried first and alone)',
    })
    .option('known-hosts', { type: 'string', describe: 'known_hosts file (default ~/.ssh/known_hosts)' })
    .option('host-key-check', {
      choices: ['strict', 'accept-new', 'off'] as const,
      default: 'strict',
      describe: 'strict refuses unknown keys; accept-new records them; off trusts anything',
    })
    .option('passphrase-file', { type: 'string', describe: 'file whose first line unlocks an encrypted key' })
    .option('ssh-config', { type: 'string', describe: 'ssh client config (default ~/.ssh/config)' })
}

/** Maps the flags onto the library's SshOptions. */
export function sshOptionsFrom(args: SshArgs): SshOptions {
  return {
    ...(args.ssh !== undefined && { ssh: args.ssh }),
    ...(args.identity !== undefined && { identity: args.identity }),
    ...(args['known-hosts'] !== undefined && { knownHosts: args['known-hosts'] }),
    ...(args['ssh-config'] !== undefined && { configFile: args['ssh-config'] }),
    hostKeyCheck: args['host-key-check'],
    passphrase: passphraseProvider(args['passphrase-file']),
  }
}

function passphraseProvider(file: string | undefined): PassphraseProvider {
  if (file !== undefined) {
    return async () => {
      try {
        const text = await readFile(file, 'utf8')
        return text.split(/\r?\n/, 1)[0] ?? ''
      } catch (cause) {
        throw new IppTunnelError('E_USAGE', `cannot read --passphrase-file ${file}`, { cause })
      }
    }
  }
  return (keyPath) =>
    process.stdin.isTTY ? askHidden(`Passphrase for ${keyPath}: `) : Promise.resolve(undefined)
}

/** Prompts on the terminal without echoing what is typed. */
function askHidden(prompt: string): Promise<string | undefined> {
  let muted = false
  const sink = new Writable({
    write(chunk: Buffer, _encoding, callback) {
      if (!muted) process.stderr.write(chunk)
      callback()
    },
  })
  const rl = createInterface({ input: process.stdin, output: sink, terminal: true })
  return new Promise((resolve) => {
    rl.question(prompt, (answer) => {
      rl.close()
      process.stderr.write('\n')
      resolve(answer)
    })
    muted = true
    rl.on('SIGINT', () => {
      rl.close()
      resolve(undefined)
    })
  })
}
