import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { basename, join } from 'node:path'
import { test } from 'node:test'
import { promisify } from 'node:util'

import {
  endpoints,
  parseConnectionFile,
  toLoopback,
  writeConnectionFileAtomic,
  type ConnectionInfo,
} from '../../src/connection-file/index.js'
import { fixturePath, fixtureText, REAL_FIXTURES } from './helpers.js'

const run = promisify(execFile)

// Builds every URL the way ipyparallel 7.1's Client / engine and jupyter_client's KernelManager do,
// and constructs a jupyter_client Session from key + signature_scheme (which validates the scheme).
const PYTHON = String.raw`
import json, sys
from ipyparallel import util
from jupyter_client import KernelManager
from jupyter_client.session import Session

out = {}
for path in sys.argv[1:]:
    with open(path) as f:
        cfg = json.load(f)
    urls = {}
    if 'shell_port' in cfg:
        km = KernelManager()
        km.load_connection_file(path)
        for ch in ('shell', 'iopub', 'stdin', 'control', 'hb'):
            urls[ch] = km._make_url(ch)
        Session(key=km.session.key, signature_scheme=cfg['signature_scheme'])
    else:
        proto, addr = cfg['interface'].split('://')
        addr = util.disambiguate_ip_address(addr, cfg.get('location'))
        iface = '%s://%s' % (proto, addr)
        for key in ('registration', 'control', 'mux', 'task', 'iopub', 'notification', 'hb_ping', 'hb_pong'):
            if key in cfg:
                urls[key] = iface + ':%i' % cfg[key]
        if isinstance(cfg['broadcast'], list):
            for i, port in enumerate(cfg['broadcast']):
                urls['broadcast-%i' % i] = '%s:%i' % (iface, port)
        else:
            urls['broadcast'] = iface + ':%i' % cfg['broadcast']
        Session(key=cfg['key'].encode('utf8'), signature_scheme=cfg['signature_scheme'], packer=cfg['pack'], unpacker=cfg['unpack'])
    out[path] = urls
print(json.dumps(out))
`

function ourUrls(info: ConnectionInfo): Record<string, string> {
  return Object.fromEntries(
    endpoints(info).map((e) => [
      e.channel,
      e.kind === 'unix' ? `ipc://${e.path}` : `tcp://${e.host}:${e.port}`,
    ]),
  )
}

test('Python (ipyparallel, jupyter_client) reads the same endpoints from real and loopback files', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'ipp-connfile-py-'))
  t.after(() => rm(dir, { recursive: true, force: true }))
  // ipp-cluster-id listens on 0.0.0.0 with location = this machine's hostname, which ipyparallel maps to
  // loopback only because it runs on that very machine; seen from an ssh server the name is kept.
  const originals = REAL_FIXTURES.filter((name) => !name.startsWith('ipp-cluster-id/'))
  const files = new Map<string, ConnectionInfo>()
  for (const name of originals) files.set(fixturePath(name), parseConnectionFile(fixtureText(name), name))
  for (const [i, name] of REAL_FIXTURES.entries()) {
    const info = parseConnectionFile(fixtureText(name), name)
    const local = toLoopback(info, new Map(endpoints(info).map((e, j) => [e.channel, 40000 + 100 * i + j])))
    const path = join(dir, `${i}`, basename(name))
    await writeConnectionFileAtomic(path, local)
    files.set(path, local)
  }
  const { stdout } = await run('/usr/bin/python3', ['-c', PYTHON, ...files.keys()])
  const python = JSON.parse(stdout) as Record<string, Record<string, string>>
  for (const [path, info] of files) {
    // jupyter_client connects to a kernel's 0.0.0.0 as is (Linux routes it to this machine); as the
    // target of an ssh forward it is named 127.0.0.1.
    const theirs = Object.fromEntries(
      Object.entries(python[path] ?? {}).map(([ch, url]) => [
        ch,
        info.kind === 'kernel' ? url.replace('tcp://0.0.0.0:', 'tcp://127.0.0.1:') : url,
      ]),
    )
    assert.deepEqual(ourUrls(info), theirs, path)
  }
  assert.equal(Object.keys(python).length, files.size)
})
