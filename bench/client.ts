/**
 * `client` group: an `execute_request` round trip on one engine, our client against ipyparallel's own
 * Python Client on the same cluster through the same kind of tunnel (ipp-tunnel's ssh forwarding to the
 * same sshd); and signed messages/s through one Dealer over the tunnel against a pyzmq Dealer with
 * jupyter_client's Session doing the same through the same tunnel, both against a C-speed echo ROUTER.
 */
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { createInterface } from 'node:readline'
import { setTimeout as sleep } from 'node:timers/promises'

import { IppClient } from '../src/client/index.js'
import { connect, type ConnectOptions } from '../src/sockets/index.js'
import { openTunnel } from '../src/tunnel/index.js'
import { JsonLines, spawnCli } from '../test/support/cli.js'
import {
  createNetns,
  sshArgsOf,
  sshOptionsOf,
  startSshd,
  type Netns,
  type Sshd,
} from '../test/support/index.js'
import { PYTHON, runPython, startController, startEngines, stopProcess } from '../test/support/ipp.js'
import { median, type BenchRow } from './common.js'

const EXECUTES = 450
const EXECUTE_ROUNDS = 3
const WARMUP = 30
const MESSAGES = 20_000
const WINDOW = 500

const PY_EXECUTE = String.raw`
import json, sys, time, ipyparallel as ipp
n, warm = int(sys.argv[1]), int(sys.argv[2])
c = ipp.Client(sys.argv[3], timeout=30)
c.wait_for_engines(1, timeout=30)
time.sleep(1)  # let the iopub SUB join first: else the first execute(block=True) can wait forever for idle
e = c[c.ids[0]]
def run():
    # the same work as ours: the reply, then the end of the output (idle on iopub)
    ar = e.execute("pass", block=False)
    ar.get()
    ar.wait_for_output()
for _ in range(warm): run()
times = []
for _ in range(n):
    t = time.perf_counter(); run(); times.append((time.perf_counter() - t) * 1000)
print(json.dumps({"times": times}))
c.close()
`

const PY_ECHO = String.raw`
import json, sys, zmq
ctx = zmq.Context()
router = ctx.socket(zmq.ROUTER); router.linger = 0
port = router.bind_to_random_port("tcp://127.0.0.1")
pub = ctx.socket(zmq.PUB); pub.linger = 0
iopub = pub.bind_to_random_port("tcp://127.0.0.1")
print(json.dumps({"router": port, "iopub": iopub}), flush=True)
zmq.proxy(router, router)  # a ROUTER proxied to itself echoes every message to its sender
`

const PY_DEALER = String.raw`
import json, sys, time, zmq
from jupyter_client.session import Session
info = json.load(open(sys.argv[1])); n, window = int(sys.argv[2]), int(sys.argv[3])
s = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
d = zmq.Context().socket(zmq.DEALER); d.linger = 0
d.connect("tcp://%s:%d" % (info["ip"], info["shell_port"]))
def run(count):
    for _ in range(count // window):
        for _ in range(window): s.send(d, "bench_request", {"i": 1})
        for _ in range(window): s.recv(d, mode=0)
run(window)
t = time.perf_counter(); run(n); dt = time.perf_counter() - t
print(json.dumps({"rate": n / dt}))
`

async function pythonJson(code: string, args: string[]): Promise<Record<string, number>> {
  const result = await runPython(code, { args, timeoutMs: 180_000 })
  const line = result.stdout.trim().split('\n').pop() ?? ''
  try {
    return JSON.parse(line) as Record<string, number>
  } catch {
    throw new Error(`python failed (${String(result.code)}): ${result.stderr}`)
  }
}

async function executeRoundTrip(ns: Netns, sshd: Sshd, dir: string): Promise<BenchRow> {
  const ctl = await startController({ netns: ns, ssh: `root@${sshd.host}:${sshd.port}` })
  const engines = startEngines(ctl.engineFile, 1, { netns: ns })
  // Both clients in a process of their own, both through one `ipp-tunnel up` process: the same topology.
  const out = join(dir, 'ipcontroller-client.json')
  const up = spawnCli(['up', ctl.clientFile, '--json', '--out', out, ...sshArgsOf(sshd)])
  try {
    await new JsonLines(up).next('ready')
    const client = await IppClient.open(out)
    // rounds alternate between the two clients, so that drift in the machine's state hits both alike
    const ours: number[] = []
    const anchor: number[] = []
    try {
      while ((await client.engines()).ids.length < 1) await sleep(100)
      for (let i = 0; i < WARMUP; i++) await client.execute('pass', { targets: [0], silent: true })
      for (let round = 0; round < EXECUTE_ROUNDS; round++) {
        for (let i = 0; i < EXECUTES / EXECUTE_ROUNDS; i++) {
          const started = performance.now()
          await client.execute('pass', { targets: [0], silent: true })
          ours.push(performance.now() - started)
        }
        const py = await pythonJson(PY_EXECUTE, [String(EXECUTES / EXECUTE_ROUNDS), String(WARMUP), out])
        anchor.push(...(py.times as unknown as number[]))
      }
    } finally {
      await client.close()
    }
    return {
      name: 'execute round trip on one engine',
      ours: median(ours),
      anchor: median(anchor),
      anchorName: 'ipyparallel Client',
      unit: 'ms',
      better: 'lower',
      targetRatio: 1,
      note: `median of ${EXECUTES} (${EXECUTE_ROUNDS} alternating rounds) silent \`execute("pass")\` until reply + idle, through one ipp-tunnel up process`,
    }
  } finally {
    await stopProcess(up)
    await engines.close()
    await ctl.close()
  }
}

async function dealerThroughput(
  ns: Netns,
  sshd: Sshd,
  options: ConnectOptions,
  dir: string,
): Promise<BenchRow> {
  const echo = spawn('ip', ['netns', 'exec', ns.name, PYTHON, '-c', PY_ECHO], {
    stdio: ['ignore', 'pipe', 'inherit'],
  })
  try {
    const lines = createInterface({ input: echo.stdout })
    const [first] = (await once(lines, 'line')) as [string]
    const ports = JSON.parse(first) as { router: number; iopub: number }
    const file = join(dir, 'kernel-echo.json')
    const key = 'bench-key-0123456789'
    await writeFile(
      file,
      JSON.stringify({
        shell_port: ports.router,
        control_port: ports.router,
        stdin_port: ports.router,
        hb_port: ports.router,
        iopub_port: ports.iopub,
        ip: '127.0.0.1',
        transport: 'tcp',
        key,
        signature_scheme: 'hmac-sha256',
        kernel_name: '',
      }),
      { mode: 0o600 },
    )
    const conn = await connect(file, { ...options, ssh: `root@${sshd.host}:${sshd.port}` })
    let ours: number
    try {
      if (conn.kind !== 'kernel') throw new Error('expected a kernel connection')
      const replies = conn.messages('shell')
      const run = async (count: number) => {
        for (let sent = 0; sent < count; sent += WINDOW) {
          await Promise.all(
            Array.from({ length: WINDOW }, () =>
              conn.send('shell', conn.session.msg('bench_request', { i: 1 })),
            ),
          )
          for (let i = 0; i < WINDOW; i++) await replies.next()
        }
      }
      await run(WINDOW)
      const started = performance.now()
      await run(MESSAGES)
      ours = MESSAGES / ((performance.now() - started) / 1000)
    } finally {
      await conn.close()
    }
    const out = join(dir, 'kernel-echo-loopback.json')
    const tunnel = await openTunnel(file, { ...options, ssh: `root@${sshd.host}:${sshd.port}`, out })
    let anchor: number
    try {
      anchor = Number((await pythonJson(PY_DEALER, [out, String(MESSAGES), String(WINDOW)])).rate)
    } finally {
      await tunnel.close()
    }
    return {
      name: 'signed messages through one Dealer',
      ours,
      anchor,
      anchorName: 'pyzmq Dealer + jupyter_client Session',
      unit: 'round trips/s',
      better: 'higher',
      targetRatio: 1,
      note: `${MESSAGES} sign → echo ROUTER → verify, ${WINDOW} in flight, through the tunnel`,
    }
  } finally {
    await stopProcess(echo, 'SIGKILL')
  }
}

/** The `client` benchmark group. */
export async function benchClient(): Promise<BenchRow[]> {
  const ns = await createNetns()
  const dir = await mkdtemp(join(tmpdir(), 'ippt-bench-client-'))
  try {
    const sshd = await startSshd({ netns: ns })
    try {
      const options: ConnectOptions = sshOptionsOf(sshd)
      return [await executeRoundTrip(ns, sshd, dir), await dealerThroughput(ns, sshd, options, dir)]
    } finally {
      await sshd.close()
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
    await ns.close()
  }
}
