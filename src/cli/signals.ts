/**
 * Resolves with the first SIGINT or SIGTERM. A second signal while shutting down exits at once.
 * `onSignal` lets a command forward the signal (e.g. to child processes) as it arrives.
 */
export function untilSignal(onSignal?: (signal: NodeJS.Signals) => void): {
  promise: Promise<NodeJS.Signals>
  dispose: () => void
} {
  let received = false
  let resolveSignal: (s: NodeJS.Signals) => void = () => undefined
  const promise = new Promise<NodeJS.Signals>((resolve) => (resolveSignal = resolve))
  const handler = (signal: NodeJS.Signals) => {
    if (received) {
      process.stderr.write(`ipp-tunnel: second ${signal}, exiting now\n`)
      process.exit(signal === 'SIGINT' ? 130 : 143)
    }
    received = true
    onSignal?.(signal)
    resolveSignal(signal)
  }
  process.on('SIGINT', handler)
  process.on('SIGTERM', handler)
  return {
    promise,
    dispose: () => {
      process.off('SIGINT', handler)
      process.off('SIGTERM', handler)
    },
  }
}
