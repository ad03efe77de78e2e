import assert from 'node:assert/strict'
import { readFile } from 'node:fs/promises'
import { after, before, describe, test } from 'node:test'

import { exited, runCli } from '../support/cli.js'
import { startSshRemote, type SshRemote } from '../support/index.js'
import { startEnginesCli, stopCli } from './helpers.js'

/** The `error` event of a `--json` run. */
function errorOf(stdout: string): Record<string, unknown> | undefined {
  return stdout
    .split('\n')
    .filter((line) => line.startsWith('{'))
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .find((e) => e.event === 'error')
}

describe("engines with no file: ipyparallel 8+'s IPP_CONNECTION_INFO", () => {
  let remote: SshRemote
  /** What ipcontroller 7.1 wrote into its engine file, as ipcluster 8 puts it into the variable. */
  let engineJson: string

  before(async () => {
    remote = await startSshRemote()
    engineJson = await readFile(remote.ctl.engineFile, 'utf8')
  })
  after(() => remote.close())

  test('the engine info in the variable: tunnelled through its ssh server, the engine registers', async (t) => {
    const { child, lines } = startEnginesCli(t, remote, ['-n', '1'], {
      noFile: true,
      env: { IPP_CONNECTION_INFO: engineJson },
    })
    const ready = await lines.next('ready')
    assert.equal(ready.file, 'IPP_CONNECTION_INFO')
    assert.match(String(ready.out), /\/ipcontroller-engine\.json$/u)
    await lines.next('registered', 60_000)
    const status = await stopCli(child, 'SIGTERM')
    assert.equal(status.code, 0, lines.stderr.slice(-2000))
  })

  test('the engines do not get the variable: it names the controller itself, and ipyparallel 8 reads it before --file', async (t) => {
    const { child, lines } = startEnginesCli(
      t,
      remote,
      ['-n', '1', '--engine-cmd', `/bin/sh -c 'echo "info=\${IPP_CONNECTION_INFO:-none} file={}"; exit 3'`],
      { env: { IPP_CONNECTION_INFO: engineJson } },
    )
    assert.equal((await exited(child)).code, 1)
    assert.match(
      lines.stderr,
      /\[process #0\] info=none file=\/tmp\/ipp-tunnel-engines-\S+\/ipcontroller-engine\.json/u,
    )
  })

  const invalid = [
    {
      what: 'not JSON',
      value: '{"registration": ',
      code: 'E_CONNFILE_JSON',
      message: /^IPP_CONNECTION_INFO: not valid JSON/u,
    },
    {
      what: 'a bad field',
      value: () => JSON.stringify({ ...(JSON.parse(engineJson) as object), registration: 'x' }),
      code: 'E_CONNFILE_FIELD',
      message: /^IPP_CONNECTION_INFO: field "registration"/u,
    },
    {
      what: "a client's info",
      value: () => readFile(remote.ctl.clientFile, 'utf8'),
      code: 'E_CONNFILE_KIND',
      message: /^IPP_CONNECTION_INFO: is an ipp-client connection file/u,
    },
    {
      what: 'neither file nor variable',
      value: '',
      code: 'E_USAGE',
      message: /engine file \(ipcontroller-engine\.json\), or its JSON in \$IPP_CONNECTION_INFO/u,
    },
  ] as const
  for (const { what, value, code, message } of invalid) {
    test(`${what}: ${code}, naming the variable`, async () => {
      const text = typeof value === 'string' ? value : await value()
      const result = await runCli(['engines', '-n', '1', '--json'], { IPP_CONNECTION_INFO: text })
      const error = errorOf(result.stdout)
      assert.equal(error?.code, code, result.stdout + result.stderr)
      assert.match(String(error.message), message)
      assert.notEqual(result.code, 0)
    })
  }
})
