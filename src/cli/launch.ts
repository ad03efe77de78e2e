/**
 * What bin/ipp-tunnel.js runs. It loads the command line from the single-file build (ipp-tunnel.cjs, made by
 * `npm run build`) when that is at least as new as the tsc output, else from the modules tsc wrote; a bare
 * `--version` loads neither. Only node's own modules here: this file is loaded before anything else.
 *
 * The single file is compiled with a V8 code cache kept in a private directory (`$XDG_CACHE_HOME/ipp-tunnel` or
 * `~/.cache/ipp-tunnel`, 0700, checked as src/safe-fs checks the runtime directory). The cache is only a speed-up:
 * a directory or file that is not exactly the user's own (owner, type, mode) is ignored, never an error.
 */
import {
  closeSync,
  constants,
  fstatSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
  type Stats,
} from 'node:fs'
import Module, { createRequire } from 'node:module'
import { homedir } from 'node:os'
import { dirname, isAbsolute, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import vm from 'node:vm'

type Main = (argv: readonly string[]) => Promise<number>

const BUNDLE = fileURLToPath(new URL('./ipp-tunnel.cjs', import.meta.url))
const MODULES = fileURLToPath(new URL('./index.js', import.meta.url))
const CACHE_PREFIX = 'ipp-tunnel-'
const CACHE_SUFFIX = '.v8cache'
const MAX_CACHE_BYTES = 64 * 1024 * 1024

/**
 * The single-file build and its stat when it is there and not older than the tsc output (a later `tsc` alone
 * outdates it).
 */
function freshBundle(): { readonly path: string; readonly stat: Stats } | undefined {
  try {
    const stat = statSync(BUNDLE)
    if (stat.mtimeMs < statSync(MODULES).mtimeMs) return undefined
    return { path: BUNDLE, stat }
  } catch {
    return undefined
  }
}

/** The private cache directory, created 0700; undefined when it is not exactly ours (or on a system without uids). */
function cacheDir(env: NodeJS.ProcessEnv): string | undefined {
  const uid = process.getuid?.()
  if (uid === undefined) return undefined
  const xdg = env.XDG_CACHE_HOME
  const base = xdg !== undefined && isAbsolute(xdg) ? xdg : join(homedir(), '.cache')
  const dir = join(base, 'ipp-tunnel')
  try {
    // not { recursive: true }: on a parent where mkdir answers ENOENT (/proc) node's mkdirp loops forever
    for (const d of [base, dir]) {
      try {
        mkdirSync(d, { mode: 0o700 })
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      }
    }
    const s = lstatSync(dir)
    if (!s.isDirectory() || s.uid !== uid || (s.mode & 0o777) !== 0o700) return undefined
    return dir
  } catch {
    return undefined
  }
}

/** Reads a cache file only when it is a regular file of ours that no one else can write, opened without following links. */
function readOwnFile(path: string): Buffer | undefined {
  let fd: number | undefined
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK)
    const s = fstatSync(fd)
    if (!s.isFile() || s.uid !== process.getuid?.() || (s.mode & 0o077) !== 0 || s.size > MAX_CACHE_BYTES) {
      return undefined
    }
    return readFileSync(fd)
  } catch {
    return undefined
  } finally {
    if (fd !== undefined) closeSync(fd)
  }
}

/** Writes `data` as `name` in `dir` (0600, atomically) and removes the caches of other builds. Best effort. */
function writeOwnFile(dir: string, name: string, data: Buffer): void {
  const temp = join(dir, `.${name}.${process.pid}.tmp`)
  try {
    const fd = openSync(
      temp,
      constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW,
      0o600,
    )
    try {
      writeSync(fd, data)
    } finally {
      closeSync(fd)
    }
    renameSync(temp, join(dir, name))
    for (const other of readdirSync(dir)) {
      if (other !== name && other.startsWith(CACHE_PREFIX) && other.endsWith(CACHE_SUFFIX)) {
        rmSync(join(dir, other), { force: true })
      }
    }
  } catch {
    rmSync(temp, { force: true })
  }
}

/** A short hash of a short string (FNV-1a, 32 bits), in hex: no need to load node:crypto for it. */
function fnv1a(text: string): string {
  let hash = 0x811c9dc5
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193)
  return (hash >>> 0).toString(16)
}

/**
 * Loads the single-file build. Node 22.1+ keeps its own compile cache in the private directory; before that the
 * script is compiled here with V8's cachedData, and `save` writes a new cache after the command ran (so that it
 * holds every function the command compiled) when there was none or V8 refused it.
 */
function loadBundle(path: string, file: Stats): { main: Main; save: () => void } {
  const dir = cacheDir(process.env)
  const enable = (Module as { enableCompileCache?: (dir: string) => unknown }).enableCompileCache
  if (dir === undefined || enable !== undefined) {
    if (dir !== undefined) enable?.(dir)
    const { main } = createRequire(import.meta.url)(path) as { main: Main }
    return { main, save: () => undefined }
  }
  const source = readFileSync(path, 'utf8')
  // by the file's identity, not its mtime (an installed package's files share one): a reinstalled or rebuilt
  // file is a new inode with a new ctime. V8 itself checks only a cache's length against the source.
  const key = [
    process.version,
    process.arch,
    fnv1a(process.execArgv.join('\0')),
    file.size,
    file.ino,
    Math.round(file.ctimeMs),
  ].join('-')
  const name = `${CACHE_PREFIX}${key}${CACHE_SUFFIX}`
  const cachedData = readOwnFile(join(dir, name))
  const script = new vm.Script(`(function (exports, require, module, __filename, __dirname) {${source}\n})`, {
    filename: path,
    ...(cachedData !== undefined && { cachedData }),
  })
  const module = { exports: {} as { main?: Main } }
  const wrapper = script.runInThisContext() as (...args: unknown[]) => void
  wrapper.call(module.exports, module.exports, createRequire(path), module, path, dirname(path))
  const { main } = module.exports
  if (main === undefined) throw new Error(`${path} exports no main; run "npm run build" again`)
  const stale = cachedData === undefined || script.cachedDataRejected === true
  return { main, save: () => stale && writeOwnFile(dir, name, script.createCachedData()) }
}

/** The package's version, from its package.json (dist/src/cli/launch.js → package.json). */
function packageVersion(): string {
  const text = readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')
  const { version } = JSON.parse(text) as { version?: unknown }
  return typeof version === 'string' ? version : 'unknown'
}

/**
 * Runs the command line on `argv` (without node and the script) and resolves with the exit status.
 *
 * @example process.exitCode = await launch(process.argv.slice(2))
 */
export async function launch(argv: readonly string[]): Promise<number> {
  if (argv.length === 1 && argv[0] === '--version') {
    process.stdout.write(`${packageVersion()}\n`)
    return 0
  }
  const bundle = freshBundle()
  if (bundle === undefined) return (await import('./index.js')).main(argv)
  const { main, save } = loadBundle(bundle.path, bundle.stat)
  const status = await main(argv)
  save()
  return status
}
