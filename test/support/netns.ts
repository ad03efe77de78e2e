import { spawn, execFile, type ChildProcess, type SpawnOptions } from 'node:child_process'
import { randomBytes, randomInt } from 'node:crypto'
import { once } from 'node:events'
import { createServer, type Socket } from 'node:net'
import { promisify } from 'node:util'

const run = promisify(execFile)

/** A network namespace of its own, joined to the host by a veth pair on a private /24. */
export interface Netns {
  /** `ippt-<random>`; pass to `ip netns exec`. */
  readonly name: string
  /** The host end of the veth pair (`10.231.N.1`). */
  readonly hostAddr: string
  /** The namespace end of the veth pair (`10.231.N.2`). */
  readonly nsAddr: string
  /** Spawns `argv` inside the namespace (through `ip netns exec`, which execs in place: same pid). */
  exec(argv: readonly string[], options?: SpawnOptions): ChildProcess
  /** Kills whatever still runs inside, deletes the veth pair and the namespace. Safe to call twice. */
  close(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

async function ip(...args: string[]): Promise<string> {
  const { stdout } = await run('ip', args)
  return stdout
}

async function pickSubnet(): Promise<number> {
  const used = await ip('-4', '-o', 'addr', 'show')
  for (let i = 0; i < 64; i++) {
    const n = randomInt(0, 256)
    if (!used.includes(` 10.231.${n}.`)) return n
  }
  throw new Error('no free /24 left in 10.231.0.0/16')
}

/**
 * Creates a network namespace `ippt-<random>` with `lo` up and a veth pair: host side `10.231.N.1/24`,
 * namespace side `10.231.N.2/24` (N random, avoiding subnets already on the host). Names are random, so
 * leftovers of a crashed run never collide.
 *
 * @example
 * const ns = await createNetns()
 * t.after(() => ns.close())
 * const child = ns.exec(['/usr/sbin/sshd', '-D', '-e', '-f', cfg])
 */
export async function createNetns(): Promise<Netns> {
  const id = randomBytes(4).toString('hex')
  const name = `ippt-${id}`
  const hostIf = `ipph${id}`
  const nsIf = `ippn${id}`
  const subnet = await pickSubnet()
  const hostAddr = `10.231.${subnet}.1`
  const nsAddr = `10.231.${subnet}.2`
  let closed = false

  const close = async (): Promise<void> => {
    if (closed) return
    closed = true
    const pids = await ip('netns', 'pids', name).catch(() => '')
    for (const pid of pids.split(/\s+/).filter(Boolean)) {
      try {
        process.kill(Number(pid), 'SIGKILL')
      } catch {
        // already gone
      }
    }
    await ip('link', 'del', hostIf).catch(() => undefined)
    await ip('netns', 'del', name).catch(() => undefined)
  }

  try {
    await ip('netns', 'add', name)
    await ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', nsIf)
    await ip('link', 'set', nsIf, 'netns', name)
    await ip('addr', 'add', `${hostAddr}/24`, 'dev', hostIf)
    await ip('link', 'set', hostIf, 'up')
    await ip('netns', 'exec', name, 'ip', 'addr', 'add', `${nsAddr}/24`, 'dev', nsIf)
    await ip('netns', 'exec', name, 'ip', 'link', 'set', nsIf, 'up')
    await ip('netns', 'exec', name, 'ip', 'link', 'set', 'lo', 'up')
  } catch (err) {
    await close()
    throw err
  }

  return {
    name,
    hostAddr,
    nsAddr,
    exec: (argv, options = {}) => spawn('ip', ['netns', 'exec', name, ...argv], options),
    close,
    [Symbol.asyncDispose]: close,
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
  const port = await new Promise<number>((resolve, reject) => {
    let out = ''
    child.stdout?.setEncoding('utf8')
    child.stdout?.on('data', (chunk: string) => {
      out += chunk
      if (out.includes('\n')) resolve(Number(out.trim()))
    })
    child.once('error', reject)
    child.once('exit', (code) => reject(new Error(`echo server exited with ${String(code)}`)))
  })
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
