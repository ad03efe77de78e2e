/**
 * Cluster benchmarks (issue 20), against one OpenSSH sshd in its own network namespace reached through a relay that
 * delays every chunk by 15 ms each way (30 ms round trips; this kernel has no `tc netem`):
 *  (a) command → N engines registered and seen by a Client, for N = 2 and 8: ours is `ipp-tunnel cluster start -n N`
 *      with a Client started beside it that waits for the copy it writes; the anchor is ipyparallel
 *      7.1's own `ipcluster start --n=N` with `SSHControllerLauncher` + `SSHEngineSetLauncher` (plain `ssh`/`scp`
 *      from PATH, a user's ssh config), plus the tunnel the Client then needs (`Client(…, sshserver=HOST)`: pyzmq's
 *      `ssh` tunnels), started beside ipcluster and waiting for its client file;
 *  (b) the SSH logins each path makes from start to stop, in the first run (sshd's `Accepted publickey` lines);
 *      ipcluster's own stop takes seconds of ssh per process, so later runs kill what it started instead.
 * Every wait is bounded; a path that fails prints `failed: reason` and the run goes on. Whatever a path left (the
 * remote controller and engines, ssh processes) is killed by its unique directory in their command lines.
 *
 * Run alone: `node dist/bench/run.js cluster`.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { mkdir, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'

import { JsonLines, exited, spawnCli } from '../test/support/cli.js'
import { type Sshd } from '../test/support/index.js'
import { PYTHON, runPython } from '../test/support/ipp.js'
import { killAll, median, startRelayedSshd, type BenchRow } from './common.js'

const ONE_WAY_MS = 15
const SIZES = [2, 8] as const
const RUNS = 2
/** How long a path may take from its command to N engines seen by a Client. */
const START_WAIT_S = 120
/** How long a path may take to stop after SIGINT before what it left is killed. */
const STOP_WAIT_MS = 60_000

/**
 * Waits for a client connection file in a directory (complete: it parses), connects ipyparallel's Client to it
 * (through pyzmq's ssh tunnels to HOST when given) and waits for N engines; prints the wall-clock time it saw them.
 */
const SEE = String.raw`
import glob, json, os, sys, time
import ipyparallel as ipp
security, n, sshserver, wait = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
deadline = time.monotonic() + wait
left = lambda: max(1.0, deadline - time.monotonic())
out, rc = {}, None
try:
    path = None
    while path is None:
        for f in glob.glob(os.path.join(security, 'ipcontroller*-client.json')):
            try:
                with open(f) as fh:
                    json.load(fh)
                path = f
            except ValueError:
                pass
        if path is None:
            if time.monotonic() > deadline:
                raise TimeoutError('no client file in %s within %d s' % (security, wait))
            time.sleep(0.05)
    kw = {'sshserver': sshserver} if sshserver else {}
    rc = ipp.Client(path, timeout=left(), **kw)
    rc.wait_for_engines(n, timeout=left())
    out['seen_at'] = time.time() * 1000
except Exception as e:
    out['error'] = '%s: %s' % (type(e).__name__, e)
finally:
    if rc is not None:
        rc.close()
print(json.dumps(out))
`

/** One path's run: ms from its command to N engines seen, SSH logins from start to stop, or why it failed. */
interface Run {
  ms?: number
  logins?: number
  /** Logins until the Client saw N engines. */
  loginsToSeen?: number
  error?: string
}

function accepted(sshd: Sshd): number {
  return sshd.log().match(/Accepted publickey/gu)?.length ?? 0
}

async function see(
  security: string,
  n: number,
  sshserver: string,
  env: NodeJS.ProcessEnv,
): Promise<Run & { seenAt?: number }> {
  const result = await runPython(SEE, {
    args: [security, String(n), sshserver, String(START_WAIT_S)],
    env,
    timeoutMs: (START_WAIT_S + 30) * 1000,
  })
  const line = result.stdout.trim().split('\n').at(-1) ?? ''
  try {
    const got = JSON.parse(line) as { seen_at?: number; error?: string }
    if (got.error !== undefined) return { error: got.error }
    return got.seen_at === undefined ? { error: 'no time' } : { seenAt: got.seen_at }
  } catch {
    return { error: `client exit ${String(result.code)}: ${result.stderr.trim().split('\n').at(-1) ?? ''}` }
  }
}

/** SIGINT, then the child's exit within STOP_WAIT_MS; false when it had to be killed. */
async function interrupt(child: ChildProcess): Promise<boolean> {
  if (child.exitCode !== null || child.signalCode !== null) return true
  const done = exited(child)
  child.kill('SIGINT')
  const late = new AbortController()
  const timer = sleep(STOP_WAIT_MS, 'late' as const, { signal: late.signal }).catch(() => 'late' as const)
  const end = await Promise.race([done.then(() => 'ok' as const), timer])
  late.abort()
  if (end === 'ok') return true
  child.kill('SIGKILL')
  await done
  return false
}

/** The last lines of a child's output, for a failure's reason. */
function tailOf(child: ChildProcess): () => string {
  let text = ''
  const keep = (d: Buffer): void => {
    text = (text + d.toString()).slice(-4000)
  }
  child.stdout?.on('data', keep)
  child.stderr?.on('data', keep)
  return () =>
    text
      .trim()
      .split('\n')
      .filter((l) => l.trim() !== '')
      .slice(-3)
      .join(' / ')
}

export async function benchCluster(): Promise<BenchRow[]> {
  // the anchor's ssh and scp reach the server by an alias: ipcluster's launchers and pyzmq's tunnels run them plain
  const peer = await startRelayedSshd('ippt-bench-cluster-', ONE_WAY_MS, {
    extraConfig: 'Subsystem sftp internal-sftp',
  })
  const { sshd, relay, root, alias, knownHosts, path } = peer
  try {
    const ours = async (n: number, run: string): Promise<Run> => {
      const dir = join(root, run)
      await mkdir(dir)
      const env: NodeJS.ProcessEnv = {
        IPYTHONDIR: join(dir, 'local-ipython'),
        IPP_TUNNEL_RUNTIME_DIR: join(dir, 'ippt'),
        SSH_AUTH_SOCK: '',
        PATH: path,
      }
      const before = accepted(sshd)
      const t0 = Date.now()
      const child = spawnCli(
        [
          'cluster',
          'start',
          `${sshd.user}@${relay.host}:${String(relay.port)}`,
          '--identity',
          sshd.clientKey,
          '--known-hosts',
          knownHosts,
          '--ssh-config',
          '/dev/null',
          '--python',
          PYTHON,
          '--remote-dir',
          join(dir, 'remote'),
          '--remote-ipython-dir',
          join(dir, 'remote-ipython'),
          '--local-python',
          PYTHON,
          '-n',
          String(n),
          '--json',
        ],
        env,
      )
      // the Client starts with the command and waits for the copy, as the anchor's waits for the file ipcluster fetches
      const seeing = see(join(dir, 'local-ipython', 'profile_default-tunnel', 'security'), n, '', env)
      seeing.catch(() => undefined)
      const events = new JsonLines(child)
      const out: Run = {}
      try {
        // an exit before the engines (e.g. a refused option) ends the wait too
        const waiting = events.next(
          (e) => (e.event === 'registered' && e.count === n) || e.event === 'error',
          START_WAIT_S * 1000,
        )
        waiting.catch(() => undefined)
        const registered = await Promise.race([
          waiting,
          exited(child).then(({ code }) => ({
            event: 'exit',
            code,
            stderr: events.stderr.trim().slice(-300),
          })),
        ])
        if (registered.event !== 'registered') throw new Error(JSON.stringify(registered))
        const seen = await seeing
        if (seen.seenAt === undefined) throw new Error(seen.error)
        out.ms = seen.seenAt - t0
        out.loginsToSeen = accepted(sshd) - before
      } catch (e) {
        out.error = (e instanceof Error ? e.message : String(e)).split('\n')[0] ?? ''
      }
      if (!(await interrupt(child))) out.error ??= `no exit within ${String(STOP_WAIT_MS / 1000)} s of SIGINT`
      out.logins = accepted(sshd) - before
      // what it left, if anything: the remote supervisors and their processes (our remote dir in their argv)
      await killAll(dir)
      return out
    }

    /** `stop`: SIGINT ipcluster and let it stop the cluster its way (and count those logins), else kill it all. */
    const ipcluster = async (n: number, run: string, stop: boolean): Promise<Run> => {
      const dir = join(root, run)
      const ipythonDir = join(dir, 'local-ipython')
      const profile = join(ipythonDir, 'profile_bench')
      await mkdir(profile, { recursive: true })
      // The "remote" is this machine's file system seen through sshd in a namespace: the remote profile lives apart
      // from the local one, where ipcluster fetches the controller's files to and sends the engines' file from.
      await writeFile(
        join(profile, 'ipcluster_config.py'),
        [
          "c.Cluster.controller_launcher_class = 'ssh'",
          "c.Cluster.engine_launcher_class = 'ssh'",
          `c.SSHLauncher.remote_python = ${JSON.stringify(PYTHON)}`,
          `c.SSHLauncher.remote_profile_dir = ${JSON.stringify(join(dir, 'remote-ipython', 'profile_bench'))}`,
          `c.SSHControllerLauncher.hostname = ${JSON.stringify(alias)}`,
          `c.SSHEngineSetLauncher.engines = {${JSON.stringify(alias)}: ${String(n)}}`,
          '',
        ].join('\n'),
      )
      const env: NodeJS.ProcessEnv = { IPYTHONDIR: ipythonDir, SSH_AUTH_SOCK: '', PATH: path }
      const before = accepted(sshd)
      const t0 = Date.now()
      const child = spawn(
        PYTHON,
        [
          '-m',
          'ipyparallel.cluster',
          'start',
          `--n=${String(n)}`,
          '--profile=bench',
          `--ipython-dir=${ipythonDir}`,
        ],
        { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
      )
      const tail = tailOf(child)
      const out: Run = {}
      // the Client starts with ipcluster and waits for the file ipcluster fetches: no time lost between the two
      const seen = await see(join(profile, 'security'), n, alias, env)
      if (seen.seenAt === undefined)
        out.error = `${seen.error ?? ''}${tail() === '' ? '' : ` | ipcluster: ${tail()}`}`
      else {
        out.ms = seen.seenAt - t0
        out.loginsToSeen = accepted(sshd) - before
      }
      if (stop) {
        if (!(await interrupt(child)))
          out.error ??= `no exit within ${String(STOP_WAIT_MS / 1000)} s of SIGINT`
        out.logins = accepted(sshd) - before
      } else {
        child.kill('SIGKILL')
        await exited(child)
      }
      // its remote controller and engines (their --profile-dir) and its ssh processes (pyzmq's `ssh -f` tunnels,
      // the launchers' pollers)
      await killAll(dir)
      await killAll(alias)
      return out
    }

    const runs = new Map(SIZES.map((n) => [n, { ours: [] as Run[], anchor: [] as Run[] }]))
    for (const [n, { ours: o, anchor: a }] of runs) {
      // runs alternate, so each path sees the same machine state
      for (let i = 0; i < RUNS; i++) {
        o.push(await ours(n, `ours-${String(n)}-${String(i)}`))
        // ipcluster's own stop costs seconds of ssh per process: its logins are counted in the first run only
        a.push(await ipcluster(n, `ipcluster-${String(n)}-${String(i)}`, i === 0))
        for (const [what, r] of [
          [`cluster start -n ${String(n)}`, o.at(-1)],
          [`ipcluster start --n=${String(n)}`, a.at(-1)],
        ] as const)
          console.error(
            `  ${what}: ${r?.error === undefined ? `${String(Math.round(r?.ms ?? Number.NaN))} ms` : `failed: ${r.error}`}, logins ${String(r?.loginsToSeen ?? '—')} to the engines, ${String(r?.logins ?? '—')} to the end`,
          )
      }
    }

    const rtt = 2 * ONE_WAY_MS
    const where = `sshd in a namespace behind a ${String(rtt)} ms round-trip delay relay (not netem)`
    const rows: BenchRow[] = []
    const medianOf = (list: Run[], pick: (r: Run) => number | undefined): number | undefined => {
      const values = list.map(pick).filter((v): v is number => v !== undefined)
      return values.length > 0 ? median(values) : undefined
    }
    const failure = (list: Run[]): string => {
      const why = list.find((r) => r.error !== undefined)?.error
      return why === undefined ? '' : `; failed: ${why}`
    }
    for (const [n, { ours: o, anchor: a }] of runs) {
      const oursFailed = failure(o)
      rows.push({
        name: `cluster: command → ${String(n)} engines registered and seen by a Client${oursFailed === '' ? '' : ` (${oursFailed.slice(2)})`}`,
        ours: medianOf(o, (r) => r.ms) ?? Number.NaN,
        anchor: medianOf(a, (r) => r.ms),
        anchorName: `ipcluster start, SSH launchers, + Client(sshserver=…)${failure(a)}`,
        unit: 'ms',
        better: 'lower',
        targetRatio: 3,
        note: `median of ${String(RUNS)} alternating runs; each path's Client starts with its command and waits for the file it writes (ours: the copy; ipcluster: the file it fetches), then for the engines; ${where}`,
      })
    }
    for (const [n, { ours: o, anchor: a }] of runs) {
      const first = { ours: o[0]?.logins, anchor: a[0]?.logins }
      const toSeen = (list: Run[]): string => list.map((r) => String(r.loginsToSeen ?? '—')).join(', ')
      rows.push({
        name: `cluster: SSH logins, start → ${String(n)} engines seen → stopped${o[0]?.error === undefined ? '' : ` (ours failed: ${o[0].error})`}`,
        ours: first.ours ?? Number.NaN,
        anchor: first.anchor,
        anchorName: `ipcluster start + Client(sshserver=…), stopped by ipcluster${failure(a.slice(0, 1))}`,
        unit: 'logins',
        better: 'lower',
        targetRatio: 0,
        note: `sshd's "Accepted publickey" lines, the first run; until the Client saw the engines, each run: ours ${toSeen(o)}, the anchor ${toSeen(a)}; issue 20's target: 1 login`,
      })
    }
    return rows
  } finally {
    await peer.close()
  }
}
