import { once } from 'node:events'
import { readFile, writeFile } from 'node:fs/promises'
import { createConnection, createServer, type Server } from 'node:net'

/** The port of an `address:port` string as the CLI prints it (`127.0.0.1:40123`). */
export function portOf(address: string): number {
  return Number(address.slice(address.lastIndexOf(':') + 1))
}

/** Whether something accepts TCP connections on `host:port` right now. */
export function canConnect(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host, port })
    socket.once('connect', () => {
      socket.destroy()
      resolve(true)
    })
    socket.once('error', () => resolve(false))
  })
}

/**
 * A port that was free a moment ago and that no other program will take by chance before the caller listens on
 * it: chosen below the kernel's ephemeral range (`ip_local_port_range`), where outgoing connections and `listen(0)`
 * take their ports from, so only a program that asks for this very port can race the caller.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const [ephemeralLow] = await ephemeralRange()
  const low = 10_000
  const high = Math.max(low + 1000, ephemeralLow) - 1
  for (;;) {
    const port = low + Math.floor(Math.random() * (high - low))
    if (await listenable(port, host)) return port
  }
}

async function ephemeralRange(): Promise<[number, number]> {
  try {
    const text = await readFile('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')
    const [low, high] = text.trim().split(/\s+/).map(Number)
    if (low !== undefined && high !== undefined && low > 0) return [low, high]
  } catch {
    // not Linux: fall through to the IANA range
  }
  return [49152, 65535]
}

async function listenable(port: number, host: string): Promise<boolean> {
  const server = createServer()
  server.listen(port, host)
  try {
    await once(server, 'listening')
  } catch {
    return false
  }
  server.close()
  await once(server, 'close')
  return true
}

/** Loopback listeners standing in for a kernel's five ports: each accepts and closes at once. */
export interface KernelListeners {
  /** `shell_port` … `hb_port`, as a kernel file names them. */
  readonly ports: Readonly<Record<string, number>>
  close(): void
}

/**
 * Starts {@link KernelListeners}: enough for a tunnel to a kernel file to come up (its forwards reach something)
 * when the test is about logging in, not about the kernel.
 *
 * @example
 * const listeners = await kernelListeners()
 * await writeFile(file, JSON.stringify({ ...listeners.ports, ip: '127.0.0.1', key: 'k', transport: 'tcp', signature_scheme: 'hmac-sha256' }))
 */
export async function kernelListeners(): Promise<KernelListeners> {
  const servers: Server[] = []
  const ports: Record<string, number> = {}
  for (const name of ['shell_port', 'iopub_port', 'stdin_port', 'control_port', 'hb_port']) {
    const server = createServer((socket) => socket.destroy())
    servers.push(server)
    server.listen(0, '127.0.0.1')
    await once(server, 'listening')
    const address = server.address()
    ports[name] = typeof address === 'object' && address !== null ? address.port : 0
  }
  return { ports, close: () => servers.forEach((s) => s.close()) }
}

/**
 * Writes `file` (0600): a kernel connection file naming the listeners' ports on 127.0.0.1 over tcp, reached through
 * the ssh server `ssh` when given (the file's `ssh` field, e.g. `root@127.0.0.1:2222`).
 *
 * @example
 * await writeListenersFile(join(dir, 'kernel-a.json'), listeners, `root@127.0.0.1:${sshd.port}`)
 */
export async function writeListenersFile(
  file: string,
  listeners: KernelListeners,
  ssh?: string,
): Promise<void> {
  const kernel = {
    ...listeners.ports,
    ip: '127.0.0.1',
    key: 'a0b1c2d3',
    transport: 'tcp',
    signature_scheme: 'hmac-sha256',
    ...(ssh !== undefined && { ssh }),
  }
  await writeFile(file, JSON.stringify(kernel), { mode: 0o600 })
}
