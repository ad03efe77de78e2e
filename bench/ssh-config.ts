/**
 * ssh_config resolution on the hand-written corpus (fixtures/ssh-config): our readSshConfig + lookupHost in the
 * running process, against asking OpenSSH with one `ssh -G -F FILE HOST` process per look-up (what "ask ssh -G when
 * OpenSSH is installed" would cost). Both answer the same (test/ssh/config-differential.test.ts).
 *
 * Run alone: `node dist/bench/run.js sshconfig`.
 */
import { execFile } from 'node:child_process'
import { readdir, readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { promisify } from 'node:util'

import { lookupHost, readSshConfig } from '../src/ssh/index.js'
import { median, type BenchRow } from './common.js'

const run = promisify(execFile)
const ROUNDS = 15
const CORPUS = fileURLToPath(new URL('../../fixtures/ssh-config/', import.meta.url))

async function lookups(): Promise<{ file: string; host: string }[]> {
  const out: { file: string; host: string }[] = []
  for (const name of (await readdir(CORPUS)).filter((f) => f.endsWith('.config')).sort()) {
    const file = join(CORPUS, name)
    const hosts = /^# hosts: (.*)$/mu.exec(await readFile(file, 'utf8'))?.[1]?.split(' ') ?? []
    for (const host of hosts) out.push({ file, host })
  }
  return out
}

/** Milliseconds per look-up, median of ROUNDS rounds over the whole corpus. */
async function perLookup(
  all: readonly { file: string; host: string }[],
  one: (file: string, host: string) => Promise<unknown>,
): Promise<number> {
  const rounds: number[] = []
  for (let r = 0; r < ROUNDS; r++) {
    const start = performance.now()
    for (const { file, host } of all) await one(file, host)
    rounds.push((performance.now() - start) / all.length)
  }
  return median(rounds)
}

export async function benchSshConfig(): Promise<BenchRow[]> {
  const all = await lookups()
  const ours = await perLookup(all, async (file, host) =>
    lookupHost(await readSshConfig(file, { missingOk: false }), host),
  )
  const openssh = await perLookup(all, (file, host) => run('ssh', ['-G', '-F', file, host]))
  return [
    {
      name: `ssh_config look-up, parse included (${String(all.length)} hosts in ${String(new Set(all.map((a) => a.file)).size)} site configs)`,
      ours,
      anchor: openssh,
      anchorName: 'ssh -G (one process per look-up)',
      unit: 'ms',
      better: 'lower',
      targetRatio: 0,
    },
  ]
}
