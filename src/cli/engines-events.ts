import type { SupervisedEngines } from '../engines/index.js'
import type { Output } from './output.js'
import { followTunnel, formatTunnelEvents, readyEvent } from './tunnel-events.js'
import { visible } from './visible.js'

// `index` is the process we started (`process #i`); `id` is the engine id the controller gave (`engine id N`).
export function formatEngineEvents(output: Output): Output {
  return formatTunnelEvents(output)
    .format('engine-started', (e) => `process #${String(e.index)} started (pid ${String(e.pid)})`)
    .format(
      'engine-registered',
      (e) => `process #${String(e.index)}: the controller lists engine id ${String(e.id)}`,
    )
    .format('registered', (e) => {
      const all = `the controller lists all ${String(e.engines)} engines (ids ${(e.ids as number[]).join(', ')}), ${String(e.ms)} ms after launch`
      const nodes = e.nodes as Record<string, number[]> | undefined
      if (nodes === undefined) return all
      const per = Object.entries(nodes).map(([host, ids]) => `  node ${host}: engine ids ${ids.join(', ')}`)
      return [all, ...per].join('\n')
    })
    .format('engine-exited', (e) => {
      const how = typeof e.signal === 'string' ? `by ${e.signal}` : `with status ${String(e.code)}`
      return `process #${String(e.index)} (pid ${String(e.pid)}) exited ${how}${e.stopped === true ? '' : ' on its own'}`
    })
    .format('stopping', (e) => `${String(e.signal)}: stopping the engines`)
    .format('node-ready', (e) => {
      const forwards = Array.isArray(e.forwards) ? e.forwards.length : 0
      return `node ${String(e.host)}: tunnel ready in ${String(e.ms)} ms (${String(forwards)} forwards), loopback file ${String(e.out)}`
    })
    .format(
      'node-reconnecting',
      (e) =>
        `node ${String(e.host)}: link lost (${String(e.message)}); reconnecting (attempt ${String(e.attempt)})`,
    )
    .format('node-reconnected', (e) => `node ${String(e.host)}: link back after ${String(e.downMs)} ms`)
    .format('node-error', (e) => `node ${String(e.host)}: ${String(e.message)}`)
    .format('node-warning', (e) => `node ${String(e.host)}: warning: ${String(e.message)}`)
    .format('unregistered', (e) => {
      const remaining = e.remaining as number[]
      return remaining.length === 0
        ? `the controller lists none of our engines${typeof e.ms === 'number' ? ` (${String(e.ms)} ms after the signal)` : ''}`
        : `the controller still lists engine ids ${remaining.join(', ')}; it drops them when their heartbeats stop`
    })
}

/** Renders the engines' events; engine output goes to stderr, each line tagged with its process or rank. */
export function renderEngines(
  engines: SupervisedEngines,
  output: Output,
  options: { n: number; mpi: boolean; verbose: boolean; file: () => string },
): void {
  const { file } = options
  engines.on('ready', (e) => {
    if (e.tunnel === undefined) {
      output.emit({
        event: 'ready',
        file: file(),
        out: e.out,
        direct: true,
        forwards: [],
        engines: options.n,
        mpi: options.mpi,
      })
      return
    }
    followTunnel(e.tunnel, output, file())
    output.emit({
      ...readyEvent(e.tunnel, file(), e.out),
      ...(e.sshFrom !== undefined && { sshFrom: e.sshFrom }),
      engines: options.n,
      mpi: options.mpi,
    })
  })
  engines.on('warning', (e) => output.emit({ event: 'warning', file: file(), message: e.message }))
  let hubErrors = 0
  engines.on('hub-error', (e) => {
    if (hubErrors++ === 0) {
      output.emit({
        event: 'warning',
        file: file(),
        message: `asking the hub for its engines: ${e.error.message}`,
      })
    }
  })
  engines.on('node-ready', (e) =>
    output.emit({
      event: 'node-ready',
      file: file(),
      host: e.host,
      rank: e.rank,
      ms: e.ms,
      out: e.out,
      forwards: e.forwards,
    }),
  )
  engines.on('node-event', ({ host, rank, event }) => {
    const { event: name, ...rest } = event
    if (name === 'reconnecting' || name === 'reconnected' || name === 'error' || name === 'warning') {
      output.emit({ ...rest, event: `node-${name}`, file: file(), host, rank })
    }
  })
  engines.on('node-output', (e) => process.stderr.write(`[node ${e.host ?? 'mpiexec'}] ${visible(e.line)}\n`))
  engines.on('engine-started', (e) =>
    output.emit({ event: 'engine-started', file: file(), index: e.index, pid: e.pid }),
  )
  engines.on('engine-registered', (e) =>
    output.emit({ event: 'engine-registered', file: file(), index: e.index, id: e.id }),
  )
  engines.on('registered', (e) =>
    output.emit({
      event: 'registered',
      file: file(),
      engines: options.n,
      ids: e.ids,
      ...(e.nodes !== undefined && { nodes: e.nodes }),
      ms: e.ms,
    }),
  )
  engines.on('engine-output', (e) => {
    if (!options.verbose && e.routine) return
    const who = e.rank === undefined ? `process #${String(e.index)}` : `rank ${String(e.rank)}`
    process.stderr.write(`[${who}] ${visible(e.text)}\n`)
  })
  let spawnFailures = 0
  engines.on('engine-error', (e) => {
    // The same command fails the same way for every process: one line.
    if (spawnFailures++ === 0) output.fail(e.error, { file: file(), index: e.index })
  })
  engines.on('engine-exited', (e) =>
    output.emit({
      event: 'engine-exited',
      file: file(),
      index: e.index,
      pid: e.pid,
      code: e.code,
      signal: e.signal,
      stopped: e.stopped,
    }),
  )
  engines.on('unregistered', (e) =>
    output.emit({
      event: 'unregistered',
      file: file(),
      remaining: e.remaining,
      ...(e.ms !== undefined && { ms: e.ms }),
    }),
  )
}
