/**
 * Wire benchmark: sign + verify 1 KiB messages with ipp-tunnel's Session and, in the same run, with
 * jupyter_client's Session (Debian's /usr/bin/python3). Each side builds a message, serializes (signs) it
 * and a second session deserializes (verifies, replay history on, as in real use) it, for about 2 s.
 *
 * Run alone: `node dist/bench/wire.js`.
 */
import { execFile } from 'node:child_process'
import { pathToFileURL } from 'node:url'
import { promisify } from 'node:util'

import { Session } from '../src/wire/index.js'
import { markdownTable, type BenchRow } from './common.js'

const KEY = 'a0436f6c-1916-498b-8eb9-e81ab9368e84'
const SECONDS = 2
const CONTENT_BYTES = 1024
const TARGET_RATIO = 5

const PYTHON = String.raw`
import json, sys, time
import jupyter_client
from jupyter_client.session import Session, json_packer

key, scheme, seconds, size = sys.argv[1].encode(), sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
sender = Session(key=key, signature_scheme=scheme, username='bench')
receiver = Session(key=key, signature_scheme=scheme, username='bench')
base = {'code': '', 'silent': False, 'store_history': True, 'user_expressions': {}, 'allow_stdin': False, 'stop_on_error': True}
content = dict(base, code='x' * (size - len(json_packer(base))))
assert len(json_packer(content)) == size

def round_trip(count):
    for _ in range(count):
        frames = sender.serialize(sender.msg('execute_request', content))
        idents, rest = receiver.feed_identities(frames)
        receiver.deserialize(rest)

round_trip(500)  # warm-up
n = 0
start = time.perf_counter()
while True:
    round_trip(100)
    n += 100
    elapsed = time.perf_counter() - start
    if elapsed >= seconds:
        break
print(json.dumps({'rate': n / elapsed, 'version': jupyter_client.__version__}))
`

async function pythonRate(scheme: string): Promise<number> {
  const { stdout } = await promisify(execFile)('/usr/bin/python3', [
    '-c',
    PYTHON,
    KEY,
    scheme,
    String(SECONDS),
    String(CONTENT_BYTES),
  ])
  const result = JSON.parse(stdout) as { rate: number }
  return result.rate
}

function oursRate(scheme: string): number {
  const sender = new Session({ key: KEY, signatureScheme: scheme, username: 'bench' })
  const receiver = new Session({ key: KEY, signatureScheme: scheme, username: 'bench' })
  const base = {
    code: '',
    silent: false,
    store_history: true,
    user_expressions: {},
    allow_stdin: false,
    stop_on_error: true,
  }
  const content = { ...base, code: 'x'.repeat(CONTENT_BYTES - JSON.stringify(base).length) }
  if (Buffer.byteLength(JSON.stringify(content)) !== CONTENT_BYTES) throw new Error('content is not 1 KiB')
  const roundTrip = (count: number): void => {
    for (let i = 0; i < count; i++)
      receiver.deserialize(sender.serialize(sender.msg('execute_request', content)))
  }
  roundTrip(2000) // warm-up (JIT)
  let n = 0
  const start = performance.now()
  let elapsed = 0
  do {
    roundTrip(100)
    n += 100
    elapsed = (performance.now() - start) / 1000
  } while (elapsed < SECONDS)
  return n / elapsed
}

/**
 * Messages/s signed and verified by ipp-tunnel vs jupyter_client, 1 KiB content, hmac-sha256.
 *
 * @example for (const row of await benchWire()) console.log(row.name, row.ratio)
 */
export async function benchWire(): Promise<BenchRow[]> {
  const scheme = 'hmac-sha256'
  const anchor = await pythonRate(scheme) // one after the other: the machine has few cores
  const ours = oursRate(scheme)
  return [
    {
      name: `wire: sign + verify a 1 KiB message (${scheme})`,
      ours,
      anchor,
      anchorName: 'jupyter_client',
      unit: 'msg/s',
      better: 'higher',
      targetRatio: TARGET_RATIO,
    },
  ]
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(markdownTable(await benchWire()))
}
