import { spawn } from 'node:child_process'

import { IppTunnelError } from '../../errors/index.js'
import { findCertificates, type Certificate } from './certificate.js'
import type { PromptProvider } from './prompts.js'
import type { ResolvedHop } from '../types.js'

/** `--credential-command CMD` and its limits. */
export interface CredentialCommandOptions {
  /** Run with `sh -c` on a pseudo-terminal; `%h` host, `%r` remote user, `%n` the destination as written, `%%`. */
  readonly command: string
  /** Renew when the certificate expires within this many seconds; default 600. */
  readonly renewBeforeS?: number
  /** Never run more often than this, per destination; default 3600. */
  readonly minIntervalS?: number
  /**
   * Where no terminal is (the service): each prompt CMD writes (its last line, once it stops writing) is put to
   * this provider and the answer written back. Without it, CMD runs on the user's terminal.
   */
  readonly prompt?: PromptProvider
  /** Told when CMD starts and ends (never its output). */
  readonly onRun?: (info: { destination: string; status: 'started' | 'renewed' }) => void
}

/** The certificate a hop would offer now: the one valid longest. */
export interface CertificateStatus {
  readonly path: string
  readonly keyId: string
  readonly serial: string
  /** Seconds since the epoch (undefined: forever). */
  readonly validBefore: number | undefined
}

const FOREVER = 2n ** 64n - 1n

function shellQuote(s: string): string {
  return `'${s.replaceAll("'", `'\\''`)}'`
}

/** `%h %r %n %%` of CMD expanded, each value shell-quoted. */
export function expandCredentialCommand(command: string, hop: ResolvedHop, written: string): string {
  return command.replace(/%([hrn%])/g, (_m, t: string) =>
    t === '%' ? '%' : shellQuote(t === 'h' ? hop.host : t === 'r' ? hop.username : written),
  )
}

/** The hop's best certificate from files (`KEY-cert.pub` beside keys, `CertificateFile`), valid or not. */
export async function hopCertificate(hop: ResolvedHop): Promise<CertificateStatus | undefined> {
  const found = await findCertificates(hop.identityFiles, hop.certificateFiles ?? [], undefined)
  const all: Certificate[] = [...found.files, ...found.invalid.map((i) => i.cert)]
  let best: Certificate | undefined
  for (const c of all) if (best === undefined || c.validBefore > best.validBefore) best = c
  if (best === undefined) return undefined
  return {
    path: best.source,
    keyId: best.keyId,
    serial: best.serial.toString(),
    validBefore: best.validBefore === FOREVER ? undefined : Number(best.validBefore),
  }
}

interface Slot {
  running?: Promise<void> | undefined
  lastRun?: number
}
/** Shared by every link of this process: one run at a time, and at most one per min-interval, per destination. */
const slots = new Map<string, Slot>()

/** The certificate each hop was last seen to have (read before each connect and after each run). */
const known = new Map<string, CertificateStatus>()

function hopKey(hop: ResolvedHop): string {
  return `${hop.username}@${hop.host}:${hop.port}`
}

/** For tests: forget every run of this process. */
export function resetCredentialRuns(): void {
  slots.clear()
}

function iso(seconds: number): string {
  return new Date(seconds * 1000).toISOString().replace('.000Z', 'Z')
}

/**
 * Runs `--credential-command` before a hop connects when its certificate is missing, expired or expires within
 * renew-before, at most once per min-interval per destination, one run at a time however many links ask.
 *
 * @example
 * const renewer = new CredentialRenewer({ command: 'sshproxy -u %r' })
 * await renewer.ensure(hop, 'perlmutter') // then read keys and certificates again
 */
export class CredentialRenewer {
  readonly #options: CredentialCommandOptions

  constructor(options: CredentialCommandOptions) {
    this.#options = options
  }

  get options(): CredentialCommandOptions {
    return this.#options
  }

  /** The certificate `hop` had when it last connected (or was renewed), for `status`; undefined: none seen. */
  certificate(hop: ResolvedHop): CertificateStatus | undefined {
    return known.get(hopKey(hop))
  }

  /**
   * Renews when needed; resolves when the hop's credentials are as good as they will get. Throws
   * `E_CREDENTIAL_COMMAND` when CMD fails, `E_CERT_EXPIRED` when the certificate is expired (or missing) and the
   * min-interval forbids a run now (naming when the next is allowed).
   */
  async ensure(hop: ResolvedHop, written: string, now = Date.now()): Promise<void> {
    const renewBefore = this.#options.renewBeforeS ?? 600
    const minInterval = this.#options.minIntervalS ?? 3600
    const key = hopKey(hop)
    const cert = await hopCertificate(hop)
    if (cert !== undefined) known.set(key, cert)
    const nowS = now / 1000
    if (cert !== undefined && (cert.validBefore === undefined || cert.validBefore - nowS > renewBefore))
      return
    const slot = slots.get(key) ?? {}
    slots.set(key, slot)
    if (slot.running !== undefined) {
      await slot.running
      return
    }
    if (slot.lastRun !== undefined && now - slot.lastRun < minInterval * 1000) {
      const usable = cert?.validBefore !== undefined && cert.validBefore > nowS
      if (usable) return
      const next = iso((slot.lastRun + minInterval * 1000) / 1000)
      const what =
        cert === undefined
          ? `no certificate for ${key}`
          : `certificate ${cert.path} (key id ${JSON.stringify(cert.keyId)}) expired at ${iso(cert.validBefore ?? 0)}`
      throw new IppTunnelError(
        'E_CERT_EXPIRED',
        `${what}; --credential-command ran at ${iso(slot.lastRun / 1000)} and may run again at ${next} (--renew-min-interval ${String(minInterval)})`,
      )
    }
    slot.lastRun = now
    const command = expandCredentialCommand(this.#options.command, hop, written)
    this.#options.onRun?.({ destination: written, status: 'started' })
    slot.running = runOnPty(command, key, this.#options.prompt, written)
    try {
      await slot.running
    } finally {
      slot.running = undefined
    }
    const renewed = await hopCertificate(hop)
    if (renewed !== undefined) known.set(key, renewed)
    this.#options.onRun?.({ destination: written, status: 'renewed' })
  }
}

/**
 * Runs `sh -c COMMAND` on a pseudo-terminal by util-linux `script` (no native module needed; `-e` returns the
 * child's status, `-f` flushes each write, so a prompt without newline is seen at once). With `prompt`, the output is
 * read here and each unanswered last line is put to it; else stdin and stdout are the user's terminal.
 */
function runOnPty(
  command: string,
  key: string,
  prompt: PromptProvider | undefined,
  destination: string,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('script', ['-qfec', `sh -c ${shellQuote(command)}`, '/dev/null'], {
      stdio: [prompt === undefined ? 'inherit' : 'pipe', 'pipe', 'pipe'],
    })
    let tail = ''
    let timer: NodeJS.Timeout | undefined
    let asking = false
    // the terminal echoes an answer written to it: that line is dropped, never kept for an error message
    let echo = false
    const ask = (): void => {
      const line = tail.split(/\r?\n/).at(-1) ?? ''
      if (prompt === undefined || asking || line.trim() === '') return
      asking = true
      void prompt({
        destination,
        host: key,
        method: 'keyboard-interactive',
        name: 'credential command',
        instructions: '',
        prompts: [{ prompt: line, echo: false }],
      })
        .then((answers) => {
          if (answers === undefined) child.kill('SIGTERM')
          else {
            echo = true
            child.stdin?.write(`${answers[0] ?? ''}\n`)
          }
        })
        .catch(() => child.kill('SIGTERM'))
        .finally(() => {
          asking = false
          tail = ''
        })
    }
    const onData = (chunk: Buffer): void => {
      if (prompt === undefined) process.stderr.write(chunk)
      let text = chunk.toString('utf8')
      if (echo) {
        const end = text.indexOf('\n')
        if (end === -1) return
        echo = false
        text = text.slice(end + 1)
      }
      tail = (tail + text).slice(-4096)
      if (timer !== undefined) clearTimeout(timer)
      // a prompt is a line left without its newline while the command waits for input
      if (!tail.endsWith('\n')) timer = setTimeout(ask, 150)
    }
    child.stdout?.on('data', onData)
    child.stderr?.on('data', onData)
    child.on('error', (err) => {
      reject(
        new IppTunnelError(
          'E_CREDENTIAL_COMMAND',
          `--credential-command for ${key} could not start: ${err.message}`,
          {
            cause: err,
          },
        ),
      )
    })
    child.on('close', (code, signal) => {
      if (timer !== undefined) clearTimeout(timer)
      if (code === 0) {
        resolve()
        return
      }
      const last = tail
        .split(/\r?\n/)
        .map((l) => l.trim())
        .filter((l) => l !== '')
        .at(-1)
      const status = signal !== null ? `signal ${signal}` : `status ${String(code)}`
      reject(
        new IppTunnelError(
          'E_CREDENTIAL_COMMAND',
          `--credential-command for ${key} failed with ${status}${last !== undefined ? `: ${last.slice(0, 200)}` : ''}`,
        ),
      )
    })
  })
}
