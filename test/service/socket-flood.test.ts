import assert from 'node:assert/strict'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { connect } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { statusSocketPath } from '../../src/service/index.js'
import { exited, JsonLines, spawnCli } from '../support/cli.js'
import type { ChildProcess } from 'node:child_process'

const FLOOD = 64 * 1024 * 1024

/** Resident memory of a process, in bytes (VmRSS). */
async function rss(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const kb = /^VmRSS:\s+(\d+) kB$/mu.exec(status)?.[1]
  assert.ok(kb !== undefined, status)
  return Number(kb) * 1024
}

/**
 * Sends `head`, then up to 64 MiB without a newline, as fast as the socket takes it; resolves when the service
 * closes the connection: what it answered and how much was written.
 */
function flood(path: string, head: string): Promise<{ answer: string; written: number }> {
  return new Promise((resolve) => {
    const socket = connect(path)
    const piece = Buffer.alloc(64 * 1024, 'x')
    let written = 0
    let answer = ''
    socket.setEncoding('utf8')
    socket.on('data', (d: string) => (answer += d))
    socket.on('error', () => undefined)
    const pump = (): void => {
      while (written < FLOOD && !socket.destroyed) {
        written += piece.length
        if (!socket.write(piece)) {
          socket.once('drain', pump)
          return
        }
      }
    }
    socket.once('connect', () => {
      socket.write(head)
      pump()
    })
    socket.once('close', () => resolve({ answer, written }))
  })
}

describe('the service socket under a flood: a line over 4 KiB ends the connection, memory stays put', () => {
  let dir: string
  let env: NodeJS.ProcessEnv
  let watch: ChildProcess
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ippt-flood-'))
    env = { IPP_TUNNEL_RUNTIME_DIR: join(dir, 'run'), IPYTHONDIR: join(dir, 'ipython') }
    watch = spawnCli(['watch', '--json', '--dir', dir], env)
    await new JsonLines(watch).next('watching')
  })
  after(async () => {
    watch.kill('SIGTERM')
    await exited(watch)
    await rm(dir, { recursive: true, force: true })
  })

  async function measured(what: string, head: string) {
    const pid = watch.pid ?? 0
    const before = await rss(pid)
    const { answer, written } = await flood(statusSocketPath(env), head)
    const grown = (await rss(pid)) - before
    console.log(`${what}: wrote ${written} bytes before the close; service RSS grew ${grown} bytes`)
    assert.ok(written < FLOOD, `closed before the flood ended (${written} bytes written)`)
    // the buffer of one connection, not the flood: well under what 64 MiB would cost
    assert.ok(grown < 16 * 1024 * 1024, `RSS grew ${grown} bytes`)
    return answer
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as Record<string, unknown>)
  }

  test('a request line: 64 MiB with no newline → an error line and the connection closed', async () => {
    const first = (await measured('request line', '')).at(0)
    assert.ok(first)
    assert.equal(first.type, 'error')
    assert.match(String(first.error), /request longer than 4096 bytes/u)
  })

  test('a kernel client whose lines are not messages (null, a number, an unknown type): the service answers and lives on', async () => {
    const answers = await new Promise<string>((resolve) => {
      const socket = connect(statusSocketPath(env))
      let text = ''
      socket.setEncoding('utf8')
      socket.on('data', (d: string) => (text += d))
      socket.on('error', () => undefined)
      socket.once('connect', () =>
        socket.write(
          '{"op":"kernel","destination":"nowhere","connectionFile":"relative.json"}\nnull\n42\n{"type":"reboot"}\n',
        ),
      )
      socket.once('close', () => resolve(text))
    })
    assert.match(answers, /"code":"E_USAGE"/u)
    assert.equal(watch.exitCode, null, 'the service still runs')
    const status = await new Promise<string>((resolve) => {
      const socket = connect(statusSocketPath(env))
      let text = ''
      socket.setEncoding('utf8')
      socket.on('data', (d: string) => (text += d))
      socket.once('connect', () => socket.end('{"op":"status"}\n'))
      socket.once('close', () => resolve(text))
    })
    assert.equal((JSON.parse(status) as { pid: number }).pid, watch.pid)
  })

  test('a login client with nothing to log in to, then 64 MiB: told so, and nothing more is read', async () => {
    const answers = await measured('login, nothing waiting', '{"op":"login"}\n')
    assert.deepEqual(answers, [{ type: 'none', message: 'no link of the service waits for a login' }])
  })
})
