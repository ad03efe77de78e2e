import type { Argv } from 'yargs'

import type { ExecuteResult, Targets } from '../client/index.js'
import { IppTunnelError, isIppTunnelError } from '../errors/index.js'
import { EXIT, Output } from './output.js'
import { openSource, openSourceClient } from './source-file.js'
import { withSourceFile, withSshOptions, type SshArgs } from './ssh-options.js'

interface PxArgs extends SshArgs {
  readonly file: string
  readonly poll?: number | undefined
  readonly code: string
  readonly targets: string
  readonly expr: string[]
  readonly timeout: number
  readonly 'abort-on-timeout': boolean
  readonly json: boolean
  readonly debug: boolean
}

/** Like timeout(1): some target did not answer within --timeout (what the others returned is printed). */
const EXIT_TIMED_OUT = 124

/** What `--help` and the command list say the command does. */
const DESCRIPTION =
  'run Python code on engines (or a kernel) and print status, stdout, stderr and --expr values; exit 1 if it raised, 124 if a target did not answer in time'

/**
 * `ipp-tunnel px FILE CODE`: runs CODE on engines (or the kernel) and prints each one's status, output and
 * `--expr` values. Exits 1 when the code raised on any target, like a shell command that failed, and 124
 * when a target did not answer in time.
 */
export function registerPx(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'px <file> <code>',
    DESCRIPTION,
    (y) =>
      withSshOptions(
        withSourceFile(y)
          .positional('code', { type: 'string', demandOption: true, describe: 'code to run' })
          .option('targets', {
            alias: 't',
            type: 'string',
            default: 'all',
            describe: 'engines to run on: all, or ids like 0,2 (ignored for a kernel)',
          })
          .option('expr', {
            alias: 'e',
            type: 'string',
            array: true,
            default: [] as string[],
            describe: 'expression to evaluate afterwards and print (repeatable)',
          })
          .option('timeout', { type: 'number', default: 60, describe: 'seconds to wait for each engine' })
          .option('abort-on-timeout', {
            type: 'boolean',
            default: false,
            describe:
              'interrupt (SIGINT) the code on targets that did not answer in time, so they are free again',
          })
          .usage(
            `$0 px FILE CODE [--targets all|0,2] [--expr NAME]… [--timeout S [--abort-on-timeout]] [ssh options] [--json]\n\n${DESCRIPTION}`,
          ),
      ),
    (args) => run(() => px(args as unknown as PxArgs)),
  )
}

function parseTargets(text: string): Targets {
  if (text.trim() === 'all') return 'all'
  const ids = text.split(',').map((part) => part.trim())
  if (ids.length === 0 || ids.some((id) => !/^\d+$/.test(id))) {
    throw new IppTunnelError('E_USAGE', `--targets must be "all" or engine ids like 0,2; got "${text}"`)
  }
  return [...new Set(ids.map(Number))]
}

// eslint-disable-next-line no-control-regex
const ANSI = /\u001b\[[0-9;]*[A-Za-z]/g

function indent(text: string): string {
  return text.replace(/\n$/, '').replace(/^/gm, '    ')
}

function human(results: readonly ExecuteResult[], exprs: readonly string[]): string {
  const lines: string[] = []
  for (const r of results) {
    const who = r.engineId === undefined ? 'kernel' : `engine ${r.engineId}`
    const error = r.error === undefined ? '' : `: ${r.error.ename}: ${r.error.evalue}`
    lines.push(`[${who}] ${r.status}${error}`)
    if (r.stdout !== '') lines.push('  stdout:', indent(r.stdout))
    if (r.stderr !== '') lines.push('  stderr:', indent(r.stderr))
    if (r.result !== undefined) lines.push(`  result: ${r.result}`)
    for (const name of exprs) {
      const value = r.expressions[name]
      if (value === undefined) continue
      lines.push(
        value.status === 'ok'
          ? `  ${name} = ${value.text ?? ''}`
          : `  ${name} ! ${value.ename}: ${value.evalue}`,
      )
    }
    if (r.error !== undefined && r.error.traceback.length > 0) {
      lines.push('  traceback:', indent(r.error.traceback.join('\n').replace(ANSI, '')))
    }
  }
  return lines.join('\n')
}

function jsonOf(r: ExecuteResult, exprs: readonly string[]) {
  const expressions: Record<string, string | null> = {}
  const expressionErrors: Record<string, { ename: string; evalue: string }> = {}
  for (const name of exprs) {
    const value = r.expressions[name]
    if (value?.status === 'ok') expressions[name] = value.text ?? null
    else if (value !== undefined) {
      expressions[name] = null
      expressionErrors[name] = { ename: value.ename, evalue: value.evalue }
    }
  }
  return {
    ...(r.engineId !== undefined && { engine: r.engineId }),
    status: r.status,
    executionCount: r.executionCount,
    stdout: r.stdout,
    stderr: r.stderr,
    ...(r.result !== undefined && { result: r.result }),
    expressions,
    ...(Object.keys(expressionErrors).length > 0 && { expressionErrors }),
    ...(r.error !== undefined && {
      error: { ename: r.error.ename, evalue: r.error.evalue, traceback: r.error.traceback },
    }),
    roundTripMs: Math.round(r.roundTripMs * 100) / 100,
  }
}

/** A target that did not answer in time, and what interrupting it gave (when asked to). */
interface Late {
  readonly target: number | 'kernel'
  /** `ok`, or why interrupting failed. */
  readonly interrupt?: string
}

function lateLines(late: readonly Late[], timeoutS: number): string[] {
  return late.map((l) => {
    const who = l.target === 'kernel' ? 'kernel' : `engine ${String(l.target)}`
    const after =
      l.interrupt === undefined
        ? 'it may still be running (--abort-on-timeout interrupts it)'
        : l.interrupt === 'ok'
          ? 'interrupted'
          : `interrupting it failed: ${l.interrupt}`
    return `[${who}] timeout: no reply within ${String(timeoutS)} s; ${after}`
  })
}

async function px(args: PxArgs): Promise<number> {
  const output = new Output({ json: args.json, debug: args.debug })
  let file = args.file
  const timeoutMs = Math.max(1, args.timeout * 1000)
  try {
    const targets = parseTargets(args.targets)
    const exprs = args.expr.map(String)
    const userExpressions = Object.fromEntries(exprs.map((e) => [e, e]))
    // host:PATH: pulled and tunnelled; its loopback copy is then reached directly
    await using source = await openSource(args.file, args, output, { render: false })
    file = source.file
    await using client = await openSourceClient(source, args, output, timeoutMs)
    let results: ExecuteResult[]
    const late: Late[] = []
    // A short bound for the interrupt itself: the nanny (or the kernel's control thread) answers at once.
    const interruptMs = Math.min(timeoutMs, 10_000)
    if (client.kind === 'kernel') {
      try {
        results = [await client.execute(args.code, { userExpressions })]
      } catch (err) {
        if (!isIppTunnelError(err) || err.code !== 'E_TIMEOUT') throw err
        results = []
        let interrupt: string | undefined
        if (args['abort-on-timeout']) {
          interrupt = await client.interrupt({ timeoutMs: interruptMs }).then(
            () => 'ok',
            (e: unknown) => (e instanceof Error ? e.message : String(e)),
          )
        }
        late.push({ target: 'kernel', ...(interrupt !== undefined && { interrupt }) })
      }
    } else {
      const settled = await client.executeSettled(args.code, { targets, userExpressions })
      results = settled.results
      const outcomes =
        args['abort-on-timeout'] && settled.timedOut.length > 0
          ? await client.interrupt(settled.timedOut, { timeoutMs: interruptMs })
          : {}
      for (const id of settled.timedOut) {
        const outcome = outcomes[id]
        late.push({
          target: id,
          ...(outcome !== undefined && { interrupt: outcome.status === 'ok' ? 'ok' : outcome.reason }),
        })
      }
    }
    output.result(
      {
        event: 'result',
        file,
        kind: client.kind,
        results: results.map((r) => jsonOf(r, exprs)),
        timedOut: late.map((l) => l.target),
        ...(args['abort-on-timeout'] && {
          interrupted: late.filter((l) => l.interrupt === 'ok').map((l) => l.target),
        }),
      },
      [human(results, exprs), ...lateLines(late, args.timeout)].filter((t) => t !== '').join('\n'),
    )
    if (late.length > 0) return EXIT_TIMED_OUT
    return results.every((r) => r.status === 'ok') ? EXIT.ok : EXIT.runtime
  } catch (err) {
    return output.fail(err, { file })
  }
}
