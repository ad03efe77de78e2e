import { addressText, type Tunnel } from '../tunnel/index.js'
import type { Output } from './output.js'

/** The `ready` event of a tunnel, as `up`, `exec` and `watch` print it. */
export function readyEvent(tunnel: Tunnel, file: string, out: string | undefined) {
  return {
    event: 'ready',
    file,
    out,
    ms: Math.round(tunnel.readyMs),
    forwards: tunnel.forwards.map((f) => ({
      channel: f.channel,
      local: addressText(f.local),
      remote: addressText(f.remote),
    })),
  }
}

/** Human lines for the events every tunnel-opening command prints. */
export function formatTunnelEvents(output: Output): Output {
  return output
    .format('ready', (e) => {
      if (e.direct === true) return `ready: ${String(e.file)} is on this host's loopback; no tunnel needed`
      const forwards = e.forwards as { channel: string; local: string; remote: string }[]
      const width = Math.max(...forwards.map((f) => f.channel.length))
      const lines = forwards.map((f) => `  ${f.channel.padEnd(width)}  ${f.local} -> ${f.remote}`)
      const out = typeof e.out === 'string' ? `, loopback file ${e.out}` : ''
      const from = typeof e.sshFrom === 'string' ? ` (ssh server from ${e.sshFrom})` : ''
      return [`ready in ${String(e.ms)} ms: ${String(e.file)}${out}${from}`, ...lines].join('\n')
    })
    .format('reconnecting', (e) => {
      const delay = typeof e.delayMs === 'number' ? ` in ${e.delayMs} ms` : ''
      return `link to ${String(e.destination)} lost (${String(e.message)}); reconnecting${delay} (attempt ${String(e.attempt)})`
    })
    .format('reconnected', (e) => `link to ${String(e.destination)} back after ${String(e.downMs)} ms`)
    .format('closed', (e) => `closed ${String(e.file)}`)
    .format('error', (e) => `error: ${typeof e.file === 'string' ? `${e.file}: ` : ''}${String(e.message)}`)
    .format('forward-error', (e) => `channel ${String(e.channel)}: ${String(e.message)}`)
}

/** Renders a tunnel's link and forward events; returns a function that stops listening. */
export function followTunnel(tunnel: Tunnel, output: Output, file: string): () => void {
  const destination = tunnel.link.destination
  const onReconnecting = (e: { attempt: number; delayMs: number; error: Error }) =>
    output.emit({
      event: 'reconnecting',
      file,
      destination,
      attempt: e.attempt,
      delayMs: e.delayMs,
      message: e.error.message,
    })
  const onReconnected = (e: { attempt: number; downMs: number }) =>
    output.emit({ event: 'reconnected', file, destination, attempt: e.attempt, downMs: Math.round(e.downMs) })
  const onForwardError = (e: { channel: string; error: Error }) =>
    output.emit({ event: 'forward-error', file, channel: e.channel, message: e.error.message })
  tunnel.on('link:reconnecting', onReconnecting)
  tunnel.on('link:reconnected', onReconnected)
  tunnel.on('forward:error', onForwardError)
  return () => {
    tunnel.off('link:reconnecting', onReconnecting)
    tunnel.off('link:reconnected', onReconnected)
    tunnel.off('forward:error', onForwardError)
  }
}
