import assert from 'node:assert/strict'
import { test } from 'node:test'

import {
  isZ85Key,
  kindFromFileName,
  parseConnectionFile,
  serializeConnectionFile,
  type ConnectionInfo,
} from '../../src/connection-file/index.js'
import { isIppTunnelError, type ErrorCode } from '../../src/errors/index.js'
import { fixtureText, REAL_FIXTURES } from './helpers.js'

const FAKE_IPP_KEY = 'deadbeef-00112233445566778899aabb'
const FAKE_CURVE = '009c61o!#m2NH?C3>iWS5d]J*6CRx17-skh9337x'

function parseFixture(name: string): ConnectionInfo {
  return parseConnectionFile(fixtureText(name), name)
}

function refuses(name: string, code: ErrorCode, message: RegExp | string): void {
  assert.throws(
    () => parseFixture(name),
    (err: unknown) => {
      assert.ok(isIppTunnelError(err), `expected IppTunnelError, got ${String(err)}`)
      assert.equal(err.code, code)
      if (typeof message === 'string') assert.equal(err.message, message)
      else assert.match(err.message, message)
      assert.ok(err.message.startsWith(name), `message names the file: ${err.message}`)
      assert.doesNotMatch(err.message, /deadbeef|cafebabe|\n/, 'no key, one line')
      return true
    },
  )
}

test('kindFromFileName: client, engine (with and without cluster id), kernel, others', () => {
  assert.equal(kindFromFileName('ipcontroller-client.json'), 'ipp-client')
  assert.equal(kindFromFileName('ipcontroller-engine.json'), 'ipp-engine')
  assert.equal(kindFromFileName('ipcontroller-my-cluster-client.json'), 'ipp-client')
  assert.equal(kindFromFileName('/x/profile_default/security/ipcontroller-1234-engine.json'), 'ipp-engine')
  assert.equal(kindFromFileName('kernel-0f3e.json'), 'kernel')
  assert.equal(kindFromFileName('/run/user/0/jupyter/kernel-12345.json'), 'kernel')
  assert.equal(kindFromFileName('ipcontroller.json'), undefined)
  assert.equal(kindFromFileName('ipcontroller-client.json.bak'), undefined)
  assert.equal(kindFromFileName('kernel.json'), undefined)
  assert.equal(kindFromFileName('kernel-client.json/other.json'), undefined)
  assert.equal(kindFromFileName('connection.json'), undefined)
})

test('real client file from ipcontroller --ip=127.0.0.1 --ssh=…', () => {
  const info = parseFixture('ipp/ipcontroller-client.json')
  assert.deepEqual(info, {
    kind: 'ipp-client',
    ssh: 'someone@login.example.org',
    interface: 'tcp://127.0.0.1',
    location: 'vm',
    registration: 51439,
    control: 47639,
    mux: 58229,
    task: 55423,
    iopub: 34193,
    key: FAKE_IPP_KEY,
    signature_scheme: 'hmac-sha256',
    pack: 'json',
    unpack: 'json',
    curve_serverkey: null,
    task_scheme: 'leastload',
    notification: 56949,
    broadcast: 36351,
    extra: {},
  })
})

test('real engine file: heartbeat ports, a list of broadcast ports, no task_scheme/notification', () => {
  const info = parseFixture('ipp/ipcontroller-engine.json')
  assert.equal(info.kind, 'ipp-engine')
  assert.equal(info.ssh, '')
  assert.equal(info.hb_ping, 54231)
  assert.equal(info.hb_pong, 56461)
  assert.deepEqual(info.broadcast, [59065, 54293])
  assert.equal(info.registration, 51439)
  assert.deepEqual(info.extra, {})
  assert.ok(!('task_scheme' in info) && !('notification' in info))
})

test('real curve files: empty key, Z85 server key', () => {
  for (const name of ['ipp-curve/ipcontroller-client.json', 'ipp-curve/ipcontroller-engine.json']) {
    const info = parseFixture(name)
    assert.ok(info.kind !== 'kernel')
    assert.equal(info.key, '')
    assert.equal(info.curve_serverkey, FAKE_CURVE)
  }
})

test('real wildcard and cluster-id files', () => {
  const wild = parseFixture('ipp-wildcard/ipcontroller-client.json')
  assert.equal(wild.kind === 'ipp-client' && wild.interface, 'tcp://*')
  assert.equal(wild.kind === 'ipp-client' && wild.location, '10.20.30.40')
  const any = parseFixture('ipp-cluster-id/ipcontroller-mycluster-engine.json')
  assert.equal(any.kind === 'ipp-engine' && any.interface, 'tcp://0.0.0.0')
})

test('real kernel files from ipykernel and jupyter_client', () => {
  assert.deepEqual(parseFixture('kernel/kernel-test.json'), {
    kind: 'kernel',
    shell_port: 45053,
    iopub_port: 36619,
    stdin_port: 42887,
    control_port: 40443,
    hb_port: 37607,
    ip: '127.0.0.1',
    transport: 'tcp',
    key: 'cafebabe-ffeeddccbbaa998877665544',
    signature_scheme: 'hmac-sha256',
    kernel_name: '',
    extra: {},
  })
  const any = parseFixture('kernel/kernel-anyip.json')
  assert.equal(any.kind === 'kernel' && any.kernel_name, 'python3')
  assert.equal(any.kind === 'kernel' && any.ip, '0.0.0.0')
  assert.equal(any.key, '')
})

test('kernel file with Curve keys', () => {
  const info = parseFixture('kernel/kernel-curve.json')
  assert.ok(info.kind === 'kernel')
  assert.equal(info.curve_publickey, 'wmYv=xLzi%y&a6dAb/]tBAI+JCZjQZE0{D[FpSr8')
  assert.equal(info.curve_secretkey, ':JqPF+*1CV^9Zp<!yAd4/Xb0k*$*&A&nJXQ<MkK!')
})

test('unknown fields are kept in extra', () => {
  const client = parseFixture('extras/ipcontroller-client.json')
  assert.deepEqual(client.extra, { x_site: { rack: 7, tags: ['a', 'b'] }, x_note: 'kept as is' })
  assert.deepEqual(Object.keys(client.extra), ['x_site', 'x_note'])
  const kernel = parseFixture('extras/kernel-with-ssh.json')
  assert.deepEqual(kernel.extra, { ssh: 'someone@login.example.org', x_launcher: null })
})

test('a field nested 100 000 deep is refused with E_CONNFILE_FIELD naming it, not a stack overflow when the copy is written', () => {
  const kernel = JSON.parse(fixtureText('kernel/kernel-test.json')) as Record<string, unknown>
  const deep = `${'['.repeat(100_000)}${']'.repeat(100_000)}`
  const text = JSON.stringify(kernel).replace(/}$/, `,"x_deep":${deep}}`)
  assert.throws(
    () => serializeConnectionFile(parseConnectionFile(text, 'kernel-deep.json')),
    (err: unknown) => {
      assert.ok(isIppTunnelError(err), `expected IppTunnelError, got ${String(err)}`)
      assert.equal(err.code, 'E_CONNFILE_FIELD')
      assert.equal(err.message, 'kernel-deep.json: field "x_deep" nests lists or objects more than 64 deep')
      return true
    },
  )
  // 64 levels are fine
  const fine = JSON.stringify(kernel).replace(/}$/, `,"x_deep":${'['.repeat(64)}${']'.repeat(64)}}`)
  assert.equal(parseConnectionFile(fine, 'kernel-fine.json').kind, 'kernel')
})

test('kind from content when the name says nothing', () => {
  const cases: [string, string][] = [
    ['ipp/ipcontroller-client.json', 'ipp-client'],
    ['ipp/ipcontroller-engine.json', 'ipp-engine'],
    ['kernel/kernel-test.json', 'kernel'],
  ]
  for (const [name, kind] of cases) {
    assert.equal(parseConnectionFile(fixtureText(name), 'connection.json').kind, kind)
  }
})

test('the name decides between client and engine: an engine file named -client.json is refused', () => {
  assert.throws(
    () => parseConnectionFile(fixtureText('ipp/ipcontroller-engine.json'), 'ipcontroller-client.json'),
    { code: 'E_CONNFILE_FIELD', message: 'ipcontroller-client.json: missing field "task_scheme"' },
  )
})

test('tolerated absences, as ipyparallel and jupyter_client tolerate them', () => {
  const client = JSON.parse(fixtureText('ipp/ipcontroller-client.json')) as Record<string, unknown>
  delete client['ssh']
  delete client['curve_serverkey']
  client['location'] = null
  const info = parseConnectionFile(JSON.stringify(client), 'ipcontroller-client.json')
  assert.ok(info.kind === 'ipp-client')
  assert.equal(info.ssh, '')
  assert.equal(info.location, '')
  assert.equal(info.curve_serverkey, null)
  const kernel = JSON.parse(fixtureText('kernel/kernel-test.json')) as Record<string, unknown>
  delete kernel['kernel_name']
  const k = parseConnectionFile(JSON.stringify(kernel), 'kernel-1.json')
  assert.equal(k.kind === 'kernel' && k.kernel_name, '')
})

test('every digest Node knows is accepted as hmac-<digest>', () => {
  const client = JSON.parse(fixtureText('ipp/ipcontroller-client.json')) as Record<string, unknown>
  for (const scheme of ['hmac-sha256', 'hmac-sha512', 'hmac-md5', 'hmac-sha1']) {
    client['signature_scheme'] = scheme
    assert.equal(
      parseConnectionFile(JSON.stringify(client), 'ipcontroller-client.json').signature_scheme,
      scheme,
    )
  }
})

test('refusals: not JSON', () => {
  refuses(
    'malformed/not-json.json',
    'E_CONNFILE_JSON',
    'malformed/not-json.json: not valid JSON (syntax error: unexpected "s")',
  )
  refuses(
    'malformed/empty.json',
    'E_CONNFILE_JSON',
    'malformed/empty.json: not valid JSON (the file is empty)',
  )
  refuses(
    'malformed/ipcontroller-truncated-client.json',
    'E_CONNFILE_JSON',
    /not valid JSON \(syntax error at line 10, column 8\)$/,
  )
})

test('a JSON syntax error never quotes the text (it may hold the key)', () => {
  assert.throws(
    () => parseConnectionFile('{"key": "deadbeef-0011", oops}', 'kernel-1.json'),
    (err: unknown) =>
      isIppTunnelError(err) && !err.message.includes('deadbeef') && err.code === 'E_CONNFILE_JSON',
  )
})

test('refusals: JSON but not a connection file', () => {
  refuses(
    'malformed/not-a-connection-file.json',
    'E_CONNFILE_KIND',
    /not a connection file \(none of the ipyparallel or kernel fields/,
  )
  refuses(
    'malformed/json-array.json',
    'E_CONNFILE_KIND',
    /not a connection file \(a JSON list, expected an object\)$/,
  )
  refuses(
    'malformed/kernel-content-is-client.json',
    'E_CONNFILE_KIND',
    /the name says Jupyter kernel connection file but the fields are those of a ipyparallel file/,
  )
  refuses(
    'malformed/ipcontroller-content-is-kernel-client.json',
    'E_CONNFILE_KIND',
    /the name says ipyparallel connection file but the fields are those of a Jupyter kernel file/,
  )
  assert.throws(() => parseConnectionFile('42', 'x.json'), {
    code: 'E_CONNFILE_KIND',
    message: 'x.json: not a connection file (JSON number, expected an object)',
  })
  assert.throws(() => parseConnectionFile('null', 'x.json'), { code: 'E_CONNFILE_KIND' })
  // A name that announces a kind with content that has nothing: field errors, not kind errors.
  assert.throws(() => parseConnectionFile('{}', 'kernel-1.json'), {
    code: 'E_CONNFILE_FIELD',
    message: 'kernel-1.json: missing field "transport"',
  })
})

test('refusals: fields', () => {
  const M = 'malformed/'
  const cases: [string, string][] = [
    ['ipcontroller-missing-mux-client.json', 'missing field "mux"'],
    ['ipcontroller-port-zero-client.json', 'field "mux" must be a port 1–65535, got 0'],
    ['ipcontroller-port-70000-client.json', 'field "mux" must be a port 1–65535, got 70000'],
    ['ipcontroller-port-float-engine.json', 'field "hb_ping" must be a port 1–65535, got 5423.5'],
    ['kernel-port-string.json', 'field "shell_port" must be a port 1–65535, got "abc"'],
    [
      'ipcontroller-unknown-scheme-client.json',
      'field "signature_scheme" must be hmac-<digest> with a digest this Node.js knows (e.g. hmac-sha256), got "hmac-nosuchdigest"',
    ],
    [
      'ipcontroller-not-hmac-scheme-client.json',
      'field "signature_scheme" must be hmac-<digest> with a digest this Node.js knows (e.g. hmac-sha256), got "sha256"',
    ],
    ['kernel-missing-key.json', 'missing field "key"'],
    ['ipcontroller-broadcast-list-client.json', 'field "broadcast" must be a port 1–65535, got a list'],
    [
      'ipcontroller-broadcast-int-engine.json',
      'field "broadcast" must be a non-empty list of ports 1–65535 (one per broadcast scheduler), got 59065',
    ],
    [
      'ipcontroller-broadcast-empty-engine.json',
      'field "broadcast" must be a non-empty list of ports 1–65535 (one per broadcast scheduler), got a list',
    ],
    ['ipcontroller-broadcast-bad-port-engine.json', 'field "broadcast[1]" must be a port 1–65535, got "x"'],
    [
      'ipcontroller-bad-curve-client.json',
      'field "curve_serverkey" must be a Curve key in Z85 (40 characters), got a string of 13 characters',
    ],
    [
      'ipcontroller-bad-interface-client.json',
      'field "interface" must be tcp://<address> (e.g. tcp://127.0.0.1 or tcp://*) or ipc://<absolute path>, got "127.0.0.1"',
    ],
    ['ipcontroller-key-number-client.json', 'field "key" must be a string, got a number'],
  ]
  for (const [name, message] of cases) refuses(M + name, 'E_CONNFILE_FIELD', `${M}${name}: ${message}`)
})

test('refusals built from a real file: each type rule', () => {
  const base = JSON.parse(fixtureText('ipp/ipcontroller-client.json')) as Record<string, unknown>
  const bad: [Record<string, unknown>, string][] = [
    [{ pack: '' }, 'field "pack" must be a non-empty string, got ""'],
    [{ unpack: 3 }, 'field "unpack" must be a string, got 3'],
    [{ ssh: ['x'] }, 'field "ssh" must be a string, got a list'],
    [
      { ssh: '$(id>x)' },
      'field "ssh" must be an ssh destination [user@]host[:port], got "$(id>x)": the host contains the forbidden character "$" (a host is a name of letters, digits, ".", "-", "_", or an IP address)',
    ],
    [
      { ssh: '`id`@cluster:22' },
      'field "ssh" must be an ssh destination [user@]host[:port], got "`id`@cluster:22": the user contains the forbidden character "`" (a user is a name of letters, digits, ".", "_", "-", "+", "@")',
    ],
    [
      { ssh: '-oProxyCommand=x' },
      'field "ssh" must be an ssh destination [user@]host[:port], got "-oProxyCommand=x": the host may not start with "-"',
    ],
    [{ location: { a: 1 } }, 'field "location" must be a string, got an object'],
    [{ task_scheme: true }, 'field "task_scheme" must be a string, got true'],
    [{ registration: null }, 'field "registration" must be a port 1–65535, got null'],
    [{ control: -1 }, 'field "control" must be a port 1–65535, got -1'],
    [
      { interface: 'tcp://' },
      'field "interface" must be tcp://<address> (e.g. tcp://127.0.0.1 or tcp://*) or ipc://<absolute path>, got "tcp://"',
    ],
    [
      { interface: 'tcp://::1' },
      'field "interface" must be tcp://<address> (e.g. tcp://127.0.0.1 or tcp://*) or ipc://<absolute path>, got "tcp://::1"',
    ],
    [
      { interface: 'tcp://10.0.0.1:5000' },
      'field "interface" must be tcp://<address> (e.g. tcp://127.0.0.1 or tcp://*) or ipc://<absolute path>, got "tcp://10.0.0.1:5000"',
    ],
    [
      { interface: 'ipc://kernel-ipc' },
      'field "interface" must be an absolute unix socket path prefix (a relative one depends on the working directory of the peer), got "ipc://kernel-ipc"',
    ],
    [
      { curve_serverkey: 7 },
      'field "curve_serverkey" must be a Curve key in Z85 (40 characters), got a number',
    ],
    [
      { signature_scheme: 256 },
      'field "signature_scheme" must be hmac-<digest> with a digest this Node.js knows (e.g. hmac-sha256), got 256',
    ],
  ]
  for (const [patch, message] of bad) {
    const text = JSON.stringify({ ...base, ...patch })
    assert.throws(() => parseConnectionFile(text, 'ipcontroller-client.json'), {
      code: 'E_CONNFILE_FIELD',
      message: `ipcontroller-client.json: ${message}`,
    })
  }
  assert.equal(
    parseConnectionFile(JSON.stringify({ ...base, interface: 'tcp://[::1]' }), 'ipcontroller-client.json')
      .kind,
    'ipp-client',
  )
})

test('kernel Curve keys: both or neither, each Z85; the secret is never echoed', () => {
  const kernel = JSON.parse(fixtureText('kernel/kernel-curve.json')) as Record<string, unknown>
  const only = { ...kernel }
  delete only['curve_secretkey']
  assert.throws(() => parseConnectionFile(JSON.stringify(only), 'kernel-1.json'), {
    code: 'E_CONNFILE_FIELD',
    message: 'kernel-1.json: field "curve_secretkey" must be set together with the other Curve key, got null',
  })
  const bad = { ...kernel, curve_secretkey: 'secret-secret-secret' }
  assert.throws(
    () => parseConnectionFile(JSON.stringify(bad), 'kernel-1.json'),
    (err: unknown) => {
      assert.ok(isIppTunnelError(err) && err.code === 'E_CONNFILE_FIELD')
      assert.doesNotMatch(err.message, /secret-secret/)
      return true
    },
  )
})

test('isZ85Key', () => {
  assert.ok(isZ85Key(FAKE_CURVE))
  assert.ok(!isZ85Key(FAKE_CURVE.slice(1)))
  assert.ok(!isZ85Key(`${FAKE_CURVE.slice(1)} `))
  assert.ok(!isZ85Key('#'.repeat(40)), 'groups above 2^32 are not Z85')
  assert.ok(isZ85Key('%nSc0'.repeat(8)), '%nSc0 is 0xffffffff')
})

test('every real fixture parses, with the kind its name says', () => {
  for (const name of REAL_FIXTURES) assert.equal(parseFixture(name).kind, kindFromFileName(name))
})
