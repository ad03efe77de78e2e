import { constants } from 'node:os'

import { IppTunnelError } from '../errors/index.js'
import type { Output } from './output.js'

/** The exit status of a command interrupted by `signal` before it was up: 128 + its number, as a shell reports. */
export function interruptedStatus(signal: NodeJS.Signals): number {
  return 128 + constants.signals[signal]
}

/**
 * Resolves with the first SIGINT or SIGTERM, and aborts `signal` with it, so that a start-up in progress (ssh
 * connect, forwards) stops at once. A second signal while shutting down exits at once.
 * `onSignal` lets a command forward the signal (e.g. to child processes) as it arrives.
 */
export function untilSignal(onSignal?: (signal: NodeJS.Signals) => void): {
  promise: Promise<NodeJS.Signals>
  signal: AbortSignal
  /** The signal received, if any. */
  received: () => NodeJS.Signals | undefined
  dispose: () => void
} {
  let received: NodeJS.Signals | undefined
  const controller = new AbortController()
  let resolveSignal: (s: NodeJS.Signals) => void = () => undefined
  const promise = new Promise<NodeJS.Signals>((resolve) => (resolveSignal = resolve))
  const handler = (signal: NodeJS.Signals) => {
    if (received !== undefined) {
      process.stderr.write(`ipp-tunnel: second ${signal}, exiting now\n`)
      process.exit(interruptedStatus(signal))
    }
    received = signal
    onSignal?.(signal)
    resolveSignal(signal)
    controller.abort(new IppTunnelError('E_CLOSED', `interrupted by ${signal}`))
  }
  process.on('SIGINT', handler)
  process.on('SIGTERM', handler)
  return {
    promise,
    signal: controller.signal,
    received: () => received,
    dispose: () => {
      process.off('SIGINT', handler)
      process.off('SIGTERM', handler)
    },
  }
}

/**
 * Reports a start-up cut short by `signal` (one `interrupted` event) and returns its exit status (130, 143).
 * Nothing is left behind by then: the command's own cleanup has run.
 */
export function interrupted(output: Output, signal: NodeJS.Signals, fields: Record<string, unknown>): number {
  output
    .format('interrupted', (e) => `${String(e.signal)}: stopped while starting; nothing left behind`)
    .emit({ event: 'interrupted', ...fields, signal })
  return interruptedStatus(signal)
}
