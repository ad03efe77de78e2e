/**
 * Recovery benchmarks (issue 21): a kept `ipyparallel.Client` on a laptop (a network namespace of its own) reaching
 * ipcontroller and two engines behind an sshd (another namespace), once through `ipp-tunnel up`, once through what
 * users run instead — `ssh -N -L …` for every port, restarted by a shell loop when it exits (autossh's job) — both
 * with keepalives every 5 s, 3 unanswered = dead. Measured for both at once, on the same wire:
 *  (a) the laptop's network gone for 40 s (interface down, address removed), then back with another address: time
 *      from the network being usable to the first `apply` answered on every engine;
 *  (b) both tunnels suspended (SIGSTOP) while the laptop moves to another address, then resumed: time from the resume
 *      to the first `apply` answered;
 *  (c) the server's packets to the laptop lost for 12 s (a blackhole route on its side: the laptop sees no change of
 *      address or route, as when a router in between drops out), then delivered again: time from the restore to
 *      the first `apply` answered.
 * A request may be lost while connections come back (see docs): the Client asks again after 2 s, as a user would.
 *
 * Run alone: `node dist/bench/run.js recovery`.
 */
import { spawn } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

import { JsonLines, spawnCli } from '../test/support/cli.js'
import {
  comeBackAs,
  createNetns,
  cutOff,
  freePort,
  joinClusterNetwork,
  silenceTowards,
  sshArgsOf,
  startSshd,
} from '../test/support/index.js'
import { KeptClient, startController, startEngines, stopProcess } from '../test/support/ipp.js'
import type { BenchRow } from './common.js'
import { opensshForwardArgs } from './tunnel.js'

const OUTAGE_S = 40
const SUSPEND_S = 5
const CUT_S = 12
const CHANNELS = ['registration', 'control', 'mux', 'task', 'iopub', 'notification', 'broadcast']

async function timed(client: KeptClient): Promise<number> {
  const started = Date.now()
  await client.run()
  return Date.now() - started
}

export async function benchRecovery(): Promise<BenchRow[]> {
  const server = await createNetns()
  const laptop = await createNetns()
  const root = await mkdtemp(join(tmpdir(), 'ippt-bench-recovery-'))
  const closers: (() => Promise<unknown>)[] = [() => server.close(), () => laptop.close()]
  try {
    await joinClusterNetwork(server)
    await joinClusterNetwork(laptop)
    const sshd = await startSshd({ netns: server })
    closers.unshift(() => sshd.close())
    const controller = await startController({
      netns: server,
      ssh: `${sshd.user}@${server.nsAddr}:${String(sshd.port)}`,
      extraArgs: ['--HeartMonitor.max_heartmonitor_misses=60'],
    })
    closers.unshift(() => controller.close())
    const engines = startEngines(controller.engineFile, 2, { netns: server })
    closers.unshift(() => engines.close())
    const inLaptop = ['ip', 'netns', 'exec', laptop.name]

    // ours
    const sshConfig = join(root, 'ssh_config')
    await writeFile(sshConfig, 'Host *\n  ServerAliveInterval 5\n  ServerAliveCountMax 3\n')
    const oursCopy = join(root, 'ours.json')
    const up = spawnCli(
      [
        'up',
        controller.clientFile,
        '--json',
        '--out',
        oursCopy,
        ...sshArgsOf(sshd).slice(0, -2),
        '--ssh-config',
        sshConfig,
      ],
      {},
      { wrap: inLaptop },
    )
    closers.unshift(() => stopProcess(up))
    await new JsonLines(up).next('ready', 60_000)

    // the anchor: one ssh with every -L, restarted by a loop
    const info = JSON.parse(await readFile(controller.clientFile, 'utf8')) as Record<string, unknown>
    const forwards: string[] = []
    const anchorInfo: Record<string, unknown> = { ...info, ssh: '' }
    for (const channel of CHANNELS) {
      if (typeof info[channel] !== 'number') continue
      const local = await freePort()
      anchorInfo[channel] = local
      forwards.push('-L', `${String(local)}:127.0.0.1:${String(info[channel])}`)
    }
    const anchorCopy = join(root, 'anchor.json')
    await writeFile(anchorCopy, JSON.stringify(anchorInfo), { mode: 0o600 })
    const ssh = [
      'ssh',
      ...opensshForwardArgs(sshd),
      '-o',
      'ServerAliveInterval=5',
      '-o',
      'ServerAliveCountMax=3',
      '-o',
      'ConnectTimeout=5',
      ...forwards,
      `${sshd.user}@${server.nsAddr}`,
    ]
    const loop = spawn(
      inLaptop[0] ?? 'ip',
      [...inLaptop.slice(1), 'sh', '-c', 'while :; do "$@"; sleep 1; done', 'loop', ...ssh],
      { detached: true, stdio: 'ignore' },
    )
    closers.unshift(async () => {
      process.kill(-(loop.pid ?? 0), 'SIGCONT')
      process.kill(-(loop.pid ?? 0), 'SIGTERM')
      await sleep(200)
    })

    const ours = new KeptClient(oursCopy, laptop)
    const anchor = new KeptClient(anchorCopy, laptop)
    closers.unshift(
      () => ours.close(),
      () => anchor.close(),
    )
    await Promise.all([ours.run(), anchor.run()])

    await cutOff(laptop)
    await sleep(OUTAGE_S * 1000)
    await comeBackAs(laptop, 3)
    const [oursOutage, anchorOutage] = await Promise.all([timed(ours), timed(anchor)])

    up.kill('SIGSTOP')
    process.kill(-(loop.pid ?? 0), 'SIGSTOP')
    await cutOff(laptop)
    await sleep(SUSPEND_S * 1000)
    const address = await comeBackAs(laptop, 4)
    up.kill('SIGCONT')
    process.kill(-(loop.pid ?? 0), 'SIGCONT')
    const [oursSuspend, anchorSuspend] = await Promise.all([timed(ours), timed(anchor)])

    await silenceTowards(server, address, true)
    closers.unshift(() => silenceTowards(server, address, false))
    await sleep(CUT_S * 1000)
    await silenceTowards(server, address, false)
    const [oursCut, anchorCut] = await Promise.all([timed(ours), timed(anchor)])

    const common = {
      anchorName: '`ssh -N -L …` per port in a restart loop (autossh-style), keepalives 5 s x 3',
      unit: 'ms',
      better: 'lower' as const,
      targetRatio: 0,
    }
    return [
      {
        ...common,
        name: `recovery: a kept ipyparallel.Client works again after a ${String(OUTAGE_S)} s outage — from the network back (another address) to the first apply answered on 2 engines; sshd + ipcontroller in a namespace, the laptop in another; issue 21's target: ≤ 3000 ms`,
        ours: oursOutage,
        anchor: anchorOutage,
      },
      {
        ...common,
        name: `recovery: a kept ipyparallel.Client works again after a ${String(SUSPEND_S)} s suspend (SIGSTOP) during which the laptop moved to another address — from the resume to the first apply answered; issue 21's target: ≤ 3000 ms`,
        ours: oursSuspend,
        anchor: anchorSuspend,
      },
      {
        ...common,
        name: `recovery: a kept ipyparallel.Client works again after the server's packets were lost for ${String(CUT_S)} s (the laptop's address and routes unchanged) — from the restore to the first apply answered; issue 21's target: ≤ 3000 ms`,
        ours: oursCut,
        anchor: anchorCut,
      },
    ]
  } finally {
    for (const close of closers) await close().catch(() => undefined)
    await rm(root, { recursive: true, force: true })
  }
}
