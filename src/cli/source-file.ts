import { resolve } from 'node:path'

import { openClient, type IppClient, type KernelClient } from '../client/index.js'
import { readConnectionFile } from '../connection-file/index.js'
import { remotePathOf } from '../sources/index.js'
import type { Output } from './output.js'
import { sshOptionsFrom, type SshArgs } from './ssh-options.js'

/** The FILE of `ping`, `px` and `engines`, as a local file to work on. */
export interface LocalSource {
  /** How events name it: the local path, or `host:PATH` as given. */
  readonly file: string
  /** The local file to read: FILE itself, or the loopback copy of a pulled `host:PATH`. */
  readonly path: string
  /** True for a pulled `host:PATH`: `path` is a loopback copy whose tunnel this source holds. */
  readonly pulled: boolean
  /** For `host:PATH`: fires when its ssh link gives up. */
  readonly linkFailed: Promise<Error> | undefined
  /** Closes the tunnel of a pulled file and removes its copy; nothing for a local file. */
  close(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

/**
 * FILE read as `up` and `exec` read it: a local path, or `[user@]host[:port]:PATH` pulled over SFTP and tunnelled
 * (see {@link openPrivateCopy}; loaded only for a remote file).
 *
 * @throws IppTunnelError `E_DESTINATION` for a malformed `host:PATH`, and what pulling it throws.
 */
export async function openSource(
  text: string,
  args: SshArgs & { readonly poll?: number | undefined },
  output: Output,
  options: { readonly render: boolean; readonly signal?: AbortSignal | undefined },
): Promise<LocalSource> {
  const remote = remotePathOf(text)
  if (remote === undefined) {
    const file = resolve(text)
    const close = () => Promise.resolve()
    return { file, path: file, pulled: false, linkFailed: undefined, close, [Symbol.asyncDispose]: close }
  }
  const { openPrivateCopy } = await import('./remote-file.js')
  const copy = await openPrivateCopy(remote, args, output, options)
  return {
    file: copy.pulled.file,
    path: copy.out,
    pulled: true,
    linkFailed: new Promise((resolveFailed) =>
      copy.pulled.tunnel.once('link:failed', (e) => resolveFailed(e.error)),
    ),
    close: copy.close,
    [Symbol.asyncDispose]: copy.close,
  }
}

/**
 * A client on the connection file of `source`, as `ping` and `px` open it: the file's warnings emitted as events,
 * then through ssh as the file says, or straight to a pulled file's loopback copy; `timeoutMs` bounds the handshake
 * and each request. The caller closes it.
 *
 * @example
 * await using source = await openSource(args.file, args, output, { render: false })
 * await using client = await openSourceClient(source, args, output, 30_000)
 */
export async function openSourceClient(
  source: LocalSource,
  args: SshArgs,
  output: Output,
  timeoutMs: number,
): Promise<IppClient | KernelClient> {
  const { warnings } = await readConnectionFile(source.path)
  for (const warning of warnings) output.emit({ event: 'warning', file: source.file, message: warning })
  return openClient(source.path, {
    ...(source.pulled ? {} : sshOptionsFrom(args, output)),
    handshakeTimeoutMs: timeoutMs,
    requestTimeoutMs: timeoutMs,
  })
}
