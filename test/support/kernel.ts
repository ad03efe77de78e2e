import { spawn, type ChildProcess } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

import { PYTHON, stopProcess } from './ipp.js'

/** A real ipykernel started with `python3 -m ipykernel_launcher -f FILE`. */
export interface Kernel {
  /** The connection file the kernel wrote (ports it bound, a fresh key). */
  readonly file: string
  readonly process: ChildProcess
  log(): string
  close(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

/**
 * Starts Debian's ipykernel on loopback (the namespace's loopback when `netns` is given), or with `transport: 'ipc'`
 * on unix sockets beside its file. The file does not
 * exist beforehand, so the kernel picks its ports and key and writes it; resolves once it parses.
 */
export async function startKernel(
  options: { netns?: { readonly name: string }; transport?: 'tcp' | 'ipc' } = {},
): Promise<Kernel> {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-kernel-'))
  const file = join(dir, 'kernel-test.json')
  // with ipc, ipykernel puts its sockets beside the file: <dir>/kernel-test-ipc-<port>
  const where = options.transport === 'ipc' ? ['--transport=ipc'] : ['--ip=127.0.0.1']
  const argv = [PYTHON, '-m', 'ipykernel_launcher', '-f', file, ...where]
  const [cmd, ...rest] = options.netns ? ['ip', 'netns', 'exec', options.netns.name, ...argv] : argv
  const child = spawn(cmd ?? PYTHON, rest, {
    env: { ...process.env, PYTHONUNBUFFERED: '1', PYDEVD_DISABLE_FILE_VALIDATION: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  })
  let output = ''
  child.stdout.on('data', (d: Buffer) => (output += d.toString()))
  child.stderr.on('data', (d: Buffer) => (output += d.toString()))
  const close = async () => {
    await stopProcess(child)
    await rm(dir, { recursive: true, force: true })
  }
  const deadline = Date.now() + 20_000
  for (;;) {
    try {
      const info = JSON.parse(await readFile(file, 'utf8')) as { shell_port?: number }
      if (typeof info.shell_port === 'number' && info.shell_port > 0) break
    } catch {
      /* not written yet */
    }
    if (child.exitCode !== null || Date.now() > deadline) {
      await close()
      throw new Error(`ipykernel did not write ${file}:\n${output}`)
    }
    await sleep(50)
  }
  return { file, process: child, log: () => output, close, [Symbol.asyncDispose]: close }
}

/**
 * The text of a kernel connection file as jupyter_client writes it, on 127.0.0.1 over tcp: `ports` is one port for
 * every channel (a stand-in peer) or the five in order shell, iopub, stdin, control, hb.
 *
 * @example
 * await writeFile(file, kernelFileText(echo.port), { mode: 0o600 })
 */
export function kernelFileText(
  ports: number | readonly [number, number, number, number, number],
  fields: Readonly<Record<string, unknown>> = {},
): string {
  const [shell, iopub, stdin, control, hb] =
    typeof ports === 'number' ? [ports, ports, ports, ports, ports] : ports
  return JSON.stringify({
    shell_port: shell,
    iopub_port: iopub,
    stdin_port: stdin,
    control_port: control,
    hb_port: hb,
    ip: '127.0.0.1',
    key: 'a-session-key',
    transport: 'tcp',
    signature_scheme: 'hmac-sha256',
    kernel_name: '',
    ...fields,
  })
}
