import { channel } from 'node:diagnostics_channel'
import { runInNewContext } from 'node:vm'

import { releaseFreeHeapPages } from '../native/index.js'

/** Bytes carried since the last release that make it worth one. */
const BURST_BYTES = 8 * 1024 * 1024
/**
 * How long the forwards must have carried nothing before the release. A release is not free: the next burst faults
 * the returned pages back in and V8 regrows its heap, which measured ~250 ms of CPU over the first 100 MiB (twice
 * the steady cost per MiB) on this project's VM. Bursts a few seconds apart therefore keep their heap; a tunnel
 * that stays idle hands it back.
 */
const QUIET_SECONDS = 10
/** How often the counter is looked at (nothing on the data path reads a clock). */
const LOOK_MS = 1000
/** A second release this long after the first, for what was still in use then (connections closing). */
const AGAIN_MS = 2000

/**
 * Published after each release with `{ pagesReturned }` (whether glibc handed any pages back), for whoever
 * watches the process's memory: `diagnostics_channel.subscribe('ipp-tunnel:heap-release', …)`.
 */
export const heapReleaseChannel = channel('ipp-tunnel:heap-release')

let enabled = false
let quietSeconds = QUIET_SECONDS
let carried = 0
let carriedAtLastLook = 0
let quietLooks = 0
let timer: NodeJS.Timeout | undefined
let collectGarbage: (() => void) | undefined

/**
 * A full garbage collection: V8 collects only when it allocates, so the buffers of a burst that has ended stay
 * allocated (tens of MiB) for as long as the tunnel then sits idle. `gc` is exposed in a context of its own, not on
 * the program's global.
 */
function collect(): void {
  if (collectGarbage === undefined) {
    // node:v8 takes ~4 ms to load: only here, not at every start
    process.getBuiltinModule('node:v8').setFlagsFromString('--expose-gc')
    collectGarbage = runInNewContext('gc') as () => void
  }
  collectGarbage()
}

function release(): void {
  collect()
  const pagesReturned = releaseFreeHeapPages()
  if (heapReleaseChannel.hasSubscribers) heapReleaseChannel.publish({ pagesReturned })
}

function look(): void {
  if (carried !== carriedAtLastLook) {
    carriedAtLastLook = carried
    quietLooks = 0
    return
  }
  if (++quietLooks * LOOK_MS < quietSeconds * 1000) return
  clearInterval(timer)
  timer = undefined
  carried = 0
  carriedAtLastLook = 0
  quietLooks = 0
  release()
  setTimeout(() => {
    // unless traffic came meanwhile (a new burst gets releases of its own)
    if (timer === undefined && carried === 0) release()
  }, AGAIN_MS).unref()
}

/**
 * After a burst of traffic, once the forwards have carried nothing for `quietSeconds` (default 10): a full garbage
 * collection, then the C heap's free pages back to the system, and both again two seconds later. Freed buffers
 * leave gaps in the heap that glibc keeps (it returns only the heap's top), so a long-running tunnel would otherwise
 * hold its peak footprint for good. For the command line's processes; a program using the library keeps its own
 * garbage collection to itself.
 */
export function releaseHeapAfterBursts(options: { quietSeconds?: number } = {}): void {
  enabled = true
  quietSeconds = options.quietSeconds ?? QUIET_SECONDS
}

/** Counts bytes carried by the forwards (a no-op unless {@link releaseHeapAfterBursts} was called). */
export function noteCarried(bytes: number): void {
  if (!enabled) return
  carried += bytes
  if (timer === undefined && carried >= BURST_BYTES) {
    carriedAtLastLook = carried
    timer = setInterval(look, LOOK_MS)
    timer.unref()
  }
}
