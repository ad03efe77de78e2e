import { EventEmitter } from 'node:events'

import { IppTunnelError } from '../errors/index.js'
import type { Link } from '../ssh/index.js'
import type { RemoteAttachment, RemoteProcesses, RemoteProcessState } from './processes.js'

/** Events of a {@link RemoteFollower}. */
export interface RemoteFollowerEvents {
  output: [info: { stream: 'stdout' | 'stderr'; data: Buffer }]
  /** The link dropped; the process runs on and is attached again once the link is back. */
  detached: []
  reattached: [info: { downMs: number }]
}

/** How a followed process ended for us: its exit, or why it could not be followed (another node, gone). */
export interface FollowEnd {
  readonly code: number | null
  readonly signal: number | null
  readonly error?: IppTunnelError
}

/**
 * Keeps one remote process attached (its output, its lease renewed) across drops of the link: attached again when
 * the link is back, on the same node only, its output resumed where it stopped. `ended` resolves when the process
 * has exited (its files removed there) or cannot be followed any more; `close()` lets go (the lease runs on).
 *
 * @example
 * const follower = new RemoteFollower(procs, link, 'cluster-default-controller', { host: 'login1' })
 * follower.on('output', ({ data }) => process.stderr.write(data))
 * const { code } = await follower.ended
 */
export class RemoteFollower extends EventEmitter<RemoteFollowerEvents> {
  readonly name: string
  readonly ended: Promise<FollowEnd>
  readonly #procs: RemoteProcesses
  readonly #link: Link
  readonly #host: string
  #resolve: (end: FollowEnd) => void = () => undefined
  #attachment: RemoteAttachment | undefined
  #closed = false

  /** Read afresh after each await (a method, so the compiler does not narrow it). */
  #isClosed(): boolean {
    return this.#closed
  }

  /** `host`: the node the process was started on; an attachment that reaches another is `E_REMOTE_NODE`. */
  constructor(procs: RemoteProcesses, link: Link, name: string, started: Pick<RemoteProcessState, 'node'>) {
    super()
    this.name = name
    this.#procs = procs
    this.#link = link
    this.#host = started.node?.host ?? ''
    this.ended = new Promise((resolve) => (this.#resolve = resolve))
    void this.#loop()
  }

  async #loop(): Promise<void> {
    let offsets = { stdout: 0, stderr: 0 }
    let downSince: number | undefined
    for (;;) {
      if (this.#isClosed()) return
      let attachment: RemoteAttachment
      try {
        attachment = await this.#procs.attach(this.name, { offsets })
      } catch (err) {
        if (this.#isClosed()) return
        const error =
          err instanceof IppTunnelError
            ? err
            : new IppTunnelError(
                'E_REMOTE',
                `following ${this.name}: ${err instanceof Error ? err.message : String(err)}`,
              )
        // the link went again while attaching: wait for it; anything else ends the following
        if (
          error.code === 'E_CLOSED' ||
          error.code === 'E_LINK_DOWN' ||
          this.#link.state === 'reconnecting'
        ) {
          // a drop while attaching is a drop all the same: said once, and the attachment that follows says so
          if (downSince === undefined) {
            downSince = Date.now()
            this.emit('detached')
          }
          await linkUp(this.#link)
          continue
        }
        this.#finish({ code: null, signal: null, error })
        return
      }
      const host = attachment.state.node?.host
      if (host !== undefined && this.#host !== '' && host !== this.#host) {
        await attachment.detach()
        this.#finish({
          code: null,
          signal: null,
          error: new IppTunnelError(
            'E_REMOTE_NODE',
            `${this.name} runs on ${this.#host}, and the link reached ${host}`,
          ),
        })
        return
      }
      if (downSince !== undefined) this.emit('reattached', { downMs: Date.now() - downSince })
      downSince = undefined
      this.#attachment = attachment
      attachment.stdout.on('data', (data: Buffer) => this.emit('output', { stream: 'stdout', data }))
      attachment.stderr.on('data', (data: Buffer) => this.emit('output', { stream: 'stderr', data }))
      await attachment.ended
      this.#attachment = undefined
      offsets = attachment.offsets
      if (this.#isClosed()) return
      const status = await this.#procs.status(this.name).catch(() => undefined)
      if (status?.state === 'exited' || status?.state === 'none' || status?.state === 'stale') {
        await this.#procs.stop(this.name).catch(() => undefined)
        // an exit the supervisor saw has a status; a process gone without one (its supervisor killed) is said so
        const gone =
          status.exit === undefined
            ? { error: new IppTunnelError('E_REMOTE_GONE', `${this.name} is ${status.state} on the server`) }
            : {}
        this.#finish({ code: status.exit?.code ?? null, signal: status.exit?.signal ?? null, ...gone })
        return
      }
      downSince ??= Date.now()
      this.emit('detached')
      await linkUp(this.#link)
    }
  }

  #finish(end: FollowEnd): void {
    this.#resolve(end)
  }

  /** Lets go: the process runs on (until its lease ends, if it has one). Safe twice. */
  async close(): Promise<void> {
    if (this.#closed) return
    this.#closed = true
    await this.#attachment?.detach()
    this.#finish({ code: null, signal: null })
  }
}

/** Resolves once the link is up again, or closed or failed for good. */
export function linkUp(link: Link): Promise<void> {
  const settled = (): boolean => link.state === 'up' || link.closed || link.state === 'failed'
  if (settled()) return Promise.resolve()
  return new Promise((resolve) => {
    const onState = (): void => {
      if (settled()) {
        link.off('state', onState)
        resolve()
      }
    }
    link.on('state', onState)
  })
}
