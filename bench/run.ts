/**
 * `npm run bench`: every benchmark in one run, each beside its anchor, then one Markdown table.
 * `npm run bench -- --docs` (or `--readme`) also puts the table into docs/benchmarks.md between the bench markers.
 * `npm run bench -- wire tunnel` runs only the named groups.
 */
import { readFile, writeFile } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'

import * as prettier from 'prettier'

import { markdownTable, ratioOf, type BenchRow } from './common.js'
import { benchEngines } from './engines.js'
import { benchKernels } from './kernels.js'
import { benchLogin } from './login.js'
import { benchNodes } from './nodes.js'
import { benchRemote } from './remote.js'
import { benchService } from './service.js'
import { benchSshConfig } from './ssh-config.js'
import { benchStartup } from './startup.js'
import { benchStreams } from './streams.js'
import { benchTunnel } from './tunnel.js'
import { benchWire } from './wire.js'
import { benchClient } from './client.js'
import { benchCluster } from './cluster.js'
import { benchRecovery } from './recovery.js'

const groups: Record<string, () => Promise<BenchRow[]>> = {
  wire: benchWire,
  tunnel: benchTunnel,
  streams: benchStreams,
  startup: benchStartup,
  client: benchClient,
  engines: benchEngines,
  service: benchService,
  remote: benchRemote,
  login: benchLogin,
  nodes: benchNodes,
  kernels: benchKernels,
  cluster: benchCluster,
  recovery: benchRecovery,
  sshconfig: benchSshConfig,
}

const BENCH_PAGE = fileURLToPath(new URL('../../docs/benchmarks.md', import.meta.url))
const START = '<!-- bench:start -->'
const END = '<!-- bench:end -->'

/** What a row of the table is about: its name up to the first colon (`kernels`, `recovery`, `tunnel 64 KiB`, …). */
function topicOf(line: string): string {
  return line.slice(1, line.indexOf(':')).trim()
}

/**
 * Writes the table into docs/benchmarks.md. A run of some groups replaces the rows of the topics it measured and
 * keeps the others, each dated where it was measured (git log says when).
 */
async function updateBenchPage(table: string, partial: readonly string[]): Promise<void> {
  const text = await readFile(BENCH_PAGE, 'utf8')
  const from = text.indexOf(START)
  const to = text.indexOf(END)
  if (from < 0 || to < from) throw new Error(`docs/benchmarks.md has no ${START} … ${END} section`)
  const date = new Date().toISOString().slice(0, 10)
  let body = table
  let stamp = `Measured ${date} on ${process.platform}/${process.arch}, Node ${process.version}, by \`npm run bench\`.`
  if (partial.length > 0) {
    const [header = '', rule = '', ...fresh] = table.split('\n')
    const topics = new Set(fresh.map(topicOf))
    const old = text
      .slice(from + START.length, to)
      .split('\n')
      .filter((l) => l.startsWith('| ') && !l.startsWith('| benchmark |'))
    const merged: string[] = []
    for (const line of old) {
      if (!topics.has(topicOf(line))) merged.push(line)
      else if (!merged.includes(fresh[0] ?? '')) merged.push(...fresh)
    }
    for (const line of fresh) if (!merged.includes(line)) merged.push(line)
    body = [header, rule, ...merged].join('\n')
    // groups measured earlier the same day keep their place in the stamp
    const earlier = /the rows of (.+?) on (\d{4}-\d{2}-\d{2})/u.exec(text.slice(from, to))
    const today = [
      ...new Set([...(earlier?.[2] === date ? (earlier[1]?.split(/, | and /u) ?? []) : []), ...partial]),
    ]
    const named =
      today.length > 1 ? `${today.slice(0, -1).join(', ')} and ${today.at(-1) ?? ''}` : today.join('')
    stamp = `Measured on ${process.platform}/${process.arch}, Node ${process.version}, by \`npm run bench\`; the rows of ${named} on ${date} (\`npm run bench -- ${today.join(' ')} --docs\`), the others before.`
  }
  const updated = `${text.slice(0, from + START.length)}\n${stamp}\n\n${body}\n${text.slice(to)}`
  // the test command checks the docs' formatting: write it the way prettier would
  const config = (await prettier.resolveConfig(BENCH_PAGE)) ?? {}
  await writeFile(BENCH_PAGE, await prettier.format(updated, { ...config, filepath: BENCH_PAGE }))
}

const args = process.argv.slice(2)
const wanted = args.filter((a) => !a.startsWith('--'))
const unknown = wanted.filter((name) => !(name in groups))
if (unknown.length > 0) {
  console.error(`bench: unknown group ${unknown.join(', ')}; known: ${Object.keys(groups).join(', ')}`)
  process.exit(2)
}
const rows: BenchRow[] = []
for (const [name, bench] of Object.entries(groups)) {
  if (wanted.length > 0 && !wanted.includes(name)) continue
  console.error(`bench: ${name} …`)
  const got = await bench()
  for (const row of got) {
    const ratio = ratioOf(row)
    console.error(
      `  ${row.name}: ${row.ours.toFixed(2)} vs ${String(row.anchor?.toFixed(2))} ${row.unit} → ${ratio === undefined ? '—' : `${ratio.toFixed(2)}x`}`,
    )
  }
  rows.push(...got)
}
const table = markdownTable(rows)
console.log(table)
if (args.includes('--docs') || args.includes('--readme')) await updateBenchPage(table, wanted)
