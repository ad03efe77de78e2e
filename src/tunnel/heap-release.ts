import { runInNewContext } from 'node:vm'

import { releaseFreeHeapPages } from '../native/index.js'

/** Bytes carried since the last release that make it worth one. */
const BURST_BYTES = 8 * 1024 * 1024
/** How long the forwards must have carried nothing before the release. */
const QUIET_MS = 1000

let enabled = false
let onRelease: ((pagesReturned: boolean) => void) | undefined
let carried = 0
let carriedAtLastLook = 0
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

function look(): void {
  if (carried !== carriedAtLastLook) {
    carriedAtLastLook = carried
    return
  }
  clearInterval(timer)
  timer = undefined
  carried = 0
  carriedAtLastLook = 0
  collect()
  onRelease?.(releaseFreeHeapPages())
}

/**
 * After a burst of traffic, once the forwards have carried nothing for a second: a full garbage collection, then
 * the C heap's free pages back to the system. Freed buffers leave gaps in the heap that glibc keeps (it returns
 * only the heap's top), so a long-running tunnel would otherwise hold its peak footprint for good. For the
 * command line's processes; a program using the library keeps its own garbage collection to itself.
 */
export function releaseHeapAfterBursts(released?: (pagesReturned: boolean) => void): void {
  enabled = true
  onRelease = released
}

/** Counts bytes carried by the forwards (a no-op unless {@link releaseHeapAfterBursts} was called). */
export function noteCarried(bytes: number): void {
  if (!enabled) return
  carried += bytes
  if (timer === undefined && carried >= BURST_BYTES) {
    carriedAtLastLook = carried
    timer = setInterval(look, QUIET_MS)
    timer.unref()
  }
}
