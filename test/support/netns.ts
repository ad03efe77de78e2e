import { execFile, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process'
import { once } from 'node:events'
import { createServer, type Socket } from 'node:net'
import { promisify } from 'node:util'
import { createNetworkNamespace, type NetworkNamespace } from '../../src/demo/index.js'

const run = promisify(execFile)

/** A network namespace of its own (see {@link createNetworkNamespace}), plus a way to run programs inside. */
export interface Netns extends NetworkNamespace {
  /** Spawns `argv` inside the namespace (through `ip netns exec`, which execs in place: same pid). */
  exec(argv: readonly string[], options?: SpawnOptions): ChildProcess
}

/**
 * Creates a network namespace `ippt-<random>` on a random /24 of 10.231.0.0/16 (see
 * {@link createNetworkNamespace}).
 *
 * @example
 * const ns = await createNetns()
 * t.after(() => ns.close())
 * const child = ns.exec(['/usr/sbin/sshd', '-D', '-e', '-f', cfg])
 */
export async function createNetns(): Promise<Netns> {
  const ns = await createNetworkNamespace({ prefix: 'ippt', interfacePrefix: 'ipp', net: '10.231' })
  return {
    ...ns,
    exec: (argv, options = {}) => spawn('ip', ['netns', 'exec', ns.name, ...argv], options),
  }
}

/** A TCP echo server; in a namespace it listens on the namespace's own loopback, unreachable from the host. */
export interface EchoServer {
  readonly host: string
  readonly port: number
  close(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

const echoScript = `
const net = require('node:net')
const server = net.createServer((s) => { s.on('error', () => {}); s.pipe(s) })
server.listen(0, process.argv[1], () => { process.stdout.write(server.address().port + '\\n') })
process.stdin.on('end', () => process.exit(0)).resume()
`

/** The port a server started as a child prints as the first line of its stdout (its `listen(0)` callback). */
export function portPrinted(child: ChildProcess, what: string): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let out = ''
    child.stdout?.setEncoding('utf8')
    child.stdout?.on('data', (chunk: string) => {
      out += chunk
      if (out.includes('\n')) resolve(Number(out.trim()))
    })
    child.once('error', reject)
    child.once('exit', (code) => reject(new Error(`${what} exited with ${String(code)}`)))
  })
}

/**
 * Starts a TCP echo server on `127.0.0.1` port 0: inside `netns` (a child `node` process, so only something
 * inside the namespace — e.g. its sshd — can reach it), or in this process when no namespace is given.
 *
 * @example
 * const echo = await startEchoServer(ns)
 * const stream = await link.forwardOut(echo.host, echo.port)
 */
export async function startEchoServer(netns?: Netns): Promise<EchoServer> {
  if (netns === undefined) {
    const sockets = new Set<Socket>()
    const server = createServer((s) => {
      sockets.add(s)
      s.on('close', () => sockets.delete(s))
      s.on('error', () => undefined)
      s.pipe(s)
    })
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const address = server.address()
    if (address === null || typeof address === 'string') throw new Error('echo server has no port')
    let closing: Promise<void> | undefined
    const close = (): Promise<void> =>
      (closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve())
        for (const s of sockets) s.destroy()
      }))
    return { host: '127.0.0.1', port: address.port, close, [Symbol.asyncDispose]: close }
  }
  const child = netns.exec([process.execPath, '-e', echoScript, '127.0.0.1'], {
    stdio: ['pipe', 'pipe', 'inherit'],
  })
  const port = await portPrinted(child, 'echo server')
  let closing: Promise<void> | undefined
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        const exited = once(child, 'exit')
        child.kill('SIGKILL')
        await exited
      }
    })())
  return { host: '127.0.0.1', port, close, [Symbol.asyncDispose]: close }
}

/**
 * Lets namespaces reach each other through this host, as a cluster network: a route to 10.231.0.0/16 via the
 * host end in `ns`, and forwarding on that host interface only (the host's own setting is left alone).
 *
 * @example
 * for (const ns of [controllerNs, nodeA, nodeB]) await joinClusterNetwork(ns)
 */
export async function joinClusterNetwork(ns: Netns): Promise<void> {
  await routeCluster(ns)
  // The host end of a namespace's veth pair: `ipph<id>` for `ippt-<id>` (see createNetns).
  await run('sysctl', ['-qw', `net.ipv4.conf.ipph${ns.name.slice('ippt-'.length)}.forwarding=1`])
}

async function routeCluster(ns: Netns): Promise<void> {
  await run('ip', ['netns', 'exec', ns.name, 'ip', 'route', 'add', '10.231.0.0/16', 'via', ns.hostAddr])
}

/**
 * Makes the wire between this host and `ns` silent, or speaking again: the namespace's packets to this host are
 * dropped (a blackhole route), with no FIN, no RST and no interface or address going away — only keepalives can tell.
 */
export async function silence(ns: Netns, on: boolean): Promise<void> {
  await silenceTowards(ns, ns.hostAddr, on)
}

/** As {@link silence}, for the namespace's packets to `address` (another namespace on the cluster network). */
export async function silenceTowards(ns: Netns, address: string, on: boolean): Promise<void> {
  if (on) await run('ip', ['-n', ns.name, 'route', 'replace', 'blackhole', `${address}/32`])
  // speaking again twice (a test, then its cleanup) is no error
  else await run('ip', ['-n', ns.name, 'route', 'del', 'blackhole', `${address}/32`]).catch(() => undefined)
}

/**
 * Cuts `ns` off the network as a laptop leaving a Wi-Fi does: its end of the veth down and its address removed, so
 * a TCP connection bound to that address can never resume (its peer's packets find no one, its own cannot leave).
 */
export async function cutOff(ns: Netns): Promise<void> {
  await run('ip', ['-n', ns.name, 'link', 'set', ns.nsInterface, 'down'])
  await run('ip', ['-n', ns.name, 'addr', 'flush', 'dev', ns.nsInterface])
}

/**
 * Brings a namespace {@link cutOff} back with another address of its /24 (`<net>.N.<host>`), as on a new network,
 * and its route to the cluster network ({@link joinClusterNetwork}). Returns the new address.
 */
export async function comeBackAs(ns: Netns, host: number): Promise<string> {
  const address = `${ns.nsAddr.slice(0, ns.nsAddr.lastIndexOf('.'))}.${String(host)}`
  await run('ip', ['-n', ns.name, 'addr', 'add', `${address}/24`, 'dev', ns.nsInterface])
  await run('ip', ['-n', ns.name, 'link', 'set', ns.nsInterface, 'up'])
  await routeCluster(ns)
  return address
}
