import { once } from 'node:events'
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

/** A port that was free a moment ago (taken from the kernel, then given back): nothing listens on it. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  const server = createServer()
  server.listen(0, host)
  await once(server, 'listening')
  const address = server.address()
  server.close()
  await once(server, 'close')
  if (address === null || typeof address === 'string') throw new Error('no port')
  return address.port
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
