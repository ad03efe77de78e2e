import { randomBytes } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'

import { freePort, type Sshd } from '../support/index.js'
import { runPython, type PythonResult } from '../support/ipp.js'
import { kernelFileText } from '../support/kernel.js'

/**
 * `dir/kernel-NAME.json` as jupyter_client writes it: five free ports on 127.0.0.1 (or `ports`), a fresh key, and
 * the `jupyter_session` jupyter_client 8 adds.
 */
export async function writeKernelFile(dir: string, name: string, ports?: readonly number[]): Promise<string> {
  const free: number[] = []
  while (ports === undefined && free.length < 5) free.push(await freePort())
  const [shell = 0, iopub = 0, stdin = 0, control = 0, hb = 0] = ports ?? free
  const file = join(dir, `kernel-${name}.json`)
  const text = kernelFileText([shell, iopub, stdin, control, hb], {
    key: randomBytes(16).toString('hex'),
    kernel_name: 'remote',
    jupyter_session: '/home/me/notebook.ipynb',
  })
  await writeFile(file, text, { mode: 0o600 })
  return file
}

/** Runs `code` on the kernel of `file` with jupyter_client's BlockingKernelClient; prints its stdout. */
const EXECUTE = String.raw`
import sys
from jupyter_client import BlockingKernelClient
kc = BlockingKernelClient(connection_file=sys.argv[1])
kc.load_connection_file()
kc.start_channels()
kc.wait_for_ready(timeout=60)
out = []
reply = kc.execute_interactive(sys.argv[2], timeout=60,
    output_hook=lambda m: m['msg_type'] == 'stream' and out.append(m['content']['text']))
kc.stop_channels()
print(reply['content']['status'], ''.join(out), end='')
`

/**
 * Runs `code` on the kernel of connection file `file` (from inside `netns` when given, where its ports are);
 * stdout is the reply's status, a space and what the code printed (`ok 42\n`).
 */
export function execute(
  file: string,
  code: string,
  options: { netns?: { readonly name: string } } = {},
): Promise<PythonResult> {
  return runPython(EXECUTE, { args: [file, code], ...options })
}

/**
 * The destination and options every kernel test gives `kernel` and `kernelspec install`: the sshd's key and
 * known_hosts, Debian's python (it has ipykernel), the remote state under `root`.
 */
export function remoteKernelArgs(
  sshd: Sshd,
  root: string,
  options: {
    /** Another name for the server (one /etc/hosts resolves); default its address. */
    readonly host?: string
    /** A known_hosts file of one's own (the host key under that name); default the sshd's. */
    readonly knownHosts?: string
  } = {},
): string[] {
  return [
    `root@${options.host ?? sshd.host}:${sshd.port}`,
    '--identity',
    sshd.clientKey,
    '--known-hosts',
    options.knownHosts ?? sshd.knownHostsFile,
    '--python',
    '/usr/bin/python3',
    '--remote-dir',
    join(root, 'remote'),
  ]
}
