/**
 * The real jupyter_client Session, driven from tests: a /usr/bin/python3 child that answers one JSON line per
 * request line, frames travelling as base64.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process'
import { createInterface, type Interface } from 'node:readline'

const SCRIPT = String.raw`
import base64, json, sys
from jupyter_client.session import Session
from jupyter_client.jsonutil import json_default

def enc(b):
    return base64.b64encode(bytes(b)).decode('ascii')

def plain(obj):
    return json.loads(json.dumps(obj, default=json_default))

def session(req):
    return Session(key=base64.b64decode(req['key']), signature_scheme=req['scheme'], username='python-peer')

def handle(req):
    s = session(req)
    if req['op'] == 'sign':
        msg = s.msg(req['msg_type'], content=req['content'], parent=req.get('parent'), metadata=req.get('metadata'))
        frames = s.serialize(msg, ident=[base64.b64decode(i) for i in req.get('identities', [])])
        frames += [base64.b64decode(b) for b in req.get('buffers', [])]
        return {'frames': [enc(f) for f in frames], 'header': plain(msg['header'])}
    if req['op'] == 'verify':
        frames = [base64.b64decode(f) for f in req['frames']]
        try:
            idents, rest = s.feed_identities(frames)
            msg = s.deserialize(rest)
        except Exception as e:
            return {'ok': False, 'error': type(e).__name__ + ': ' + str(e)}
        return {
            'ok': True,
            'identities': [enc(i) for i in idents],
            'header': plain(msg['header']),
            'parent_header': plain(msg['parent_header']),
            'metadata': plain(msg['metadata']),
            'content': plain(msg['content']),
            'buffers': [enc(b) for b in msg['buffers']],
        }
    raise ValueError('unknown op')

for line in sys.stdin:
    print(json.dumps(handle(json.loads(line))), flush=True)
`

/** What the Python side reports after `Session.deserialize`. */
export type PyVerified =
  | {
      ok: true
      identities: string[]
      header: Record<string, unknown>
      parent_header: Record<string, unknown>
      metadata: Record<string, unknown>
      content: unknown
      buffers: string[]
    }
  | { ok: false; error: string }

/** One signing request to the Python side. */
export interface PySignRequest {
  key: Buffer
  scheme: string
  msg_type: string
  content: unknown
  metadata?: Record<string, unknown>
  parent?: Record<string, unknown>
  identities?: Buffer[]
  buffers?: Buffer[]
}

const b64 = (b: Uint8Array): string => Buffer.from(b).toString('base64')

/** A running jupyter_client peer; `close()` ends it. */
export class PythonPeer {
  readonly #child: ChildProcessWithoutNullStreams
  readonly #lines: Interface
  readonly #waiting: ((line: string) => void)[] = []
  #stderr = ''

  constructor() {
    this.#child = spawn('/usr/bin/python3', ['-c', SCRIPT], { stdio: ['pipe', 'pipe', 'pipe'] })
    this.#child.stderr.setEncoding('utf8')
    this.#child.stderr.on('data', (chunk: string) => (this.#stderr += chunk))
    this.#lines = createInterface({ input: this.#child.stdout })
    this.#lines.on('line', (line) => this.#waiting.shift()?.(line))
  }

  async #request(request: object): Promise<unknown> {
    const line = await new Promise<string>((resolve, reject) => {
      const onExit = (): void => {
        reject(new Error(`python peer exited: ${this.#stderr}`))
      }
      this.#child.once('exit', onExit)
      this.#waiting.push((l) => {
        this.#child.off('exit', onExit)
        resolve(l)
      })
      this.#child.stdin.write(JSON.stringify(request) + '\n')
    })
    return JSON.parse(line)
  }

  /** Python builds, signs and serializes a message; returns its frames and header. */
  async sign(req: PySignRequest): Promise<{ frames: Buffer[]; header: Record<string, unknown> }> {
    const reply = (await this.#request({
      op: 'sign',
      key: b64(req.key),
      scheme: req.scheme,
      msg_type: req.msg_type,
      content: req.content,
      metadata: req.metadata ?? null,
      parent: req.parent ?? null,
      identities: (req.identities ?? []).map(b64),
      buffers: (req.buffers ?? []).map(b64),
    })) as { frames: string[]; header: Record<string, unknown> }
    return { frames: reply.frames.map((f) => Buffer.from(f, 'base64')), header: reply.header }
  }

  /** Python runs `feed_identities` + `Session.deserialize` (fresh session, so no shared replay history). */
  async verify(key: Buffer, scheme: string, frames: readonly Buffer[]): Promise<PyVerified> {
    return (await this.#request({
      op: 'verify',
      key: b64(key),
      scheme,
      frames: frames.map(b64),
    })) as PyVerified
  }

  async close(): Promise<void> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return
    const exited = new Promise((resolve) => this.#child.once('exit', resolve))
    this.#child.stdin.end()
    await exited
    this.#lines.close()
  }
}
