/**
 * Service benchmarks, `ipp-tunnel watch --json` run as a user runs it, against one OpenSSH sshd on loopback:
 *  (a) a complete client file renamed into the watched directory → its `ready` event on stdout
 *      (the watcher, parse, 7 listeners, 7 probe channels over the already open ssh link, the loopback copy
 *      written and fsynced); median over 20 files, one at a time; target < 100 ms;
 *  (b) resident memory (VmRSS) of the service holding 1 file and 100 files, and the cost per extra file.
 * The endpoints are plain TCP listeners in this process, reached through sshd.
 *
 * Run alone: `node dist/bench/run.js service`.
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
const HELD_FILES = 100
const CHANNELS = ['registration', 'control', 'mux', 'task', 'iopub', 'notification', 'broadcast']

/** VmRSS of a process, in KiB. */
async function rssKiB(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const kib = /^VmRSS:\s+(\d+) kB$/m.exec(status)?.[1]
  if (kib === undefined) throw new Error(`no VmRSS for ${pid}`)
  return Number(kib)
}

export async function benchService(): Promise<BenchRow[]> {
  const sshd = await startSshd()
  const servers = await Promise.all(CHANNELS.map(() => listenSink()))
  const root = await mkdtemp(join(tmpdir(), 'ippt-bench-service-'))
  const dir = join(root, 'watched')
  const staging = join(root, 'staging')
  const ssh = `${sshd.user}@${sshd.host}:${sshd.port}`
  const fixture = JSON.parse(
    await readFile(join(FIXTURES, 'ipp', 'ipcontroller-client.json'), 'utf8'),
  ) as Record<string, unknown>
  const text = JSON.stringify(
    {
      ...fixture,
      ssh,
      ...Object.fromEntries(CHANNELS.map((c, i) => [c, listeningPort(servers[i] as Server)])),
    },
    null,
    2,
  )
  await mkdir(dir) // watch refuses a --dir that does not exist
  const watch = spawnCli(['watch', '--json', '--dir', dir, ...sshArgsOf(sshd)], {
    IPP_TUNNEL_RUNTIME_DIR: join(root, 'run'),
  })
  const events = new JsonLines(watch)
  try {
    await events.next('watching')
    await mkdir(staging)
    let held = 0
    /** Writes a complete file beside the directory, renames it in, and times until its ready event. */
    const land = async (): Promise<number> => {
      const name = `ipcontroller-bench${held++}-client.json`
      await writeFile(join(staging, name), text, { mode: 0o600 })
      const file = join(dir, name)
      const started = performance.now()
      await rename(join(staging, name), file)
      await events.next((e) => e.event === 'ready' && e.file === file, 60_000)
      return performance.now() - started
    }

    // the first file also opens the ssh connection: it is the 1-file memory point, not a latency sample
    await land()
    await sleep(1000)
    const rss1 = await rssKiB(watch.pid ?? 0)

    const samples: number[] = []
    for (let i = 0; i < LATENCY_FILES; i++) {
      samples.push(await land())
      await sleep(50)
    }
    const rest = Array.from({ length: HELD_FILES - held }, () => land())
    await Promise.all(rest)
    await sleep(1000)
    const rss100 = await rssKiB(watch.pid ?? 0)
    const sorted = [...samples].sort((a, b) => a - b)
    const p90 = sorted[Math.floor(sorted.length * 0.9)] ?? Number.NaN
    const perFile = (rss100 - rss1) / (HELD_FILES - 1)
    return [
      {
        name: 'service: complete file renamed in → ready event',
        ours: median(samples),
        anchor: 100,
        anchorName: 'target 100 ms',
        unit: 'ms',
        better: 'lower',
        targetRatio: 1,
        note: `median of ${LATENCY_FILES} files, p90 ${p90.toFixed(1)} ms, loopback sshd, 7 forwards each`,
      },
      {
        name: 'service: resident memory, 1 file held',
        ours: rss1 / 1024,
        anchor: undefined,
        anchorName: '',
        unit: 'MiB',
        better: 'lower',
        targetRatio: 0,
        note: 'VmRSS of `ipp-tunnel watch`',
      },
      {
        name: `service: resident memory, ${HELD_FILES} files held`,
        ours: rss100 / 1024,
        anchor: undefined,
        anchorName: '',
        unit: 'MiB',
        better: 'lower',
        targetRatio: 0,
        note: `one ssh connection, ${HELD_FILES * CHANNELS.length} loopback listeners`,
      },
      {
        name: 'service: resident memory per extra file',
        ours: perFile,
        anchor: undefined,
        anchorName: '',
        unit: 'KiB',
        better: 'lower',
        targetRatio: 0,
        note: `(${HELD_FILES} files − 1 file) / ${HELD_FILES - 1}`,
      },
    ]
  } finally {
    await stopProcess(watch)
    await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))))
    await sshd.close()
    await rm(root, { recursive: true, force: true })
  }
}
