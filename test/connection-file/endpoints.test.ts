import assert from 'node:assert/strict'
import { test } from 'node:test'

import {
  destinationOf,
  endpoints,
  ipcSocketPath,
  ippClientSocketPath,
  parseConnectionFile,
  redact,
  serializeConnectionFile,
  toLoopback,
  type ConnectionInfo,
  type IppClientInfo,
} from '../../src/connection-file/index.js'
import { fixtureText, REAL_FIXTURES } from './helpers.js'

function parseFixture(name: string): ConnectionInfo {
  return parseConnectionFile(fixtureText(name), name)
}

function client(): IppClientInfo {
  const info = parseFixture('ipp/ipcontroller-client.json')
  assert.ok(info.kind === 'ipp-client')
  return info
}

const hosts = (info: ConnectionInfo): string[] => [
  ...new Set(endpoints(info).map((e) => (e.kind === 'unix' ? e.path : e.host))),
]

test('endpoints of a client file: seven channels on the explicit interface address', () => {
  assert.deepEqual(endpoints(client()), [
    { channel: 'registration', host: '127.0.0.1', port: 51439 },
    { channel: 'control', host: '127.0.0.1', port: 47639 },
    { channel: 'mux', host: '127.0.0.1', port: 58229 },
    { channel: 'task', host: '127.0.0.1', port: 55423 },
    { channel: 'iopub', host: '127.0.0.1', port: 34193 },
    { channel: 'notification', host: '127.0.0.1', port: 56949 },
    { channel: 'broadcast', host: '127.0.0.1', port: 36351 },
  ])
})

test('endpoints of an engine file: heartbeat and one broadcast channel per port', () => {
  assert.deepEqual(
    endpoints(parseFixture('ipp/ipcontroller-engine.json')).map((e) => [e.channel, e.port]),
    [
      ['registration', 51439],
      ['control', 37981],
      ['mux', 49547],
      ['task', 47145],
      ['iopub', 37931],
      ['hb_ping', 54231],
      ['hb_pong', 56461],
      ['broadcast-0', 59065],
      ['broadcast-1', 54293],
    ],
  )
})

test('endpoints of a kernel file', () => {
  assert.deepEqual(endpoints(parseFixture('kernel/kernel-test.json')), [
    { channel: 'shell', host: '127.0.0.1', port: 45053 },
    { channel: 'iopub', host: '127.0.0.1', port: 36619 },
    { channel: 'stdin', host: '127.0.0.1', port: 42887 },
    { channel: 'control', host: '127.0.0.1', port: 40443 },
    { channel: 'hb', host: '127.0.0.1', port: 37607 },
  ])
  assert.deepEqual(hosts(parseFixture('kernel/kernel-anyip.json')), ['127.0.0.1'], '0.0.0.0 → loopback')
  const k = parseFixture('kernel/kernel-test.json')
  assert.ok(k.kind === 'kernel')
  assert.deepEqual(hosts({ ...k, ip: '10.1.2.3' }), ['10.1.2.3'])
  assert.deepEqual(hosts({ ...k, ip: '*' }), ['127.0.0.1'])
})

test('interface rules: explicit address kept; * and 0.0.0.0 mean location, or loopback without one', () => {
  assert.deepEqual(hosts(parseFixture('ipp-wildcard/ipcontroller-client.json')), ['10.20.30.40'])
  assert.deepEqual(hosts(parseFixture('ipp-wildcard/ipcontroller-engine.json')), ['10.20.30.40'])
  assert.deepEqual(hosts(parseFixture('ipp-cluster-id/ipcontroller-mycluster-client.json')), ['vm'])
  const c = client()
  const cases: [string, string, string][] = [
    ['tcp://127.0.0.1', 'vm', '127.0.0.1'],
    ['tcp://10.0.0.5', '10.20.30.40', '10.0.0.5'],
    ['tcp://head-node', '', 'head-node'],
    ['tcp://*', 'head.example.org', 'head.example.org'],
    ['tcp://0.0.0.0', '10.20.30.40', '10.20.30.40'],
    ['tcp://*', '', '127.0.0.1'],
    ['tcp://0.0.0.0', '', '127.0.0.1'],
    ['tcp://[::1]', 'vm', '::1'],
  ]
  for (const [iface, location, host] of cases) {
    assert.deepEqual(hosts({ ...c, interface: iface, location }), [host], `${iface} at ${location}`)
  }
})

test('destinationOf: the ssh field when non-empty; kernels only with an ssh extra', () => {
  assert.equal(destinationOf(client()), 'someone@login.example.org')
  assert.equal(destinationOf(parseFixture('ipp/ipcontroller-engine.json')), undefined)
  assert.equal(destinationOf(parseFixture('kernel/kernel-test.json')), undefined)
  assert.equal(destinationOf(parseFixture('extras/kernel-with-ssh.json')), 'someone@login.example.org')
})

function localPortsFor(info: ConnectionInfo, base = 20000): Map<string, number> {
  return new Map(endpoints(info).map((e, i) => [e.channel, base + i]))
}

test('toLoopback: new ports per channel, 127.0.0.1, ssh emptied, everything else kept', () => {
  const source = parseFixture('extras/ipcontroller-client.json')
  const local = toLoopback(source, localPortsFor(source))
  assert.deepEqual(local, {
    ...source,
    ssh: '',
    interface: 'tcp://127.0.0.1',
    location: '127.0.0.1',
    registration: 20000,
    control: 20001,
    mux: 20002,
    task: 20003,
    iopub: 20004,
    notification: 20005,
    broadcast: 20006,
  })
  assert.equal(destinationOf(local), undefined)
  assert.deepEqual(hosts(local), ['127.0.0.1'])
  const named = toLoopback(source, localPortsFor(source), { location: 'laptop' })
  assert.equal(named.kind === 'ipp-client' && named.location, 'laptop')
  assert.deepEqual(hosts(named), ['127.0.0.1'], 'the interface is explicit: location is not used to reach it')
  assert.equal(source.kind === 'ipp-client' && source.ssh, 'someone@login.example.org', 'source untouched')
})

test('toLoopback on engine (broadcast list), wildcard and curve files', () => {
  const engine = parseFixture('ipp-wildcard/ipcontroller-engine.json')
  const local = toLoopback(engine, localPortsFor(engine, 30000))
  assert.ok(local.kind === 'ipp-engine')
  assert.deepEqual(local.broadcast, [30007, 30008])
  assert.deepEqual([local.hb_ping, local.hb_pong], [30005, 30006])
  assert.deepEqual(
    endpoints(local),
    endpoints(engine).map((e, i) => ({ ...e, host: '127.0.0.1', port: 30000 + i })),
  )
  const curve = parseFixture('ipp-curve/ipcontroller-client.json')
  const lc = toLoopback(curve, localPortsFor(curve))
  assert.equal(lc.kind !== 'kernel' && lc.curve_serverkey, curve.kind !== 'kernel' && curve.curve_serverkey)
  assert.equal(lc.key, '')
})

test('toLoopback on kernels: ip, five ports, Curve keys and an ssh extra emptied', () => {
  const kernel = parseFixture('kernel/kernel-curve.json')
  const local = toLoopback(kernel, localPortsFor(kernel))
  assert.deepEqual(local, {
    ...kernel,
    ip: '127.0.0.1',
    shell_port: 20000,
    iopub_port: 20001,
    stdin_port: 20002,
    control_port: 20003,
    hb_port: 20004,
  })
  const withSsh = parseFixture('extras/kernel-with-ssh.json')
  const l2 = toLoopback(withSsh, localPortsFor(withSsh))
  assert.deepEqual(l2.extra, { ssh: '', x_launcher: null })
  assert.equal(destinationOf(l2), undefined)
})

test('toLoopback refuses a missing or invalid local port', () => {
  const c = client()
  const ports = localPortsFor(c)
  ports.delete('notification')
  assert.throws(() => toLoopback(c, ports), {
    code: 'E_CONNFILE_FIELD',
    message: 'loopback ipp-client file: channel "notification" needs a local port 1–65535, got none',
  })
  ports.set('notification', 0)
  assert.throws(() => toLoopback(c, ports), { code: 'E_CONNFILE_FIELD' })
  const engine = parseFixture('ipp/ipcontroller-engine.json')
  const ep = localPortsFor(engine)
  ep.delete('broadcast-1')
  assert.throws(() => toLoopback(engine, ep), /channel "broadcast-1"/)
})

test('real files serialize byte for byte as the peers wrote them', () => {
  for (const name of REAL_FIXTURES) {
    const text = fixtureText(name)
    assert.equal(serializeConnectionFile(parseConnectionFile(text, name)), text, name)
  }
})

test('round trip: parse → serialize → parse is equal, extras kept (in their order)', () => {
  for (const name of [
    ...REAL_FIXTURES,
    'extras/ipcontroller-client.json',
    'extras/kernel-with-ssh.json',
    'kernel/kernel-curve.json',
  ]) {
    const info = parseFixture(name)
    const text = serializeConnectionFile(info)
    assert.deepEqual(parseConnectionFile(text, name), info, name)
    assert.deepEqual(JSON.parse(text), JSON.parse(fixtureText(name)), `${name}: same JSON values`)
  }
  const text = serializeConnectionFile(parseFixture('extras/ipcontroller-client.json'))
  const keys = Object.keys(JSON.parse(text) as object)
  assert.deepEqual(keys.slice(-2), ['x_site', 'x_note'])
  assert.equal(keys[0], 'ssh')
})

test('serialize of a loopback copy parses back to it', () => {
  for (const name of REAL_FIXTURES) {
    const info = parseFixture(name)
    const local = toLoopback(info, localPortsFor(info))
    assert.deepEqual(parseConnectionFile(serializeConnectionFile(local), name), local)
  }
})

test('redact hides the key, the Curve secret and secret-looking extras, and nothing else', () => {
  const c = client()
  const r = redact({ ...c, extra: { api_token: 'abc', x_note: 'hello', password: '' } })
  assert.equal(r.key, '<redacted>')
  assert.deepEqual(r.extra, { api_token: '<redacted>', x_note: 'hello', password: '' })
  assert.equal(r.mux, c.mux)
  assert.equal(c.key, 'deadbeef-00112233445566778899aabb', 'original untouched')
  assert.doesNotMatch(JSON.stringify(r), /deadbeef/)
  const k = redact(parseFixture('kernel/kernel-curve.json'))
  assert.ok(k.kind === 'kernel')
  assert.equal(k.curve_secretkey, '<redacted>')
  assert.equal(k.curve_publickey, 'wmYv=xLzi%y&a6dAb/]tBAI+JCZjQZE0{D[FpSr8', 'a public key is not a secret')
  assert.equal(
    redact(parseFixture('ipp-curve/ipcontroller-client.json')).key,
    '',
    'empty key means no signing',
  )
})

test('ipc files: each channel is a unix socket, <interface>-<port> (ipcontroller 7.1) or <ip>-<port> (ipykernel)', () => {
  const ipp = parseFixture('ipc/ipcontroller-client.json')
  assert.deepEqual(endpoints(ipp)[0], {
    kind: 'unix',
    channel: 'registration',
    path: '/tmp/ipp-51439',
    port: 51439,
  })
  const kernel = parseFixture('ipc/kernel-ipc.json')
  assert.deepEqual(
    endpoints(kernel).map((e) => (e.kind === 'unix' ? [e.channel, e.path] : [])),
    [
      ['shell', '/tmp/kernel-ipc-1'],
      ['iopub', '/tmp/kernel-ipc-4'],
      ['stdin', '/tmp/kernel-ipc-2'],
      ['control', '/tmp/kernel-ipc-3'],
      ['hb', '/tmp/kernel-ipc-5'],
    ],
  )
  assert.throws(
    () =>
      parseConnectionFile(
        JSON.stringify({ ...JSON.parse(fixtureText('ipc/kernel-ipc.json')), ip: 'kernel-ipc' }),
        'kernel-r.json',
      ),
    {
      code: 'E_CONNFILE_FIELD',
      message: /field "ip" must be an absolute unix socket path prefix/,
    },
  )
})

test('toLoopback with ipc: unix sockets under a prefix; an ipc source with tcp listeners becomes tcp', () => {
  const kernel = parseFixture('kernel/kernel-test.json')
  const unix = toLoopback(kernel, localPortsFor(kernel, 1), { ipc: '/run/x/kernel' })
  assert.ok(unix.kind === 'kernel')
  assert.equal(unix.transport, 'ipc')
  assert.equal(unix.ip, '/run/x/kernel')
  assert.deepEqual(endpoints(unix)[0], { kind: 'unix', channel: 'shell', path: '/run/x/kernel-1', port: 1 })
  const c = client()
  const ippUnix = toLoopback(c, localPortsFor(c, 1), { ipc: '/run/x/client' })
  assert.ok(ippUnix.kind === 'ipp-client')
  assert.equal(ippUnix.interface, 'ipc:///run/x/client')
  assert.equal(ipcSocketPath('ipp-client', '/run/x/client', 3), '/run/x/client-3', 'where ipcontroller binds')
  assert.equal(ippClientSocketPath('/run/x/client', 3), '/run/x/client:3', 'where its Client connects')
  const round = parseConnectionFile(serializeConnectionFile(ippUnix), 'ipcontroller-client.json')
  assert.deepEqual(round, ippUnix)
  const fromIpc = parseFixture('ipc/kernel-ipc.json')
  const tcp = toLoopback(fromIpc, localPortsFor(fromIpc))
  assert.ok(tcp.kind === 'kernel')
  assert.equal(tcp.transport, 'tcp')
  assert.equal(tcp.ip, '127.0.0.1')
  const ippTcp = toLoopback(parseFixture('ipc/ipcontroller-client.json'), localPortsFor(c))
  assert.ok(ippTcp.kind === 'ipp-client')
  assert.equal(ippTcp.interface, 'tcp://127.0.0.1')
})
