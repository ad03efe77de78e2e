import { EventEmitter } from 'node:events'
import { posix } from 'node:path'

import { HubQuery } from '../client/index.js'
import type { IppClientInfo } from '../connection-file/index.js'
import { IppTunnelError } from '../errors/index.js'
import { RemoteFollower, RemoteProcesses, type FollowEnd, type RemoteProcessState } from '../remote/index.js'
import type { PulledTunnel } from '../service/index.js'
import { resolveTarget, type Link } from '../ssh/index.js'
import { LinkPool } from '../tunnel/index.js'
import { enginesOf, enginesSpec, type EnginesKind } from './engines.js'
import { CONTROLLER_HEARTBEAT } from './heartbeat.js'
import { checkProfile, clusterIdOf, newClusterId, processNames, profileOfController } from './names.js'
import { pullClientFile } from './pull.js'
import { ensureRemoteDir, findCluster, removeConnectionFiles } from './remote-files.js'
import {
  jobProgressReader,
  reachableControllerArgv,
  readJobId,
  readJobNode,
  slurmArgsOf,
  slurmClusterOf,
  slurmClusterSpec,
  type JobNode,
  type JobProgress,
} from './slurm.js'
import { checkCompatible, localVersions } from './versions.js'
import type { ClusterOptions } from './options.js'

/** What `start` adds. */
export interface ClusterStartOptions extends ClusterOptions {
  /** Engines to start; default 2. */
  readonly n?: number
  /**
   * Where the controller runs: on the ssh server (`login`, the default), or inside the engines' batch job on its
   * first node (`slurm`; implies `engines: 'slurm'`).
   */
  readonly controller?: ControllerKind
  readonly engines?: EnginesKind
  /** With `engines: 'slurm'`: more sbatch arguments (`-N 2 --time=1:00:00`), words split without a shell. */
  readonly slurmArgs?: string
  /**
   * CurveZMQ between the controller and everyone (`IPP_ENABLE_CURVE=1`); the copy carries the server key. Default:
   * on with Slurm engines (the controller then listens beyond loopback), off otherwise.
   */
  readonly curve?: boolean
  /** Seconds the cluster runs on with no one attached; default: until stopped. */
  readonly persistSeconds?: number
  /**
   * With `controller: 'slurm'`: the job's progress while `start` waits for the controller in it (submitted, pending,
   * running); afterwards the cluster's `job` events say it.
   */
  readonly onJob?: (progress: JobProgress) => void
  /** The local python that will use the copy, checked against the remote one; `false` skips the check. */
  readonly localPython?: string | false
}

/** Where a cluster's controller runs: on the ssh server, or inside the batch job with the engines. */
export type ControllerKind = 'login' | 'slurm'

/** A cluster of ours on a server, as `list` shows it. */
export interface ClusterState {
  readonly profile: string
  readonly clusterId: string | undefined
  readonly host: string
  /** The controller's process there (for `controllerKind: 'slurm'`, the keeper of the whole job). */
  readonly controller: RemoteProcessState
  readonly controllerKind: ControllerKind
  /** With `controllerKind: 'slurm'`: the job's first node, where the controller runs (once the job runs). */
  readonly node: JobNode | undefined
  readonly engines: RemoteProcessState | undefined
  /** Engines asked for (from the engines' command line). */
  readonly n: number | undefined
  readonly kind: EnginesKind | undefined
  /** The Slurm job of the engines (`engines: 'slurm'`), once submitted. */
  readonly job: string | undefined
}

/** The engines of a {@link RemoteCluster}: their process there (for Slurm, the job's keeper) and their job. */
export interface ClusterEngines {
  readonly pid: number
  readonly n: number
  readonly kind: EnginesKind
  /** The Slurm job id, once the keeper said it (see the `job` event). */
  job?: string
}

/** Events of a {@link RemoteCluster}. */
export interface RemoteClusterEvents {
  /** The controller lists `count` engines (each change). */
  registered: [info: { count: number; n: number }]
  output: [info: { process: 'controller' | 'engines'; stream: 'stdout' | 'stderr'; data: Buffer }]
  detached: []
  reattached: [info: { downMs: number }]
  /** A process of the cluster ended on its own (the controller's end ends the cluster). */
  exited: [info: { process: 'controller' | 'engines'; end: FollowEnd }]
  warning: [info: { message: string }]
  /** The engines' Slurm job: submitted (its id), then each state change (`PENDING`, `RUNNING`…), `GONE`. */
  job: [info: JobProgress]
}

const REGISTRATION_POLL_MS = 250

/**
 * A whole ipyparallel cluster on an ssh server, started and followed over one link (one login): the controller
 * and its engines run there detached under our supervisor, its client file is pulled over SFTP, tunnelled and
 * copied where `Client(profile="NAME-tunnel")` finds it. `stop()` ends it and removes every file it made on both
 * sides; `detach()` lets it run on (`attach` finds it again, from any machine).
 *
 * @example
 * const cluster = await RemoteCluster.start({ destination: 'me@cluster', n: 4 })
 * cluster.on('registered', ({ count, n }) => console.log(`${count} of ${n} engines`))
 * await cluster.stop()
 */
export class RemoteCluster extends EventEmitter<RemoteClusterEvents> {
  readonly profile: string
  readonly clusterId: string
  /** Where the controller runs (the server's host name) and its pid there. */
  readonly host: string
  readonly controllerPid: number
  /** With `controller: 'slurm'`: the job's first node, where the controller runs. */
  node: JobNode | undefined
  /** The engines started (by `start`, or found running by `attach`). */
  engines: ClusterEngines | undefined
  /** The tunnel of the controller's client file; its copy (`pulled.tunnel.out`) is what Client reads. */
  readonly pulled: PulledTunnel
  readonly #pool: LinkPool
  readonly #link: Link
  readonly #procs: RemoteProcesses
  readonly #securityDir: string
  readonly #followers = new Map<'controller' | 'engines', RemoteFollower>()
  #hub: HubQuery | undefined
  #closed = false

  /** Read afresh after each await (a method, so the compiler does not narrow it). */
  #isClosed(): boolean {
    return this.#closed
  }

  private constructor(
    parts: { profile: string; clusterId: string; host: string; pid: number; securityDir: string },
    pool: LinkPool,
    link: Link,
    procs: RemoteProcesses,
    pulled: PulledTunnel,
  ) {
    super()
    this.profile = parts.profile
    this.clusterId = parts.clusterId
    this.host = parts.host
    this.controllerPid = parts.pid
    this.#securityDir = parts.securityDir
    this.#pool = pool
    this.#link = link
    this.#procs = procs
    this.pulled = pulled
  }

  /**
   * Checks the pythons on both sides, starts the controller, tunnels and copies its client file, then starts the
   * engines; resolves once they are started (registration follows as `registered` events).
   * @throws IppTunnelError `E_REMOTE_EXISTS` when a cluster of the profile already runs there, `E_SPAWN` when a
   *   python lacks ipyparallel or the two differ, ssh errors, and what tunnelling the file throws.
   */
  static async start(options: ClusterStartOptions): Promise<RemoteCluster> {
    const profile = options.profile ?? 'default'
    checkProfile(profile)
    const n = options.n ?? 2
    if (!Number.isInteger(n) || n < 1)
      throw new IppTunnelError('E_USAGE', `-n ${String(n)}: give a whole number ≥ 1`)
    const inJob = options.controller === 'slurm'
    if (inJob && options.engines !== undefined && options.engines !== 'slurm')
      throw new IppTunnelError(
        'E_USAGE',
        `--controller slurm: the engines run in its job (not --engines ${options.engines})`,
      )
    const kind = inJob ? 'slurm' : (options.engines ?? 'login')
    if (options.slurmArgs !== undefined && kind !== 'slurm')
      throw new IppTunnelError('E_USAGE', '--slurm-args: only with --engines slurm')
    const slurmArgs = slurmArgsOf(options.slurmArgs)
    return RemoteCluster.#withLink(options, async (pool, link, procs) => {
      const signal = options.signal
      const names = processNames(profile)
      // everything that comes before the controller's start, at once: the SFTP session (opened now for the IPython
      // directory and the controller's file), the local python's versions, the remote one's (read from the installed
      // metadata: an import of ipyparallel takes ten times as long) with where IPython keeps its profiles there, and
      // a look at what runs there
      link.sftp().catch(() => undefined)
      const local =
        options.localPython !== false ? localVersions(options.localPython ?? 'python3', signal) : undefined
      local?.catch(() => undefined)
      const [remote, processes] = await Promise.all([
        procs.modules(['ipyparallel', 'cloudpickle'], { installed: true, ...(signal && { signal }) }),
        procs.list(signal ? { signal } : {}),
      ])
      const remoteVersions = {
        where: `${remote.executable} on ${link.destination}`,
        python: remote.python,
        ipyparallel: remote.modules.ipyparallel ?? null,
        cloudpickle: remote.modules.cloudpickle ?? null,
      }
      if (local !== undefined) {
        checkCompatible(remoteVersions, await local)
      } else if (remoteVersions.ipyparallel === null) {
        checkCompatible(remoteVersions, { ...remoteVersions, where: 'here' })
      }
      const existing = processes.find((p) => p.name === names.controller)
      if (existing?.state === 'running' || existing?.state === 'elsewhere') {
        throw new IppTunnelError(
          'E_REMOTE_EXISTS',
          `a cluster of profile ${profile} already runs on ${existing.node?.host ?? link.destination} (controller pid ${String(existing.pid ?? '?')}): ipp-tunnel cluster attach, or cluster stop`,
        )
      }
      const remoteIpythonDir = options.remoteIpythonDir ?? remote.ipythonDir
      await ensureRemoteDir(link, remoteIpythonDir)
      const clusterId = newClusterId()
      const common = [
        `--profile=${profile}`,
        `--cluster-id=${clusterId}`,
        `--ipython-dir=${remoteIpythonDir}`,
      ]
      const python = options.python ?? 'python3'
      const slurm = kind === 'slurm'
      const env = (options.curve ?? slurm) ? { IPP_ENABLE_CURVE: '1' } : undefined
      const securityDir = posix.join(remoteIpythonDir, `profile_${profile}`, 'security')
      if (inJob) {
        const spec = slurmClusterSpec({
          name: names.controller,
          python,
          n,
          common,
          slurmArgs,
          env,
          persistSeconds: options.persistSeconds,
          securityDir,
          clusterId,
        })
        const keeper = await procs.start(spec, signal ? { signal } : {})
        const parts = { profile, clusterId, securityDir }
        try {
          // the job may wait in the queue: its controller's file is waited for until the job ends, its progress said
          const read = jobProgressReader()
          const onOutput = (e: { stream: 'stdout' | 'stderr'; data: Buffer }): void => {
            if (e.stream === 'stdout') for (const progress of read(e.data)) options.onJob?.(progress)
          }
          const cluster = await RemoteCluster.#follow(options, pool, link, procs, keeper, parts, {
            fileMs: Infinity,
            onOutput,
          })
          await cluster.#inJob(keeper, n)
          return cluster
        } catch (err) {
          await procs.stop(names.controller).catch(() => undefined)
          await removeConnectionFiles(link, securityDir, clusterId)
          throw err
        }
      }
      const controller = await procs.start(
        {
          name: names.controller,
          // engines on compute nodes reach the controller inside the cluster; Curve (on by default) guards it
          argv: slurm
            ? reachableControllerArgv(python, common)
            : [python, '-m', 'ipyparallel.controller', ...common, ...CONTROLLER_HEARTBEAT, '--ip=127.0.0.1'],
          ...(env !== undefined && { env }),
          ...(options.persistSeconds !== undefined && { persistSeconds: options.persistSeconds }),
          // what an earlier cluster of the profile left (exited, its supervisor gone) is ours: replaced
          replace: true,
        },
        signal ? { signal } : {},
      )
      const spec = enginesSpec({
        name: names.engines,
        kind,
        python,
        n,
        common,
        slurmArgs,
        env,
        persistSeconds: options.persistSeconds,
        root: link.target.hops.at(-1)?.username === 'root',
        engineFile: posix.join(securityDir, `ipcontroller-${clusterId}-engine.json`),
      })
      // engines on the ssh server start beside the controller (they wait for its engine file there); a batch job is
      // submitted once the controller runs. Engines an earlier cluster of the profile left are replaced (a keeper
      // cancels its job as it goes).
      const startEngines = (): Promise<RemoteProcessState> =>
        procs.start({ ...spec, replace: true }, signal ? { signal } : {})
      const besides = slurm ? undefined : startEngines()
      besides?.catch(() => undefined)
      let cluster: RemoteCluster
      try {
        cluster = await RemoteCluster.#follow(options, pool, link, procs, controller, {
          profile,
          clusterId,
          securityDir,
        })
      } catch (err) {
        // a start still under way lands before the stop that undoes it
        await besides?.catch(() => undefined)
        await procs.stop(names.engines).catch(() => undefined)
        await procs.stop(names.controller).catch(() => undefined)
        await removeConnectionFiles(link, securityDir, clusterId)
        throw err
      }
      try {
        const engines = await (besides ?? startEngines())
        cluster.engines = { pid: engines.pid ?? 0, n, kind }
        cluster.#followProcess('engines', engines)
        cluster.#watchRegistration(n)
      } catch (err) {
        await cluster.stop()
        throw err
      }
      return cluster
    })
  }

  /**
   * Finds the running cluster of the profile and follows it again: tunnels and copies its client file, follows its
   * processes and registration. Starts and stops nothing.
   * @throws IppTunnelError `E_REMOTE_GONE` when no cluster of the profile runs there.
   */
  static async attach(options: ClusterOptions): Promise<RemoteCluster> {
    const profile = options.profile ?? 'default'
    checkProfile(profile)
    return RemoteCluster.#withLink(options, async (pool, link, procs) => {
      const found = await findCluster(procs, profile, link)
      const cluster = await RemoteCluster.#follow(options, pool, link, procs, found.controller, {
        profile,
        clusterId: found.clusterId,
        securityDir: found.securityDir,
      })
      const inJob = slurmClusterOf(found.controller.argv)
      if (inJob !== undefined) {
        await cluster.#inJob(found.controller, inJob.n ?? 0)
      } else if (found.engines?.state === 'running') {
        const { kind, n } = enginesOf(found.engines.argv)
        const job = kind === 'slurm' ? await readJobId(link, found.engines.dir) : undefined
        cluster.engines = { pid: found.engines.pid ?? 0, n: n ?? 0, kind, ...(job !== undefined && { job }) }
        cluster.#followProcess('engines', found.engines)
        cluster.#watchRegistration(n ?? 0)
      }
      return cluster
    })
  }

  /**
   * Stops the cluster of the profile there (engines, then the controller) and removes its files there.
   * @throws IppTunnelError `E_REMOTE_GONE` when there is none.
   */
  static async stop(options: ClusterOptions): Promise<{ host: string; profile: string }> {
    const profile = options.profile ?? 'default'
    checkProfile(profile)
    const pool = new LinkPool(options)
    try {
      const link = await pool.acquire(await resolveTarget(options.destination, options), options.signal)
      const procs = processesOver(link, options)
      const found = await findCluster(procs, profile, link)
      const names = processNames(profile)
      await procs.stop(names.engines).catch(() => undefined)
      await procs.stop(names.controller)
      await removeConnectionFiles(link, found.securityDir, found.clusterId)
      return { host: found.controller.node?.host ?? link.destination, profile }
    } finally {
      await pool.close()
    }
  }

  /** Every cluster of ours on the server: profile, controller, engines. */
  static async list(options: ClusterOptions): Promise<ClusterState[]> {
    const pool = new LinkPool(options)
    try {
      const link = await pool.acquire(await resolveTarget(options.destination, options), options.signal)
      const all = await processesOver(link, options).list()
      const clusters: ClusterState[] = []
      for (const controller of all) {
        const profile = profileOfController(controller.name)
        if (profile === undefined) continue
        const engines = all.find((p) => p.name === processNames(profile).engines)
        const inJob = slurmClusterOf(controller.argv)
        const { kind, n } =
          inJob !== undefined
            ? { kind: 'slurm' as const, n: inJob.n }
            : engines === undefined
              ? { kind: undefined, n: undefined }
              : enginesOf(engines.argv)
        const keeperDir = inJob !== undefined ? controller.dir : engines?.dir
        clusters.push({
          profile,
          clusterId: clusterIdOf(controller.argv),
          host: controller.node?.host ?? '',
          controller,
          controllerKind: inJob !== undefined ? 'slurm' : 'login',
          node: inJob !== undefined ? await readJobNode(link, controller.dir) : undefined,
          engines,
          n,
          kind,
          job: kind === 'slurm' ? await readJobId(link, keeperDir) : undefined,
        })
      }
      return clusters
    } finally {
      await pool.close()
    }
  }

  static async #withLink<T>(
    options: ClusterOptions,
    work: (pool: LinkPool, link: Link, procs: RemoteProcesses) => Promise<T>,
  ): Promise<T> {
    // reconnects go to the node the cluster runs on, not wherever a round-robin login alias points next
    const pool = new LinkPool({ pinAddress: true, ...options })
    try {
      const link = await pool.acquire(await resolveTarget(options.destination, options), options.signal)
      return await work(pool, link, processesOver(link, options))
    } catch (err) {
      await pool.close()
      throw err
    }
  }

  /** Tunnels and copies the controller's client file (waiting for it), and follows the controller. */
  static async #follow(
    options: ClusterOptions,
    pool: LinkPool,
    link: Link,
    procs: RemoteProcesses,
    controller: RemoteProcessState,
    parts: { profile: string; clusterId: string; securityDir: string },
    wait?: Parameters<typeof pullClientFile>[6],
  ): Promise<RemoteCluster> {
    const { follower, pulled } = await pullClientFile(options, pool, link, procs, controller, parts, wait)
    const cluster = new RemoteCluster(
      { ...parts, host: controller.node?.host ?? link.destination, pid: controller.pid ?? 0 },
      pool,
      link,
      procs,
      pulled,
    )
    cluster.#adopt('controller', follower)
    pulled.on('warning', (e) => cluster.emit('warning', { message: e.message }))
    pulled.on('file:error', (e) => cluster.emit('warning', { message: `${e.file}: ${e.message}` }))
    return cluster
  }

  #followProcess(process: 'controller' | 'engines', state: RemoteProcessState): void {
    const name = processNames(this.profile)[process]
    const follower = new RemoteFollower(this.#procs, this.#link, name, state)
    this.#adopt(process, follower)
    if (process === 'engines' && this.engines?.kind === 'slurm') this.#readJobProgress(follower)
  }

  /** The job keeper says the job's id and each state change on its stdout. */
  #readJobProgress(follower: RemoteFollower): void {
    const read = jobProgressReader()
    follower.on('output', (e) => {
      if (e.stream !== 'stdout') return
      for (const progress of read(e.data)) {
        if (this.engines !== undefined) this.engines.job = progress.job
        this.emit('job', progress)
      }
    })
  }

  /**
   * A cluster whose controller runs inside the batch job (`controller: 'slurm'`), its keeper the controller
   * process: the engines are the job's step, the job and its first node are read from the keeper's directory.
   */
  async #inJob(keeper: RemoteProcessState, n: number): Promise<void> {
    const job = await readJobId(this.#link, keeper.dir)
    this.node = await readJobNode(this.#link, keeper.dir)
    this.engines = { pid: keeper.pid ?? 0, n, kind: 'slurm', ...(job !== undefined && { job }) }
    const follower = this.#followers.get('controller')
    if (follower !== undefined) this.#readJobProgress(follower)
    this.#watchRegistration(n)
  }

  #adopt(process: 'controller' | 'engines', follower: RemoteFollower): void {
    this.#followers.set(process, follower)
    follower.on('output', (e) => this.emit('output', { process, ...e }))
    if (process === 'controller') {
      follower.on('detached', () => this.emit('detached'))
      follower.on('reattached', (e) => this.emit('reattached', e))
    }
    void follower.ended.then((end) => {
      if (!this.#closed) this.emit('exited', { process, end })
    })
  }

  /** Asks the hub (through the tunnel) how many engines it lists, and says so on each change. */
  #watchRegistration(n: number): void {
    const hub = HubQuery.open(this.pulled.tunnel.loopback as IppClientInfo, this.pulled.file)
    this.#hub = hub
    let last = -1
    const poll = async (): Promise<void> => {
      while (!this.#isClosed()) {
        const count = await hub.engines({ timeoutMs: 5000 }).then(
          (r) => r.ids.length,
          () => last,
        )
        if (this.#isClosed()) return
        if (count !== last) {
          last = count
          this.emit('registered', { count, n })
        }
        await new Promise((resolve) => setTimeout(resolve, REGISTRATION_POLL_MS))
      }
    }
    void poll()
  }

  /** Resolves when the controller has ended on its own (or could not be followed any more). */
  get ended(): Promise<FollowEnd> {
    return this.#followers.get('controller')?.ended ?? Promise.resolve({ code: null, signal: null })
  }

  /** Lets the cluster run on (until its `persistSeconds` with no one attached): closes the tunnel, the copy, the link. */
  async detach(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#hub?.close()
    await Promise.all([...this.#followers.values()].map((f) => f.close()))
    await this.pulled.close()
    await this.#pool.close()
  }

  /** Stops the engines, then the controller, removes every file of the cluster on both sides, and closes. */
  async stop(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#hub?.close()
    await Promise.all([...this.#followers.values()].map((f) => f.close()))
    const names = processNames(this.profile)
    if (this.#link.state === 'up') {
      await this.#procs.stop(names.engines).catch(() => undefined)
      await this.#procs.stop(names.controller).catch(() => undefined)
      await removeConnectionFiles(this.#link, this.#securityDir, this.clusterId)
    }
    await this.pulled.close()
    await this.#pool.close()
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop()
  }
}

function processesOver(link: Link, options: ClusterOptions): RemoteProcesses {
  return new RemoteProcesses(link, {
    ...(options.python !== undefined && { python: options.python }),
    ...(options.setup !== undefined && { setup: options.setup }),
    ...(options.remoteDir !== undefined && { dir: options.remoteDir }),
  })
}
