import { readdir, readFile } from 'node:fs/promises'

/** A process on this machine, as /proc shows it. */
export interface ProcessInfo {
  readonly pid: number
  readonly ppid: number
  readonly argv: readonly string[]
}

/**
 * Pids of the processes on this machine for which `match` holds; a process that ends while it is looked at is
 * skipped.
 *
 * @example
 * const left = await pidsWhere((p) => p.ppid === process.pid && p.argv[0] === 'ssh')
 */
export async function pidsWhere(match: (process: ProcessInfo) => boolean): Promise<number[]> {
  const pids: number[] = []
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue
    try {
      const stat = await readFile(`/proc/${entry}/stat`, 'utf8')
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1])
      const argv = (await readFile(`/proc/${entry}/cmdline`, 'utf8')).split('\0')
      if (match({ pid: Number(entry), ppid, argv })) pids.push(Number(entry))
    } catch {
      // gone meanwhile
    }
  }
  return pids
}

/** Pids of the processes whose command line holds `text`. */
export function processesWith(text: string): Promise<number[]> {
  return pidsWhere((p) => p.argv.join('\0').includes(text))
}

/** True while `pid` lives (a zombie counts as gone). */
export async function alive(pid: number): Promise<boolean> {
  try {
    const text = await readFile(`/proc/${pid}/stat`, 'utf8')
    return text.slice(text.lastIndexOf(')') + 2)[0] !== 'Z'
  } catch {
    return false
  }
}
