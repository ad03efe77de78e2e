import assert from 'node:assert/strict'
import { copyFile, mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { isIppTunnelError } from '../../src/errors/index.js'
import { Link, type PromptProvider, type PromptRequest } from '../../src/ssh/index.js'
import { CLI, JsonLines, exited, runCli, spawnCli } from '../support/cli.js'
import {
  hasCode,
  kernelListeners,
  writeListenersFile,
  hopOf,
  sshArgsOf,
  startSshd,
  type Sshd,
  type KernelListeners,
} from '../support/index.js'
import { setUpOtpPam, type OtpPam } from '../support/otp.js'
import { literal, runOnPty } from '../support/pty.js'

describe('one-time codes: keyboard-interactive through a real PAM module (pam_oath)', () => {
  let otp: OtpPam
  /** Wants a key and then a code (`AuthenticationMethods publickey,keyboard-interactive`). */
  let both: Sshd
  /** Takes a key or a code. */
  let either: Sshd
  let dir: string
  let file: string
  let listeners: KernelListeners | undefined

  before(async () => {
    otp = await setUpOtpPam()
    ;[both, either] = await Promise.all([
      startSshd({
        pamService: otp.service,
        extraConfig: 'AuthenticationMethods publickey,keyboard-interactive',
      }),
      startSshd({ pamService: otp.service }),
    ])
    dir = await mkdtemp(join(tmpdir(), 'ippt-otp-test-'))
    file = join(dir, 'kernel-otp.json')
    // the kernel's endpoints: listeners on this host's loopback, which is the sshd's too
    listeners = await kernelListeners()
    await writeListenersFile(file, listeners)
  })
  after(async () => {
    listeners?.close()
    await Promise.all([both.close(), either.close()])
    await otp.close()
    await rm(dir, { recursive: true, force: true })
  })

  /** Answers with the next code and records what was asked. */
  function answering(asked: PromptRequest[]): PromptProvider {
    return async (request) => {
      asked.push(request)
      return [await otp.code(await otp.counter())]
    }
  }

  test('a key, then the code: partial success is followed, the prompt is passed on exactly, echo off', async (t) => {
    const asked: PromptRequest[] = []
    const link = new Link({ hops: [hopOf(both)] }, { agent: false, prompt: answering(asked) })
    t.after(() => link.close())
    await link.connect()
    assert.equal(asked.length, 1)
    const [first] = asked
    assert.ok(first)
    assert.deepEqual(first.prompts, [{ prompt: otp.prompt, echo: false }])
    assert.equal(first.method, 'keyboard-interactive')
    assert.equal(first.destination, link.destination)

    // a drop: the key is tried first again, then the code is asked once more (the server wants both)
    const reconnected = new Promise((resolve) => link.once('reconnected', resolve))
    await both.killConnections()
    await reconnected
    assert.equal(asked.length, 2)
  })

  test('a reconnect does not ask again when a key suffices', async (t) => {
    const asked: PromptRequest[] = []
    const link = new Link({ hops: [hopOf(either)] }, { agent: false, prompt: answering(asked) })
    t.after(() => link.close())
    await link.connect()
    const reconnected = new Promise((resolve) => link.once('reconnected', resolve))
    await either.killConnections()
    await reconnected
    assert.equal(asked.length, 0)
  })

  test('PreferredAuthentications: keyboard-interactive alone logs in by the code, without the key', async (t) => {
    const asked: PromptRequest[] = []
    const hop = hopOf(either, { preferredAuthentications: ['keyboard-interactive'] })
    const link = new Link({ hops: [hop] }, { agent: false, prompt: answering(asked) })
    t.after(() => link.close())
    await link.connect()
    assert.equal(asked.length, 1)
  })

  test('behind a ProxyJump: the jump host by key, the destination by key and code', async (t) => {
    const asked: PromptRequest[] = []
    const link = new Link(
      { hops: [hopOf(either, { preferredAuthentications: ['publickey'] }), hopOf(both)] },
      { agent: false, prompt: answering(asked) },
    )
    t.after(() => link.close())
    await link.connect()
    const [first] = asked
    assert.ok(first)
    assert.equal(asked.length, 1)
    assert.equal(first.host, `root@${both.host}:${both.port}`)
    assert.equal(first.destination, link.destination)
  })

  test('nobody to answer: E_AUTH_PROMPT at once, quoting the prompt; a wrong code: E_AUTH', async (t) => {
    let calls = 0
    const silent = new Link(
      { hops: [hopOf(both)] },
      {
        agent: false,
        prompt: () => {
          calls++
          return Promise.resolve(undefined)
        },
      },
    )
    t.after(() => silent.close())
    await assert.rejects(silent.connect(), hasCode('E_AUTH_PROMPT', otp.prompt))
    assert.equal(calls, 1)
    assert.match(silent.error?.message ?? '', /ipp-tunnel login/u)

    const wrong = new Link(
      { hops: [hopOf(both)] },
      { agent: false, prompt: () => Promise.resolve(['000000']) },
    )
    t.after(() => wrong.close())
    await assert.rejects(wrong.connect(), (err) => {
      assert.ok(isIppTunnelError(err))
      assert.equal(err.code, 'E_AUTH')
      assert.match(err.message, /refused the answers/u)
      assert.ok(!err.message.includes('000000'), 'no answer in the message')
      return true
    })
  })

  test('up on a terminal shows the prompt, reads the code without echo, and opens the tunnel', async () => {
    const code = await otp.code(await otp.counter())
    const out = join(dir, 'up-tty.json')
    const result = await runOnPty(
      [
        process.execPath,
        CLI,
        'up',
        file,
        '--ssh',
        `root@${both.host}:${both.port}`,
        '--out',
        out,
        ...sshArgsOf(both),
      ],
      [
        { expect: literal(otp.prompt), send: code },
        { expect: literal(out), signal: 'INT' },
      ],
      { SSH_AUTH_SOCK: '' },
    )
    assert.equal(result.timedOut, false, result.output)
    assert.equal(result.steps, 2, result.output)
    assert.ok(result.output.includes(otp.prompt), result.output)
    assert.ok(!result.output.includes(code), 'the code is not echoed')
    assert.equal(result.code, 0, result.output)
  })

  test('up without a terminal fails at once with E_AUTH_PROMPT quoting the prompt; -v says what happened', async () => {
    const result = await runCli(
      [
        'up',
        file,
        '--json',
        '-v',
        '--ssh',
        `root@${both.host}:${both.port}`,
        '--out',
        join(dir, 'up-no-tty.json'),
        ...sshArgsOf(both),
      ],
      { SSH_AUTH_SOCK: '' },
    )
    assert.equal(result.code, 1, result.stderr)
    const events = result.stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as Record<string, unknown>)
    const last = events.at(-1) ?? {}
    assert.equal(last.code, 'E_AUTH_PROMPT')
    assert.ok(String(last.message).includes(JSON.stringify(otp.prompt)), String(last.message))
    assert.match(String(last.message), /ipp-tunnel login/u)
    const verbose = events.filter((e) => e.event === 'verbose').map((e) => String(e.message))
    const said = verbose.join('\n')
    for (const expected of [
      /connecting; identity files /u,
      /; certificates KEY-cert\.pub beside each identity file, and the agent's; proxy none; /u,
      /transport auto: no live OpenSSH master \(no ControlPath\); our own connection/u,
      /host key SHA256:\S+ accepted/u,
      /trying publickey: /u,
      /publickey accepted, more wanted; the server accepts keyboard-interactive/u,
      /keyboard-interactive asks "One-time password/u,
    ]) {
      assert.match(said, expected)
    }
  })

  test('watch without a terminal waits for `ipp-tunnel login` on one; after a drop it says so once', async (t) => {
    const watched = join(dir, 'watched')
    const runtime = join(dir, 'runtime')
    await mkdir(watched, { mode: 0o700 })
    await copyFile(file, join(watched, 'kernel-w.json'))
    const env = { IPP_TUNNEL_RUNTIME_DIR: runtime, SSH_AUTH_SOCK: '' }
    const dest = `root@${both.host}:${both.port}`
    const child = spawnCli(['watch', '--json', '--dir', watched, '--ssh', dest, ...sshArgsOf(both)], env)
    t.after(async () => {
      child.kill('SIGTERM')
      await exited(child)
    })
    const events = new JsonLines(child)
    const needed = await events.next('auth-needed')
    assert.deepEqual(needed.prompts, [{ prompt: otp.prompt, echo: false }])
    assert.match(String(needed.message), /ipp-tunnel login/u)

    const status = await runCli(['status', '--width', '0'], env)
    assert.equal(status.code, 0, status.stderr)
    assert.match(status.stdout, /waiting for login: root@/u)
    assert.ok(status.stdout.includes(otp.prompt), status.stdout)

    const login = async (): Promise<void> => {
      const code = await otp.code(await otp.counter())
      const result = await runOnPty(
        [process.execPath, CLI, 'login', both.host],
        // the prompt is typed at once the terminal shows it without echo, not at the line that announces it
        [{ expect: 'logging in to[^\\n]*\\n' }, { expect: literal(otp.prompt), send: code }],
        env,
      )
      assert.equal(result.timedOut, false, result.output)
      assert.equal(result.code, 0, result.output)
      assert.match(result.output, /logged in to root@/u)
      assert.ok(!result.output.includes(code), `the code ${code} is not echoed: ${result.output}`)
    }
    await login()
    await events.next('ready')
    assert.ok(
      !JSON.stringify(events.events).includes(await otp.code((await otp.counter()) - 1)),
      'no code in events',
    )

    // the link drops: the key alone does not do, so the service asks again — once — and its tunnel waits
    await both.killConnections()
    await events.waitNew((e) => e.event === 'auth-needed')
    const again = await runCli(['status', '--json'], env)
    const report = JSON.parse(again.stdout) as {
      logins: { destination: string }[]
      files: { link: string }[]
    }
    assert.equal(report.logins.length, 1)
    assert.equal(report.files[0]?.link, 'reconnecting')
    await login()
    await events.next('reconnected')
    assert.equal(events.events.filter((e) => e.event === 'auth-needed').length, 2)
  })
})
