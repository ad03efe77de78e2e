/**
 * `npm run demo`: the program around {@link runDemo}: checks for root, turns Ctrl-C into a clean-up, prints the
 * result and the timings. Only this folder touches `process`.
 */
import { pathToFileURL } from 'node:url'

import { runDemo } from '../demo/index.js'

/** Runs the demo; resolves with the exit status. */
export async function demoMain(): Promise<number> {
  if (process.getuid?.() !== 0) {
    process.stderr.write(
      'demo: needs root, to create a network namespace for the "remote" (run it as root)\n',
    )
    return 2
  }
  const abort = new AbortController()
  const onSignal = (name: NodeJS.Signals) => {
    if (abort.signal.aborted) return
    process.stderr.write(`demo: ${name}, cleaning up…\n`)
    abort.abort()
  }
  process.on('SIGINT', onSignal)
  process.on('SIGTERM', onSignal)
  try {
    const result = await runDemo({ log: (line) => process.stdout.write(`${line}\n`), signal: abort.signal })
    const t = result.timings
    process.stdout.write(
      [
        '',
        'timings (ms)',
        `  local remote up (netns, sshd, controller)  ${t.remoteMs}`,
        `  tunnel ready                               ${t.tunnelMs}`,
        `  launch → all engines registered            ${t.registeredMs}`,
        `  px: connect, run, collect                  ${t.pxMs}`,
        `  stop engines, close tunnel                 ${t.stopMs}`,
        `  total                                      ${t.totalMs}`,
        '',
      ].join('\n'),
    )
    return 0
  } catch (err) {
    process.stderr.write(`demo failed: ${err instanceof Error ? err.message : String(err)}\n`)
    return abort.signal.aborted ? 130 : 1
  } finally {
    process.off('SIGINT', onSignal)
    process.off('SIGTERM', onSignal)
  }
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  process.exitCode = await demoMain()
}
