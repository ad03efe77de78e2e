import { RemoteProcesses, type RemoteProcessState } from '../remote/index.js'
import type { Link } from '../ssh/index.js'
import type { DoctorStep } from './step.js'

/** Where our remote processes are, and how the supervisor runs there (as the commands that started them). */
export interface RemoteProcessesStepOptions {
  readonly remoteDir?: string
  readonly python?: string
  readonly setup?: string
  readonly signal?: AbortSignal
}

const NAME = 'remote processes'

/** How one process ended without us: undefined when it runs, or ended by itself or by a stop of ours. */
function killedHow(p: RemoteProcessState): string | undefined {
  if (p.state === 'stale')
    return 'gone together with its supervisor, without an exit of its own (killed, or the node rebooted)'
  if (p.state === 'exited' && p.exit?.signal !== undefined) return `killed by signal ${String(p.exit.signal)}`
  return undefined
}

function startedAt(p: RemoteProcessState): string {
  return p.startedAt === undefined ? '' : `, started ${p.startedAt.toISOString()}`
}

/**
 * Our processes on the server (kernels, clusters' controllers and engines) as their supervisor keeps them: a
 * failure names each one that something else killed there — what a login node that ends long-running or detached
 * processes does — with the way out (Slurm).
 */
export async function remoteProcessesStep(
  link: Link,
  options: RemoteProcessesStepOptions,
): Promise<DoctorStep> {
  const procs = new RemoteProcesses(link, {
    ...(options.remoteDir !== undefined && { dir: options.remoteDir }),
    ...(options.python !== undefined && { python: options.python }),
    ...(options.setup !== undefined && { setup: options.setup }),
  })
  let all: RemoteProcessState[]
  try {
    all = await procs.list(options.signal === undefined ? {} : { signal: options.signal })
  } catch (err) {
    options.signal?.throwIfAborted()
    return {
      name: NAME,
      verdict: 'warn',
      detail: `not listed: ${err instanceof Error ? err.message : String(err)}`,
      fix: 'name a python 3 on the server with --python (after --setup), and --remote-dir if you gave one to the commands',
    }
  }
  const killed = all.flatMap((p) => {
    const how = killedHow(p)
    return how === undefined
      ? []
      : [`${p.name} on ${p.node?.host ?? '?'} (pid ${String(p.pid ?? '?')}${startedAt(p)}) ${how}`]
  })
  if (killed.length > 0) {
    return {
      name: NAME,
      verdict: 'fail',
      detail: killed.join('; '),
      fix: "something on the server ends what we leave running there (many login nodes kill long-running or detached processes): start clusters with --controller slurm and kernels with --slurm; ipp-tunnel cluster stop (or a kernel's next start) clears what is left",
    }
  }
  const running = all.filter((p) => p.state === 'running').map((p) => p.name)
  const where = options.remoteDir ?? '~/.ipp-tunnel/remote'
  return {
    name: NAME,
    verdict: 'pass',
    detail:
      all.length === 0
        ? `none of ours in ${where}`
        : `${String(running.length)} running${running.length > 0 ? ` (${running.join(', ')})` : ''}, ${String(all.length - running.length)} ended by themselves or stopped, none killed`,
  }
}
