import { execFile } from 'node:child_process'
import { randomBytes, randomInt } from 'node:crypto'
import { promisify } from 'node:util'

const run = promisify(execFile)

/** A network namespace of its own, joined to this host by a veth pair on a private /24. */
export interface NetworkNamespace {
  /** `<prefix>-<random>`; pass to `ip netns exec`. */
  readonly name: string
  /** The host end of the veth pair (`<net>.N.1`). */
  readonly hostAddr: string
  /** The namespace end of the veth pair (`<net>.N.2`). */
  readonly nsAddr: string
  /** The veth interface inside the namespace (taking it down cuts the wire silently). */
  readonly nsInterface: string
  /** Kills whatever still runs inside, deletes the veth pair and the namespace. Safe to call twice. */
  close(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

export interface NetworkNamespaceOptions {
  /** Start of the namespace's name, e.g. `ippt`. */
  readonly prefix: string
  /** Start of the two veth interface names (`<it>h<id>`, `<it>n<id>`; at most 6 characters). */
  readonly interfacePrefix: string
  /** The /16 the /24 is picked from, e.g. `10.231`. */
  readonly net: string
}

async function ip(...args: string[]): Promise<string> {
  return (await run('ip', args)).stdout
}

async function pickSubnet(net: string): Promise<number> {
  const used = await ip('-4', '-o', 'addr', 'show')
  for (let i = 0; i < 64; i++) {
    const n = randomInt(0, 256)
    if (!used.includes(` ${net}.${n}.`)) return n
  }
  throw new Error(`no free /24 left in ${net}.0.0/16`)
}

/**
 * Creates a network namespace with `lo` up and a veth pair: host side `<net>.N.1/24`, namespace side
 * `<net>.N.2/24` (N random, avoiding subnets already on the host). Names are random, so leftovers of a crashed
 * run never collide. Needs root and iproute2.
 *
 * @example
 * await using ns = await createNetworkNamespace({ prefix: 'ippt', interfacePrefix: 'ipp', net: '10.231' })
 * spawn('ip', ['netns', 'exec', ns.name, '/usr/sbin/sshd', '-D', '-e', '-f', config])
 */
export async function createNetworkNamespace(options: NetworkNamespaceOptions): Promise<NetworkNamespace> {
  const id = randomBytes(4).toString('hex')
  const name = `${options.prefix}-${id}`
  const hostInterface = `${options.interfacePrefix}h${id}`
  const nsInterface = `${options.interfacePrefix}n${id}`
  const subnet = await pickSubnet(options.net)
  const hostAddr = `${options.net}.${subnet}.1`
  const nsAddr = `${options.net}.${subnet}.2`

  let closing: Promise<void> | undefined
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      const pids = await ip('netns', 'pids', name).catch(() => '')
      for (const pid of pids.split(/\s+/).filter(Boolean)) {
        try {
          process.kill(Number(pid), 'SIGKILL')
        } catch {
          // already gone
        }
      }
      await ip('link', 'del', hostInterface).catch(() => undefined)
      await ip('netns', 'del', name).catch(() => undefined)
    })())

  try {
    await ip('netns', 'add', name)
    await ip('link', 'add', hostInterface, 'type', 'veth', 'peer', 'name', nsInterface)
    await ip('link', 'set', nsInterface, 'netns', name)
    await ip('addr', 'add', `${hostAddr}/24`, 'dev', hostInterface)
    await ip('link', 'set', hostInterface, 'up')
    await ip('netns', 'exec', name, 'ip', 'addr', 'add', `${nsAddr}/24`, 'dev', nsInterface)
    await ip('netns', 'exec', name, 'ip', 'link', 'set', nsInterface, 'up')
    await ip('netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up')
  } catch (err) {
    await close()
    throw err
  }
  return { name, hostAddr, nsAddr, nsInterface, close, [Symbol.asyncDispose]: close }
}
