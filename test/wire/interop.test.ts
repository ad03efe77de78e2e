// Interop with the real jupyter_client Session, both ways, run at test time (no copied vectors).
import assert from 'node:assert/strict'
import { after, before, describe, test } from 'node:test'

import { isIppTunnelError } from '../../src/errors/index.js'
import { Session, type Header } from '../../src/wire/index.js'
import { PythonPeer } from './python-peer.js'

const key = Buffer.from('5d0ad6b5-4b2c-4b8a-9f0e-1c2d3e4f5a6b', 'utf8')
const unicode = {
  text: 'héllo wörld ✓ 日本語 🎉 \u0000 "quoted" \\ back',
  ключ: ['значение', 1.5, null, true],
}
const buffers = [Buffer.from([0, 1, 2, 255, 254]), Buffer.alloc(0), Buffer.from('raw ☃ bytes', 'utf8')]
const identities = [Buffer.from('engine-0'), Buffer.from([0, 0x80, 0xff])]
const DELIM = '<IDS|MSG>'

function flip(frames: readonly Buffer[], index: number, at = 0): Buffer[] {
  return frames.map((frame, i) => {
    if (i !== index) return frame
    assert.ok(at < frame.length)
    const copy = Buffer.from(frame)
    copy[at] = copy[at]! ^ 0x01
    return copy
  })
}

function signedPartIndex(frames: readonly Buffer[], part: number): number {
  return frames.findIndex((f) => f.toString('latin1') === DELIM) + 1 + part
}

let peer: PythonPeer
before(() => {
  peer = new PythonPeer()
})
after(async () => {
  await peer.close()
})

// Python's hashlib names on its side, the same digests under Node's names on ours where they differ.
const schemes: [python: string, ours: string][] = [
  ['hmac-sha256', 'hmac-sha256'],
  ['hmac-sha512', 'hmac-sha512'],
  ['hmac-sha1', 'hmac-sha1'],
  ['hmac-sha3_256', 'hmac-sha3-256'],
  ['hmac-blake2b', 'hmac-blake2b512'],
]

for (const [pyScheme, ourScheme] of schemes) {
  describe(`interop ${pyScheme}`, () => {
    test('Python signs, TypeScript verifies (identities, unicode, buffers, parent)', async () => {
      const parent: Header = new Session({ key: '' }).header('execute_request')
      const sent = await peer.sign({
        key,
        scheme: pyScheme,
        msg_type: 'execute_reply',
        content: unicode,
        metadata: { engine: 'e-0', ünïcode: '✓' },
        parent: { ...parent },
        identities,
        buffers,
      })
      const ours = new Session({ key, signatureScheme: ourScheme })
      const msg = ours.deserialize(sent.frames)
      assert.deepEqual(msg.content, unicode)
      assert.deepEqual(msg.metadata, { engine: 'e-0', ünïcode: '✓' })
      assert.deepEqual(msg.parent_header, parent)
      assert.deepEqual(msg.identities, identities)
      assert.deepEqual(msg.buffers, buffers)
      assert.equal(msg.header.msg_type, 'execute_reply')
      assert.equal(msg.header.msg_id, sent.header.msg_id)
      assert.equal(msg.header.username, 'python-peer')
      assert.equal(msg.header.version, '5.3')
      assert.ok(!Number.isNaN(Date.parse(msg.header.date)))
      // also under the Python name of the scheme
      assert.deepEqual(
        new Session({ key, signatureScheme: pyScheme }).deserialize(sent.frames).content,
        unicode,
      )
    })

    test('TypeScript signs, Python verifies (identities, unicode, buffers, parent)', async () => {
      const ours = new Session({ key, signatureScheme: ourScheme, username: 'ts' })
      const parent = ours.msg('execute_request', {
        code: 'print(1)',
        silent: false,
        store_history: true,
        user_expressions: {},
        allow_stdin: false,
        stop_on_error: true,
      })
      const msg = ours.msg(
        'stream',
        { name: 'stdout', text: unicode.text },
        {
          parent,
          metadata: { ключ: 'значение' },
          buffers,
        },
      )
      const got = await peer.verify(key, pyScheme, ours.serialize(msg, identities))
      assert.ok(got.ok, got.ok ? '' : got.error)
      assert.deepEqual(got.content, msg.content)
      assert.deepEqual(got.metadata, msg.metadata)
      assert.deepEqual(
        got.buffers,
        buffers.map((b) => b.toString('base64')),
      )
      assert.deepEqual(
        got.identities,
        identities.map((b) => b.toString('base64')),
      )
      assert.equal(got.header.msg_id, msg.header.msg_id)
      assert.equal(got.header.session, ours.session)
      assert.equal(got.header.username, 'ts')
      assert.equal(got.header.version, '5.3')
      // Python parsed our date as a timezone-aware datetime; same instant back.
      assert.equal(Date.parse(got.header.date as string), Date.parse(msg.header.date))
      assert.equal(got.parent_header.msg_id, parent.header.msg_id)
      assert.equal(Date.parse(got.parent_header.date as string), Date.parse(parent.header.date))
    })

    test('a tampered signed frame fails on both sides', async () => {
      const fromPython = await peer.sign({ key, scheme: pyScheme, msg_type: 'status', content: unicode })
      for (const part of [0, 1, 2, 3, 4]) {
        const tampered = flip(fromPython.frames, signedPartIndex(fromPython.frames, part))
        assert.throws(
          () => new Session({ key, signatureScheme: ourScheme }).deserialize(tampered),
          (err) => isIppTunnelError(err) && err.code === 'E_SIGNATURE_MISMATCH',
        )
      }
      const ours = new Session({ key, signatureScheme: ourScheme })
      const frames = ours.serialize(ours.msg('status', { execution_state: 'busy' }))
      const control = await peer.verify(key, pyScheme, frames)
      assert.ok(control.ok, control.ok ? '' : control.error)
      for (const part of [0, 1, 2, 3, 4]) {
        const got = await peer.verify(key, pyScheme, flip(frames, signedPartIndex(frames, part)))
        assert.ok(!got.ok, 'python accepted a tampered message')
        assert.match(got.error, /Invalid Signature/)
      }
    })

    test('buffers are not signed, on both sides', async () => {
      const fromPython = await peer.sign({
        key,
        scheme: pyScheme,
        msg_type: 'apply_request',
        content: {},
        buffers,
      })
      const changed = flip(fromPython.frames, fromPython.frames.length - 1)
      assert.deepEqual(
        new Session({ key, signatureScheme: ourScheme }).deserialize(changed).buffers.at(-1),
        changed.at(-1),
      )
      const ours = new Session({ key, signatureScheme: ourScheme })
      const frames = flip(ours.serialize(ours.msg('apply_request', {}, { buffers })), 8)
      const got = await peer.verify(key, pyScheme, frames)
      assert.ok(got.ok, got.ok ? '' : got.error)
      assert.equal(got.buffers[2], frames[8]!.toString('base64'))
    })

    test('the other key is refused on both sides', async () => {
      const other = Buffer.from('another key', 'utf8')
      const fromPython = await peer.sign({ key: other, scheme: pyScheme, msg_type: 'status', content: {} })
      assert.throws(
        () => new Session({ key, signatureScheme: ourScheme }).deserialize(fromPython.frames),
        (err) => isIppTunnelError(err) && err.code === 'E_SIGNATURE_MISMATCH',
      )
      const ours = new Session({ key: other, signatureScheme: ourScheme })
      const got = await peer.verify(
        key,
        pyScheme,
        ours.serialize(ours.msg('status', { execution_state: 'idle' })),
      )
      assert.equal(got.ok, false)
    })
  })
}

describe('interop without a key', () => {
  test('Python sends an empty signature; we accept it without a key and refuse it with one', async () => {
    const sent = await peer.sign({
      key: Buffer.alloc(0),
      scheme: 'hmac-sha256',
      msg_type: 'status',
      content: unicode,
    })
    assert.equal(sent.frames[1]!.length, 0)
    assert.deepEqual(new Session({ key: '' }).deserialize(sent.frames).content, unicode)
    assert.throws(
      () => new Session({ key }).deserialize(sent.frames),
      (err) => isIppTunnelError(err) && err.code === 'E_SIGNATURE_MISSING',
    )
  })

  test('we send an empty signature; Python accepts it without a key and refuses it with one', async () => {
    const ours = new Session({ key: Buffer.alloc(0) })
    const frames = ours.serialize(ours.msg('status', { execution_state: 'idle' }))
    assert.equal(frames[1]!.length, 0)
    const accepted = await peer.verify(Buffer.alloc(0), 'hmac-sha256', frames)
    assert.ok(accepted.ok, accepted.ok ? '' : accepted.error)
    assert.deepEqual(accepted.content, { execution_state: 'idle' })
    const refused = await peer.verify(key, 'hmac-sha256', frames)
    assert.ok(!refused.ok, 'python accepted an unsigned message')
    assert.match(refused.error, /Unsigned Message/)
  })
})
