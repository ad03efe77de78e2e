import { join } from 'node:path'

import type { Sshd } from '../support/index.js'

/**
 * The destination and options every kernel test gives `kernel` and `kernelspec install`: the sshd's key and
 * known_hosts, Debian's python (it has ipykernel), the remote state under `root`.
 */
export function remoteKernelArgs(sshd: Sshd, root: string): string[] {
  return [
    `root@${sshd.host}:${sshd.port}`,
    '--identity',
    sshd.clientKey,
    '--known-hosts',
    sshd.knownHostsFile,
    '--python',
    '/usr/bin/python3',
    '--remote-dir',
    join(root, 'remote'),
  ]
}
