// Properties: deserialize(serialize(m)) == m, and any single flipped byte in a signed part is refused.
import assert from 'node:assert/strict'
import { test } from 'node:test'

import fc from 'fast-check'

import { isIppTunnelError } from '../../src/errors/index.js'
import { Session, type Header, type JsonObject, type Message } from '../../src/wire/index.js'

const schemes = ['hmac-sha256', 'hmac-sha512', 'hmac-sha1', 'hmac-sha3-256', 'hmac-md5']

const text = fc.string({ unit: 'binary', maxLength: 40 })
// JSON has no negative zero (JSON.stringify(-0) is "0"), so -0 is the one JavaScript value that cannot survive.
function hasNegativeZero(value: unknown): boolean {
  if (Object.is(value, -0)) return true
  if (typeof value !== 'object' || value === null) return false
  return Object.values(value).some(hasNegativeZero)
}

const jsonValue = fc.jsonValue({ maxDepth: 3, stringUnit: 'binary' }).filter((v) => !hasNegativeZero(v))
const json = fc.dictionary(text, jsonValue, {
  maxKeys: 6,
  noNullPrototype: true,
}) as fc.Arbitrary<JsonObject>

const header: fc.Arbitrary<Header> = fc.record(
  {
    msg_id: text,
    msg_type: text,
    username: text,
    session: text,
    date: fc.date({ noInvalidDate: true }).map((d) => d.toISOString()),
    version: fc.constantFrom('5.3', '5.0'),
  },
  { noNullPrototype: true },
)

const bytes = fc.uint8Array({ maxLength: 64 }).map((a) => Buffer.from(a))

const message: fc.Arbitrary<Message> = fc.record(
  {
    header,
    parent_header: fc.oneof(fc.constant({}), header),
    metadata: json,
    content: json,
    buffers: fc.array(bytes, { maxLength: 3 }),
    // an identity equal to the delimiter would be read as the delimiter, as in jupyter_client
    identities: fc.array(
      bytes.filter((b) => b.toString('latin1') !== '<IDS|MSG>'),
      { maxLength: 3 },
    ),
  },
  { noNullPrototype: true },
)

const key = fc.uint8Array({ minLength: 1, maxLength: 80 }).map((a) => Buffer.from(a))

test('deserialize(serialize(m)) deep-equals m, with and without a key', () => {
  fc.assert(
    fc.property(message, fc.option(key, { nil: undefined }), fc.constantFrom(...schemes), (m, k, scheme) => {
      const sender = new Session({ key: k ?? '', signatureScheme: scheme })
      const receiver = new Session({ key: k ?? '', signatureScheme: scheme })
      assert.deepEqual(receiver.deserialize(sender.serialize(m)), m)
    }),
    { numRuns: 300 },
  )
})

test('a single flipped byte in signature, header, parent_header, metadata or content is refused', () => {
  const signedPart = fc.integer({ min: 0, max: 4 })
  fc.assert(
    fc.property(
      message,
      key,
      fc.constantFrom(...schemes),
      signedPart,
      fc.nat(),
      fc.integer({ min: 1, max: 255 }),
      (m, k, scheme, part, position, mask) => {
        const frames = new Session({ key: k, signatureScheme: scheme }).serialize(m)
        const index = m.identities.length + 1 + part
        const target = frames[index]!
        const tampered = Buffer.from(target)
        const at = position % tampered.length
        tampered[at] = tampered[at]! ^ mask
        const altered = frames.map((f, i) => (i === index ? tampered : f))
        // the untouched frames pass a fresh receiver, the altered ones do not
        assert.doesNotThrow(() => new Session({ key: k, signatureScheme: scheme }).deserialize(frames))
        assert.throws(
          () => new Session({ key: k, signatureScheme: scheme }).deserialize(altered),
          (err) => isIppTunnelError(err) && err.code === 'E_SIGNATURE_MISMATCH',
        )
      },
    ),
    { numRuns: 500 },
  )
})
