import { once } from 'node:events'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import type { AddressInfo } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

import ssh2 from 'ssh2'
import type { Attributes, Connection, FileEntry, SFTPWrapper } from 'ssh2'

import type { ResolvedHop } from '../../src/ssh/index.js'

const { Server, utils } = ssh2
const { STATUS_CODE } = utils.sftp

/** What a scripted directory listing answers to its `batch`-th READDIR: names, end of list, or no answer yet. */
export type ListingScript = (batch: number) => FileEntry[] | 'eof' | Promise<FileEntry[] | 'eof'>

/** How the in-process server's SFTP subsystem behaves. */
export interface FakeSftpOptions {
  /** The listing of every directory opened. */
  readonly listing: ListingScript
  /** When true, a request for the sftp subsystem drops the whole connection instead of an answer. */
  readonly dropOnSftp?: boolean
}

/**
 * An SSH server inside the test process (ssh2's `Server`), for faults OpenSSH cannot be made to show: a listing that
 * never ends, names with slashes, a connection that drops when SFTP is asked for. Any login is accepted; files
 * are regular, 2 bytes (`{}`), mode 0600.
 */
export interface FakeSftpServer {
  readonly port: number
  /** A hop that reaches this server with its host key known. */
  readonly hop: ResolvedHop
  /** Every path the client asked about (LSTAT, STAT, OPEN), in order. */
  readonly touched: string[]
  /** READDIR requests answered so far. */
  readdirs(): number
  close(): Promise<void>
}

const FILE = Buffer.from('{}')

function fileAttrs(): Attributes {
  return { mode: 0o100600, uid: 0, gid: 0, size: FILE.length, atime: 0, mtime: 0 }
}

/** A regular-file entry of `name` for a {@link ListingScript}. */
export function fileEntry(name: string): FileEntry {
  return { filename: name, longname: `-rw------- 1 root root 2 Jan 1 00:00 ${name}`, attrs: fileAttrs() }
}

function serveSftp(
  sftp: SFTPWrapper,
  options: FakeSftpOptions,
  server: { touched: string[]; readdirs: number },
): void {
  const batches = new Map<string, number>()
  let next = 0
  const handle = (): Buffer => Buffer.from(String(next++))
  sftp.on('REALPATH', (id) => sftp.name(id, [{ filename: '/home', longname: '/home', attrs: fileAttrs() }]))
  sftp.on('OPENDIR', (id) => {
    const h = handle()
    batches.set(h.toString(), 0)
    sftp.handle(id, h)
  })
  sftp.on('READDIR', (id, h) => {
    const key = h.toString()
    const batch = batches.get(key) ?? 0
    batches.set(key, batch + 1)
    void Promise.resolve(options.listing(batch)).then((answer) => {
      server.readdirs++
      if (answer === 'eof') sftp.status(id, STATUS_CODE.EOF)
      else sftp.name(id, answer)
    })
  })
  const touch = (id: number, path: string): void => {
    server.touched.push(path)
    sftp.attrs(id, fileAttrs())
  }
  sftp.on('LSTAT', touch)
  sftp.on('STAT', touch)
  sftp.on('OPEN', (id, path) => {
    server.touched.push(path)
    sftp.handle(id, handle())
  })
  sftp.on('FSTAT', (id) => sftp.attrs(id, fileAttrs()))
  sftp.on('READ', (id, _h, offset) => {
    if (offset >= FILE.length) sftp.status(id, STATUS_CODE.EOF)
    else sftp.data(id, FILE.subarray(offset))
  })
  sftp.on('CLOSE', (id) => sftp.status(id, STATUS_CODE.OK))
}

/**
 * An ed25519 key pair that ssh2 can read back. ssh2 1.17 writes a key whose public half starts with a zero byte
 * 31 bytes long and then refuses it as malformed (about 1 key in 300; it failed CI once), so such a pair is drawn
 * again.
 */
function ed25519KeyPair(): { private: string; public: string } {
  for (;;) {
    const pair = utils.generateKeyPairSync('ed25519')
    if (!(utils.parseKey(pair.private) instanceof Error)) return pair
  }
}

/**
 * Starts an {@link FakeSftpServer} on a free port of 127.0.0.1.
 *
 * @example
 * const server = await startFakeSftp({ listing: (n) => (n < 3 ? [fileEntry(`kernel-${n}.json`)] : 'eof') })
 * const link = new Link({ hops: [server.hop] }, { agent: false })
 */
export async function startFakeSftp(options: FakeSftpOptions): Promise<FakeSftpServer> {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-fake-sftp-'))
  const host = ed25519KeyPair()
  const client = ed25519KeyPair()
  const clientKey = join(dir, 'id_ed25519')
  await writeFile(clientKey, client.private, { mode: 0o600 })
  const state = { touched: [] as string[], readdirs: 0 }
  const connections = new Set<Connection>()
  const server = new Server({ hostKeys: [host.private] }, (connection) => {
    connections.add(connection)
    connection.on('close', () => connections.delete(connection))
    connection.on('error', () => undefined)
    connection.on('authentication', (ctx) => ctx.accept())
    connection.on('ready', () => {
      connection.on('session', (accept) => {
        const session = accept()
        session.on('sftp', (acceptSftp) => {
          if (options.dropOnSftp === true) {
            connection.end()
            return
          }
          serveSftp(acceptSftp(), options, state)
        })
      })
    })
  })
  server.listen(0, '127.0.0.1')
  await once(server, 'listening')
  const port = (server.address() as AddressInfo).port
  const knownHosts = join(dir, 'known_hosts')
  await writeFile(knownHosts, `[127.0.0.1]:${port} ${host.public.trim()}\n`)
  const hop: ResolvedHop = {
    alias: '127.0.0.1',
    host: '127.0.0.1',
    port,
    username: 'test',
    identityFiles: [clientKey],
    identitiesOnly: true,
    knownHostsFiles: [knownHosts],
  }
  return {
    port,
    hop,
    touched: state.touched,
    readdirs: () => state.readdirs,
    close: async () => {
      for (const connection of connections) connection.end()
      await new Promise<void>((resolve) => server.close(() => resolve()))
      await rm(dir, { recursive: true, force: true })
    },
  }
}
