import { rm } from 'node:fs/promises'
import { basename, join, resolve } from 'node:path'

import { kindFromFileName } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'
import { makePrivateTempDir } from '../safe-fs/index.js'
import { ipythonDir, PulledTunnel } from '../service/index.js'
import { jupyterRuntimeDir, localCopyDir, type RemoteSpec } from '../sources/index.js'
import type { Output } from './output.js'
import { sshOptionsFrom, type SshArgs } from './ssh-options.js'
import { followTunnel, readyEvent } from './tunnel-events.js'

/** Where `up host:PATH` writes its copy by default: where `watch --remote` would. */
export function defaultRemoteOut(spec: RemoteSpec, env: NodeJS.ProcessEnv): string {
  const path = spec.path ?? ''
  const dir = localCopyDir(path, kindFromFileName(path), {
    ipythonDir: ipythonDir(env),
    runtimeDir: jupyterRuntimeDir(env),
  })
  if (dir === undefined) {
    throw new IppTunnelError(
      'E_USAGE',
      `${spec.destination}:${path} is neither in a profile's security directory nor a kernel file: give --out`,
    )
  }
  return join(dir, basename(path))
}

/**
 * Pulls `spec` over SFTP, tunnels it, writes `out`, and renders what happens to it (ready, changed, removed,
 * errors, link events) until `stop()`.
 */
export async function openPulled(
  spec: RemoteSpec,
  args: SshArgs & { readonly poll?: number | undefined },
  out: string,
  output: Output,
  signal?: AbortSignal,
  owner?: string,
): Promise<{ pulled: PulledTunnel; stop: () => void }> {
  const pulled = await PulledTunnel.open(spec, {
    ...sshOptionsFrom(args, output),
    ...(signal !== undefined && { signal }),
    ...(owner !== undefined && { owner }),
    out: resolve(out),
    ...(args.poll !== undefined && { pollMs: args.poll }),
  })
  const file = pulled.file
  output
    .format('changed', (e) => `changed: ${String(e.file)} followed in ${String(e.ms)} ms, copy rewritten`)
    .format('removed', (e) => `${String(e.file)} went away; the tunnel stays and follows it when it is back`)
    .format('warning', (e) => `warning: ${String(e.message)}`)
  const remote = { source: 'remote', destination: spec.destination, path: spec.path }
  pulled.on('warning', (e) => output.emit({ event: 'warning', file, message: e.message }))
  pulled.on('changed', (e) =>
    output.emit({
      ...readyEvent(pulled.tunnel, file, e.out),
      event: 'changed',
      ms: Math.round(e.ms),
      ...remote,
    }),
  )
  pulled.on('removed', () => output.emit({ event: 'removed', file, ...remote }))
  pulled.on('file:error', (e) =>
    output.emit({ event: 'error', file, code: e.code, message: e.message, ...remote }),
  )
  const stopFollowing = followTunnel(pulled.tunnel, output, file)
  output.emit({ ...readyEvent(pulled.tunnel, file, out), ...remote })
  return { pulled, stop: stopFollowing }
}

/**
 * `host:PATH` for the commands that run against a file here (`ping`, `px`, `engines`): pulled and tunnelled as
 * `up` does it, its loopback copy in a private temp directory that `close()` removes with the tunnel. With
 * `render`, what happens to the file is printed as `up` prints it (for a command that stays up).
 */
export async function openPrivateCopy(
  spec: RemoteSpec,
  args: SshArgs & { readonly poll?: number | undefined },
  output: Output,
  options: { readonly render: boolean; readonly signal?: AbortSignal | undefined },
): Promise<{ pulled: PulledTunnel; out: string; close: () => Promise<void> }> {
  const dir = await makePrivateTempDir('ipp-tunnel-')
  const out = join(dir, basename(spec.path ?? 'connection.json'))
  try {
    let pulled: PulledTunnel
    let stop = (): void => undefined
    if (options.render) {
      ;({ pulled, stop } = await openPulled(spec, args, out, output, options.signal))
    } else {
      pulled = await PulledTunnel.open(spec, {
        ...sshOptionsFrom(args, output),
        ...(options.signal !== undefined && { signal: options.signal }),
        out,
        ...(args.poll !== undefined && { pollMs: args.poll }),
      })
    }
    return {
      pulled,
      out,
      close: async () => {
        stop()
        await pulled.close()
        await rm(dir, { recursive: true, force: true })
      },
    }
  } catch (err) {
    await rm(dir, { recursive: true, force: true })
    throw err
  }
}
