import assert from 'node:assert/strict'
import { connect } from 'node:net'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { test } from 'node:test'

import {
  LoginRelay,
  loginToService,
  queryStatus,
  StatusServer,
  type StatusReport,
} from '../../src/service/index.js'
import type { PromptRequest } from '../../src/ssh/index.js'

const report: StatusReport = { pid: 1, since: '2026-01-01T00:00:00.000Z', dirs: [], links: 0, files: [] }

/** A client of the old protocol: sends nothing, half-closes, reads the status. */
function oldClient(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(path, () => socket.end())
    let text = ''
    socket.setEncoding('utf8')
    socket.on('data', (d: string) => (text += d))
    socket.once('close', () => resolve(text))
    socket.once('error', reject)
  })
}

test('the socket answers status (with or without a request line) and relays a login to a waiting link', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-login-socket-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const path = join(dir, 'run', 'status.sock')
  const relay = new LoginRelay()
  const server = await StatusServer.listen(
    path,
    () => ({ ...report, logins: relay.pending() }),
    (socket, destination, rest) => relay.attach(socket, destination, rest),
  )
  t.after(() => server.close())

  assert.deepEqual(await queryStatus(path), { ...report, logins: [] })
  assert.deepEqual(JSON.parse(await oldClient(path)), { ...report, logins: [] })

  // nothing waits: login says so and ends
  const nothing = await loginToService(path, undefined, {
    answer: () => Promise.reject(new Error('not asked')),
    note: () => undefined,
  })
  assert.deepEqual(nothing, [{ type: 'none', message: 'no link of the service waits for a login' }])

  // a link finds nobody to answer: the relay records the need once, and the link waits at the gate
  const needed: unknown[] = []
  relay.on('auth-needed', (p) => needed.push(p))
  const request: PromptRequest = {
    destination: 'alice@cluster:22',
    host: 'alice@cluster:22',
    method: 'keyboard-interactive',
    name: '',
    instructions: '',
    prompts: [{ prompt: 'Code: ', echo: false }],
  }
  assert.equal(await relay.provider(request), undefined)
  const abort = new AbortController()
  t.after(() => abort.abort())
  const woken = relay.gate.wait(request.destination, abort.signal)
  assert.equal(needed.length, 1)
  assert.deepEqual(
    (await queryStatus(path)).logins?.map((p) => p.prompts),
    [[{ prompt: 'Code: ', echo: false }]],
  )

  // `login` takes it on: the link wakes, asks again, gets the answer; its result goes back to the client
  const notes: string[] = []
  const results = loginToService(path, 'cluster', {
    answer: (prompt) => {
      assert.deepEqual(prompt.prompts, [{ prompt: 'Code: ', echo: false }])
      return Promise.resolve(['123456'])
    },
    note: (m) => notes.push(m.type),
  })
  await woken
  assert.deepEqual(await relay.provider(request), ['123456'])
  relay.gate.settled(request.destination, undefined)
  assert.deepEqual(await results, [{ type: 'result', destination: 'alice@cluster:22', ok: true }])
  assert.deepEqual(notes, ['login', 'result'])
  assert.deepEqual((await queryStatus(path)).logins, [])
  assert.equal(needed.length, 1)
})

test('a login client that sends a line over 4 KiB: an error line, the connection closed, the link left waiting', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-login-flood-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  const path = join(dir, 'run', 'status.sock')
  const relay = new LoginRelay()
  const server = await StatusServer.listen(
    path,
    () => ({ ...report, logins: relay.pending() }),
    (socket, destination, rest) => relay.attach(socket, destination, rest),
  )
  t.after(() => server.close())
  const request: PromptRequest = {
    destination: 'alice@cluster:22',
    host: 'alice@cluster:22',
    method: 'keyboard-interactive',
    name: '',
    instructions: '',
    prompts: [{ prompt: 'Code: ', echo: false }],
  }
  assert.equal(await relay.provider(request), undefined)
  const abort = new AbortController()
  t.after(() => abort.abort())
  const woken = relay.gate.wait(request.destination, abort.signal)

  const socket = connect(path)
  let answer = ''
  let written = 0
  socket.setEncoding('utf8')
  socket.on('error', () => undefined)
  socket.on('data', (d: string) => (answer += d))
  const closed = new Promise((resolve) => socket.once('close', resolve))
  socket.write('{"op":"login"}\n')
  await woken
  // the session holds the link; now 64 MiB of one line, as fast as the socket takes it
  const piece = Buffer.alloc(64 * 1024, 'x')
  const pump = (): void => {
    while (written < 64 * 1024 * 1024 && !socket.destroyed) {
      written += piece.length
      if (!socket.write(piece)) {
        socket.once('drain', pump)
        return
      }
    }
  }
  pump()
  await closed
  assert.ok(written < 64 * 1024 * 1024, `closed before the flood ended (${written} bytes written)`)
  const lines = answer
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { type: string; message?: string })
  assert.equal(lines[0]?.type, 'login')
  assert.equal(lines.at(-1)?.type, 'error', answer)
  assert.match(lines.at(-1)?.message ?? '', /message longer than 4096 bytes/u)
  // the link asks again with nobody to answer: it waits for the next login
  assert.equal(await relay.provider(request), undefined)
  assert.equal((await queryStatus(path)).logins?.length, 1)
})
