import { spawnSync } from 'node:child_process'
import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

import type { Argv } from 'yargs'

import { IppTunnelError } from '../errors/index.js'
import {
  installKernelspec,
  listKernelspecs,
  removeKernelspec,
  type KernelspecPlace,
} from '../kernels/index.js'
import { RemoteProcesses } from '../remote/index.js'
import { Link, resolveTarget } from '../ssh/index.js'
import { envOf, slurmOf, withKernelOptions, type KernelArgs } from './kernel.js'
import { EXIT, Output } from './output.js'
import { sshOptionsFrom, withSshOptions } from './ssh-options.js'

interface InstallArgs extends KernelArgs {
  readonly destination: string
  readonly name: string
  readonly 'display-name'?: string | undefined
  readonly 'interrupt-mode': 'message' | 'signal'
  readonly user?: boolean | undefined
  readonly prefix?: string | undefined
  readonly 'sys-prefix'?: boolean | undefined
  readonly check: boolean
  readonly json: boolean
  readonly debug: boolean
}

/** This installation: the node running now and bin/ipp-tunnel.js beside dist/ (absolute), as a spec's argv starts. */
function launcher(): string[] {
  return [process.execPath, fileURLToPath(new URL('../../../bin/ipp-tunnel.js', import.meta.url))]
}

/** The flags of `args` that `kernel` needs, with every path made absolute: what goes after the destination in argv. */
function kernelArgsOf(args: InstallArgs): string[] {
  const out: string[] = []
  const path = (flag: string, value: string | undefined): void => {
    if (value !== undefined) out.push(flag, resolve(value))
  }
  // one word --flag=value: a value that starts with a dash (--slurm='-p gpu') is not taken for a flag
  const word = (flag: string, value: string | number | undefined): void => {
    if (value !== undefined) out.push(`${flag}=${String(value)}`)
  }
  path('--identity', args.identity)
  path('--known-hosts', args['known-hosts'])
  path('--ssh-config', args['ssh-config'])
  path('--passphrase-file', args['passphrase-file'])
  word('--host-key-check', args['host-key-check'])
  word('--proxy-command', args['proxy-command'])
  word('--transport', args.transport)
  word('--python', args.python)
  word('--kernel-cmd', args['kernel-cmd'])
  word('--setup', args.setup)
  word('--cwd', args.cwd)
  for (const env of args.env ?? []) word('--env', env)
  word('--persist', args.persist)
  word('--remote-dir', args['remote-dir'])
  word('--remote-transport', args['remote-transport'])
  word('--slurm', args.slurm)
  word('--slurm-jobid', args['slurm-jobid'])
  return out
}

function placeOf(args: InstallArgs): KernelspecPlace {
  if (args.prefix !== undefined) return { prefix: resolve(args.prefix) }
  if (args['sys-prefix'] === true) {
    const found = spawnSync('python3', ['-c', 'import sys; print(sys.prefix)'], { encoding: 'utf8' })
    const prefix = found.stdout.trim()
    if (found.status !== 0 || prefix === '') {
      throw new IppTunnelError(
        'E_USAGE',
        '--sys-prefix: python3 here did not say its sys.prefix; pass --prefix',
      )
    }
    return { prefix }
  }
  return { user: true }
}

/** Over the link: does the remote python (after the setup) import ipykernel, and which version? */
async function checkRemote(args: InstallArgs, output: Output): Promise<string> {
  const link = new Link(
    await resolveTarget(args.destination, sshOptionsFrom(args, output)),
    sshOptionsFrom(args, output),
  )
  try {
    await link.connect()
    const procs = new RemoteProcesses(link, {
      ...(args.python !== undefined && { python: args.python }),
      ...(args.setup !== undefined && { setup: args.setup }),
    })
    const found = await procs.modules(['ipykernel'])
    const version = found.modules.ipykernel
    if (version === null || version === undefined) {
      throw new IppTunnelError(
        'E_REMOTE',
        `${args.destination}: ${found.executable} (Python ${found.python}) cannot import ipykernel: install it there (python3 -m pip install --user ipykernel), or pass --python or --setup`,
      )
    }
    return `${found.executable} (Python ${found.python}, ipykernel ${version})`
  } finally {
    await link.close()
  }
}

/** `ipp-tunnel kernelspec install|list|remove`. */
export function registerKernelspec(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command('kernelspec', 'Jupyter kernelspecs that start the kernel on an ssh server', (y) =>
    y
      .command(
        'install <destination>',
        'write a kernelspec (kernel.json) that starts Python on DEST through ipp-tunnel',
        (c) =>
          withSshOptions(
            withKernelOptions(
              c
                .option('name', { type: 'string', demandOption: true, describe: 'the kernelspec name' })
                .option('display-name', { type: 'string', describe: 'what the launcher shows' })
                .option('interrupt-mode', {
                  choices: ['message', 'signal'] as const,
                  default: 'message' as const,
                  describe: 'how Jupyter interrupts: interrupt_request on control, or SIGINT to the launcher',
                })
                .option('user', { type: 'boolean', describe: 'in your Jupyter data dir (default)' })
                .option('prefix', { type: 'string', describe: 'in PREFIX/share/jupyter/kernels' })
                .option('sys-prefix', {
                  type: 'boolean',
                  describe: "in python3's sys.prefix/share/jupyter/kernels",
                })
                .option('check', {
                  type: 'boolean',
                  default: true,
                  describe:
                    'check over the link that the remote python imports ipykernel (--no-check skips it)',
                }),
            ),
          ),
        (args) => run(() => install(args as unknown as InstallArgs)),
      )
      .command(
        'list',
        'the kernelspecs of ipp-tunnel Jupyter finds (destination, python, how it starts)',
        (c) => c,
        (args) => run(() => list(args as unknown as { json: boolean; debug: boolean })),
      )
      .command(
        'remove <name>',
        'remove a kernelspec of ipp-tunnel',
        (c) => c.positional('name', { type: 'string', demandOption: true }),
        (args) => run(() => remove(args as unknown as { name: string; json: boolean; debug: boolean })),
      )
      .demandCommand(1, 'say install, list or remove'),
  )
}

async function install(args: InstallArgs): Promise<number> {
  const output = new Output({ json: args.json, debug: args.debug })
  try {
    envOf(args.env)
    const slurm = slurmOf(args)
    const place = placeOf(args)
    const python = args.check ? await checkRemote(args, output) : undefined
    const dir = await installKernelspec({
      name: args.name,
      place,
      ...(args['display-name'] !== undefined && { displayName: args['display-name'] }),
      launcher: launcher(),
      kernelArgs: kernelArgsOf(args),
      interruptMode: args['interrupt-mode'],
      metadata: {
        destination: args.destination,
        start: slurm !== undefined ? 'slurm' : 'login',
        ...(args.python !== undefined && { python: args.python }),
        ...(args.setup !== undefined && { setup: args.setup }),
      },
    })
    output.result(
      {
        dir,
        name: args.name.toLowerCase(),
        destination: args.destination,
        ...(python !== undefined && { python }),
      },
      `installed kernelspec ${args.name.toLowerCase()} in ${dir}${python !== undefined ? `\n  remote python: ${python}` : ''}`,
    )
    return EXIT.ok
  } catch (err) {
    return output.fail(err, { destination: args.destination })
  }
}

async function list(args: { json: boolean; debug: boolean }): Promise<number> {
  const output = new Output({ json: args.json, debug: args.debug })
  const specs = await listKernelspecs()
  const rows = specs.map((s) => ({
    name: s.name,
    destination: s.metadata.destination,
    python: s.metadata.python ?? 'python3',
    start: s.metadata.start,
    dir: s.dir,
  }))
  const human =
    rows.length === 0
      ? 'no kernelspec of ipp-tunnel (ipp-tunnel kernelspec install DEST --name NAME)'
      : rows.map((r) => `${r.name}  ${r.destination}  ${r.python}  ${r.start}  ${r.dir}`).join('\n')
  output.result({ kernelspecs: rows }, human)
  return EXIT.ok
}

async function remove(args: { name: string; json: boolean; debug: boolean }): Promise<number> {
  const output = new Output({ json: args.json, debug: args.debug })
  try {
    const dir = await removeKernelspec(args.name)
    output.result({ removed: dir }, `removed ${dir}`)
    return EXIT.ok
  } catch (err) {
    return output.fail(err, { name: args.name })
  }
}
