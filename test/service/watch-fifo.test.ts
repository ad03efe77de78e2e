import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { access, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, test } from 'node:test'
import { promisify } from 'node:util'

import { exited, JsonLines, spawnCli } from '../support/cli.js'
import { sshArgsOf, startEchoServer, startSshd, type EchoServer, type Sshd } from '../support/index.js'
import { kernelFileText } from '../support/kernel.js'

const run = promisify(execFile)

let sshd: Sshd
let echo: EchoServer
let base: string

before(async () => {
  sshd = await startSshd()
  echo = await startEchoServer()
  base = await mkdtemp(join(tmpdir(), 'ippt-watch-fifo-'))
})
after(async () => {
  await rm(base, { recursive: true, force: true })
  await echo.close()
  await sshd.close()
})

test('a FIFO and /dev/zero in a watched directory are refused; the service keeps serving other files and stops on SIGTERM', async () => {
  const dir = join(base, 'watched')
  await mkdir(dir, { mode: 0o700 })
  const fifo = join(dir, 'kernel-f.json')
  await run('mkfifo', [fifo])
  const zero = join(dir, 'kernel-zero.json')
  await symlink('/dev/zero', zero)
  await writeFile(join(dir, 'kernel-1.json'), kernelFileText(echo.port), { mode: 0o600 })

  const service = spawnCli(
    ['watch', '--dir', dir, '--json', '--ssh', `root@${sshd.host}:${sshd.port}`, ...sshArgsOf(sshd)],
    { IPP_TUNNEL_RUNTIME_DIR: join(base, 'run') },
  )
  const events = new JsonLines(service)
  const fifoError = await events.next((e) => e.event === 'error' && e.file === fifo)
  assert.equal(fifoError.code, 'E_CONNFILE_READ')
  assert.match(String(fifoError.message), /a FIFO, not a regular file/)
  const zeroError = await events.next((e) => e.event === 'error' && e.file === zero)
  assert.match(String(zeroError.message), /a character device/)
  await events.next((e) => e.event === 'ready' && e.file === join(dir, 'kernel-1.json'))

  // New files still get events and tunnels; removed files lose theirs.
  const second = join(dir, 'kernel-2.json')
  await writeFile(second, kernelFileText(echo.port), { mode: 0o600 })
  const ready = await events.next((e) => e.event === 'ready' && e.file === second)
  await rm(second)
  await events.next((e) => e.event === 'closed' && e.file === second)
  await assert.rejects(access(String(ready.out)))

  service.kill('SIGTERM')
  const { code } = await exited(service)
  assert.equal(code, 0, events.stderr)
  assert.doesNotMatch(events.stderr, /second SIGTERM/)
})
