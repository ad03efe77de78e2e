/**
 * The optional native binding (src/native/native.c), built at install when a compiler is there. Everything
 * here works without it, only less well.
 */
import { createRequire } from 'node:module'
import { fileURLToPath } from 'node:url'

interface Binding {
  trim(): boolean
  quickAck(fd: number): boolean
}

/** From dist/src/<dir>/ (and the bundle in dist/src/cli/) to the package's src/native/build. */
const ADDON = fileURLToPath(
  new URL('../../../src/native/build/Release/ipp_tunnel_native.node', import.meta.url),
)

let binding: Binding | null | undefined

function load(): Binding | null {
  if (binding === undefined) {
    try {
      binding = createRequire(import.meta.url)(ADDON) as Binding
    } catch {
      binding = null
    }
  }
  return binding
}

/** Whether the binding was built and loads here. */
export function hasNativeBinding(): boolean {
  return load() !== null
}

/**
 * Returns the C heap's free pages to the system (glibc's `malloc_trim(0)`); true when some were. A no-op returning
 * false without the binding or glibc.
 */
export function releaseFreeHeapPages(): boolean {
  return load()?.trim() ?? false
}

/**
 * Sets TCP_QUICKACK on the TCP socket `fd` (Linux): a delayed ACK pending on it goes out now, and the next segments
 * are acknowledged at once until the kernel drops back to delaying them. True when it was set; false without the
 * binding, off Linux, or for a descriptor that is not a TCP socket.
 */
export function quickAck(fd: number): boolean {
  const native = load()
  // a binding built before quickAck existed (an install not rebuilt) has only trim
  return typeof native?.quickAck === 'function' ? native.quickAck(fd) : false
}
