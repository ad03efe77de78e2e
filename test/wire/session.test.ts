import assert from 'node:assert/strict'
import { createHmac, getHashes } from 'node:crypto'
import { describe, test } from 'node:test'

import { IppTunnelError, isIppTunnelError, type ErrorCode } from '../../src/errors/index.js'
import {
  DEFAULT_DIGEST_HISTORY_SIZE,
  DELIMITER,
  Session,
  digestOf,
  hmacKey,
  isApplyReply,
  isApplyRequest,
  isConnectionReply,
  isConnectionRequest,
  isError,
  isExecuteReply,
  isExecuteRequest,
  isExecuteResult,
  isKernelInfoReply,
  isKernelInfoRequest,
  isMessageType,
  isQueueReply,
  isQueueRequest,
  isStatus,
  isStream,
  newId,
  type Message,
} from '../../src/wire/index.js'

const KEY = 'c0ffee00-secret-key-1234'

function refusedWith(code: ErrorCode) {
  return (err: unknown): boolean => {
    assert.ok(isIppTunnelError(err), `expected IppTunnelError, got ${String(err)}`)
    assert.equal(err.code, code, err.message)
    assert.ok(!err.message.includes(KEY), 'the key must not appear in an error')
    assert.ok(!err.message.includes('\n'), 'one line')
    return true
  }
}

function frameOf(value: unknown): Buffer {
  return Buffer.from(JSON.stringify(value), 'utf8')
}

function hexHmac(digest: string, key: string, parts: Buffer[]): string {
  const h = createHmac(digest, key)
  for (const p of parts) h.update(p)
  return h.digest('hex')
}

/** Frames built by hand (not by Session.serialize), signed with node:crypto directly. */
function handFrames(parts: Buffer[], key = KEY, digest = 'sha256', identities: Buffer[] = []): Buffer[] {
  return [...identities, Buffer.from('<IDS|MSG>'), Buffer.from(hexHmac(digest, key, parts)), ...parts]
}

const header = {
  msg_id: 'm1',
  msg_type: 'status',
  username: 'u',
  session: 's',
  date: '2024-05-01T00:00:00Z',
  version: '5.3',
}

describe('signature schemes', () => {
  test('default is hmac-sha256 with signing on', () => {
    const s = new Session({ key: KEY })
    assert.equal(s.signatureScheme, 'hmac-sha256')
    assert.equal(s.signing, true)
    const frames = s.serialize(s.msg('status', { execution_state: 'idle' }))
    assert.equal(frames[1]!.toString(), hexHmac('sha256', KEY, frames.slice(2, 6)))
  })

  test('every digest Node can HMAC with works as hmac-<digest>', () => {
    let usable = 0
    for (const digest of getHashes()) {
      let canHmac = true
      try {
        createHmac(digest, 'k').update('x').digest()
      } catch {
        canHmac = false
      }
      if (!canHmac) {
        assert.throws(
          () => new Session({ key: KEY, signatureScheme: `hmac-${digest}` }),
          refusedWith('E_SIGNATURE_SCHEME'),
        )
        continue
      }
      usable++
      const s = new Session({ key: KEY, signatureScheme: `hmac-${digest}` })
      const frames = s.serialize(s.msg('status', { execution_state: 'busy' }))
      assert.equal(frames[1]!.toString(), hexHmac(digest, KEY, frames.slice(2, 6)), digest)
      assert.deepEqual(
        new Session({ key: KEY, signatureScheme: `hmac-${digest}` }).deserialize(frames).content,
        {
          execution_state: 'busy',
        },
      )
    }
    assert.ok(usable >= 10, `only ${usable} usable digests`)
  })

  test("Python's hashlib names map to Node's", () => {
    assert.equal(digestOf('hmac-sha3_256'), 'sha3-256')
    assert.equal(digestOf('hmac-sha3_224'), 'sha3-224')
    assert.equal(digestOf('hmac-sha3_384'), 'sha3-384')
    assert.equal(digestOf('hmac-sha3_512'), 'sha3-512')
    assert.equal(digestOf('hmac-blake2b'), 'blake2b512')
    assert.equal(digestOf('hmac-blake2s'), 'blake2s256')
    assert.equal(digestOf('hmac-sha1'), 'sha1')
  })

  test('unknown or malformed schemes are refused with E_SIGNATURE_SCHEME', () => {
    for (const scheme of [
      'hmac-nope',
      'sha256',
      '',
      'hmac-',
      'HMAC-sha256',
      'hmac-shake128',
      'hmac-shake256',
    ]) {
      assert.throws(
        () => new Session({ key: KEY, signatureScheme: scheme }),
        refusedWith('E_SIGNATURE_SCHEME'),
        scheme,
      )
    }
    assert.throws(() => digestOf('rsa-sha256'), /hmac-/)
  })

  test('a bad digestHistorySize is refused', () => {
    for (const size of [-1, 1.5, Number.NaN]) {
      assert.throws(() => new Session({ key: KEY, digestHistorySize: size }), RangeError)
    }
  })
})

describe('keys and ids', () => {
  test('hmacKey encodes strings as UTF-8 and copies buffers', () => {
    assert.deepEqual(hmacKey('ключ'), Buffer.from('ключ', 'utf8'))
    const raw = Buffer.from([1, 2, 3])
    const key = hmacKey(raw)
    assert.deepEqual(key, raw)
    raw[0] = 9
    assert.equal(key[0], 1)
  })

  test('a Buffer key and its string form sign the same; the caller buffer is left intact', () => {
    const raw = Buffer.from(KEY)
    const a = new Session({ key: raw })
    assert.deepEqual(raw, Buffer.from(KEY))
    const msg = a.msg('status', { execution_state: 'idle' })
    assert.deepEqual(a.serialize(msg), new Session({ key: KEY }).serialize(msg))
  })

  test('newId has the jupyter_client form', () => {
    assert.match(newId(), /^[0-9a-f]{8}-[0-9a-f]{24}$/)
    assert.notEqual(newId(), newId())
  })

  test('session and username options, and their defaults', () => {
    const s = new Session({ key: '', session: 'my-session', username: 'alice' })
    assert.equal(s.session, 'my-session')
    assert.equal(s.username, 'alice')
    const d = new Session({ key: '' })
    assert.match(d.session, /^[0-9a-f]{8}-[0-9a-f]{24}$/)
    assert.ok(d.username.length > 0)
  })
})

describe('msg and header', () => {
  test('headers carry msg_id, msg_type, username, session, ISO date with timezone, version', () => {
    const s = new Session({ key: KEY, username: 'bob' })
    const before = Date.now()
    const h = s.header('kernel_info_request')
    assert.equal(h.msg_type, 'kernel_info_request')
    assert.equal(h.username, 'bob')
    assert.equal(h.session, s.session)
    assert.equal(h.version, '5.3')
    assert.match(h.date, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
    assert.ok(Date.parse(h.date) >= before - 1 && Date.parse(h.date) <= Date.now() + 1)
    assert.ok(h.msg_id.startsWith(`${s.session}_`))
    const ids = new Set(Array.from({ length: 100 }, () => s.header('x').msg_id))
    assert.equal(ids.size, 100)
    assert.notEqual(
      new Session({ key: '', session: 'same' }).header('x').msg_id,
      new Session({ key: '', session: 'same' }).header('x').msg_id,
    )
  })

  test('msg defaults: empty parent, metadata, buffers and identities', () => {
    const s = new Session({ key: KEY })
    const m = s.msg('connection_request', {})
    assert.deepEqual(m.parent_header, {})
    assert.deepEqual(m.metadata, {})
    assert.deepEqual(m.buffers, [])
    assert.deepEqual(m.identities, [])
    assert.equal(m.header.msg_type, 'connection_request')
  })

  test('parent_header is a copy of the parent header, from a message or a header', () => {
    const s = new Session({ key: KEY })
    const request = s.msg('execute_request', {
      code: '1',
      silent: false,
      store_history: false,
      user_expressions: {},
      allow_stdin: false,
      stop_on_error: true,
    })
    const fromMessage = s.msg('execute_reply', { status: 'ok', execution_count: 1 }, { parent: request })
    assert.deepEqual(fromMessage.parent_header, request.header)
    assert.notEqual(fromMessage.parent_header, request.header)
    const fromHeader = s.msg('status', { execution_state: 'busy' }, { parent: request.header })
    assert.deepEqual(fromHeader.parent_header, request.header)
    assert.notEqual(fromHeader.parent_header, request.header)
  })

  test('metadata is copied; buffers and identities are kept', () => {
    const s = new Session({ key: KEY })
    const metadata = { a: 1 }
    const buffers = [Buffer.from('b')]
    const identities = [Buffer.from('i')]
    const m = s.msg('apply_request', {}, { metadata, buffers, identities })
    metadata.a = 2
    assert.deepEqual(m.metadata, { a: 1 })
    assert.equal(m.buffers, buffers)
    assert.equal(m.identities, identities)
  })
})

describe('serialize', () => {
  test('frame layout: identities, delimiter, hex HMAC over the four JSON parts, parts, buffers', () => {
    const s = new Session({ key: KEY, signatureScheme: 'hmac-sha512' })
    const m = s.msg(
      'stream',
      { name: 'stderr', text: 'ü' },
      { metadata: { k: 'v' }, buffers: [Buffer.from([9])], identities: [Buffer.from('id')] },
    )
    const frames = s.serialize(m)
    assert.equal(frames.length, 1 + 1 + 1 + 4 + 1)
    assert.deepEqual(frames[0], Buffer.from('id'))
    assert.deepEqual(frames[1], DELIMITER)
    assert.deepEqual(JSON.parse(frames[3]!.toString()), m.header)
    assert.deepEqual(JSON.parse(frames[4]!.toString()), {})
    assert.deepEqual(JSON.parse(frames[5]!.toString()), { k: 'v' })
    assert.deepEqual(JSON.parse(frames[6]!.toString('utf8')), { name: 'stderr', text: 'ü' })
    assert.deepEqual(frames[7], Buffer.from([9]))
    assert.equal(frames[2]!.toString('latin1'), hexHmac('sha512', KEY, frames.slice(3, 7)))
    assert.deepEqual(s.sign(frames.slice(3, 7)), frames[2])
  })

  test('the identities argument overrides msg.identities', () => {
    const s = new Session({ key: KEY })
    const m = s.msg('status', { execution_state: 'idle' }, { identities: [Buffer.from('a')] })
    const frames = s.serialize(m, [Buffer.from('x'), Buffer.from('y')])
    assert.deepEqual(frames.slice(0, 3), [Buffer.from('x'), Buffer.from('y'), DELIMITER])
    assert.deepEqual(s.serialize(m, [])[0], DELIMITER)
  })

  test('an empty key sends an empty signature and sign() returns empty', () => {
    for (const key of ['', Buffer.alloc(0)]) {
      const s = new Session({ key })
      assert.equal(s.signing, false)
      const frames = s.serialize(s.msg('status', { execution_state: 'idle' }))
      assert.equal(frames[1]!.length, 0)
      assert.equal(s.sign([Buffer.from('x')]).length, 0)
    }
  })
})

describe('deserialize', () => {
  test('reads identities, parts and buffers of hand-built frames', () => {
    const parts = [frameOf(header), frameOf({}), frameOf({ m: 1 }), frameOf({ execution_state: 'idle' })]
    const ids = [Buffer.from('router-id')]
    const bufs = [Buffer.from([1, 2]), Buffer.from([])]
    const m = new Session({ key: KEY }).deserialize([...handFrames(parts, KEY, 'sha256', ids), ...bufs])
    assert.deepEqual(m.header, header)
    assert.deepEqual(m.parent_header, {})
    assert.deepEqual(m.metadata, { m: 1 })
    assert.deepEqual(m.content, { execution_state: 'idle' })
    assert.deepEqual(m.identities, ids)
    assert.equal(m.buffers[0], bufs[0]) // the received frame, not a copy
    assert.equal(m.buffers.length, 2)
  })

  test('verifies the bytes as received, not a re-encoding (Python spacing, key order, escapes)', () => {
    const parts = [
      Buffer.from('{"msg_type": "status", "msg_id": "m2", "date": "2024-05-01T00:00:00.123456Z"}'),
      Buffer.from('{}'),
      Buffer.from('{ }'),
      Buffer.from('{"text": "\\u00e9 \u00e9", "n": 1.0}'),
    ]
    const m = new Session({ key: KEY }).deserialize(handFrames(parts))
    assert.deepEqual(m.content, { text: 'é é', n: 1 })
    assert.equal(m.header.msg_id, 'm2')
  })

  test('refuses frames without the delimiter', () => {
    const s = new Session({ key: KEY })
    const parts = [frameOf(header), frameOf({}), frameOf({}), frameOf({})]
    assert.throws(
      () => s.deserialize([Buffer.from(hexHmac('sha256', KEY, parts)), ...parts]),
      refusedWith('E_MESSAGE_FORMAT'),
    )
    assert.throws(() => s.deserialize([]), refusedWith('E_MESSAGE_FORMAT'))
    assert.throws(() => s.deserialize([Buffer.from('<IDS|MSG'), ...parts]), refusedWith('E_MESSAGE_FORMAT'))
  })

  test('refuses too few frames after the delimiter, with and without a key', () => {
    const parts = [frameOf(header), frameOf({}), frameOf({}), frameOf({})]
    for (const s of [new Session({ key: KEY }), new Session({ key: '' })]) {
      for (let n = 0; n < 5; n++) {
        const frames = handFrames(parts).slice(0, 1 + n)
        assert.throws(() => s.deserialize(frames), refusedWith('E_MESSAGE_FORMAT'))
      }
    }
  })

  test('refuses a part that is not JSON or not a JSON object, even when correctly signed', () => {
    const good = [frameOf(header), frameOf({}), frameOf({}), frameOf({})]
    const bad = [
      Buffer.from('{not json'),
      Buffer.from('[1,2]'),
      Buffer.from('null'),
      Buffer.from('"s"'),
      Buffer.from([0xff, 0xfe]),
    ]
    for (let part = 0; part < 4; part++) {
      for (const b of bad) {
        const parts = good.map((p, i) => (i === part ? b : p))
        assert.throws(
          () => new Session({ key: KEY }).deserialize(handFrames(parts)),
          refusedWith('E_MESSAGE_FORMAT'),
        )
      }
    }
  })

  test('refuses a header without string msg_id and msg_type', () => {
    for (const h of [{ msg_type: 'x' }, { msg_id: 'x' }, { msg_id: 1, msg_type: 'x' }, {}]) {
      const parts = [frameOf(h), frameOf({}), frameOf({}), frameOf({})]
      assert.throws(
        () => new Session({ key: KEY }).deserialize(handFrames(parts)),
        refusedWith('E_MESSAGE_FORMAT'),
      )
    }
  })

  test('with a key: refuses an empty signature', () => {
    const parts = [frameOf(header), frameOf({}), frameOf({}), frameOf({})]
    const frames = [DELIMITER, Buffer.alloc(0), ...parts]
    assert.throws(() => new Session({ key: KEY }).deserialize(frames), refusedWith('E_SIGNATURE_MISSING'))
  })

  test('with a key: refuses a wrong key, a wrong scheme, a wrong length, upper-case hex', () => {
    const parts = [frameOf(header), frameOf({}), frameOf({}), frameOf({})]
    const s = (): Session => new Session({ key: KEY })
    assert.throws(() => s().deserialize(handFrames(parts, 'other key')), refusedWith('E_SIGNATURE_MISMATCH'))
    assert.throws(
      () => s().deserialize(handFrames(parts, KEY, 'sha512')),
      refusedWith('E_SIGNATURE_MISMATCH'),
    )
    const frames = handFrames(parts)
    const short = [frames[0]!, frames[1]!.subarray(0, 63), ...parts]
    assert.throws(() => s().deserialize(short), refusedWith('E_SIGNATURE_MISMATCH'))
    const long = [frames[0]!, Buffer.concat([frames[1]!, Buffer.from('0')]), ...parts]
    assert.throws(() => s().deserialize(long), refusedWith('E_SIGNATURE_MISMATCH'))
    const upper = [frames[0]!, Buffer.from(frames[1]!.toString().toUpperCase()), ...parts]
    assert.notDeepEqual(upper[1], frames[1])
    assert.throws(() => s().deserialize(upper), refusedWith('E_SIGNATURE_MISMATCH'))
    assert.doesNotThrow(() => s().deserialize(frames))
  })

  test('with a key: refuses a replayed signature', () => {
    const s = new Session({ key: KEY })
    const frames = s.serialize(s.msg('status', { execution_state: 'idle' }))
    s.deserialize(frames)
    assert.throws(() => s.deserialize(frames), refusedWith('E_SIGNATURE_REPLAY'))
    // with other identities in front it is the same message
    assert.throws(() => s.deserialize([Buffer.from('x'), ...frames]), refusedWith('E_SIGNATURE_REPLAY'))
  })

  test('a refused (forged) signature does not enter the history', () => {
    const s = new Session({ key: KEY })
    const frames = s.serialize(s.msg('status', { execution_state: 'idle' }))
    const forged = [...frames]
    forged[5] = Buffer.from('{"execution_state":"dead"}')
    assert.throws(() => s.deserialize(forged), refusedWith('E_SIGNATURE_MISMATCH'))
    assert.equal(s.historyLength, 0)
    assert.deepEqual(s.deserialize(frames).content, { execution_state: 'idle' })
    assert.equal(s.historyLength, 1)
  })

  test('without a key: any signature, none, and replays are accepted', () => {
    const s = new Session({ key: '' })
    const parts = [frameOf(header), frameOf({}), frameOf({}), frameOf({ ok: 1 })]
    assert.deepEqual(s.deserialize([DELIMITER, Buffer.alloc(0), ...parts]).content, { ok: 1 })
    assert.deepEqual(s.deserialize([DELIMITER, Buffer.from('whatever'), ...parts]).content, { ok: 1 })
    assert.deepEqual(s.deserialize([DELIMITER, Buffer.from('whatever'), ...parts]).content, { ok: 1 })
    assert.equal(s.historyLength, 0)
  })

  test('stats count serialized, deserialized and refusals by reason', () => {
    const s = new Session({ key: KEY })
    const frames = s.serialize(s.msg('status', { execution_state: 'idle' }))
    s.deserialize(frames)
    assert.throws(() => s.deserialize(frames))
    assert.throws(() => s.deserialize([DELIMITER, Buffer.alloc(0), ...frames.slice(2)]))
    assert.throws(() => s.deserialize([DELIMITER]))
    const other = s.serialize(s.msg('status', { execution_state: 'busy' }))
    assert.throws(() => s.deserialize([...other.slice(0, 5), Buffer.from('{"x":1}')]))
    const stats = s.stats
    assert.deepEqual(stats, {
      serialized: 2,
      deserialized: 1,
      refused: {
        E_SIGNATURE_MISSING: 1,
        E_SIGNATURE_MISMATCH: 1,
        E_SIGNATURE_REPLAY: 1,
        E_MESSAGE_FORMAT: 1,
      },
    })
    stats.refused.E_MESSAGE_FORMAT = 99 // a copy
    assert.equal(s.stats.refused.E_MESSAGE_FORMAT, 1)
  })
})

describe('replay history', () => {
  function verifyMany(receiver: Session, sender: Session, n: number): Buffer[][] {
    const all: Buffer[][] = []
    for (let i = 0; i < n; i++) {
      const frames = sender.serialize(sender.msg('status', { execution_state: 'busy' }))
      receiver.deserialize(frames)
      all.push(frames)
    }
    return all
  }

  test('defaults to 2^16 like jupyter_client', () => {
    assert.equal(DEFAULT_DIGEST_HISTORY_SIZE, 65536)
    assert.equal(new Session({ key: KEY }).digestHistorySize, 65536)
  })

  test('when it outgrows its size it culls a tenth, oldest first', () => {
    const sender = new Session({ key: KEY })
    const receiver = new Session({ key: KEY, digestHistorySize: 30 })
    const sent = verifyMany(receiver, sender, 30)
    assert.equal(receiver.historyLength, 30)
    sent.push(...verifyMany(receiver, sender, 1)) // 31 > 30: cull max(floor(31/10), 1) = 3 → 28
    assert.equal(receiver.historyLength, 28)
    for (const frames of sent.slice(3)) {
      assert.throws(() => receiver.deserialize(frames), refusedWith('E_SIGNATURE_REPLAY'))
    }
    // the oldest three were forgotten (accepting them again adds them back, so check them last)
    for (const frames of sent.slice(0, 3)) assert.doesNotThrow(() => receiver.deserialize(frames))
  })

  test('a size below 10 culls down to its size', () => {
    const sender = new Session({ key: KEY })
    const receiver = new Session({ key: KEY, digestHistorySize: 1 })
    const [first, second] = verifyMany(receiver, sender, 2)
    assert.equal(receiver.historyLength, 1)
    assert.doesNotThrow(() => receiver.deserialize(first!))
    assert.throws(() => receiver.deserialize(first!), refusedWith('E_SIGNATURE_REPLAY'))
    assert.doesNotThrow(() => receiver.deserialize(second!))
  })

  test('size 0 remembers nothing and so refuses no replay', () => {
    const sender = new Session({ key: KEY })
    const receiver = new Session({ key: KEY, digestHistorySize: 0 })
    const [frames] = verifyMany(receiver, sender, 1)
    assert.doesNotThrow(() => receiver.deserialize(frames!))
    assert.equal(receiver.historyLength, 0)
  })
})

describe('type guards', () => {
  test('each guard accepts its msg_type and only it', () => {
    const guards: [string, (m: Message) => boolean][] = [
      ['execute_request', isExecuteRequest],
      ['execute_reply', isExecuteReply],
      ['kernel_info_request', isKernelInfoRequest],
      ['kernel_info_reply', isKernelInfoReply],
      ['connection_request', isConnectionRequest],
      ['connection_reply', isConnectionReply],
      ['queue_request', isQueueRequest],
      ['queue_reply', isQueueReply],
      ['stream', isStream],
      ['status', isStatus],
      ['execute_result', isExecuteResult],
      ['error', isError],
      ['apply_request', isApplyRequest],
      ['apply_reply', isApplyReply],
    ]
    const s = new Session({ key: '' })
    for (const [type] of guards) {
      const m: Message = s.msg(type, {})
      for (const [other, otherGuard] of guards)
        assert.equal(otherGuard(m), other === type, `${other}(${type})`)
      assert.equal(isMessageType(m, 'status'), type === 'status')
    }
  })

  test('narrowing gives typed content', () => {
    const s = new Session({ key: KEY })
    const received: Message = s.deserialize(s.serialize(s.msg('stream', { name: 'stdout', text: 'hi' })))
    assert.ok(isStream(received))
    const text: string = received.content.text
    assert.equal(text, 'hi')
  })
})

test('IppTunnelError is what refusals throw', () => {
  assert.throws(() => new Session({ key: KEY }).deserialize([]), IppTunnelError)
})
