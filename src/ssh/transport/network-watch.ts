import { createSocket } from 'node:dgram'
import { isIPv6 } from 'node:net'
import { networkInterfaces } from 'node:os'

/**
 * What a laptop's day does to the network under a link: the process was stopped (suspend, SIGSTOP) and runs again,
 * or this machine's addresses changed (another Wi-Fi, a cable pulled, a VPN up).
 */
export type NetworkEvent =
  | { readonly kind: 'resume'; readonly stoppedMs: number }
  | { readonly kind: 'change'; readonly addresses: ReadonlySet<string> }

/** How often the watch looks; a tick this much later than due means the process did not run meanwhile. */
const TICK_MS = 1000
const LATE_MS = 2000

type Listener = (event: NetworkEvent) => void

const listeners = new Set<Listener>()
let timer: NodeJS.Timeout | undefined
let lastTick = 0
let lastAddresses = ''

/** This machine's interface addresses now (loopback included), as the kernel lists them. */
export function localAddresses(): ReadonlySet<string> {
  const addresses = new Set<string>()
  for (const list of Object.values(networkInterfaces())) {
    for (const entry of list ?? []) addresses.add(plainAddress(entry.address))
  }
  return addresses
}

/** An address as {@link localAddresses} lists it: no IPv4-mapped prefix, no IPv6 zone. */
export function plainAddress(address: string): string {
  const unzoned = address.replace(/%.*$/u, '')
  return unzoned.startsWith('::ffff:') && unzoned.includes('.') ? unzoned.slice('::ffff:'.length) : unzoned
}

function key(addresses: ReadonlySet<string>): string {
  return [...addresses].sort().join(' ')
}

function tick(): void {
  const now = Date.now()
  const late = now - lastTick - TICK_MS
  lastTick = now
  const events: NetworkEvent[] = []
  if (late >= LATE_MS) events.push({ kind: 'resume', stoppedMs: late + TICK_MS })
  const addresses = localAddresses()
  const addressesKey = key(addresses)
  if (addressesKey !== lastAddresses) {
    lastAddresses = addressesKey
    events.push({ kind: 'change', addresses })
  }
  for (const event of events) for (const listener of [...listeners]) listener(event)
}

/**
 * Calls `listener` on every {@link NetworkEvent} until the returned function is called. One timer serves every
 * listener of the process (a tick a second, never keeping the process alive); it stops with the last listener.
 * Linux gives no address-change signal a process can wait on without netlink, hence the look each tick: listing
 * the interfaces costs microseconds.
 *
 * @example
 * const stop = watchNetwork((event) => event.kind === 'resume' && probeLinks())
 */
export function watchNetwork(listener: Listener): () => void {
  if (listeners.size === 0) {
    lastTick = Date.now()
    lastAddresses = key(localAddresses())
    timer = setInterval(tick, TICK_MS)
    timer.unref()
  }
  listeners.add(listener)
  return () => {
    if (!listeners.delete(listener) || listeners.size > 0) return
    clearInterval(timer)
    timer = undefined
  }
}

/**
 * The address this machine would send from to reach `remote` now, as its routing table says (a UDP socket's connect:
 * no packet leaves), or undefined when there is no route (the network is down). A TCP connection whose own address
 * differs can never resume; one whose address it still is may.
 */
export function sourceFor(remote: string): Promise<string | undefined> {
  return new Promise((resolve) => {
    const socket = createSocket(isIPv6(remote) ? 'udp6' : 'udp4')
    const done = (source: string | undefined): void => {
      socket.close()
      resolve(source)
    }
    socket.once('error', () => done(undefined))
    socket.connect(9, remote, () => {
      try {
        done(plainAddress(socket.address().address))
      } catch {
        done(undefined)
      }
    })
  })
}
