import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import type { TestContext } from 'node:test'
import { promisify } from 'node:util'

import { startSshd, type Sshd } from './sshd.js'

const run = promisify(execFile)

/** A PAM one-time-code login (Debian's pam_oath, HOTP counters) for an sshd started with `pamService`. */
export interface OtpPam {
  /** The PAM service name: give it to `startSshd({ pamService })`. */
  readonly service: string
  /** What pam_oath asks for root, exactly. */
  readonly prompt: string
  /** The code for HOTP counter `counter`, as `oathtool --hotp -c N` computes it. */
  code(counter: number): Promise<string>
  /** The next counter pam_oath accepts (it refuses a code it took already). */
  counter(): Promise<number>
  close(): Promise<void>
}

/**
 * Writes `/etc/pam.d/<service>` asking root for an HOTP code (pam_oath, a users file in a temp dir) — sshd takes
 * its PAM service from its program name, so the test's sshd runs as a link of that name. With `message`, pam_echo
 * shows it first (sshd puts it in front of the prompt): what a hostile server can make the prompt say.
 *
 * @example
 * const otp = await setUpOtpPam()
 * const sshd = await startSshd({ pamService: otp.service, extraConfig: 'AuthenticationMethods publickey,keyboard-interactive' })
 */
export async function setUpOtpPam(options: { readonly message?: string } = {}): Promise<OtpPam> {
  const dir = await mkdtemp(join(tmpdir(), 'ippt-otp-'))
  const secret = randomBytes(20).toString('hex')
  const users = join(dir, 'users.oath')
  await writeFile(users, `HOTP root - ${secret}\n`, { mode: 0o600 })
  const service = `ippt-otp-${process.pid}-${randomBytes(3).toString('hex')}`
  const pamFile = `/etc/pam.d/${service}`
  const echo = join(dir, 'message')
  if (options.message !== undefined) await writeFile(echo, options.message)
  await writeFile(
    pamFile,
    [
      ...(options.message !== undefined ? [`auth optional pam_echo.so file=${echo}`] : []),
      `auth required pam_oath.so usersfile=${users} window=20 digits=6`,
      'account required pam_permit.so',
      'session required pam_permit.so',
      'password required pam_deny.so',
      '',
    ].join('\n'),
  )
  let closing: Promise<void> | undefined
  const close = (): Promise<void> =>
    (closing ??= (async () => {
      await rm(pamFile, { force: true })
      await rm(dir, { recursive: true, force: true })
    })())
  return {
    service,
    prompt: "One-time password (OATH) for `root': ",
    code: async (counter) => (await run('oathtool', ['--hotp', '-c', String(counter), secret])).stdout.trim(),
    // after each accepted code pam_oath writes `HOTP root - SECRET COUNTER CODE TIME`: COUNTER is the one used
    counter: async () => {
      const fields = (await readFile(users, 'utf8')).trim().split(/\s+/u)
      return fields.length > 5 ? Number(fields[4]) + 1 : 0
    },
    close,
  }
}

/**
 * An sshd that asks for a one-time code after the key (`AuthenticationMethods publickey,keyboard-interactive`, the
 * code from {@link setUpOtpPam}); `extraConfig` adds lines to its sshd_config. Both are removed when the test ends.
 *
 * @example
 * const { otp, sshd } = await startOtpSshd(t, { extraConfig: 'Subsystem sftp internal-sftp' })
 * const code = await otp.code(await otp.counter())
 */
export async function startOtpSshd(
  t: TestContext,
  options: { readonly extraConfig?: string } = {},
): Promise<{ otp: OtpPam; sshd: Sshd }> {
  const otp = await setUpOtpPam()
  t.after(() => otp.close())
  const methods = 'AuthenticationMethods publickey,keyboard-interactive'
  const sshd = await startSshd({
    pamService: otp.service,
    extraConfig: options.extraConfig === undefined ? methods : `${methods}\n${options.extraConfig}`,
  })
  t.after(() => sshd.close())
  return { otp, sshd }
}
