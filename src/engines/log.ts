/** A traitlets log line, as ipyparallel's engines and nannies print them: `DATE TIME [Name] [LEVEL | ]message`. */
const LOG_LINE =
  /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \[[^\]]*\](?: (DEBUG|INFO|WARNING|ERROR|CRITICAL) \|)? /

/**
 * Whether an engine's output line is routine logging: a timestamped log line below WARNING. ipengine 7.1 forces
 * its log level to DEBUG whatever it is told, and traitlets marks only WARNING and above, so INFO and DEBUG
 * lines look alike; both are routine. Lines that are not log lines (tracebacks, what user code prints) are not.
 *
 * @example
 * isRoutineLog('2026-11-26 06:04:17.612 [IPEngine] Connecting shell to tcp://127.0.0.1:1') // true
 * isRoutineLog('2026-11-26 06:04:17.612 [IPEngine] WARNING | Not using CurveZMQ security') // false
 */
export function isRoutineLog(line: string): boolean {
  const match = LOG_LINE.exec(line)
  if (match === null) return false
  const level = match[1]
  return level === undefined || level === 'DEBUG' || level === 'INFO'
}

/**
 * `line` with every occurrence of `secrets` (the HMAC key an engine prints in its `Config changed` log line)
 * replaced by `<redacted>`.
 *
 * @example redactLine(`'key': b'abc'`, ['abc']) // "'key': b'<redacted>'"
 */
export function redactLine(line: string, secrets: readonly string[]): string {
  let out = line
  for (const secret of secrets) if (secret.length >= 4) out = out.replaceAll(secret, '<redacted>')
  return out
}
