import { execFile } from 'node:child_process'
import { join } from 'node:path'
import type { TestContext } from 'node:test'
import { promisify } from 'node:util'

import { startSshd, type Sshd } from './sshd.js'

const run = promisify(execFile)

/** A user CA, a key of the user's own and an sshd that lets in only certificates the CA signed for root. */
export interface CaSshd {
  /** The CA's private key (`ca.pub` beside it is what sshd trusts). */
  readonly ca: string
  /** The user's private key: refused alone, accepted with the `key-cert.pub` the CA signs. */
  readonly key: string
  readonly sshd: Sshd
  /**
   * A `--credential-command` that asks `Code: ` and, given 4242, signs the key's certificate as key id `id` for
   * root, valid for 30 s; any other answer exits 3.
   */
  readonly credentialCommand: (id: string) => string
}

/**
 * Makes a CA and a user key in `dir` (ed25519, no passphrase) and starts an sshd with `TrustedUserCAKeys`; the
 * sshd is stopped when the test ends.
 *
 * @example
 * const { key, sshd, credentialCommand } = await startCaSshd(t, dir)
 * const auth = ['--identity', key, '--known-hosts', sshd.knownHostsFile, '--credential-command', credentialCommand('renewed')]
 */
export async function startCaSshd(t: TestContext, dir: string): Promise<CaSshd> {
  const ca = join(dir, 'ca')
  const key = join(dir, 'id_user')
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', ca])
  await run('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', key])
  const sshd = await startSshd({ extraConfig: `TrustedUserCAKeys ${ca}.pub\n` })
  t.after(() => sshd.close())
  return {
    ca,
    key,
    sshd,
    credentialCommand: (id) =>
      `read -p 'Code: ' x; [ "$x" = 4242 ] || exit 3; ssh-keygen -q -s ${ca} -I ${id} -n root -V -1m:+30s ${key}.pub`,
  }
}
