import assert from 'node:assert/strict'
import { test } from 'node:test'

import { isIppTunnelError } from '../../src/errors/index.js'
import { formatDestination, parseDestination, type Destination } from '../../src/ssh/index.js'

const good: [string, Destination][] = [
  ['cluster', { host: 'cluster' }],
  ['login.example.org', { host: 'login.example.org' }],
  ['alice@cluster', { user: 'alice', host: 'cluster' }],
  ['alice@cluster:2222', { user: 'alice', host: 'cluster', port: 2222 }],
  ['cluster:22', { host: 'cluster', port: 22 }],
  ['10.0.0.2:65535', { host: '10.0.0.2', port: 65535 }],
  ['[::1]:2222', { host: '::1', port: 2222 }],
  ['[::1]', { host: '::1' }],
  ['bob@[fe80::1%eth0]:1', { user: 'bob', host: 'fe80::1%eth0', port: 1 }],
  ['::1', { host: '::1' }],
  ['2001:db8::7', { host: '2001:db8::7' }],
  ['carol@2001:db8::7', { user: 'carol', host: '2001:db8::7' }],
  ['ssh://dave@host.lab:2200', { user: 'dave', host: 'host.lab', port: 2200 }],
  ['ssh://host.lab', { host: 'host.lab' }],
  ['SSH://eve@[::1]:22/', { user: 'eve', host: '::1', port: 22 }],
  // the user is everything before the last '@', as in ssh(1)
  ['first.last@corp@gateway', { user: 'first.last@corp', host: 'gateway' }],
  ['  padded@host  ', { user: 'padded', host: 'host' }],
  ['my_alias-2', { host: 'my_alias-2' }],
  ['_gateway', { host: '_gateway' }],
  ['josé.o+tag@node-7.lab.', { user: 'josé.o+tag', host: 'node-7.lab.' }],
  ['::ffff:10.0.0.1', { host: '::ffff:10.0.0.1' }],
]

for (const [text, want] of good) {
  test(`parseDestination accepts ${JSON.stringify(text)}`, () => {
    assert.deepEqual(parseDestination(text), want)
  })
}

const bad: [string, RegExp][] = [
  ['', /empty/],
  ['   ', /empty/],
  ['@host', /user before "@" is empty/],
  ['alice@', /host is empty/],
  ['host:0', /port 0 is not in 1-65535/],
  ['host:65536', /port 65536 is not in 1-65535/],
  ['host:99999', /not in 1-65535/],
  ['host:', /port "" is not a number/],
  ['host:ssh', /port "ssh" is not a number/],
  ['host:-1', /not a number/],
  ['[::1', /without a closing/],
  ['[::1]2222', /unexpected "2222"/],
  ['[::1]:', /port "" is not a number/],
  ['[]:22', /host is empty/],
  ['1:2:3:zz', /not an IPv6 address/],
  ['[a:b:zz]:22', /not an IPv6 address/],
  ['host name', /forbidden character/],
  ['user name@host', /forbidden character/],
  ['-oProxyCommand=x', /may not start with "-"/],
  ['-l@host', /may not start with "-"/],
  ['ssh://host/path', /no path/],
  ['a,b', /forbidden character/],
  ['ho\nst', /forbidden character/],
  ['ho\u0007st', /forbidden character/],
  // shell syntax in a host or user (OpenSSH >= 9.6 refuses it too): it would reach a ProxyCommand's `sh -c`
  ['$(id>pwned)', /the host contains the forbidden character "\$"/],
  ['`id`@host', /the user contains the forbidden character "`"/],
  ['$(id)@host', /the user contains the forbidden character "\$"/],
  ['a;b@host', /the user contains the forbidden character ";"/],
  ['u@h;id', /the host contains the forbidden character ";"/],
  ['u@h|id', /forbidden character "\|"/],
  ['u@h&id', /forbidden character "&"/],
  ['u@h>x', /forbidden character ">"/],
  ['u@h<x', /forbidden character "<"/],
  ['u@h(x)', /forbidden character "\("/],
  ['u@h{a,b}', /forbidden character "\{"/],
  ['u@*', /forbidden character "\*"/],
  ['u@~root', /forbidden character "~"/],
  ["it's@host", /forbidden character "'"/],
  ['..@host', /the user may not be "\.\."/],
  ['u@.hidden', /the host may not start with "\."/],
  ['[fe80::1%$(id)]:22', /not an IPv6 address/],
]

test('a rejected destination names where it came from, and a long text is cut', () => {
  assert.throws(() => parseDestination('$(id)', '--ssh'), {
    code: 'E_DESTINATION',
    message: /^--ssh: bad ssh destination "\$\(id\)": the host contains/,
  })
  assert.throws(() => parseDestination(`u@${'a'.repeat(300)}`), {
    message: /…": the host is longer than 253/,
  })
  assert.throws(
    () => parseDestination(`$${'x'.repeat(5000)}`),
    (err: unknown) => isIppTunnelError(err) && err.message.length < 400,
  )
})

for (const [text, why] of bad) {
  test(`parseDestination rejects ${JSON.stringify(text)}`, () => {
    assert.throws(
      () => parseDestination(text),
      (err: unknown) => {
        assert.ok(isIppTunnelError(err))
        assert.equal(err.code, 'E_DESTINATION')
        assert.ok(err.message.includes(JSON.stringify(text)), `message names the text: ${err.message}`)
        assert.match(err.message, why)
        return true
      },
    )
  })
}

test('formatDestination round-trips through parseDestination', () => {
  const cases: Destination[] = [
    { host: 'h' },
    { user: 'u', host: 'h', port: 2200 },
    { host: '::1', port: 2222 },
    { user: 'u', host: 'fe80::1%eth0' },
  ]
  for (const d of cases) assert.deepEqual(parseDestination(formatDestination(d)), d)
  assert.equal(formatDestination({ user: 'bob', host: '::1', port: 2222 }), 'bob@[::1]:2222')
})
