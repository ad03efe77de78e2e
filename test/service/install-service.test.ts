import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import { access, mkdir, mkdtemp, readFile, rm, symlink, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { after, before, describe, test } from 'node:test'

import { renderUnit } from '../../src/service/index.js'
import { CLI, REPO_ROOT, runCli } from '../support/cli.js'

/** systemd's own check of a unit file: exit status and everything it complained about. */
function verify(path: string): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile('systemd-analyze', ['verify', path], (err, _stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stderr })
    })
  })
}

function execStartOf(unit: string): string | undefined {
  return /^ExecStart=(.*)$/m.exec(unit)?.[1]
}

describe('ipp-tunnel install-service and the systemd user unit', () => {
  let dir: string
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'ippt-unit-'))
  })
  after(async () => {
    await rm(dir, { recursive: true, force: true })
  })

  test('writes a unit systemd accepts, running this node and this ipp-tunnel, and says how to enable it', async () => {
    const config = join(dir, 'config')
    const result = await runCli(['install-service'], { XDG_CONFIG_HOME: config, IPYTHONDIR: '' })
    assert.equal(result.code, 0, result.stderr)
    const path = join(config, 'systemd', 'user', 'ipp-tunnel.service')
    assert.ok(result.stdout.includes(path), result.stdout)
    assert.ok(result.stdout.includes('systemctl --user enable --now ipp-tunnel'), result.stdout)
    const unit = await readFile(path, 'utf8')
    assert.equal(execStartOf(unit), `${process.execPath} ${CLI} watch`)
    assert.match(unit, /^Restart=on-failure$/m)
    assert.match(unit, /^KillSignal=SIGTERM$/m)
    assert.match(unit, /^WantedBy=default\.target$/m)
    assert.deepEqual(await verify(path), { code: 0, stderr: '' })
  })

  test('watch options and the environment that says where files are go into the unit', async () => {
    const config = join(dir, 'config2')
    const ipython = join(dir, 'ipython dir')
    const result = await runCli(['install-service', '--profile', 'big', '--dir', '/srv/kernels'], {
      XDG_CONFIG_HOME: config,
      IPYTHONDIR: ipython,
    })
    assert.equal(result.code, 0, result.stderr)
    const path = join(config, 'systemd', 'user', 'ipp-tunnel.service')
    const unit = await readFile(path, 'utf8')
    assert.equal(execStartOf(unit), `${process.execPath} ${CLI} watch --profile big --dir /srv/kernels`)
    assert.ok(unit.includes(`Environment="IPYTHONDIR=${ipython}"`), unit)
    assert.deepEqual(await verify(path), { code: 0, stderr: '' })
  })

  test('--print only prints', async () => {
    const config = join(dir, 'config3')
    const result = await runCli(['install-service', '--print'], { XDG_CONFIG_HOME: config, IPYTHONDIR: '' })
    assert.equal(result.code, 0, result.stderr)
    assert.match(result.stdout, /^\[Service\]$/m)
    assert.equal(execStartOf(result.stdout), `${process.execPath} ${CLI} watch`)
    await assert.rejects(access(config))
  })

  test('paths with spaces and percent signs are quoted so systemd runs the right program', async () => {
    const odd = join(dir, 'node 100% here')
    await mkdir(odd)
    await symlink(process.execPath, join(odd, 'node'))
    const unit = renderUnit({ execStart: [join(odd, 'node'), CLI, 'watch'] })
    assert.equal(execStartOf(unit), `"${join(dir, 'node 100%% here', 'node')}" ${CLI} watch`)
    const path = join(dir, 'ipp-tunnel.service')
    await writeFile(path, unit)
    assert.deepEqual(await verify(path), { code: 0, stderr: '' })
  })

  test('the unit in the repository is the same template, for copying by hand', async () => {
    const path = join(REPO_ROOT, 'scripts', 'systemd', 'ipp-tunnel.service')
    const text = await readFile(path, 'utf8')
    assert.equal(text, renderUnit({ execStart: ['/usr/bin/env', 'ipp-tunnel', 'watch'] }))
    assert.deepEqual(await verify(path), { code: 0, stderr: '' })
  })
})
