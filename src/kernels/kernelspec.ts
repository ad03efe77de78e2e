import { mkdir, readdir, readFile, rm, rmdir } from 'node:fs/promises'
import { homedir, platform } from 'node:os'
import { delimiter, join } from 'node:path'

import { IppTunnelError } from '../errors/index.js'
import { writeFileAtomic } from '../safe-fs/index.js'

/** What marks a kernelspec as ours: `metadata.ipp_tunnel` in its kernel.json. */
export interface KernelspecMetadata {
  readonly destination: string
  readonly python?: string
  readonly kernelCmd?: readonly string[]
  readonly setup?: string
  /** How the kernel starts: `login` (on the ssh server itself) or `slurm` (srun from there, on a compute node). */
  readonly start: 'login' | 'slurm'
}

/** A kernelspec of ours found on this machine. */
export interface InstalledKernelspec {
  readonly name: string
  readonly dir: string
  readonly displayName: string
  readonly metadata: KernelspecMetadata
}

/** Where a kernelspec goes, as `jupyter kernelspec install` puts it. */
export type KernelspecPlace = { readonly user: true } | { readonly prefix: string }

const NAME = /^[A-Za-z0-9._-]{1,64}$/u

/** The user's Jupyter data directory, as jupyter_core computes it: `$JUPYTER_DATA_DIR`, else the platform's. */
export function jupyterDataDir(env: Readonly<Record<string, string | undefined>> = process.env): string {
  const set = env.JUPYTER_DATA_DIR
  if (set !== undefined && set !== '') return set
  const home = env.HOME ?? homedir()
  if (platform() === 'darwin') return join(home, 'Library', 'Jupyter')
  const xdg = env.XDG_DATA_HOME
  return join(xdg !== undefined && xdg !== '' ? xdg : join(home, '.local', 'share'), 'jupyter')
}

/** Every directory Jupyter looks for kernelspecs in, first wins: the user's, `$JUPYTER_PATH`, the system's. */
export function kernelDirs(env: Readonly<Record<string, string | undefined>> = process.env): string[] {
  const path = (env.JUPYTER_PATH ?? '').split(delimiter).filter((p) => p !== '')
  return [jupyterDataDir(env), ...path, '/usr/local/share/jupyter', '/usr/share/jupyter'].map((d) =>
    join(d, 'kernels'),
  )
}

/** The directory a kernelspec called `name` is installed in at `place`. */
export function kernelspecDir(
  name: string,
  place: KernelspecPlace,
  env: Readonly<Record<string, string | undefined>> = process.env,
): string {
  if (!NAME.test(name)) {
    throw new IppTunnelError(
      'E_USAGE',
      `--name ${JSON.stringify(name)}: a kernelspec name is letters, digits, ".", "_" and "-" (as Jupyter requires)`,
    )
  }
  const root = 'prefix' in place ? join(place.prefix, 'share', 'jupyter') : jupyterDataDir(env)
  return join(root, 'kernels', name.toLowerCase())
}

/**
 * Writes `kernel.json` for a kernel that ipp-tunnel starts on `metadata.destination`: `argv` runs this installation
 * (`launcher`: node and bin/ipp-tunnel.js, absolute) as `ipp-tunnel kernel DEST --connection-file {connection_file}
 * …options`. Jupyter replaces `{connection_file}` wherever it appears in argv; the remote file's placeholder is
 * `{remote_connection_file}`, which it leaves alone.
 */
export async function installKernelspec(options: {
  readonly name: string
  readonly place: KernelspecPlace
  readonly displayName?: string
  readonly launcher: readonly string[]
  readonly kernelArgs: readonly string[]
  readonly metadata: KernelspecMetadata
  readonly interruptMode?: 'message' | 'signal'
  readonly env?: Readonly<Record<string, string | undefined>>
}): Promise<string> {
  const dir = kernelspecDir(options.name, options.place, options.env)
  const spec = {
    argv: [
      ...options.launcher,
      'kernel',
      options.metadata.destination,
      '--connection-file',
      '{connection_file}',
      ...options.kernelArgs,
    ],
    display_name: options.displayName ?? `Python on ${options.metadata.destination}`,
    language: 'python',
    interrupt_mode: options.interruptMode ?? 'message',
    metadata: { ipp_tunnel: options.metadata, debugger: false },
  }
  await mkdir(dir, { recursive: true })
  await writeFileAtomic(join(dir, 'kernel.json'), JSON.stringify(spec, null, 1) + '\n', 'kernelspec')
  return dir
}

/** Our kernelspecs (those with `metadata.ipp_tunnel`) in every kernel directory Jupyter reads, first of a name wins. */
export async function listKernelspecs(
  env: Readonly<Record<string, string | undefined>> = process.env,
): Promise<InstalledKernelspec[]> {
  const found = new Map<string, InstalledKernelspec>()
  for (const root of kernelDirs(env)) {
    const names = await readdir(root).catch(() => [])
    for (const name of names.sort()) {
      if (found.has(name) || !NAME.test(name)) continue
      const spec = await readSpec(join(root, name))
      if (spec !== undefined) found.set(name, { name, dir: join(root, name), ...spec })
    }
  }
  return [...found.values()]
}

async function readSpec(
  dir: string,
): Promise<{ displayName: string; metadata: KernelspecMetadata } | undefined> {
  try {
    const value = JSON.parse(await readFile(join(dir, 'kernel.json'), 'utf8')) as {
      display_name?: unknown
      metadata?: { ipp_tunnel?: KernelspecMetadata }
    }
    const metadata = value.metadata?.ipp_tunnel
    if (metadata === undefined || typeof metadata.destination !== 'string') return undefined
    return { displayName: typeof value.display_name === 'string' ? value.display_name : '', metadata }
  } catch {
    return undefined
  }
}

/**
 * Removes our kernelspec `name` (its kernel.json and the directory); a kernelspec that is not ours is left alone.
 * @throws IppTunnelError `E_USAGE` when no kernelspec of ours has that name.
 */
export async function removeKernelspec(
  name: string,
  env: Readonly<Record<string, string | undefined>> = process.env,
): Promise<string> {
  const spec = (await listKernelspecs(env)).find((s) => s.name === name.toLowerCase())
  if (spec === undefined) {
    throw new IppTunnelError('E_USAGE', `no kernelspec of ipp-tunnel is called ${JSON.stringify(name)}`)
  }
  await rm(join(spec.dir, 'kernel.json'))
  // a logo or another file the user put there keeps the directory
  await rmdir(spec.dir).catch(() => undefined)
  return spec.dir
}
