import { spawn } from 'node:child_process'

import { CLI } from './cli.js'

/** One step of a terminal session: wait for `expect` (a regex) in the output since the last step, then act. */
export interface PtyStep {
  readonly expect: string
  /** A line to type (Enter is added). */
  readonly send?: string
  /** Keys to type as they are, no Enter (`\u0003` is Ctrl-C). */
  readonly keys?: string
  /** A signal for the program. */
  readonly signal?: 'INT' | 'TERM'
}

export interface PtyResult {
  /** Exit status, or null when it ended by a signal or the session timed out. */
  readonly code: number | null
  /** Everything the program wrote to its terminal. */
  readonly output: string
  /** Steps whose `expect` was seen. */
  readonly steps: number
  readonly timedOut: boolean
}

// Python's pty module gives the program a real terminal; no native node module is needed.
const DRIVER = String.raw`
import json, os, pty, re, select, signal, sys, time
argv, steps, limit = json.loads(sys.argv[1]), json.loads(sys.argv[2]), float(sys.argv[3])
env = json.loads(sys.argv[4])
pid, fd = pty.fork()
if pid == 0:
    os.environ.update(env)
    os.execvp(argv[0], argv)
out, pos, done, deadline, timed_out = b'', 0, 0, time.time() + limit, False
while True:
    left = deadline - time.time()
    if left <= 0:
        timed_out = True
        os.kill(pid, signal.SIGKILL)
        break
    r, _, _ = select.select([fd], [], [], min(left, 1.0))
    if not r:
        continue
    try:
        data = os.read(fd, 65536)
    except OSError:
        break
    if not data:
        break
    out += data
    while done < len(steps):
        m = re.search(steps[done]['expect'].encode(), out[pos:])
        if not m:
            break
        pos += m.end()
        step = steps[done]
        done += 1
        if 'send' in step:
            os.write(fd, step['send'].encode() + b'\r')
        if 'keys' in step:
            os.write(fd, step['keys'].encode())
        if 'signal' in step:
            os.kill(pid, getattr(signal, 'SIG' + step['signal']))
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
print(json.dumps({'code': code if code >= 0 else None, 'output': out.decode('utf-8', 'replace'), 'steps': done, 'timedOut': timed_out}))
`

/**
 * Runs `argv` on a real pseudo-terminal (Python's pty module), playing `steps`; resolves when the program ends.
 * `limitMs` only bounds a session that went wrong (it is killed and `timedOut` set), it is no timing check.
 *
 * @example
 * const r = await runOnPty(['node', CLI, 'login'], [{ expect: 'password', send: code }])
 */
export function runOnPty(
  argv: readonly string[],
  steps: readonly PtyStep[],
  env: NodeJS.ProcessEnv = {},
  limitMs = 90_000,
): Promise<PtyResult> {
  const child = spawn(
    'python3',
    ['-c', DRIVER, JSON.stringify(argv), JSON.stringify(steps), String(limitMs / 1000), JSON.stringify(env)],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
  return new Promise((resolve, reject) => {
    child.once('close', () => {
      try {
        resolve(JSON.parse(stdout) as PtyResult)
      } catch {
        reject(new Error(`pty driver failed: ${stderr}`))
      }
    })
  })
}

/** `text` as a regex matching it literally: a prompt to `expect` in a {@link PtyStep}. */
export function literal(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/gu, '\\$&')
}

/**
 * `ipp-tunnel login` on a terminal with `env` (its `IPP_TUNNEL_RUNTIME_DIR` names the service): waits for its
 * `logging in to …` line, then answers `prompt` (a regex, see {@link literal}) with `answer`.
 *
 * @example
 * const login = await loginOnPty(literal(otp.prompt), await otp.code(await otp.counter()), env)
 * assert.equal(login.code, 0, login.output)
 */
export function loginOnPty(prompt: string, answer: string, env: NodeJS.ProcessEnv): Promise<PtyResult> {
  return runOnPty(
    [process.execPath, CLI, 'login'],
    [{ expect: 'logging in to[^\\n]*\\n' }, { expect: prompt, send: answer }],
    env,
  )
}
