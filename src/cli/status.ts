import type { Argv } from 'yargs'

import { queryStatus, statusSocketPath, type FileStatus, type StatusReport } from '../service/index.js'
import { EXIT, Output } from './output.js'

interface StatusArgs {
  readonly json: boolean
  readonly debug: boolean
}

/** `ipp-tunnel status`: what the running service holds. Exit 3 when no service runs. */
export function registerStatus(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'status',
    'show what the running service holds: files, links, forwards, connections, bytes, errors',
    (y) => y,
    (args) => run(() => status(args as unknown as StatusArgs)),
  )
}

async function status(args: StatusArgs): Promise<number> {
  const output = new Output({ json: args.json, debug: args.debug })
  try {
    const report = await queryStatus(statusSocketPath(process.env))
    output.result(report, renderReport(report))
    return EXIT.ok
  } catch (err) {
    return output.fail(err)
  }
}

function bytes(n: number): string {
  if (n < 1024) return `${n} B`
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`
  return `${(n / 1024 ** 3).toFixed(2)} GiB`
}

function table(rows: readonly (readonly string[])[]): string[] {
  const widths: number[] = []
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)))
  return rows.map((row) =>
    row
      .map((cell, i) => (i === row.length - 1 ? cell : cell.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd(),
  )
}

function fileRows(file: FileStatus): string[][] {
  const error = file.lastError ? `${file.lastError.code}: ${file.lastError.message}` : '-'
  const head = [
    file.file,
    file.destination ?? '-',
    file.state === 'ready' ? (file.link ?? '-') : file.state,
    '',
    '',
    '',
    '',
    String(file.reconnects),
    error,
  ]
  const forwards = file.forwards.map((f) => [
    `  ${f.channel}`,
    '',
    '',
    `${f.local.host}:${f.local.port} -> ${f.remote.host}:${f.remote.port}`,
    String(f.open),
    bytes(f.bytesIn),
    bytes(f.bytesOut),
    '',
    '',
  ])
  return [head, ...forwards]
}

/** The human form of a status report: a line about the service, then a table, a row per file and per forward. */
export function renderReport(report: StatusReport): string {
  const links = `${report.links} ssh connection${report.links === 1 ? '' : 's'}`
  const lines = [
    `ipp-tunnel service pid ${report.pid}, up since ${report.since}, watching ${report.dirs.join(', ')}; ${report.files.length} file(s), ${links}`,
  ]
  const remotes = report.remotes ?? []
  if (remotes.length > 0) {
    const rows = remotes.map((r) => [
      `${r.destination}:${r.dir}`,
      r.present === undefined ? 'not polled yet' : r.present ? 'present' : 'waiting for it',
      r.lastPoll ?? '-',
      String(r.files),
      String(r.errors),
      r.lastError ? `${r.lastError.code}: ${r.lastError.message}` : '-',
    ])
    lines.push(...table([['REMOTE DIR', 'STATE', 'LAST POLL', 'FILES', 'ERRORS', 'LAST ERROR'], ...rows]))
  }
  if (report.files.length === 0) return [...lines, 'no connection files yet'].join('\n')
  const header = [
    'FILE',
    'DESTINATION',
    'LINK',
    'FORWARD (local -> remote)',
    'OPEN',
    'IN',
    'OUT',
    'RECONNECTS',
    'LAST ERROR',
  ]
  lines.push(...table([header, ...report.files.flatMap(fileRows)]))
  return lines.join('\n')
}
