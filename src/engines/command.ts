import { access, constants, stat } from 'node:fs/promises'
import { delimiter, join } from 'node:path'

import { IppTunnelError } from '../errors/index.js'

/** Debian's `ipengine`: the engine module run by Debian's interpreter. */
export const DEFAULT_ENGINE_COMMAND = '/usr/bin/python3 -m ipyparallel.engine'

/** OpenMPI's launcher, found on PATH. */
export const DEFAULT_MPIEXEC = 'mpiexec'

/**
 * Splits a command line into words the way a POSIX shell would for plain words, 'single' and "double"
 * quotes and backslash escapes; no variables, globs or operators.
 *
 * @example
 * splitCommand(`python3 -c 'print(1)'`) // ['python3', '-c', 'print(1)']
 * @throws IppTunnelError `E_USAGE` on an unclosed quote or an empty command.
 */
export function splitCommand(command: string, what = 'command'): string[] {
  const words: string[] = []
  let word = ''
  let inWord = false
  let quote: '"' | "'" | undefined
  for (let i = 0; i < command.length; i++) {
    const c = command.charAt(i)
    if (quote === "'") {
      if (c === "'") quote = undefined
      else word += c
    } else if (quote === '"') {
      if (c === '"') quote = undefined
      else if (c === '\\' && i + 1 < command.length && '"\\$`'.includes(command.charAt(i + 1))) {
        word += command.charAt(++i)
      } else word += c
    } else if (c === "'" || c === '"') {
      quote = c
      inWord = true
    } else if (c === '\\' && i + 1 < command.length) {
      word += command.charAt(++i)
      inWord = true
    } else if (/\s/.test(c)) {
      if (inWord) words.push(word)
      word = ''
      inWord = false
    } else {
      word += c
      inWord = true
    }
  }
  if (quote !== undefined)
    throw new IppTunnelError('E_USAGE', `${what}: unclosed ${quote} quote in ${command}`)
  if (inWord) words.push(word)
  if (words.length === 0) throw new IppTunnelError('E_USAGE', `${what} is empty`)
  return words
}

/** How to start engines on a (loopback) engine file. */
export interface EngineCommandOptions {
  /** The engine connection file the engines read. */
  readonly file: string
  /** Number of engines. */
  readonly n: number
  /** One `mpiexec -n N … --mpi` launch instead of N processes. */
  readonly mpi?: boolean
  /** Engine command line; `{}` in it is replaced by the file, else `--file=FILE` is appended. */
  readonly engineCommand?: string
  /** MPI launcher command line (default `mpiexec`). */
  readonly mpiexec?: string
  /** Extra arguments for every engine, after the file. */
  readonly extraArgs?: readonly string[]
  /** With `mpi`: arguments for mpiexec before the command (e.g. `--host a:2,b:2`). */
  readonly mpiArgs?: readonly string[]
  /** Without `mpi`: one launch of N tasks by this launcher (e.g. `srun --label`), not N processes. */
  readonly launcher?: readonly string[]
  /** Words run before the engine command (e.g. {@link nodeEngineWrapper}). */
  readonly wrapper?: readonly string[]
}

/**
 * The argv of each process to start: N engine command lines, or one mpiexec line carrying N ranks.
 *
 * @example
 * engineArgvs({ file: '/tmp/x/ipcontroller-engine.json', n: 2, mpi: true })
 * // [['mpiexec', '-n', '2', '/usr/bin/python3', '-m', 'ipyparallel.engine', '--file=/tmp/x/…', '--mpi']]
 * @throws IppTunnelError `E_USAGE` for a bad count or an unparsable command.
 */
export function engineArgvs(options: EngineCommandOptions): string[][] {
  const { n } = options
  if (!Number.isInteger(n) || n < 1 || n > 4096) {
    throw new IppTunnelError('E_USAGE', `-n must be a whole number from 1 to 4096, got ${String(n)}`)
  }
  const words = splitCommand(options.engineCommand ?? DEFAULT_ENGINE_COMMAND, '--engine-cmd')
  const engine = words.some((w) => w.includes('{}'))
    ? words.map((w) => w.replaceAll('{}', options.file))
    : [...words, `--file=${options.file}`]
  engine.push(...(options.extraArgs ?? []))
  engine.unshift(...(options.wrapper ?? []))
  if (options.mpi === true) {
    const mpiexec = splitCommand(options.mpiexec ?? DEFAULT_MPIEXEC, '--mpiexec')
    return [[...mpiexec, ...(options.mpiArgs ?? []), '-n', String(n), ...engine, '--mpi']]
  }
  if (options.launcher !== undefined) return [[...options.launcher, '-n', String(n), ...engine]]
  return Array.from({ length: n }, () => [...engine])
}

/**
 * Environment for an mpiexec launch: OpenMPI refuses root without OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM), and more
 * ranks than cores without oversubscription. Values already set by the user win; other MPIs ignore these.
 *
 * @example
 * spawn('mpiexec', args, { env: mpiEnvironment(process.env, process.getuid?.() === 0) })
 */
export function mpiEnvironment(base: NodeJS.ProcessEnv, root: boolean): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...base }
  if (root) {
    env.OMPI_ALLOW_RUN_AS_ROOT ??= '1'
    env.OMPI_ALLOW_RUN_AS_ROOT_CONFIRM ??= '1'
  }
  env.OMPI_MCA_rmaps_base_oversubscribe ??= '1'
  return env
}

/**
 * The executable `program` names: itself when it holds a `/`, else the first match on `path` (a PATH value),
 * as execvp would find it.
 *
 * @example await findProgram('mpiexec', process.env.PATH) // '/usr/bin/mpiexec'
 * @throws IppTunnelError `E_SPAWN` naming the program when there is no such executable file.
 */
export async function findProgram(program: string, path = ''): Promise<string> {
  const candidates = program.includes('/')
    ? [program]
    : path
        .split(delimiter)
        .filter((dir) => dir !== '')
        .map((dir) => join(dir, program))
  for (const candidate of candidates) {
    try {
      if ((await stat(candidate)).isFile()) {
        await access(candidate, constants.X_OK)
        return candidate
      }
    } catch {
      // not there, or not executable: try the next
    }
  }
  const why = program.includes('/') ? 'no executable file there' : 'not found on PATH'
  throw new IppTunnelError('E_SPAWN', `cannot run ${program}: ${why}`)
}
