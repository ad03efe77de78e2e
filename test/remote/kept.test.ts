import assert from 'node:assert/strict'
import { mkdtemp, readdir, readFile, rm, symlink } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'

import { KeptSupervisor, RemoteProcesses } from '../../src/remote/index.js'
import { Link } from '../../src/ssh/index.js'
import {
  alive,
  createNetns,
  hasCode,
  hopOf,
  pidsWhere,
  startSshd,
  type Netns,
  type Sshd,
} from '../support/index.js'

/** Waits until `check` holds, checking every 50 ms for at most `ms` (then fails naming `what`). */
async function until(check: () => Promise<boolean>, what: string, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`)
    await sleep(50)
  }
}

/** Binds a unix socket in the process's directory after a moment, then waits. */
const BINDS = String.raw`
import socket, sys, time
time.sleep(0.3)
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen()
time.sleep(300)
`

describe('KeptSupervisor: one supervisor kept on the link answers every quick verb', () => {
  let ns: Netns
  let sshd: Sshd
  let root: string
  /** A python of this test's own (a link to Debian's): its supervisors are told apart by their argv[0]. */
  let py: string

  before(async () => {
    ns = await createNetns()
    sshd = await startSshd({ netns: ns })
    root = await mkdtemp(join(tmpdir(), 'ippt-kept-'))
    py = join(root, 'python3')
    await symlink('/usr/bin/python3', py)
  })
  after(async () => {
    await sshd.close()
    await ns.close()
    await rm(root, { recursive: true, force: true })
  })

  /**
   * The kept supervisors of this test: children of an sshd session, each the leader of its session. With `session`,
   * that supervisor and its requests' children (forks in its session, even once orphaned); the supervisors of
   * started processes are forks too, but in sessions of their own.
   */
  const supervisors = async (session?: number): Promise<number[]> => {
    const sshds = new Set(await pidsWhere((p) => (p.argv[0] ?? '').includes('sshd')))
    const serving = await pidsWhere((p) => p.argv[0] === py && p.argv.includes('serve'))
    const found: number[] = []
    for (const pid of serving) {
      const stat = await readFile(`/proc/${String(pid)}/stat`, 'utf8').catch(() => '')
      const [, ppid, , sid] = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      if (stat === '') continue
      if (session === undefined ? sshds.has(Number(ppid)) : Number(sid) === session) found.push(pid)
    }
    return found
  }
  const connect = async (): Promise<Link> => {
    const link = new Link({ hops: [hopOf(sshd)] }, { agent: false, backoff: { initialMs: 50, maxMs: 200 } })
    await link.connect()
    return link
  }
  const sessions = (): number => sshd.log().match(/Starting session: command/gu)?.length ?? 0

  test('two processes started, waited for, stopped, with one command session; it exits when the link goes', async () => {
    const link = await connect()
    const kept = new KeptSupervisor(link, { python: py })
    const procs = new RemoteProcesses(link, { dir: join(root, 'state'), python: py, kept })
    const before = sessions()
    const [a, b] = await Promise.all(
      ['a', 'b'].map((name) => procs.start({ name, argv: [py, '-c', BINDS, '{dir}/sock'] })),
    )
    assert.equal(a?.state, 'running')
    assert.equal(b?.state, 'running')
    await Promise.all(['a', 'b'].map((name) => procs.waitSockets(name, ['sock'])))
    assert.deepEqual(await readdir(join(root, 'state', 'a')).then((e) => e.includes('sock')), true)
    assert.equal((await procs.status('a')).state, 'running')
    assert.deepEqual(
      (await procs.list()).map((p) => p.name),
      ['a', 'b'],
    )
    assert.equal(await procs.stop('a'), 'running')
    assert.equal(await procs.stop('b'), 'running')
    assert.deepEqual(await readdir(join(root, 'state')), [])
    assert.equal(sessions() - before, 1, sshd.log())

    const [pid, ...more] = await supervisors()
    assert.ok(pid !== undefined && more.length === 0, 'one kept supervisor')
    await link.close()
    await until(async () => !(await alive(pid)), 'the kept supervisor to exit with its link')
    await assert.rejects(procs.status('a'), (err: Error) => err instanceof Error)
  })

  test('a process that ends before binding its sockets: E_SPAWN with its stderr; close() ends the supervisor', async (t) => {
    const link = await connect()
    t.after(() => link.close())
    const kept = new KeptSupervisor(link, { python: py })
    const procs = new RemoteProcesses(link, { dir: join(root, 'state'), python: py, kept })
    await procs.start({ name: 'dies', argv: ['sh', '-c', 'echo no module named ipykernel >&2; exit 1'] })
    await assert.rejects(procs.waitSockets('dies', ['sock']), hasCode('E_SPAWN', 'no module named ipykernel'))
    assert.equal(await procs.stop('dies'), 'exited')
    // a wait given up: its request ends there too, the supervisor serves on
    await procs.start({ name: 'slow', argv: ['sleep', '300'] })
    const abort = new AbortController()
    const waiting = procs.waitSockets('slow', ['sock'], { signal: abort.signal })
    // given up once the request is there, not before it is sent
    // (each request runs in a child of the supervisor: a second process of the same command line)
    const [server = 0] = await supervisors()
    await until(async () => (await supervisors(server)).length === 2, 'the wait to reach the server')
    abort.abort(new Error('given up'))
    await assert.rejects(waiting, /given up/u)
    await until(async () => (await supervisors(server)).length === 1, 'the wait to end there')
    assert.equal(await procs.stop('slow'), 'running')
    await assert.rejects(procs.waitSockets('slow', ['../x']), hasCode('E_USAGE'))
    // closed while a wait is on: the supervisor and the wait's child there both end
    await procs.start({ name: 'never', argv: ['sleep', '300'] })
    const waitingOn = procs.waitSockets('never', ['sock'])
    await until(async () => (await supervisors(server)).length === 2, 'the wait to reach the server')
    kept.close()
    await assert.rejects(waitingOn, hasCode('E_REMOTE'))
    await until(
      async () => (await supervisors(server)).length === 0,
      'the kept supervisor and its child to exit',
    )
    // a closed one is passed over: each verb runs as a command of its own again
    assert.equal(await procs.stop('never'), 'running')
    assert.equal((await procs.status('slow')).state, 'none')
  })
})
