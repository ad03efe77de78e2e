import { createConnection } from 'node:net'

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
