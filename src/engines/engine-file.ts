import { rmSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import { basename, join, resolve } from 'node:path'

import { HubQuery } from '../client/index.js'
import {
  CONNECTION_INFO_ENV,
  connectionInfoFromEnv,
  isLoopbackOnly,
  readConnectionFile,
  writeConnectionFileAtomic,
  type ConnectionInfo,
  type IppEngineInfo,
} from '../connection-file/index.js'
import { IppTunnelError, isIppTunnelError } from '../errors/index.js'
import { makePrivateTempDir } from '../safe-fs/index.js'
import { refuseUnreachable } from '../sockets/index.js'
import type { LinkOptions, SshOptions } from '../ssh/index.js'
import { chooseDestination, openTunnel, type DestinationChoice, type Tunnel } from '../tunnel/index.js'

/**
 * An engine file that lives elsewhere (the CLI's `host:PATH`), made local by the caller: `path` is a loopback copy
 * the caller keeps tunnelled, used directly (no tunnel of ours, no `ready`).
 */
export interface EngineFileCopy {
  /** How events name it (e.g. `host:PATH`). */
  readonly file: string
  /** The loopback copy to read. */
  readonly path: string
  /** Fires when the caller's link gives up: the engines then end as with a failed tunnel of ours. */
  readonly linkFailed: Promise<Error> | undefined
  /** Closes the caller's tunnel and removes the copy (called last when the engines stop). */
  close(): Promise<void>
}

/** Where the engine file comes from, and how its tunnel is opened. */
export interface EngineFileOptions {
  /** A local engine file; absent: the JSON in `env.IPP_CONNECTION_INFO` (ipyparallel 8+ passes it to engines). */
  readonly file?: string | undefined
  /** A file elsewhere: opened (after every check passed) by the caller, see {@link EngineFileCopy}. */
  readonly copy?: { readonly text: string; open(signal: AbortSignal): Promise<EngineFileCopy> } | undefined
  /** The ssh options of the tunnel (as {@link openTunnel}); `ssh` overrides the file's ssh field. */
  readonly ssh?: (SshOptions & Omit<LinkOptions, keyof SshOptions>) | undefined
  /** The tunnel's listeners: tcp (default) or unix. */
  readonly listen?: 'tcp' | 'unix' | undefined
}

/** What the engines run on: the loopback file, and what holds it open. */
export interface OpenedEngineFile {
  readonly file: string
  readonly info: IppEngineInfo
  /** The loopback engine file the engines read. */
  readonly out: string
  readonly tunnel: Tunnel | undefined
  readonly hub: HubQuery | undefined
  readonly copy: EngineFileCopy | undefined
  /** Fires when the link (ours or the caller's) gives up. */
  readonly linkFailed: Promise<Error>
}

/** The engine file and everything opened for it, closed in order by {@link EngineFile.close}. */
export class EngineFile {
  #dirs: string[] = []
  #copy: EngineFileCopy | undefined
  #tunnel: Tunnel | undefined
  #hub: HubQuery | undefined
  #closing: Promise<void> | undefined

  /**
   * Reads the engine file, and tunnels it through its ssh server unless it is a copy or on this host's loopback.
   * `onReady` is told once the tunnel is open (or none is needed); `onWarning` of each warning about the file.
   *
   * @throws IppTunnelError `E_CONNFILE_*` naming the file (or `IPP_CONNECTION_INFO`), `E_USAGE`, what
   * {@link openTunnel} throws.
   */
  async open(
    options: EngineFileOptions & { readonly env: NodeJS.ProcessEnv; readonly acrossNodes: boolean },
    signal: AbortSignal,
    events: {
      onNamed(file: string): void
      onWarning(message: string): void
      onReady(e: { out: string; direct: boolean; tunnel: Tunnel | undefined; sshFrom?: string }): void
    },
  ): Promise<OpenedEngineFile> {
    let file: string
    let path: string
    if (options.copy !== undefined) {
      this.#copy = await options.copy.open(signal)
      ;({ file, path } = this.#copy)
    } else if (options.file === undefined) {
      const dir = await this.#privateDir('ipp-tunnel-engines-env-')
      path = await writeEnvInfo(dir, options.env)
      file = CONNECTION_INFO_ENV
    } else {
      file = path = resolve(options.file)
    }
    events.onNamed(file)
    const { info, warnings } = await readConnectionFile(path)
    requireEngineInfo(info, file)
    for (const warning of warnings) events.onWarning(warning)
    let out: string
    const pulled = this.#copy !== undefined
    const choice = pulled
      ? 'direct'
      : await destinationOrDirect(info, file, options.ssh?.ssh, options.acrossNodes)
    if (choice === 'direct') {
      // a loopback copy (the service's, or pulled just now) or a controller on this host: no ssh, as ipengine does it
      out = path
      if (!pulled) {
        await refuseUnreachable(info, file)
        events.onReady({ out, direct: true, tunnel: undefined })
      }
      this.#hub = HubQuery.open(info, file)
    } else {
      const { destination, sshFrom } = choice
      const dir = await this.#privateDir('ipp-tunnel-engines-')
      out = join(dir, basename(path))
      this.#tunnel = await openTunnel(info, {
        ...options.ssh,
        ssh: destination,
        out,
        listen: options.listen ?? 'tcp',
        signal,
      })
      events.onReady({ out, direct: false, tunnel: this.#tunnel, ...(sshFrom !== undefined && { sshFrom }) })
      // Registration and unregistration are what the hub says, asked through this same tunnel.
      const loopback = this.#tunnel.loopback
      if (loopback.kind === 'ipp-engine') this.#hub = HubQuery.open(loopback, file)
    }
    const tunnel = this.#tunnel
    const copy = this.#copy
    const linkFailed = new Promise<Error>((resolveFailed) => {
      tunnel?.once('link:failed', (e) => resolveFailed(e.error))
      void copy?.linkFailed?.then(resolveFailed)
    })
    return { file, info, out, tunnel, hub: this.#hub, copy, linkFailed }
  }

  async #privateDir(prefix: string): Promise<string> {
    const dir = await makePrivateTempDir(prefix)
    this.#dirs.push(dir)
    return dir
  }

  /** Closes the hub, the tunnel, the caller's copy, and removes the private directories. Safe twice. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.#hub?.close()
      await this.#tunnel?.close()
      await this.#copy?.close()
      for (const dir of this.#dirs) await rm(dir, { recursive: true, force: true })
    })()
    return this.#closing
  }

  /** Removes the private directories at once, synchronously (for a process that is exiting now). */
  removeNow(): void {
    for (const dir of this.#dirs) rmSync(dir, { recursive: true, force: true })
  }
}

/** @throws IppTunnelError `E_CONNFILE_KIND` naming `file` when `info` is not a controller's engine info. */
export function requireEngineInfo(info: ConnectionInfo, file: string): asserts info is IppEngineInfo {
  if (info.kind !== 'ipp-engine') {
    throw new IppTunnelError(
      'E_CONNFILE_KIND',
      `${file}: is an ${info.kind} connection file; engines needs the controller's engine file (ipcontroller-engine.json)`,
    )
  }
}

/**
 * The engine connection info ipyparallel 8+ passes in IPP_CONNECTION_INFO, validated as a file is (errors name the
 * variable), written into `dir` (private) for the engines, which read a file. Returns its path.
 * @throws IppTunnelError `E_USAGE` when the variable is unset too, `E_CONNFILE_*` naming the variable.
 */
async function writeEnvInfo(dir: string, env: NodeJS.ProcessEnv): Promise<string> {
  const info = connectionInfoFromEnv(env)
  if (info === undefined) {
    throw new IppTunnelError(
      'E_USAGE',
      `give the controller's engine file (ipcontroller-engine.json), or its JSON in $${CONNECTION_INFO_ENV}`,
    )
  }
  requireEngineInfo(info, CONNECTION_INFO_ENV)
  const path = join(dir, 'ipcontroller-engine.json')
  await writeConnectionFileAtomic(path, info)
  return path
}

/**
 * The ssh server to tunnel an engine file through ({@link chooseDestination}), or `'direct'` when none is named and
 * every endpoint is on this host (a loopback copy such as `watch` writes, or a local controller): the engines then
 * connect as `ipengine` would, with no tunnel. Engines on other nodes cannot reach this host's loopback.
 */
async function destinationOrDirect(
  info: IppEngineInfo,
  file: string,
  ssh: string | undefined,
  acrossNodes: boolean,
): Promise<DestinationChoice | 'direct'> {
  try {
    return await chooseDestination(info, file, ssh, 'pass --ssh user@host')
  } catch (err) {
    if (!(isIppTunnelError(err) && err.code === 'E_DESTINATION') || !isLoopbackOnly(info)) throw err
    if (acrossNodes) {
      throw new IppTunnelError(
        'E_USAGE',
        `${file}: its endpoints are on this host's loopback, out of reach of other nodes; give the controller's own engine file with --ssh user@host`,
        { cause: err },
      )
    }
    return 'direct'
  }
}
