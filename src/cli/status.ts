import { basename } from 'node:path'

import type { Argv } from 'yargs'

import { addressText } from '../tunnel/index.js'
import { loginCommand } from '../ssh/index.js'
import { queryStatus, statusSocketPath, type FileStatus, type StatusReport } from '../service/index.js'
import { EXIT, Output } from './output.js'
import { visibleDeep } from './visible.js'

interface StatusArgs {
  readonly width: number
  readonly json: boolean
  readonly debug: boolean
}

/** The width `status` fits its lines to unless `--width` says otherwise. */
export const STATUS_WIDTH = 100

/** `ipp-tunnel status`: what the running service holds. Exit 3 when no service runs. */
export function registerStatus(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'status',
    'show what the running service holds: files, loopback copies, links, forwards, connections, bytes, errors',
    (y) =>
      y.option('width', {
        alias: 'w',
        type: 'number',
        default: STATUS_WIDTH,
        describe: 'fit lines to this many columns (long paths are cut in the middle); 0: never cut',
      }),
    (args) => run(() => status(args as unknown as StatusArgs)),
  )
}

async function status(args: StatusArgs): Promise<number> {
  const output = new Output({ json: args.json, debug: args.debug })
  try {
    const report = await queryStatus(statusSocketPath(process.env))
    output.result(report, renderReport(report, { width: args.width }))
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

/** Cuts `text` to `width` columns: paths lose their middle (the name at the end stays), other text its end. */
function fit(text: string, width: number, keepEnd = false): string {
  if (width <= 0 || text.length <= width) return text
  if (width < 2) return '…'
  if (!keepEnd) return `${text.slice(0, width - 1)}…`
  const head = Math.floor((width - 1) / 3)
  return `${text.slice(0, head)}…${text.slice(text.length - (width - 1 - head))}`
}

/** Columns of text, the numeric ones (`right`) aligned right. */
function table(rows: readonly (readonly string[])[], right: ReadonlySet<number>): string[] {
  const widths: number[] = []
  for (const row of rows) row.forEach((cell, i) => (widths[i] = Math.max(widths[i] ?? 0, cell.length)))
  return rows.map((row) =>
    row
      .map((cell, i) => (right.has(i) ? cell.padStart(widths[i] ?? 0) : cell.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd(),
  )
}

function linkText(file: FileStatus, waiting: ReadonlySet<string>): string {
  if (file.destination !== undefined && waiting.has(file.destination)) return 'link DOWN, waiting for login'
  switch (file.link) {
    case undefined:
      return file.state === 'pending' ? 'waiting for the file to become usable' : 'no link'
    case 'up':
      return 'link up'
    case 'reconnecting':
      return 'link DOWN, reconnecting'
    default:
      return `link ${file.link}`
  }
}

function copyText(file: FileStatus, width: number): string {
  if (file.copy === 'replaced') return `(replaced by another file: ${fit(file.out, width - 36, true)})`
  return file.state === 'ready'
    ? fit(file.out, width - 8, true)
    : `(none yet; will be ${fit(file.out, width - 27, true)})`
}

function fileLines(file: FileStatus, width: number, waiting: ReadonlySet<string>): string[] {
  const reconnects = `${file.reconnects} reconnect${file.reconnects === 1 ? '' : 's'}`
  const via = file.destination !== undefined ? ` via ${file.destination}` : ''
  const lines = [
    fit(`${basename(file.file)}: ${file.state}${via}, ${linkText(file, waiting)}, ${reconnects}`, width),
    `  file  ${fit(file.file, width - 8, true)}`,
    `  copy  ${copyText(file, width)}`,
  ]
  const cert = file.certificate
  if (cert !== undefined) {
    const id = `key id ${JSON.stringify(cert.keyId)}, serial ${cert.serial}`
    lines.push(fit(`  cert  ${cert.path} (${id}), expires ${cert.expires ?? 'never'}`, width))
  }
  if (file.forwards.length > 0) {
    // remote hosts can be long names or IPv6 addresses: give them what the other columns leave
    const fixed = 2 + 14 + 2 + 15 + 2 + 2 + 4 + 2 + 11 + 2 + 10 + 2
    const remoteWidth = width > 0 ? Math.max(12, width - fixed) : 0
    const rows = [
      ['  CHANNEL', 'LOCAL', 'REMOTE (from ssh server)', 'OPEN', 'FROM REMOTE', 'TO REMOTE'],
      ...file.forwards.map((f) => [
        `  ${f.channel}`,
        f.local.kind === 'unix'
          ? fit(f.local.path, width > 0 ? Math.max(15, width - 40) : 0, true)
          : addressText(f.local),
        fit(addressText(f.remote), remoteWidth, f.remote.kind === 'unix'),
        String(f.open),
        bytes(f.bytesIn),
        bytes(f.bytesOut),
      ]),
    ]
    lines.push(...table(rows, new Set([3, 4, 5])).map((l) => fit(l, width)))
  }
  if (file.lastError !== undefined) {
    const { code, message, at } = file.lastError
    const time = at.slice(11, 19)
    lines.push(fit(`  last error ${time} ${code}: ${message}`, width))
  }
  return lines
}

/**
 * The human form of a status report: a head about the service, then a block per file with its source, its loopback
 * copy, link state, reconnects, a row per forward and the last error. Lines fit `width` columns (0: no limit).
 * Every string (file names, prompts, errors: what servers and other users chose) is shown with its control
 * characters escaped, before widths are counted.
 */
export function renderReport(raw: StatusReport, options: { width?: number } = {}): string {
  const report = visibleDeep(raw)
  const width = options.width ?? STATUS_WIDTH
  const files = `${report.files.length} file${report.files.length === 1 ? '' : 's'}`
  const links = `${report.links} ssh connection${report.links === 1 ? '' : 's'}`
  const lines = [
    fit(`ipp-tunnel service pid ${report.pid}, up since ${report.since}; ${files}, ${links}`, width),
    ...report.dirs.map((d) => `watching ${fit(d, width - 9, true)}`),
  ]
  const remotes = report.remotes ?? []
  if (remotes.length > 0) {
    const header = ['REMOTE DIR', 'STATE', 'LAST POLL', 'FILES', 'ERRORS', 'LAST ERROR']
    const cells = remotes.map((r) => [
      r.present === undefined ? 'not polled yet' : r.present ? 'present' : 'waiting for it',
      r.lastPoll ?? '-',
      String(r.files),
      String(r.errors),
    ])
    // the directory gets what the other columns leave (the header of LAST ERROR whole), its end kept
    const others = [1, 2, 3, 4].reduce(
      (sum, i) => sum + Math.max(header[i]?.length ?? 0, ...cells.map((c) => c[i - 1]?.length ?? 0)) + 2,
      0,
    )
    const dirWidth =
      width > 0 ? Math.max(header[0]?.length ?? 0, width - others - 2 - 'LAST ERROR'.length) : 0
    const rows = remotes.map((r, i) => [
      fit(`${r.destination}:${r.dir}`, dirWidth, true),
      ...(cells[i] ?? []),
      r.lastError ? `${r.lastError.code}: ${r.lastError.message}` : '-',
    ])
    lines.push(...table([header, ...rows], new Set([3, 4])).map((line) => fit(line, width)))
  }
  const logins = report.logins ?? []
  for (const p of logins) {
    const asks = p.prompts.length > 0 ? `, asks ${p.prompts.map((q) => `"${q.prompt}"`).join(', ')}` : ''
    lines.push(
      fit(
        `waiting for login: ${p.destination}${asks} (since ${p.since}); answer with: ${loginCommand(p.destination)}`,
        width,
      ),
    )
  }
  for (const k of report.kernels ?? []) {
    const where = k.host !== undefined ? ` on ${k.host} (pid ${String(k.pid ?? '?')})` : ''
    const state = k.state === 'waiting-login' ? 'waiting for login' : k.state
    lines.push(fit(`kernel ${k.file}: ${state}${where}, ${k.destination} (since ${k.since})`, width))
  }
  const waiting = new Set(logins.map((p) => p.destination))
  if (report.files.length === 0) return [...lines, 'no connection files yet'].join('\n')
  lines.push(
    fit('bytes: FROM REMOTE = endpoint -> your programs, TO REMOTE = your programs -> endpoint', width),
  )
  for (const file of report.files) lines.push('', ...fileLines(file, width, waiting))
  return lines.join('\n')
}
