/**
 * The one place where text someone else chose (a server's prompt, a remote file name, a job's output line, an
 * error quoting any of these) is made safe for a terminal or a log line: every character a terminal acts on
 * instead of showing becomes visible as `\xNN` or `\uNNNN`. Nothing the CLI prints bypasses it.
 */

/**
 * C0 controls, DEL, C1 controls (U+009B is a CSI on its own in some terminals), line and paragraph separators,
 * and the bidirectional overrides and isolates that reorder what is shown ("Trojan source").
 */
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/gu

const CONTROL_BUT_NEWLINE =
  // eslint-disable-next-line no-control-regex
  /\r\n|[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]/gu

function shown(c: string): string {
  if (c === '\r\n') return '\n'
  const code = c.charCodeAt(0)
  return code < 0x100
    ? `\\x${code.toString(16).padStart(2, '0')}`
    : `\\u${code.toString(16).padStart(4, '0')}`
}

/**
 * `text` with every control character shown as an escape (`ESC` → `\x1b`, `BEL` → `\x07`, a lone carriage return
 * → `\x0d`); with `newlines`, line breaks and tabs are kept (a server's multi-line instructions, a report),
 * otherwise they are escaped too. Text without control characters is returned as it is, so applying it twice changes nothing.
 *
 * @example
 * visible('kernel-\u001b]0;TITLE\u0007.json') // 'kernel-\\x1b]0;TITLE\\x07.json'
 * visible('line one\r\nline two', { newlines: true }) // 'line one\nline two'
 */
export function visible(text: string, options: { readonly newlines?: boolean } = {}): string {
  return options.newlines === true ? text.replace(CONTROL_BUT_NEWLINE, shown) : text.replace(CONTROL, shown)
}

/** Longest message `fail()` prints; the rest is cut with `…` so an error stays one readable line. */
export const MAX_MESSAGE = 600

/**
 * One line of text: newlines, carriage returns and tabs become a space, other control characters are shown as
 * {@link visible} shows them, and text longer than `max` is cut with `…`. File contents and remote errors reach
 * messages; none may break the line.
 *
 * @example
 * oneLine('bad\nip') // 'bad ip'
 */
export function oneLine(text: string, max = MAX_MESSAGE): string {
  const clean = visible(text.replace(/\r?\n|\r|\t/gu, ' '))
  return clean.length > max ? `${clean.slice(0, max - 1)}…` : clean
}

/**
 * A copy of `value` (plain objects, arrays, strings) with every string made {@link visible} on one line: for a
 * report that is rendered column by column, so that widths are counted on what is shown.
 */
export function visibleDeep<T>(value: T): T {
  if (typeof value === 'string') return oneLine(value, Infinity) as T
  if (Array.isArray(value)) return value.map((v: unknown) => visibleDeep(v)) as T
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {}
    for (const [k, v] of Object.entries(value)) out[k] = visibleDeep(v)
    return out as T
  }
  return value
}
