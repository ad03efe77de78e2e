/**
 * Login benchmark (issue 10), one run against one OpenSSH sshd in its own network namespace: start → every forward
 * of an ipcontroller-client.json ready,
 *  - through the user's live OpenSSH ControlMaster (`--transport auto` with a master at the config's ControlPath),
 *  - through ipp-tunnel's own ssh2 link (`--transport ssh2`: a new login),
 *  - by pyzmq's `tunnel_connection`, which also reuses a master when the ssh config has a ControlPath
 *    (`ssh -O check`, then `ssh -O forward -L` per channel).
 * Runs alternate, so all three see the same machine state; each figure is the median of the runs.
 *
 * Run alone: `node dist/bench/run.js login`.
 */
import { execFile } from 'node:child_process'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'

import { openTunnel, type OpenTunnelOptions } from '../src/tunnel/index.js'
import { createNetns, sshOptionsOf, startSshd, type Netns } from '../test/support/index.js'
import { runPython, startController } from '../test/support/ipp.js'
import { median, type BenchRow } from './common.js'

const RUNS = 5
const run = promisify(execFile)

function accepted(log: string): number {
  return log.match(/Accepted publickey/g)?.length ?? 0
}

/**
 * pyzmq's tunnel_connection for each endpoint of a client file, as ipyparallel's Client does it. With a live master
 * it returns the master's pid: nothing to kill here; its forwards are cancelled (`ssh -O cancel`) at exit.
 */
const PYZMQ_READY = String.raw`
import json, sys, time, zmq
from zmq.ssh import tunnel
info, server, keyfile = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = zmq.Context()
channels = ['registration', 'control', 'mux', 'task', 'iopub', 'notification', 'broadcast']
start = time.perf_counter()
try:
    for ch in channels:
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        tunnel.tunnel_connection(s, 'tcp://127.0.0.1:%d' % info[ch], server, keyfile=keyfile, timeout=60)
    print(json.dumps({'ms': (time.perf_counter() - start) * 1000}))
except Exception as e:
    print(json.dumps({'error': '%s: %s' % (type(e).__name__, e), 'ms': (time.perf_counter() - start) * 1000}))
`

async function pyzmqReadyMs(clientJson: string, keyfile: string): Promise<{ ms: number; error?: string }> {
  const result = await runPython(PYZMQ_READY, { args: [clientJson, 'cluster', keyfile], timeoutMs: 120_000 })
  const line = result.stdout.trim().split('\n').at(-1) ?? ''
  try {
    return JSON.parse(line) as { ms: number; error?: string }
  } catch {
    return { ms: Number.NaN, error: `pyzmq run failed: ${result.stderr.trim().split('\n').at(-1) ?? ''}` }
  }
}

async function oursReadyMs(
  file: string,
  options: OpenTunnelOptions,
  transport: 'openssh' | 'ssh2',
): Promise<number> {
  const started = performance.now()
  const tunnel = await openTunnel(file, options)
  const ms = performance.now() - started
  const used = tunnel.link.transport
  await tunnel.close()
  if (used !== transport) throw new Error(`bench: went through ${used}, not ${transport}`)
  return ms
}

/**
 * Bring-up through a ControlMaster, through our own link, and by pyzmq through the same master.
 *
 * @example for (const row of await benchLogin()) console.log(row.name, row.ours, row.anchor)
 */
export async function benchLogin(): Promise<BenchRow[]> {
  const ns: Netns = await createNetns()
  const dir = await mkdtemp(join(tmpdir(), 'ippt-bench-login-'))
  const config = join(dir, 'ssh_config')
  try {
    const sshd = await startSshd({ netns: ns })
    const controller = await startController({ netns: ns, ssh: `${sshd.user}@${sshd.host}:${sshd.port}` })
    try {
      await writeFile(
        config,
        [
          'Host cluster',
          `  HostName ${sshd.host}`,
          `  Port ${sshd.port}`,
          `  User ${sshd.user}`,
          `  IdentityFile ${sshd.clientKey}`,
          '  IdentitiesOnly yes',
          `  UserKnownHostsFile ${sshd.knownHostsFile}`,
          '  StrictHostKeyChecking yes',
          '  BatchMode yes',
          '  ControlMaster auto',
          `  ControlPath ${dir}/cm-%C`,
          '',
        ].join('\n'),
      )
      // the user's master, started once beforehand as a user does in a terminal
      await run('ssh', ['-F', config, '-fN', '-o', 'ControlPersist=yes', 'cluster'])
      try {
        const clientJson = await readFile(controller.clientFile, 'utf8')
        const out = join(dir, 'client.json')
        const viaMaster: OpenTunnelOptions = { ssh: 'cluster', configFile: config, agent: false, out }
        const ownLink: OpenTunnelOptions = { ...sshOptionsOf(sshd), agent: false, out, transport: 'ssh2' }
        const master: number[] = []
        const ssh2: number[] = []
        const anchor: number[] = []
        let anchorError: string | undefined
        for (let i = 0; i < RUNS; i++) {
          const before = accepted(sshd.log())
          master.push(await oursReadyMs(controller.clientFile, viaMaster, 'openssh'))
          if (accepted(sshd.log()) !== before) throw new Error('bench: a new login through the master')
          ssh2.push(await oursReadyMs(controller.clientFile, ownLink, 'ssh2'))
          // pyzmq pastes keyfile into its ssh command line: the same config (and so the same ControlPath)
          const logins = accepted(sshd.log())
          const py = await pyzmqReadyMs(clientJson, `${sshd.clientKey} -F ${config}`)
          if (py.error !== undefined) anchorError = py.error
          else if (accepted(sshd.log()) !== logins) anchorError = 'logged in anew instead of using the master'
          else anchor.push(py.ms)
        }
        const pyzmq = anchor.length > 0 ? median(anchor) : undefined
        const failed = anchorError !== undefined ? `; anchor failed: ${anchorError}` : ''
        return [
          {
            name: 'login: start → all 7 forwards ready through the user’s ControlMaster (--transport auto)',
            ours: median(master),
            anchor: pyzmq,
            anchorName: 'pyzmq tunnel_connection through the same master',
            unit: 'ms',
            better: 'lower',
            targetRatio: 1,
            note: `median of ${RUNS}, runs alternating${failed}`,
          },
          {
            name: 'login: start → all 7 forwards ready over a new login of our own (--transport ssh2)',
            ours: median(ssh2),
            anchor: pyzmq,
            anchorName: 'pyzmq tunnel_connection through a live master',
            unit: 'ms',
            better: 'lower',
            targetRatio: 1,
            note: `median of ${RUNS}, same runs; through the master ours took ${median(master).toFixed(0)} ms${failed}`,
          },
        ]
      } finally {
        await run('ssh', ['-F', config, '-O', 'exit', 'cluster']).catch(() => undefined)
      }
    } finally {
      await controller.close()
      await sshd.close()
    }
  } finally {
    await ns.close()
    await rm(dir, { recursive: true, force: true })
  }
}
