import assert from 'node:assert/strict'
import { readdir, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'
import { setTimeout as sleep } from 'node:timers/promises'
import { randomBytes } from 'node:crypto'
import { spawn } from 'node:child_process'

import { CLI, runCli } from '../support/cli.js'
import { freePort, processesWith, type Netns, type Sshd } from '../support/index.js'
import { runPython } from '../support/ipp.js'
import { type KernelServer, remoteKernelArgs, startKernelServer } from './helpers.js'

/**
 * Python driving a kernelspec with Debian's jupyter_client as JupyterLab's server does (KernelManager): start,
 * execute, interrupt a sleep, restart, shut down. Prints one JSON line of what it saw.
 */
const DRIVE = String.raw`
import json, sys, time
from jupyter_client.manager import KernelManager

def run(kc, code, timeout=60):
    out = []
    def hook(msg):
        if msg['msg_type'] == 'stream':
            out.append(msg['content']['text'])
        elif msg['msg_type'] == 'error':
            out.append('ERROR ' + msg['content']['ename'])
    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return reply['content']['status'], ''.join(out)

km = KernelManager(kernel_name=sys.argv[1])
km.start_kernel()
kc = km.client()
kc.start_channels()
kc.wait_for_ready(timeout=90)
seen = {}
seen['where'] = run(kc, "import os; print(os.getpid(), os.readlink('/proc/self/ns/net'), end='')")
run(kc, "x = 41")
msg_id = kc.execute("import time; time.sleep(60)", stop_on_error=False)
while True:
    msg = kc.get_iopub_msg(timeout=30)
    if msg['parent_header'].get('msg_id') == msg_id and msg['msg_type'] == 'status' and msg['content']['execution_state'] == 'busy':
        break
time.sleep(0.3)
t0 = time.time()
km.interrupt_kernel()
while True:
    reply = kc.get_shell_msg(timeout=30)
    if reply['parent_header'].get('msg_id') == msg_id:
        break
seen['interrupt'] = [reply['content']['status'], reply['content'].get('ename'), round(time.time() - t0, 3)]
seen['kept'] = run(kc, "print(x + 1, end='')")
km.restart_kernel(now=False)
kc.wait_for_ready(timeout=90)
seen['after_restart'] = run(kc, "print('x' in dir(), os.getpid() if 'os' in dir() else None, end='')")
seen['restarted_where'] = run(kc, "import os; print(os.getpid(), end='')")
# now=True: jupyter_client SIGKILLs the launcher; the next launcher must end the kernel it left
run(kc, "y = 1")
km.restart_kernel(now=True)
kc.wait_for_ready(timeout=90)
seen['after_kill_restart'] = run(kc, "print('y' in dir(), end='')")
kc.stop_channels()
km.shutdown_kernel(now=False)
print(json.dumps(seen))
`

/** Runs a program to its end with `env` added; resolves with its status and stderr. */
function runCommand(
  file: string,
  args: readonly string[],
  env: NodeJS.ProcessEnv,
): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(file, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'] })
    let stderr = ''
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    child.on('close', (code) => resolve({ code, stderr }))
  })
}

/**
 * What JupyterLab does with a kernel, in Python (stdlib + tornado, both there with Debian's jupyter_server): POST
 * /api/kernels, a websocket on its channels, an execute_request, the stream it prints, DELETE.
 */
const LAB = String.raw`
import json, sys, urllib.request, uuid
from tornado import ioloop, websocket
port, token, name = sys.argv[1], sys.argv[2], sys.argv[3]
base = 'http://127.0.0.1:%s' % port
def call(method, path, body=None):
    req = urllib.request.Request(base + path, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={'Authorization': 'token ' + token, 'Content-Type': 'application/json'})
    with urllib.request.urlopen(req, timeout=120) as r:
        return r.status, r.read()
for _ in range(300):
    try:
        call('GET', '/api')
        break
    except OSError:
        import time; time.sleep(0.1)
status, body = call('POST', '/api/kernels', {'name': name})
kid = json.loads(body)['id']
async def use():
    ws = await websocket.websocket_connect('ws://127.0.0.1:%s/api/kernels/%s/channels?token=%s' % (port, kid, token))
    msg_id = uuid.uuid4().hex
    ws.write_message(json.dumps({'channel': 'shell', 'header': {'msg_id': msg_id, 'msg_type': 'execute_request',
        'username': 'lab', 'session': uuid.uuid4().hex, 'version': '5.3', 'date': ''}, 'parent_header': {},
        'metadata': {}, 'content': {'code': "import os; print(os.readlink('/proc/self/ns/net'))", 'silent': False,
        'store_history': False, 'user_expressions': {}, 'allow_stdin': False}}))
    text = ''
    while True:
        msg = json.loads(await ws.read_message())
        if msg.get('parent_header', {}).get('msg_id') != msg_id:
            continue
        if msg['msg_type'] == 'stream':
            text += msg['content']['text']
        # idle on iopub comes after every output of the request (execute_reply, on shell, may come before them)
        if msg['msg_type'] == 'status' and msg['content']['execution_state'] == 'idle':
            ws.close()
            return text
text = ioloop.IOLoop.current().run_sync(use, timeout=120)
deleted, _ = call('DELETE', '/api/kernels/' + kid)
print(json.dumps({'created': status, 'text': text, 'deleted': deleted}))
`

describe('kernelspec install + kernel: a Jupyter kernel started on the ssh server through one link', () => {
  let ns: Netns
  let sshd: Sshd
  let root: string
  let kernelServer: KernelServer
  let env: NodeJS.ProcessEnv

  before(async () => {
    kernelServer = await startKernelServer('ippt-kernelspec-')
    ;({ ns, sshd, root } = kernelServer)
    env = { JUPYTER_DATA_DIR: join(root, 'jupyter'), JUPYTER_RUNTIME_DIR: join(root, 'runtime') }
  })
  after(() => kernelServer.close())

  async function install(name: string, extra: readonly string[] = []): Promise<Record<string, unknown>> {
    const result = await runCli(
      ['kernelspec', 'install', ...remoteKernelArgs(sshd, root), '--name', name, '--json', ...extra],
      env,
    )
    assert.equal(result.code, 0, result.stderr + result.stdout)
    return JSON.parse(result.stdout) as Record<string, unknown>
  }

  const variants = [
    { mode: 'message', proxy: false },
    { mode: 'signal', proxy: false },
    // Jupyter's SIGINT goes to the launcher's whole process group: the ProxyCommand must not be in it
    { mode: 'signal', proxy: true },
  ] as const
  for (const { mode, proxy } of variants) {
    const via = proxy ? ' through a --proxy-command' : ''
    test(`KernelManager runs it in the namespace${via}; interrupt (${mode}) keeps state; restart; shutdown leaves nothing`, async () => {
      const name = `remote-${mode}${proxy ? '-proxy' : ''}`
      const jump = [
        '--proxy-command',
        `ssh -F /dev/null -o BatchMode=yes -i ${sshd.clientKey} -o UserKnownHostsFile=${sshd.knownHostsFile} -p ${sshd.port} root@${sshd.host} -W %h:%p`,
      ]
      const installed = await install(name, ['--interrupt-mode', mode, ...(proxy ? jump : [])])
      assert.match(String(installed.python), /ipykernel \d/u, 'the remote ipykernel was checked at install')
      const spec = JSON.parse(
        await readFile(join(root, 'jupyter', 'kernels', name, 'kernel.json'), 'utf8'),
      ) as {
        argv: string[]
        interrupt_mode: string
        metadata: { ipp_tunnel: { destination: string } }
      }
      assert.equal(spec.argv[0], process.execPath)
      assert.equal(spec.argv[1], CLI)
      assert.ok(spec.argv.includes('{connection_file}'))
      assert.equal(spec.interrupt_mode, mode)
      assert.equal(spec.metadata.ipp_tunnel.destination, `root@${sshd.host}:${sshd.port}`)

      const run = await runPython(DRIVE, { args: [name], env, timeoutMs: 170_000 })
      assert.equal(run.code, 0, run.stderr)
      // the launcher's log is the python's stderr: the link never went down
      assert.doesNotMatch(run.stderr, /link down|reconnecting/u)
      const seen = JSON.parse(run.stdout.trim().split('\n').at(-1) ?? '') as {
        where: [string, string]
        interrupt: [string, string, number]
        kept: [string, string]
        after_restart: [string, string]
        restarted_where: [string, string]
        after_kill_restart: [string, string]
      }
      const [pid, netLink] = seen.where[1].split(' ')
      const nsIno = (await stat(`/run/netns/${ns.name}`)).ino
      assert.equal(netLink, `net:[${nsIno}]`, 'the kernel runs behind sshd, in its namespace')
      assert.deepEqual(seen.interrupt.slice(0, 2), ['error', 'KeyboardInterrupt'])
      assert.deepEqual(seen.kept, ['ok', '42'])
      assert.deepEqual(seen.after_restart, ['ok', 'False None'])
      assert.notEqual(seen.restarted_where[1], pid)
      assert.deepEqual(seen.after_kill_restart, ['ok', 'False'])
      // after shutdown: no kernel process, no launcher, no remote file of ours
      assert.deepEqual(await processesWith(join(root, 'remote')), [], 'no remote kernel or supervisor')
      assert.deepEqual(await processesWith(join(root, 'runtime')), [], 'no launcher')
      assert.deepEqual(await readdir(join(root, 'remote')), [])
    })
  }

  test('a notebook executed with nbconvert (nbclient) runs its cells on the remote kernel', async () => {
    await install('remote-nb')
    const notebook = join(root, 'probe.ipynb')
    const cell = (source: string) => ({
      cell_type: 'code',
      metadata: {},
      source,
      outputs: [],
      execution_count: null,
    })
    await writeFile(
      notebook,
      JSON.stringify({
        nbformat: 4,
        nbformat_minor: 5,
        metadata: { kernelspec: { name: 'remote-nb', display_name: 'remote', language: 'python' } },
        cells: [cell("import os\nns = os.readlink('/proc/self/ns/net')"), cell('print(ns)')],
      }),
    )
    const out = join(root, 'probe.out.ipynb')
    const { code, stderr } = await runCommand(
      '/usr/bin/python3',
      ['-m', 'nbconvert', '--to', 'notebook', '--execute', notebook, '--output', out],
      env,
    )
    assert.equal(code, 0, stderr)
    const done = JSON.parse(await readFile(out, 'utf8')) as {
      cells: { outputs: { text?: string | string[] }[] }[]
    }
    const nsIno = (await stat(`/run/netns/${ns.name}`)).ino
    assert.equal([done.cells[1]?.outputs[0]?.text ?? ''].flat().join(''), `net:[${nsIno}]\n`)
    assert.deepEqual(await readdir(join(root, 'remote')), [])
  })

  test('a real jupyter_server starts, uses and deletes it through its REST API and websocket, as JupyterLab does', async (t) => {
    await install('remote-lab')
    const port = await freePort()
    const token = randomBytes(12).toString('hex')
    const server = spawn(
      '/usr/bin/python3',
      [
        '-m',
        'jupyter_server',
        '--no-browser',
        `--port=${port}`,
        '--ip=127.0.0.1',
        `--ServerApp.token=${token}`,
        '--allow-root',
      ],
      { env: { ...process.env, ...env }, stdio: ['ignore', 'ignore', 'pipe'], cwd: root },
    )
    t.after(() => server.kill('SIGKILL'))
    let log = ''
    server.stderr.on('data', (d: Buffer) => (log += d.toString()))
    const lab = await runPython(LAB, { args: [String(port), token, 'remote-lab'], env, timeoutMs: 150_000 })
    assert.equal(lab.code, 0, `${lab.stderr}\n${log}`)
    const seen = JSON.parse(lab.stdout.trim().split('\n').at(-1) ?? '') as {
      created: number
      text: string
      deleted: number
    }
    const nsIno = (await stat(`/run/netns/${ns.name}`)).ino
    assert.deepEqual(seen, { created: 201, text: `net:[${nsIno}]\n`, deleted: 204 })
    for (let i = 0; (await processesWith(join(root, 'remote'))).length > 0; i++) {
      assert.ok(i < 200, 'the remote kernel outlived its deletion')
      await sleep(50)
    }
    assert.deepEqual(await readdir(join(root, 'remote')), [])
  })

  test('kernelspec list shows ours; remove removes it; a remote python without ipykernel is refused at install', async () => {
    await install('listed')
    const listed = await runCli(['kernelspec', 'list', '--json'], env)
    const rows = (JSON.parse(listed.stdout) as { kernelspecs: { name: string; destination: string }[] })
      .kernelspecs
    assert.ok(rows.some((r) => r.name === 'listed' && r.destination === `root@${sshd.host}:${sshd.port}`))
    const removed = await runCli(['kernelspec', 'remove', 'listed'], env)
    assert.equal(removed.code, 0, removed.stderr)
    await assert.rejects(stat(join(root, 'jupyter', 'kernels', 'listed')))
    const again = await runCli(['kernelspec', 'remove', 'listed'], env)
    assert.equal(again.code, 2)

    // a python without site-packages: it runs, but has no ipykernel
    const bare = join(root, 'bare-python')
    await writeFile(bare, '#!/bin/sh\nexec /usr/bin/python3 -S "$@"\n', { mode: 0o755 })
    const refused = await runCli(
      [
        'kernelspec',
        'install',
        `root@${sshd.host}:${sshd.port}`,
        '--name',
        'broken',
        '--identity',
        sshd.clientKey,
        '--known-hosts',
        sshd.knownHostsFile,
        '--python',
        bare,
      ],
      env,
    )
    assert.equal(refused.code, 1, refused.stderr)
    assert.match(refused.stderr, /cannot import ipykernel: install it there/u)
    await assert.rejects(stat(join(root, 'jupyter', 'kernels', 'broken')))
  })
})
