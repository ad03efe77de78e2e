import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { constants } from 'node:fs'
import { open, mkdir, mkdtemp, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises'
import { homedir, tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { promisify } from 'node:util'

import type { SFTPWrapper } from 'ssh2'

import { Link } from '../../src/ssh/index.js'
import { RemoteDirectorySource, type SourceEvents } from '../../src/sources/index.js'
import { hasCode, hopOf, startSshd, type Sshd } from '../support/index.js'
import { fileEntry, startFakeSftp, type FakeSftpOptions } from '../support/sftp-server.js'

const run = promisify(execFile)

type Seen = { [K in keyof SourceEvents]: { type: K; args: SourceEvents[K][0] } }[keyof SourceEvents]

/** A source polled by hand (its own timer never fires during a test) with every event recorded. */
function record(source: RemoteDirectorySource): Seen[] {
  const seen: Seen[] = []
  for (const type of ['watching', 'file', 'removed', 'file:error', 'dir:error', 'warning'] as const) {
    const listener = (args: unknown) => seen.push({ type, args } as Seen)
    source.on(type, listener)
  }
  return seen
}

/** Pids of every running sftp-server. */
async function sftpServers(): Promise<Set<number>> {
  const pids = new Set<number>()
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    const comm = await readFile(`/proc/${entry}/comm`, 'utf8').catch(() => '')
    if (comm.trim() === 'sftp-server') pids.add(Number(entry))
  }
  return pids
}

/** Lets every reader blocked opening `fifo` go on (a writer that comes and goes), so that no sftp-server stays stuck. */
async function unblock(fifo: string): Promise<void> {
  const writer = await open(fifo, constants.O_WRONLY | constants.O_NONBLOCK).catch(() => undefined)
  await writer?.close()
}

const CLIENT = JSON.stringify({ ssh: '', interface: 'tcp://127.0.0.1', registration: 1 })

describe('RemoteDirectorySource over the SFTP session of a Link to a real sshd', () => {
  let sshd: Sshd
  let link: Link
  let root: string

  before(async () => {
    sshd = await startSshd({ extraConfig: 'Subsystem sftp internal-sftp' })
    link = new Link({ hops: [hopOf(sshd)] }, { agent: false, backoff: { initialMs: 50, maxMs: 200 } })
    await link.connect()
    root = await mkdtemp(join(tmpdir(), 'ippt-remote-src-'))
  })
  after(async () => {
    await link.close()
    await sshd.close()
    await rm(root, { recursive: true, force: true })
  })

  function source(
    t: { after(fn: () => Promise<void>): void },
    dir: string,
    extra: { maxBytes?: number; only?: string; maxFiles?: number } = {},
  ): RemoteDirectorySource {
    const s = new RemoteDirectorySource({
      destination: 'root@test',
      dir,
      sftp: (signal) => link.sftp({ signal }),
      pollMs: 3_600_000,
      ...extra,
    })
    t.after(() => s.close())
    return s
  }

  test('Link.sftp() opens one session per connection and a new one after a reconnect', async () => {
    const a = await link.sftp()
    assert.equal(await link.sftp(), a)
    const reconnected = new Promise<void>((resolve) => link.once('reconnected', () => resolve()))
    await sshd.killConnections()
    await reconnected
    const b = await link.sftp()
    assert.notEqual(b, a)
    assert.equal(await link.sftp(), b)
  })

  test('a missing directory is waited for quietly; files appear, change, settle and go', async (t) => {
    const dir = join(root, 'later', 'profile_default', 'security')
    const s = source(t, dir)
    const seen = record(s)
    await s.poll()
    assert.deepEqual(seen, [
      { type: 'watching', args: { kind: 'remote', destination: 'root@test', dir, present: false } },
    ])
    await mkdir(dir, { recursive: true })
    const file = join(dir, 'ipcontroller-client.json')
    await writeFile(file, CLIENT, { mode: 0o600 })
    await writeFile(join(dir, 'notes.txt'), 'not a connection file')
    seen.length = 0
    await s.poll()
    assert.equal(seen[0]?.type, 'watching')
    const first = seen[1]
    assert.ok(first?.type === 'file')
    assert.equal(first.args.id, `root@test:${file}`)
    assert.equal(first.args.text, CLIENT)
    assert.equal(first.args.settled, false)
    assert.equal(seen.length, 2)
    // read once more (mtimes have whole seconds), then no more reads while nothing changes
    seen.length = 0
    await s.poll()
    const settled = seen.at(0)
    assert.ok(settled?.type === 'file' && settled.args.settled)
    seen.length = 0
    await s.poll()
    assert.equal(seen.length, 0)
    const changed = CLIENT.replace('"registration":1', '"registration":12345')
    await writeFile(file, changed)
    await s.poll()
    const update = seen.at(0)
    assert.ok(update?.type === 'file' && update.args.text === changed)
    seen.length = 0
    await rm(file)
    await s.poll()
    assert.deepEqual(seen, [{ type: 'removed', args: { id: `root@test:${file}` } }])
    assert.equal(s.status().files, 0)
    assert.ok(s.status().polls >= 5)
  })

  test('~/ is the remote home directory; a group-readable file is taken with a warning', async (t) => {
    const dir = await mkdtemp(join(homedir(), '.ippt-remote-src-'))
    t.after(() => rm(dir, { recursive: true, force: true }))
    await writeFile(join(dir, 'kernel-1.json'), '{}', { mode: 0o644 })
    const s = source(t, `~/${basename(dir)}`)
    const seen = record(s)
    await s.poll()
    assert.equal(s.path, dir)
    const warning = seen.find((e) => e.type === 'warning')
    assert.ok(warning?.type === 'warning' && /mode 0644/.test(warning.args.message), JSON.stringify(seen))
    assert.ok(seen.some((e) => e.type === 'file' && e.args.path === join(dir, 'kernel-1.json')))
  })

  test('a FIFO, a 100 MB sparse file, a symlink to /etc/shadow and a directory: one error each, the good file is taken', async (t) => {
    const dir = await mkdtemp(join(root, 'bad-'))
    const good = join(dir, 'ipcontroller-client.json')
    await writeFile(good, CLIENT, { mode: 0o600 })
    await run('mkfifo', [join(dir, 'ipcontroller-fifo-client.json')])
    await run('truncate', ['-s', '100M', join(dir, 'ipcontroller-big-client.json')])
    await symlink('/etc/shadow', join(dir, 'ipcontroller-shadow-client.json'))
    await mkdir(join(dir, 'kernel-dir.json'))
    const s = source(t, dir)
    const seen = record(s)
    await s.poll()
    await s.poll()
    await s.poll()
    const errors = seen.filter((e) => e.type === 'file:error')
    const byName = new Map(errors.map((e) => [basename(e.args.id), e.args]))
    assert.equal(errors.length, 4, JSON.stringify(errors))
    assert.match(byName.get('ipcontroller-fifo-client.json')?.message ?? '', /a FIFO/)
    assert.match(byName.get('ipcontroller-big-client.json')?.message ?? '', /104857600 bytes/)
    assert.match(byName.get('ipcontroller-shadow-client.json')?.message ?? '', /symbolic link/)
    assert.match(byName.get('kernel-dir.json')?.message ?? '', /a directory/)
    for (const e of errors) assert.equal(e.args.code, 'E_REMOTE_FILE')
    const files = seen.filter((e) => e.type === 'file')
    assert.ok(files.length >= 1 && files.every((e) => e.args.path === good && e.args.text === CLIENT))
    assert.equal(s.status().errors, 4)
  })

  test('only: follows one file and nothing else', async (t) => {
    const dir = await mkdtemp(join(root, 'only-'))
    await writeFile(join(dir, 'ipcontroller-client.json'), CLIENT)
    await writeFile(join(dir, 'ipcontroller-engine.json'), CLIENT)
    const s = source(t, dir, { only: 'ipcontroller-engine.json' })
    const seen = record(s)
    await s.poll()
    const names = seen.flatMap((e) => (e.type === 'file' ? [basename(e.args.path)] : []))
    assert.deepEqual(names, ['ipcontroller-engine.json'])
  })

  test('polls continue over a reconnect: a file written while the link was down is found', async (t) => {
    const dir = await mkdtemp(join(root, 'reconnect-'))
    const s = source(t, dir)
    const seen = record(s)
    await s.poll()
    const reconnected = new Promise<void>((resolve) => link.once('reconnected', () => resolve()))
    await sshd.killConnections()
    await writeFile(join(dir, 'kernel-2.json'), '{"a":1}')
    await s.poll()
    await reconnected
    await s.poll()
    assert.ok(
      seen.some((e) => e.type === 'file' && basename(e.args.path) === 'kernel-2.json'),
      JSON.stringify(seen),
    )
  })

  test('a directory the server will not list: one E_REMOTE_DIR error, then quiet until it changes', async (t) => {
    // sftp-server refuses opendir with SSH2_FX_PERMISSION_DENIED, as for a directory without permission
    const strict = await startSshd({ extraConfig: 'Subsystem sftp internal-sftp -P opendir' })
    t.after(() => strict.close())
    const strictLink = new Link({ hops: [hopOf(strict)] }, { agent: false })
    t.after(() => strictLink.close())
    await strictLink.connect()
    const s = new RemoteDirectorySource({
      destination: 'root@strict',
      dir: root,
      sftp: (signal) => strictLink.sftp({ signal }),
      pollMs: 3_600_000,
    })
    t.after(() => s.close())
    const seen = record(s)
    await s.poll()
    await s.poll()
    const errors = seen.flatMap((e) => (e.type === 'dir:error' ? [e.args] : []))
    assert.equal(errors.length, 1, JSON.stringify(seen))
    const [error] = errors
    assert.ok(error)
    assert.equal(error.code, 'E_REMOTE_DIR')
    assert.match(error.message, /permission denied/)
    assert.equal(s.status().errors, 2)
  })

  test('a poll the server stops answering ends its SFTP session; the next poll opens a new one', async (t) => {
    const slow = await startSshd({ extraConfig: 'Subsystem sftp /usr/lib/openssh/sftp-server' })
    t.after(() => slow.close())
    const slowLink = new Link({ hops: [hopOf(slow)] }, { agent: false })
    t.after(() => slowLink.close())
    await slowLink.connect()
    const dir = await mkdtemp(join(root, 'stalled-'))
    const s = new RemoteDirectorySource({
      destination: 'root@slow',
      dir,
      sftp: (signal, stale) => slowLink.sftp({ signal, ...(stale !== undefined && { stale }) }),
      pollMs: 3_600_000,
      timeoutMs: 3000,
    })
    t.after(() => s.close())
    const seen = record(s)
    const before = await sftpServers()
    await s.poll()
    assert.deepEqual(
      seen.map((e) => e.type),
      ['watching'],
    )
    const stalled = [...(await sftpServers())].filter((pid) => !before.has(pid))
    assert.equal(stalled.length, 1)
    for (const pid of stalled) process.kill(pid, 'SIGSTOP')
    t.after(() => {
      for (const pid of stalled) process.kill(pid, 'SIGKILL')
    })
    await writeFile(join(dir, 'kernel-3.json'), '{}')
    await s.poll()
    const errors = seen.flatMap((e) => (e.type === 'dir:error' ? [e.args] : []))
    assert.match(errors[0]?.message ?? '', /did not answer within 3000 ms/)
    await s.poll()
    assert.ok(
      seen.some((e) => e.type === 'file' && basename(e.args.path) === 'kernel-3.json'),
      JSON.stringify(seen),
    )
  })

  test('at most maxFiles connection files are followed per directory; the rest is reported once', async (t) => {
    const dir = await mkdtemp(join(root, 'many-'))
    for (let i = 0; i < 5; i++) await writeFile(join(dir, `kernel-${i}.json`), '{}')
    const s = source(t, dir, { maxFiles: 3 })
    const seen = record(s)
    await s.poll()
    await s.poll()
    const followed = new Set(seen.flatMap((e) => (e.type === 'file' ? [basename(e.args.path)] : [])))
    assert.equal(followed.size, 3)
    const errors = seen.flatMap((e) => (e.type === 'dir:error' ? [e.args] : []))
    assert.equal(errors.length, 1, JSON.stringify(errors))
    const [error] = errors
    assert.ok(error)
    assert.equal(error.code, 'E_REMOTE_DIR')
    assert.match(error.message, /5 connection files, more than the 3 followed in one directory/)
    // a new file does not push out one followed already
    await writeFile(join(dir, 'kernel-0a.json'), '{}')
    seen.length = 0
    await s.poll()
    assert.deepEqual(seen, [])
    assert.equal(s.status().files, 3)
  })

  /** `sftp` for a source whose sessions run `swap` right before the first request named in `before`. */
  function swappingSftp(
    l: Link,
    before: readonly ('lstat' | 'open')[],
    swap: () => Promise<void> | void,
  ): (signal: AbortSignal, stale?: SFTPWrapper) => Promise<SFTPWrapper> {
    const real = new WeakMap<SFTPWrapper, SFTPWrapper>()
    const wrapped = new WeakMap<SFTPWrapper, SFTPWrapper>()
    return async (signal, stale) => {
      const session = await l.sftp({
        signal,
        ...(stale !== undefined && { stale: real.get(stale) ?? stale }),
      })
      let proxy = wrapped.get(session)
      if (proxy === undefined) {
        proxy = new Proxy(session, {
          get(target, prop) {
            const value: unknown = Reflect.get(target, prop, target)
            if (typeof value !== 'function') return value
            const method = value as (...args: unknown[]) => unknown
            if ((before as readonly unknown[]).includes(prop)) {
              return (...args: unknown[]) => {
                void Promise.resolve(swap()).then(() => method.apply(target, args))
              }
            }
            return method.bind(target)
          },
        })
        wrapped.set(session, proxy)
        real.set(proxy, session)
      }
      return proxy
    }
  }

  test('a symlink to a FIFO swapped in after the listing is refused by the lstat right before the open', async (t) => {
    const dir = await mkdtemp(join(root, 'swap-'))
    const fifo = join(root, `fifo-${basename(dir)}`)
    await run('mkfifo', [fifo])
    const file = join(dir, 'kernel-swap.json')
    await writeFile(file, '{}')
    let swapped = false
    const swap = async () => {
      if (swapped) return
      swapped = true
      await symlink(fifo, `${file}.tmp`)
      await rename(`${file}.tmp`, file)
    }
    t.after(() => unblock(fifo))
    const s = new RemoteDirectorySource({
      destination: 'root@test',
      dir,
      sftp: swappingSftp(link, ['lstat', 'open'], swap),
      pollMs: 3_600_000,
      timeoutMs: 2000,
    })
    t.after(() => s.close())
    const seen = record(s)
    await s.poll()
    assert.ok(swapped)
    const errors = seen.filter((e) => e.type === 'file:error' || e.type === 'dir:error')
    assert.equal(errors.length, 1, JSON.stringify(errors))
    assert.match(JSON.stringify(errors[0]), /symbolic link, not a regular file/)
  })

  test('sessions stuck on a FIFO swapped in between lstat and open: never more than one given up on per directory', async (t) => {
    const external = await startSshd({ extraConfig: 'Subsystem sftp /usr/lib/openssh/sftp-server' })
    t.after(() => external.close())
    const externalLink = new Link({ hops: [hopOf(external)] }, { agent: false })
    t.after(() => externalLink.close())
    await externalLink.connect()
    const dir = await mkdtemp(join(root, 'stuck-'))
    const fifo = join(root, `fifo-${basename(dir)}`)
    await run('mkfifo', [fifo])
    const file = join(dir, 'kernel-stuck.json')
    const swap = async () => {
      await symlink(fifo, `${file}.tmp`)
      await rename(`${file}.tmp`, file)
    }
    const s = new RemoteDirectorySource({
      destination: 'root@external',
      dir,
      sftp: swappingSftp(externalLink, ['open'], swap),
      pollMs: 3_600_000,
      timeoutMs: 1000,
    })
    t.after(() => s.close())
    const seen = record(s)
    const before = await sftpServers()
    t.after(async () => {
      await unblock(fifo)
      for (const pid of await sftpServers()) if (!before.has(pid)) process.kill(pid, 'SIGKILL')
    })
    for (let i = 0; i < 4; i++) {
      // a regular file again (a new size each time, so that it is read again), swapped for the link at the open
      await rm(file, { force: true })
      await writeFile(file, `{}${' '.repeat(i)}`)
      await s.poll()
    }
    const started = [...(await sftpServers())].filter((pid) => !before.has(pid))
    assert.equal(started.length, 2, `${started.length} sftp-server processes for 4 polls`)
    const messages = seen.flatMap((e) => (e.type === 'dir:error' ? [e.args.message] : []))
    assert.match(messages.join('\n'), /still hangs on the server/)
  })

  test('close() stops polling and is safe twice', async (t) => {
    const s = source(t, root)
    s.start()
    await s.close()
    await s.close()
    assert.equal(s.closed, true)
    await s.poll()
  })
})

describe('RemoteDirectorySource against an SFTP server that misbehaves (in-process, ssh2)', () => {
  async function against(
    t: { after(fn: () => Promise<void>): void },
    script: FakeSftpOptions,
    extra: { maxEntries?: number; timeoutMs?: number } = {},
  ) {
    const server = await startFakeSftp(script)
    t.after(() => server.close())
    const link = new Link({ hops: [server.hop] }, { agent: false })
    t.after(() => link.close())
    await link.connect()
    const s = new RemoteDirectorySource({
      destination: 'test@fake',
      dir: '/dir',
      sftp: (signal, stale) => link.sftp({ signal, ...(stale !== undefined && { stale }) }),
      pollMs: 3_600_000,
      ...extra,
    })
    t.after(() => s.close())
    return { server, link, source: s, seen: record(s) }
  }

  test('a listing that never ends is cut at maxEntries with one E_REMOTE_DIR error; nothing is read', async (t) => {
    const { server, source, seen } = await against(
      t,
      { listing: (n) => Array.from({ length: 1000 }, (_, i) => fileEntry(`kernel-${n}-${i}.json`)) },
      { maxEntries: 20_000 },
    )
    await source.poll()
    const errors = seen.flatMap((e) => (e.type === 'dir:error' ? [e.args] : []))
    assert.equal(errors.length, 1, JSON.stringify(errors))
    const [error] = errors
    assert.ok(error)
    assert.equal(error.code, 'E_REMOTE_DIR')
    assert.match(error.message, /more than 20000 names \(or never ends\)/)
    assert.ok(server.readdirs() <= 21, `${server.readdirs()} READDIR answered`)
    assert.deepEqual(server.touched, [])
    assert.equal(seen.filter((e) => e.type === 'file').length, 0)
  })

  test('names that are not plain file names (a/../../x, ../x) are refused, never opened', async (t) => {
    const names = ['a/../../kernel-x.json', '../kernel-y.json', 'kernel-ok.json']
    const { server, source, seen } = await against(t, {
      listing: (n) => (n === 0 ? names.map(fileEntry) : 'eof'),
    })
    await source.poll()
    assert.ok(server.touched.length > 0)
    for (const path of server.touched) assert.equal(path, '/dir/kernel-ok.json')
    const files = seen.flatMap((e) => (e.type === 'file' ? [e.args.path] : []))
    assert.deepEqual(files, ['/dir/kernel-ok.json'])
    const errors = seen.flatMap((e) => (e.type === 'dir:error' ? [e.args.message] : []))
    assert.equal(errors.length, 1, JSON.stringify(errors))
    assert.match(errors[0] ?? '', /"a\/\.\.\/\.\.\/kernel-x\.json", which is not a plain file name; ignored/)
  })

  test('a long poll whose every answer comes within the timeout is not cut', async (t) => {
    // eight answers 300 ms apart: the poll takes longer than the 1 s timeout, yet the server never went quiet that long
    const { source, seen } = await against(
      t,
      {
        listing: async (n) => {
          await new Promise((resolve) => setTimeout(resolve, 300))
          return n < 8 ? [fileEntry(`kernel-${n}.json`)] : 'eof'
        },
      },
      { timeoutMs: 1000 },
    )
    await source.poll()
    assert.deepEqual(
      seen.filter((e) => e.type === 'dir:error'),
      [],
    )
    assert.equal(seen.filter((e) => e.type === 'file').length, 8)
  })

  test('a connection that drops while an SFTP session is asked for is a link down, not a refused subsystem', async (t) => {
    const server = await startFakeSftp({ listing: () => 'eof', dropOnSftp: true })
    t.after(() => server.close())
    const link = new Link({ hops: [server.hop] }, { agent: false, backoff: { initialMs: 50, maxMs: 200 } })
    t.after(() => link.close())
    await link.connect()
    const err = await link.sftp().then(
      () => undefined,
      (e: unknown) => e,
    )
    assert.ok(hasCode('E_LINK_DOWN', 'SFTP session')(err), String(err))
    assert.doesNotMatch((err as Error).message, /refused|Subsystem/)
  })
})
