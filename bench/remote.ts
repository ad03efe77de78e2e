/**
 * Remote-source benchmarks, `ipp-tunnel watch --json --remote …` run as a user runs it, against one OpenSSH sshd
 * on loopback (the "remote" directories are directories of this machine, read only through sshd's SFTP):
 *  (a) a complete client file renamed into a watched remote directory → its `ready` event on stdout, at the
 *      default poll interval (1000 ms): the wait for the next poll, the SFTP listing and read, parse, 7 listeners,
 *      7 probe channels, the copy written; median and p90 over 20 files, one at a time; target < 1.5 s;
 *  (b) the CPU time of the service while it follows 10 remote directories holding 2 settled files each, per
 *      directory, as a share of one core; target < 1 %.
 * The endpoints are plain TCP listeners in this process, reached through sshd.
 *
 * Run alone: `node dist/bench/run.js remote`.
 */
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises'
import type { Server } from 'node:net'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

import { FIXTURES, JsonLines, spawnCli } from '../test/support/cli.js'
import { sshArgsOf, startSshd } from '../test/support/index.js'
import { stopProcess } from '../test/support/ipp.js'
import { listeningPort, listenSink, median, type BenchRow } from './common.js'

const LATENCY_FILES = 20
const DIRS = 10
const CPU_WINDOW_MS = 20_000
const CHANNELS = ['registration', 'control', 'mux', 'task', 'iopub', 'notification', 'broadcast']

/** User + system CPU time of a process, in ms (from /proc/PID/stat, clock ticks of 10 ms). */
async function cpuMs(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  return (Number(fields[11]) + Number(fields[12])) * 10
}

export async function benchRemote(): Promise<BenchRow[]> {
  const sshd = await startSshd({ extraConfig: 'Subsystem sftp internal-sftp' })
  const servers = await Promise.all(CHANNELS.map(() => listenSink()))
  const root = await mkdtemp(join(tmpdir(), 'ippt-bench-remote-'))
  const destination = `${sshd.user}@${sshd.host}:${sshd.port}`
  const dirs = Array.from({ length: DIRS }, (_, i) =>
    join(root, `ipython${i}`, 'profile_default', 'security'),
  )
  const staging = join(root, 'staging')
  await mkdir(staging)
  await Promise.all(dirs.map((d) => mkdir(d, { recursive: true })))
  const fixture = JSON.parse(
    await readFile(join(FIXTURES, 'ipp', 'ipcontroller-client.json'), 'utf8'),
  ) as Record<string, unknown>
  // "ssh" empty: tunnelled through the host the file was pulled from
  const text = JSON.stringify(
    {
      ...fixture,
      ssh: '',
      ...Object.fromEntries(CHANNELS.map((c, i) => [c, listeningPort(servers[i] as Server)])),
    },
    null,
    2,
  )
  const remotes = dirs.flatMap((d) => ['--remote', `${destination}:${d}`])
  const watch = spawnCli(
    ['watch', '--json', ...remotes, '--out-dir', join(root, 'out'), ...sshArgsOf(sshd)],
    {
      IPP_TUNNEL_RUNTIME_DIR: join(root, 'run'),
    },
  )
  const events = new JsonLines(watch)
  try {
    await events.next('watching')
    let n = 0
    const land = async (dir: string): Promise<number> => {
      const name = `ipcontroller-bench${n++}-client.json`
      await writeFile(join(staging, name), text, { mode: 0o600 })
      const started = performance.now()
      await rename(join(staging, name), join(dir, name))
      await events.next((e) => e.event === 'ready' && e.file === `${destination}:${join(dir, name)}`, 60_000)
      return performance.now() - started
    }
    // the first file also opens the ssh connection and the SFTP session: not a sample
    await land(dirs[0] ?? '')
    const samples: number[] = []
    for (let i = 0; i < LATENCY_FILES; i++) {
      samples.push(await land(dirs[i % DIRS] ?? ''))
      // land at a random phase of the poll
      await sleep(Math.random() * 1000)
    }
    while (n < 2 * DIRS) await land(dirs[n % DIRS] ?? '')
    await sleep(3000)
    const pid = watch.pid ?? 0
    const before = await cpuMs(pid)
    const t0 = performance.now()
    await sleep(CPU_WINDOW_MS)
    const used = (await cpuMs(pid)) - before
    const share = (100 * used) / (performance.now() - t0) / DIRS
    const sorted = [...samples].sort((a, b) => a - b)
    const p90 = sorted[Math.floor(sorted.length * 0.9)] ?? Number.NaN
    return [
      {
        name: 'remote: file written on the server → local ready (poll 1000 ms)',
        ours: median(samples),
        anchor: 1500,
        anchorName: 'target 1.5 s',
        unit: 'ms',
        better: 'lower',
        targetRatio: 1,
        note: `median of ${LATENCY_FILES} files, p90 ${p90.toFixed(0)} ms, SFTP over the same ssh link as the forwards`,
      },
      {
        name: 'remote: service CPU per followed directory',
        ours: share,
        anchor: 1,
        anchorName: 'target 1 % of a core',
        unit: '% core',
        better: 'lower',
        targetRatio: 1,
        note: `${DIRS} directories × 2 settled files, one readdir each per second, over ${CPU_WINDOW_MS / 1000} s`,
      },
    ]
  } finally {
    await stopProcess(watch)
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))))
    await sshd.close()
    await rm(root, { recursive: true, force: true })
  }
}
