/**
 * Kernel benchmarks (issue 19), against one OpenSSH sshd in its own network namespace reached through a relay that
 * delays every chunk by 15 ms each way (30 ms round trips; this kernel has no `tc netem`), driven as Jupyter drives
 * a kernel: Debian's jupyter_client `KernelManager(kernel_name=…)` + `start_kernel` + a blocking client.
 *  (a) start → kernel_info reply through our kernelspec over a fresh link, beside a local ipykernel (same python,
 *      no ssh) plus one round trip, and beside what remote_ikernel and ssh_ipykernel do: the kernel started over
 *      `ssh HOST 'cat > FILE && python3 -m ipykernel_launcher -f FILE'` and reached with jupyter_client's
 *      `tunnel_to_kernel` (one `ssh -f -L … sleep 60` per port, OpenSSH through pexpect);
 *  (b) interrupt → execute_reply (KeyboardInterrupt) of a running `time.sleep(60)`, in both interrupt modes, beside
 *      the same on a local kernel;
 *  (c) the namespace's link cut for 10 s (its interface down: no FIN, no RST), then time from the restore to the
 *      first execute reply that finds the state kept, ours beside the ssh + tunnel_to_kernel path; once with the
 *      TCP connections kept (a silent 10 s outlives no keepalive of either side), once with every connection
 *      through the relay reset at the cut, as when this side's address changes (suspend, another network).
 * Every wait is bounded; an anchor that fails prints `failed: reason` and the run goes on.
 *
 * Run alone: `node dist/bench/run.js kernels`.
 */
import { execFile, spawn } from 'node:child_process'
import { mkdir, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { promisify } from 'node:util'

import { STATUS_SOCKET } from '../src/service/index.js'
import { CLI, runCli } from '../test/support/cli.js'
import { PYTHON, runPython } from '../test/support/ipp.js'
import { killAll, median, startRelayedSshd, type BenchRow } from './common.js'

const run = promisify(execFile)

const ONE_WAY_MS = 15
const START_RUNS = 3
const INTERRUPTS = 3
const CUT_S = 10
/** How long after the restore a path may take to answer before it counts as never. */
const RECOVER_WAIT_S = 30

/** Python shared by both drivers: interrupts and the network cut, every wait bounded. */
const PY_COMMON = String.raw`
import json, queue, subprocess, sys, time

def reply_to(kc, msg_id, timeout):
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError('no execute_reply in %d s' % timeout)
        reply = kc.get_shell_msg(timeout=left)
        if reply['parent_header'].get('msg_id') == msg_id:
            return reply

def interrupt_once(km, kc):
    msg_id = kc.execute('import time; time.sleep(60)')
    deadline = time.monotonic() + 30
    while True:
        msg = kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
        if (msg['parent_header'].get('msg_id') == msg_id and msg['msg_type'] == 'status'
                and msg['content']['execution_state'] == 'busy'):
            break
    time.sleep(0.3)
    t0 = time.perf_counter()
    km.interrupt_kernel()
    reply = reply_to(kc, msg_id, 30)
    return [(time.perf_counter() - t0) * 1000, reply['content'].get('ename')]

def cut_and_recover(kc, cut):
    if reply_to(kc, kc.execute('x = 41'), 30)['content']['status'] != 'ok':
        return {'error': 'x = 41 failed before the cut'}
    try:
        for argv in cut['down']:
            subprocess.run(argv, check=True)
        time.sleep(cut['seconds'])
    finally:
        subprocess.run(cut['up'], check=True)
    t0 = time.perf_counter()
    sent, last = set(), -1.0
    # one request a second: a request written into a connection that then died is never answered
    while time.perf_counter() - t0 < cut['wait']:
        if time.perf_counter() - last >= 1.0:
            last = time.perf_counter()
            sent.add(kc.execute('assert x == 41', store_history=False))
        try:
            reply = kc.get_shell_msg(timeout=0.05)
        except queue.Empty:
            continue
        if reply['parent_header'].get('msg_id') in sent:
            ms = (time.perf_counter() - t0) * 1000
            if reply['content']['status'] == 'ok':
                return {'ms': ms, 'requests': len(sent)}
            return {'error': 'state lost (%s)' % reply['content'].get('ename')}
    return {'error': 'never: no execute reply within %d s of the restore' % cut['wait']}
`

/** Start → kernel_info reply through a kernelspec (ours or a local one), then interrupts or a cut. */
const DRIVE = String.raw`
from jupyter_client.manager import KernelManager
name, opts = sys.argv[1], json.loads(sys.argv[2])
out = {}
t0 = time.perf_counter()
km = KernelManager(kernel_name=name)
kc = None
try:
    km.start_kernel()
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    out['start_ms'] = (time.perf_counter() - t0) * 1000
    out['interrupts'] = [interrupt_once(km, kc) for _ in range(opts.get('interrupts', 0))]
    if opts.get('cut'):
        out['cut'] = cut_and_recover(kc, opts['cut'])
except Exception as e:
    out['error'] = '%s: %s' % (type(e).__name__, e)
finally:
    if kc is not None:
        kc.stop_channels()
    try:
        km.shutdown_kernel(now=False)
    except Exception as e:
        out.setdefault('error', 'shutdown: %s' % e)
print(json.dumps(out))
`

/**
 * What remote_ikernel and ssh_ipykernel do: one ssh login writes the connection file and runs the kernel on it, then
 * jupyter_client's tunnel_to_kernel forwards the file's ports (one OpenSSH process per port), and a blocking client
 * connects to the forwards with the file's key.
 */
const ANCHOR = String.raw`
import os, secrets
from jupyter_client import BlockingKernelClient
from jupyter_client.connect import tunnel_to_kernel
from jupyter_client.ssh.tunnel import select_random_ports
host, rdir, opts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = {}
t0 = time.perf_counter()
# the remote ports, picked here as remote_ikernel does; the kernel binds them on the server's loopback
shell, iopub, stdin, control, hb = select_random_ports(5)
info = dict(shell_port=shell, iopub_port=iopub, stdin_port=stdin, control_port=control, hb_port=hb,
            ip='127.0.0.1', transport='tcp', key=secrets.token_hex(32), signature_scheme='hmac-sha256',
            kernel_name='')
rfile = '%s/kernel-%s.json' % (rdir, secrets.token_hex(6))
out['rfile'] = rfile
log = open(opts['log'], 'wb')
kernel = subprocess.Popen(
    ['ssh', host, 'umask 077 && mkdir -p %s && cat > %s && exec %s -m ipykernel_launcher -f %s'
     % (rdir, rfile, opts['python'], rfile)],
    stdin=subprocess.PIPE, stdout=log, stderr=log)
kernel.stdin.write(json.dumps(info).encode())
kernel.stdin.close()
kc = None
try:
    lshell, liopub, lstdin, lhb, lcontrol = tunnel_to_kernel(info, host)
    out['tunnels_ms'] = (time.perf_counter() - t0) * 1000
    kc = BlockingKernelClient()
    kc.load_connection_info(dict(info, shell_port=lshell, iopub_port=liopub, stdin_port=lstdin, hb_port=lhb,
                                 control_port=lcontrol))
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    out['start_ms'] = (time.perf_counter() - t0) * 1000
    if opts.get('cut'):
        out['cut'] = cut_and_recover(kc, opts['cut'])
except Exception as e:
    out['error'] = '%s: %s' % (type(e).__name__, e)
finally:
    if kc is not None:
        kc.stop_channels()
    kernel.kill()
print(json.dumps(out))
`

interface Drive {
  start_ms?: number
  tunnels_ms?: number
  interrupts?: [number, string | null][]
  cut?: { ms?: number; requests?: number; error?: string }
  rfile?: string
  error?: string
}

async function python(code: string, args: string[], env: NodeJS.ProcessEnv): Promise<Drive> {
  const result = await runPython(PY_COMMON + code, { args, env, timeoutMs: 150_000 })
  const line = result.stdout.trim().split('\n').at(-1) ?? ''
  try {
    const drive = JSON.parse(line) as Drive
    // the launcher's log (Jupyter's server log) and the kernel's say why a start failed
    if (drive.error !== undefined && result.stderr.trim() !== '')
      drive.error += ` | stderr: ${result.stderr.trim().split('\n').slice(-4).join(' / ')}`
    return drive
  } catch {
    const why = result.stderr.trim().split('\n').at(-1) ?? ''
    return { error: `exit ${String(result.code)}${why === '' ? '' : `: ${why}`}` }
  }
}

/** The median of what a path measured, or why it measured nothing. */
function summary(samples: number[], errors: string[]): { value: number | undefined; failed: string } {
  if (samples.length > 0) return { value: median(samples), failed: '' }
  return { value: undefined, failed: errors[0] ?? 'no sample' }
}

function say(what: string, drive: Drive): void {
  if (drive.error !== undefined) console.error(`  ${what}: failed: ${drive.error}`)
  if (drive.cut?.error !== undefined) console.error(`  ${what}: cut: failed: ${drive.cut.error}`)
}

/** Resolves once the service's status socket exists (bounded: 30 s). */
async function waitForSocket(path: string): Promise<void> {
  for (let i = 0; i < 300; i++) {
    if ((await stat(path).catch(() => undefined))?.isSocket() === true) return
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  throw new Error(`the watch service did not start (no ${path})`)
}

export async function benchKernels(): Promise<BenchRow[]> {
  // the anchor's ssh reaches the server by an alias (pyzmq's tunnels run plain `ssh`)
  const peer = await startRelayedSshd('ippt-bench-kernels-', ONE_WAY_MS)
  const { ns, sshd, relay, root, alias, knownHosts } = peer
  try {
    const env: NodeJS.ProcessEnv = {
      JUPYTER_DATA_DIR: join(root, 'jupyter'),
      JUPYTER_RUNTIME_DIR: join(root, 'runtime'),
      // no running `watch` service of this machine's user is found: every start opens a link of its own
      IPP_TUNNEL_RUNTIME_DIR: join(root, 'ippt'),
      PATH: peer.path,
    }
    for (const mode of ['message', 'signal'] as const) {
      const installed = await runCli(
        [
          'kernelspec',
          'install',
          `${sshd.user}@${relay.host}:${relay.port}`,
          '--name',
          `ours-${mode}`,
          '--interrupt-mode',
          mode,
          '--identity',
          sshd.clientKey,
          '--known-hosts',
          knownHosts,
          '--ssh-config',
          '/dev/null',
          '--python',
          PYTHON,
          '--remote-dir',
          join(root, 'remote'),
        ],
        env,
      )
      if (installed.code !== 0) throw new Error(`kernelspec install: ${installed.stderr}${installed.stdout}`)
      const local = join(root, 'jupyter', 'kernels', `local-${mode}`)
      await mkdir(local, { recursive: true })
      await writeFile(
        join(local, 'kernel.json'),
        JSON.stringify({
          argv: [PYTHON, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
          display_name: `local (${mode})`,
          language: 'python',
          interrupt_mode: mode,
        }),
      )
    }
    const setWire = (up: boolean): string[] => [
      'ip',
      'netns',
      'exec',
      ns.name,
      'ip',
      'link',
      'set',
      ns.nsInterface,
      up ? 'up' : 'down',
    ]
    const cuts = {
      kept: { down: [setWire(false)], up: setWire(true), seconds: CUT_S, wait: RECOVER_WAIT_S },
      reset: {
        down: [setWire(false), ['kill', '-USR2', String(relay.pid)]],
        up: setWire(true),
        seconds: CUT_S,
        wait: RECOVER_WAIT_S,
      },
    }
    type Cut = (typeof cuts)['kept']
    const anchor = async (run: string, cut?: Cut): Promise<Drive> => {
      const opts = { python: PYTHON, log: join(root, `anchor-${run}.log`), ...(cut !== undefined && { cut }) }
      const got = await python(ANCHOR, [alias, join(root, 'anchor-remote'), JSON.stringify(opts)], env)
      // its tunnels (`ssh -f`, detached) and the kernel it left on the server
      await killAll(alias)
      await killAll(join(root, 'anchor-remote'))
      return got
    }

    const starts = { ours: [] as number[], local: [] as number[], ssh: [] as number[] }
    const tunnels: number[] = []
    const errors = { ours: [] as string[], local: [] as string[], ssh: [] as string[] }
    const interrupts = {
      ours: { message: [] as number[], signal: [] as number[] },
      local: { message: [] as number[], signal: [] as number[] },
    }
    const keep = (path: 'ours' | 'local' | 'ssh', drive: Drive, mode?: 'message' | 'signal'): void => {
      say(path, drive)
      if (drive.start_ms !== undefined) starts[path].push(drive.start_ms)
      if (drive.error !== undefined) errors[path].push(drive.error)
      if (path !== 'ssh' && mode !== undefined)
        for (const [ms, ename] of drive.interrupts ?? []) {
          if (ename === 'KeyboardInterrupt') interrupts[path][mode].push(ms)
          else errors[path].push(`interrupt (${mode}) answered ${String(ename)}`)
        }
    }
    // runs alternate, so each path sees the same machine state; each start also times one interrupt (message)
    for (let i = 0; i < START_RUNS; i++) {
      keep('local', await python(DRIVE, ['local-message', JSON.stringify({ interrupts: 1 })], env), 'message')
      keep('ours', await python(DRIVE, ['ours-message', JSON.stringify({ interrupts: 1 })], env), 'message')
      const ssh = await anchor(String(i))
      keep('ssh', ssh)
      if (ssh.tunnels_ms !== undefined) tunnels.push(ssh.tunnels_ms)
    }
    keep(
      'local',
      await python(DRIVE, ['local-signal', JSON.stringify({ interrupts: INTERRUPTS })], env),
      'signal',
    )
    keep(
      'ours',
      await python(DRIVE, ['ours-signal', JSON.stringify({ interrupts: INTERRUPTS })], env),
      'signal',
    )

    // over the live link of a running `watch` service: the launchers find it (same runtime dir) and start their
    // kernel over its link, already up after one warm-up start
    const service = spawn(
      process.execPath,
      [
        CLI,
        'watch',
        '--dir',
        join(root, 'watched'),
        '--identity',
        sshd.clientKey,
        '--known-hosts',
        knownHosts,
        '--ssh-config',
        '/dev/null',
      ],
      { env: { ...process.env, ...env }, stdio: 'ignore' },
    )
    const viaService: number[] = []
    const serviceErrors: string[] = []
    try {
      await mkdir(join(root, 'watched'), { recursive: true, mode: 0o700 })
      await waitForSocket(join(root, 'ippt', STATUS_SOCKET))
      say('ours (service, warm-up)', await python(DRIVE, ['ours-message', JSON.stringify({})], env))
      for (let i = 0; i < START_RUNS; i++) {
        const drive = await python(DRIVE, ['ours-message', JSON.stringify({})], env)
        say('ours (service)', drive)
        if (drive.start_ms !== undefined) viaService.push(drive.start_ms)
        if (drive.error !== undefined) serviceErrors.push(drive.error)
      }
    } catch (err) {
      serviceErrors.push(err instanceof Error ? err.message : String(err))
    } finally {
      service.kill('SIGTERM')
      await new Promise((resolve) => service.once('exit', resolve))
    }

    const recovered: Record<keyof typeof cuts, { ours: Drive; ssh: Drive }> = {
      kept: { ours: {}, ssh: {} },
      reset: { ours: {}, ssh: {} },
    }
    for (const kind of ['kept', 'reset'] as const) {
      const cut = cuts[kind]
      const ours = await python(DRIVE, ['ours-message', JSON.stringify({ cut })], env)
      say(`ours (cut, ${kind})`, ours)
      const ssh = await anchor(`cut-${kind}`, cut)
      say(`ssh + tunnel_to_kernel (cut, ${kind})`, ssh)
      recovered[kind] = { ours, ssh }
    }

    const rtt = 2 * ONE_WAY_MS
    const path = `sshd in a namespace behind a ${rtt} ms round-trip delay relay`
    const ours = summary(starts.ours, errors.ours)
    const local = summary(starts.local, errors.local)
    const ssh = summary(starts.ssh, errors.ssh)
    const oursFailed = ours.failed === '' ? '' : ` (failed: ${ours.failed})`
    const localPlusRtt = local.value === undefined ? undefined : local.value + rtt
    const rows: BenchRow[] = [
      {
        name: `kernels: start → kernel_info reply, our kernelspec over a fresh link${oursFailed}`,
        ours: ours.value ?? Number.NaN,
        anchor: localPlusRtt,
        anchorName: `local ipykernel start + ${rtt} ms${local.failed === '' ? '' : `; failed: ${local.failed}`}`,
        unit: 'ms',
        better: 'lower',
        targetRatio: 0,
        note: `median of ${START_RUNS} runs alternating with the rows below; KernelManager.start_kernel + wait_for_ready; ${path}; the ≤ 1.2x target is the live link's`,
      },
      {
        name: `kernels: start → kernel_info reply, our kernelspec over the watch service's live link${serviceErrors.length === 0 ? '' : ` (failed: ${serviceErrors[0] ?? ''})`}`,
        ours: viaService.length > 0 ? median(viaService) : Number.NaN,
        anchor: localPlusRtt,
        anchorName: `local ipykernel start + ${rtt} ms`,
        unit: 'ms',
        better: 'lower',
        targetRatio: 1 / 1.2,
        note: `median of ${viaService.length} starts after one warm-up; the launcher asks the running service, whose link is up; ${path}`,
      },
      {
        name: `kernels: start → kernel_info reply, our kernelspec over a fresh link${oursFailed}`,
        ours: ours.value ?? Number.NaN,
        anchor: ssh.value,
        anchorName: `ssh + tunnel_to_kernel${ssh.failed === '' ? '' : `; failed: ${ssh.failed}`}`,
        unit: 'ms',
        better: 'lower',
        targetRatio: 3,
        note: `median of ${START_RUNS}; the anchor's 5 tunnels were up after ${tunnels.length > 0 ? median(tunnels).toFixed(0) : '—'} ms; ${path}`,
      },
      {
        name: `kernels: start → kernel_info reply, our kernelspec over the watch service's live link${serviceErrors.length === 0 ? '' : ` (failed: ${serviceErrors[0] ?? ''})`}`,
        ours: viaService.length > 0 ? median(viaService) : Number.NaN,
        anchor: ssh.value,
        anchorName: `ssh + tunnel_to_kernel${ssh.failed === '' ? '' : `; failed: ${ssh.failed}`}`,
        unit: 'ms',
        better: 'lower',
        targetRatio: 3,
        note: `the live link's starts above against the same ${START_RUNS} anchor starts; ${path}`,
      },
    ]
    for (const mode of ['message', 'signal'] as const) {
      const o = interrupts.ours[mode]
      const l = interrupts.local[mode]
      rows.push({
        name: `kernels: interrupt (${mode}) → execute_reply with KeyboardInterrupt`,
        ours: o.length > 0 ? median(o) : Number.NaN,
        anchor: l.length > 0 ? median(l) : undefined,
        anchorName: 'local ipykernel',
        unit: 'ms',
        better: 'lower',
        targetRatio: 0,
        note: `median of ${o.length} interrupts of \`time.sleep(60)\`, KernelManager.interrupt_kernel; issue 19's target: within 1 s; ${path}`,
      })
    }
    const how = {
      kept: 'the TCP connections kept',
      reset: "every TCP connection through the relay reset at the cut (this side's address changed)",
    }
    for (const kind of ['kept', 'reset'] as const) {
      const { ours: o, ssh: a } = recovered[kind]
      const oursWhy = o.cut?.error ?? o.error
      const why = a.cut?.error ?? a.error
      rows.push({
        name: `kernels: a ${CUT_S} s network cut, ${how[kind]} → first execute reply with the state kept${oursWhy === undefined ? '' : ` (ours failed: ${oursWhy})`}`,
        ours: o.cut?.ms ?? Number.NaN,
        anchor: a.cut?.ms,
        anchorName: `ssh + tunnel_to_kernel${why === undefined ? '' : `; failed: ${why}`}`,
        unit: 'ms',
        better: 'lower',
        targetRatio: 1,
        note: `one run each; the namespace's interface down for ${CUT_S} s${kind === 'kept' ? ' (no FIN, no RST)' : ''}, timed from its restore, one \`assert x == 41\` a second, ${RECOVER_WAIT_S} s at most; ${path}`,
      })
    }
    return rows
  } finally {
    await run('ip', ['netns', 'exec', ns.name, 'ip', 'link', 'set', ns.nsInterface, 'up']).catch(
      () => undefined,
    )
    await peer.close()
  }
}
