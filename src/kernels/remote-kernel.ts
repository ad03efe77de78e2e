import { createHash } from 'node:crypto'
import { EventEmitter } from 'node:events'
import { basename } from 'node:path'

import {
  endpoints,
  readConnectionFile,
  serializeConnectionFile,
  type KernelInfo,
} from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'
import { KeptSupervisor, RemoteFollower, RemoteProcesses, type RemoteProcessState } from '../remote/index.js'
import { Link, resolveTarget, type LinkOptions, type SshOptions } from '../ssh/index.js'
import { Tunnel } from '../tunnel/index.js'
import { remoteCurve } from './curve.js'
import { awaitListening, type KernelState } from './listening.js'
import { REMOTE_FILE, remoteInfoOf, type RemoteTransport } from './remote-file.js'
import { interruptStep, srunArgv, type KernelSlurmOptions, type KernelSlurmStep } from './slurm.js'

/** How a remote kernel is started and reached. */
export interface RemoteKernelOptions extends SshOptions, Omit<LinkOptions, keyof SshOptions> {
  /** The ssh destination the kernel runs behind (`user@host`, an alias). */
  readonly destination: string
  /** The connection file jupyter_client wrote here: its ports (on 127.0.0.1) are where the kernel is reached. */
  readonly connectionFile: string
  /** The remote python; default `python3` (after `setup`). */
  readonly python?: string
  /**
   * The remote command instead of `PYTHON -m ipykernel_launcher -f {remote_connection_file}`: program and
   * arguments, `{remote_connection_file}` where the remote connection file goes.
   */
  readonly kernelCmd?: readonly string[]
  /** Shell lines run first on the server, in the same shell (`module load …`, `conda activate …`). */
  readonly setup?: string
  /** The kernel's working directory on the server; default the remote home. */
  readonly cwd?: string
  readonly env?: Readonly<Record<string, string>>
  /** How long the kernel lives on the server with no launcher attached; default 1800 s. */
  readonly persistSeconds?: number
  /** The remote directory of remote processes; default `~/.ipp-tunnel/remote` (under `slurm`: on a shared file system). */
  readonly remoteDir?: string
  /**
   * A link already up to `destination` (a service's pooled one): used instead of a link of the kernel's own, and
   * never closed by it.
   */
  readonly link?: Link
  /**
   * A supervisor kept on `link` with the same `python` and `setup` (a service's, shared by its kernels): every
   * quick remote step goes through it, and it is never closed by the kernel. Default: one of the kernel's own.
   */
  readonly supervisor?: KeptSupervisor
  /** `unix` (default): sockets in the kernel's private directory; `tcp`: ports on 127.0.0.1 the kernel picks. */
  readonly remoteTransport?: RemoteTransport
  /** Run the kernel on a compute node with `srun` (TCP, bound to the node's address), reached from the login node. */
  readonly slurm?: KernelSlurmOptions
  /** Under `slurm`, while it starts: the job waits in the queue, then runs on a node. */
  readonly onState?: (state: KernelState) => void
  readonly signal?: AbortSignal
  /** Told, in one line, what the user should know and nothing stops: the file's Curve keys withheld, and why. */
  readonly onWarning?: (message: string) => void
}

/** Events of a {@link RemoteKernel}. */
export interface RemoteKernelEvents {
  /** Output of the remote kernel process (its stdout and stderr, as the Jupyter server log shows a local one's). */
  output: [info: { stream: 'stdout' | 'stderr'; data: Buffer }]
  /** The link dropped; the kernel runs on, and is attached again once the link is back. */
  detached: [info: { error?: Error }]
  /** Attached again after a drop, on the same node; output resumes where it stopped. */
  reattached: [info: { downMs: number }]
  'link:reconnecting': [info: { attempt: number; delayMs: number; error: Error }]
  /** The kernel process ended on the server (its files there are removed). */
  exited: [info: { code: number | null; signal: number | null }]
}

/** The remote process name of the kernel served by `info`: the same file (key and ports) gives the same name. */
export function remoteKernelName(info: KernelInfo): string {
  const ports = endpoints(info).map((e) => (e.kind === 'unix' ? e.path : String(e.port)))
  return `kernel-${createHash('sha256').update(info.key).update(ports.join(',')).digest('hex').slice(0, 16)}`
}

function checkLocal(info: KernelInfo, file: string): void {
  if (info.transport !== 'tcp' || !['127.0.0.1', 'localhost'].includes(info.ip)) {
    throw new IppTunnelError(
      'E_CONNFILE_FIELD',
      `${file}: field "ip" is ${JSON.stringify(info.ip)} over ${info.transport}: a kernel started on a server is reached on 127.0.0.1 over tcp here (Jupyter's default)`,
    )
  }
}

/**
 * A Jupyter kernel started on the ssh server for a connection file jupyter_client wrote here: the kernel runs there
 * under a supervisor of ours (a lease of `persistSeconds`), listens on private unix sockets in its own directory,
 * and is reached on exactly the ports of the local file, through one link. A drop of the link leaves the kernel
 * running; it is attached again when the link is back. `stop()` ends it and removes its files there.
 *
 * @example
 * const kernel = await RemoteKernel.start({ destination: 'me@cluster', connectionFile: file })
 * kernel.on('output', ({ data }) => process.stderr.write(data))
 * const { code } = await kernel.exited
 */
export class RemoteKernel extends EventEmitter<RemoteKernelEvents> {
  readonly name: string
  /** Where the kernel runs: the server's host name, the pid there, and its private directory there. */
  readonly host: string
  readonly pid: number
  readonly dir: string
  readonly link: Link
  readonly tunnel: Tunnel
  /** Under Slurm: the job and step the kernel runs as, and the compute node. */
  readonly slurm: KernelSlurmStep | undefined
  readonly #procs: RemoteProcesses
  /** The supervisor the kernel kept for itself (none when it was given one): closed with it. */
  readonly #ownSupervisor: KeptSupervisor | undefined
  readonly #setup: string | undefined
  /** Resolves when the remote kernel has ended (or could not be followed any more); never rejects. */
  readonly exited: Promise<{ code: number | null; signal: number | null; error?: IppTunnelError }>
  #resolveExited: (value: { code: number | null; signal: number | null; error?: IppTunnelError }) => void =
    () => undefined
  #follower: RemoteFollower | undefined
  #closing: Promise<void> | undefined
  /** The link is someone else's (see {@link RemoteKernelOptions.link}): closing leaves it up. */
  readonly #borrowed: boolean

  private constructor(
    started: RemoteProcessState,
    link: Link,
    tunnel: Tunnel,
    procs: RemoteProcesses,
    where: {
      step: KernelSlurmStep | undefined
      setup: string | undefined
      borrowed: boolean
      ownSupervisor: KeptSupervisor | undefined
    },
  ) {
    super()
    this.#ownSupervisor = where.ownSupervisor
    this.slurm = where.step
    this.#setup = where.setup
    this.#borrowed = where.borrowed
    this.name = started.name
    this.host = started.node?.host ?? ''
    this.pid = started.pid ?? 0
    this.dir = started.dir ?? ''
    this.link = link
    this.tunnel = tunnel
    this.#procs = procs
    this.exited = new Promise((resolve) => (this.#resolveExited = resolve))
    link.on('reconnecting', (e) => this.emit('link:reconnecting', e))
  }

  /**
   * Reads `connectionFile`, connects, stops any kernel of ours left for the same file (a restart reuses file, key
   * and ports), starts the kernel on the server, and listens on the file's ports.
   * @throws IppTunnelError `E_CONNFILE_*` for a file that is not a local tcp kernel file, ssh errors, `E_SPAWN`
   *   when the kernel cannot be started, `E_FORWARD` when one of the file's ports is taken here.
   */
  static start(options: RemoteKernelOptions): Promise<RemoteKernel> {
    return RemoteKernel.#open(options, undefined)
  }

  /**
   * Follows again a kernel this process started (through a service that has gone away, say): the same file, the
   * kernel still running on the same node with the same pid, else `E_REMOTE_GONE`. Never starts or stops one: a
   * kernel is adopted only by the launcher that started it.
   */
  static adopt(options: RemoteKernelOptions, started: { host: string; pid: number }): Promise<RemoteKernel> {
    return RemoteKernel.#open(options, started)
  }

  static async #open(
    options: RemoteKernelOptions,
    adopt: { host: string; pid: number } | undefined,
  ): Promise<RemoteKernel> {
    const file = options.connectionFile
    const { info } = await readConnectionFile(file)
    if (info.kind !== 'kernel') {
      throw new IppTunnelError('E_CONNFILE_KIND', `${file}: not a kernel connection file (kernel-*.json)`)
    }
    checkLocal(info, file)
    if (options.slurm !== undefined && options.remoteTransport === 'unix') {
      throw new IppTunnelError('E_USAGE', 'a kernel under Slurm runs on a compute node: its transport is tcp')
    }
    const transport = options.slurm !== undefined ? 'tcp' : (options.remoteTransport ?? 'unix')
    const signal = options.signal
    const borrowed = options.link !== undefined
    // reconnects go to the address the first connection reached (a round-robin login alias must not move the kernel);
    // where there is none to pin (ProxyCommand, jump host, master) the node check on attach holds: E_REMOTE_NODE
    const link =
      options.link ??
      new Link(await resolveTarget(options.destination, options), { pinAddress: true, ...options })
    const how = {
      ...(options.python !== undefined && { python: options.python }),
      ...(options.setup !== undefined && { setup: options.setup }),
    }
    const own = options.supervisor === undefined ? new KeptSupervisor(link, how) : undefined
    const kept = options.supervisor ?? own
    try {
      if (!borrowed) await link.connect(signal ? { signal } : {})
      const procs = new RemoteProcesses(link, {
        ...how,
        ...(kept !== undefined && { kept }),
        ...(options.remoteDir !== undefined && { dir: options.remoteDir }),
      })
      const name = remoteKernelName(info)
      if (adopt !== undefined) {
        const running = await procs.status(name, signal ? { signal } : {})
        if (running.state !== 'running' || running.node?.host !== adopt.host || running.pid !== adopt.pid) {
          throw new IppTunnelError(
            'E_REMOTE_GONE',
            `${file}: the kernel (pid ${adopt.pid} on ${adopt.host}) is no longer running there (${running.state})`,
          )
        }
        return await RemoteKernel.#follow(info, link, procs, running, own, {
          ...options,
          remoteTransport: transport,
        })
      }
      const curve = await remoteCurve(info, procs, { kernelCmd: options.kernelCmd !== undefined, signal })
      if (curve.withheld !== undefined) {
        options.onWarning?.(
          `the remote kernel runs without Curve encryption: ${curve.withheld}; a client that uses the file's Curve keys (jupyter_client 8.9 with transport_encryption) cannot connect to it, one that ignores them can (SSH encrypts the way to the server either way)`,
        )
      }
      const python = options.python ?? 'python3'
      const kernel = (options.kernelCmd ?? [python, '-m', 'ipykernel_launcher', '-f', REMOTE_FILE]).map(
        (word) => word.replaceAll('{remote_connection_file}', REMOTE_FILE),
      )
      const argv = options.slurm !== undefined ? srunArgv(options.slurm, python, kernel) : kernel
      const started = await procs.start(
        {
          name,
          argv,
          files: { 'kernel.json': serializeConnectionFile(remoteInfoOf(curve.info, '{dir}', transport)) },
          persistSeconds: options.persistSeconds ?? 1800,
          // a restart reuses file, key and ports: the kernel of ours left for them is stopped first
          replace: true,
          ...(options.cwd !== undefined && { cwd: options.cwd }),
          ...(options.env !== undefined && { env: options.env }),
        },
        signal ? { signal } : {},
      )
      return await RemoteKernel.#follow(info, link, procs, started, own, {
        ...options,
        remoteTransport: transport,
      })
    } catch (err) {
      own?.close()
      if (!borrowed) await link.close()
      throw err
    }
  }

  static async #follow(
    info: KernelInfo,
    link: Link,
    procs: RemoteProcesses,
    started: RemoteProcessState,
    own: KeptSupervisor | undefined,
    options: RemoteKernelOptions & { remoteTransport: RemoteTransport },
  ): Promise<RemoteKernel> {
    const { signal } = options
    const dir = started.dir ?? ''
    let tunnel: Tunnel
    let step: KernelSlurmStep | undefined
    let bound: Promise<void> = Promise.resolve()
    try {
      const localPorts = new Map(endpoints(info).map((e) => [e.channel, e.kind === 'unix' ? 0 : e.port]))
      let remote = remoteInfoOf(info, dir, 'unix')
      if (options.remoteTransport === 'tcp') {
        const listening = await awaitListening(procs, started.name, info, {
          slurm: options.slurm !== undefined,
          host: started.node?.host ?? '',
          dir,
          onState: options.onState,
          signal,
        })
        remote = listening.info
        step = listening.step
      }
      if (options.remoteTransport === 'unix') {
        // the kernel binds its sockets once it has started (python's imports take a second): a client's early
        // connection waits here for the server to see them all bound, rather than being refused and retried
        const sockets = endpoints(remote).flatMap((e) => (e.kind === 'unix' ? [basename(e.path)] : []))
        bound = procs.waitSockets(started.name, sockets, signal ? { signal } : {})
        bound.catch(() => undefined)
      }
      tunnel = await Tunnel.over(remote, link, {
        localPorts,
        probe: false,
        opensAfter: bound,
        ...(signal !== undefined && { signal }),
      })
    } catch (err) {
      await procs.stop(started.name).catch(() => undefined)
      throw err
    }
    const kernel = new RemoteKernel(started, link, tunnel, procs, {
      step,
      setup: options.setup,
      borrowed: options.link !== undefined,
      ownSupervisor: own,
    })
    // followed (a command of its own) once the kernel listens, not while it starts: its output is read from the
    // start all the same, and the lease is fresh
    void bound.then(
      () => kernel.#startFollowing(started),
      () => kernel.#startFollowing(started),
    )
    return kernel
  }

  /** Follows the kernel (output, lease), again after each drop of the link, until it has exited or this is closed. */
  #startFollowing(started: RemoteProcessState): void {
    if (this.#closing !== undefined) return
    const follower = new RemoteFollower(this.#procs, this.link, this.name, started)
    this.#follower = follower
    follower.on('output', (e) => this.emit('output', e))
    follower.on('detached', () => this.emit('detached', {}))
    follower.on('reattached', (e) => this.emit('reattached', e))
    void follower.ended.then((end) => {
      if (this.#closing === undefined) this.#finish(end)
    })
  }

  #finish(result: { code: number | null; signal: number | null; error?: IppTunnelError }): void {
    if (result.error === undefined) this.emit('exited', { code: result.code, signal: result.signal })
    this.#resolveExited(result)
  }

  /**
   * SIGINT to the remote kernel's process group (what `interrupt_mode: signal` means for a local kernel); under
   * Slurm to its task, by `scancel --signal=INT JOB.STEP`.
   */
  async interrupt(): Promise<void> {
    if (this.slurm !== undefined) await interruptStep(this.link, this.slurm, this.#setup)
    else await this.#procs.interrupt(this.name)
  }

  /**
   * Stops the remote kernel (SIGTERM, SIGKILL after 5 s) and removes its files there, then closes the forwards
   * and the link. `leaveRunning`: only let go (the kernel runs on until its lease ends). Safe to call twice.
   */
  close(options: { leaveRunning?: boolean } = {}): Promise<void> {
    this.#closing ??= (async () => {
      await this.#follower?.close()
      if (options.leaveRunning !== true && this.link.state === 'up') {
        await this.#procs.stop(this.name).catch(() => undefined)
      }
      await this.tunnel.close()
      this.#ownSupervisor?.close()
      if (!this.#borrowed) await this.link.close()
      this.#finish({ code: null, signal: null })
    })()
    return this.#closing
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close()
  }
}
