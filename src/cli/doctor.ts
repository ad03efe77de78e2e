import { stat } from 'node:fs/promises'

import type { Argv } from 'yargs'

import { diagnose, type DoctorStep, type DoctorTarget } from '../doctor/index.js'
import { IppTunnelError } from '../errors/index.js'
import { EXIT, Output } from './output.js'
import { interrupted, untilSignal } from './signals.js'
import { sshOptionsFrom, withSshOptions, type SshArgs } from './ssh-options.js'

interface DoctorArgs extends SshArgs {
  readonly target?: string | undefined
  readonly timeout: number
  readonly python?: string | undefined
  readonly setup?: string | undefined
  readonly 'remote-dir'?: string | undefined
  readonly json: boolean
  readonly debug: boolean
}

/** What `--help` and the command list say the command does. */
const DESCRIPTION =
  'check, step by step, what reaching a destination or a connection file needs (ssh config, keys, certificates, host key, login, SFTP, unix-socket forwarding, our processes there, channels, engines or heartbeat), each with a verdict and the fix'

/** `ipp-tunnel doctor [DEST | FILE]`: one line per step; exit 0 when no step failed, {@link EXIT.doctorFailed} else. */
export function registerDoctor(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'doctor [target]',
    DESCRIPTION,
    (y) =>
      withSshOptions(
        y
          .positional('target', {
            type: 'string',
            describe: 'ssh destination ([user@]host[:port] or an ssh_config alias) or a connection file',
          })
          .option('timeout', { type: 'number', default: 10, describe: 'seconds to wait for each answer' })
          .option('python', {
            type: 'string',
            describe: 'the remote python that lists our processes there (after --setup); default python3',
          })
          .option('setup', {
            type: 'string',
            describe: 'shell lines run first on the server (module load …, conda activate …)',
          })
          .option('remote-dir', {
            type: 'string',
            describe:
              'remote directory of our processes, as given to cluster or kernel; default ~/.ipp-tunnel/remote',
          })
          .usage(`$0 doctor [DEST | FILE] [ssh options] [--json]\n\n${DESCRIPTION}`),
      ),
    (args) => run(() => doctor(args as unknown as DoctorArgs)),
  )
}

/** A file when a file is there (or the name ends in .json), else a destination. */
async function targetOf(text: string): Promise<DoctorTarget> {
  if (text.endsWith('.json')) return { file: text }
  try {
    if ((await stat(text)).isFile()) return { file: text }
  } catch {
    // no such file: a destination
  }
  return { destination: text }
}

function human(step: DoctorStep): string {
  const head = `${step.verdict.toUpperCase().padEnd(4)}  ${step.name}: ${step.detail}`
  return step.fix === undefined || step.verdict === 'pass' ? head : `${head}\n      fix: ${step.fix}`
}

async function doctor(args: DoctorArgs): Promise<number> {
  const output = new Output({ json: args.json, debug: args.debug })
  const text = args.target ?? args.ssh
  if (text === undefined) {
    return output.fail(new IppTunnelError('E_USAGE', 'say what to check: ipp-tunnel doctor DEST or FILE'))
  }
  const signals = untilSignal()
  const counts = { pass: 0, fail: 0, warn: 0, skip: 0 }
  try {
    const ssh = sshOptionsFrom(args, output)
    for await (const step of diagnose(await targetOf(text), {
      ...ssh,
      timeoutMs: Math.max(1, args.timeout * 1000),
      ...(args.python !== undefined && { python: args.python }),
      ...(args.setup !== undefined && { setup: args.setup }),
      ...(args['remote-dir'] !== undefined && { remoteDir: args['remote-dir'] }),
      signal: signals.signal,
    })) {
      counts[step.verdict]++
      output.result({ event: 'step', ...step }, human(step))
    }
    const ok = counts.fail === 0
    output.result(
      { event: 'summary', target: text, ok, ...counts },
      `${ok ? 'all checks passed' : `${counts.fail} failed`} (${counts.pass} passed, ${counts.warn} warnings, ${counts.skip} skipped)`,
    )
    return ok ? EXIT.ok : EXIT.doctorFailed
  } catch (err) {
    const signal = signals.received()
    if (signal !== undefined) return interrupted(output, signal, { target: text })
    return output.fail(err, { target: text })
  } finally {
    signals.dispose()
  }
}
