import { execFile, spawn } from 'node:child_process'
import { stat } from 'node:fs/promises'
import type { Duplex } from 'node:stream'
import { IppTunnelError } from '../../errors/index.js'
import { isSocket } from '../../safe-fs/index.js'
import { execThroughMaster, type RemoteCommand } from './exec.js'
import { ProxyCommand } from './proxy-command.js'
import type { ResolvedHop } from '../types.js'

/** How a link reaches its destination: `auto` uses a live OpenSSH master (ControlPath) when there is one, else ssh2. */
export type Transport = 'auto' | 'ssh2' | 'openssh'

/**
 * Options every `ssh` we run as a mux client gets: no user config (the control socket says where to go), never a
 * master of its own (`ControlMaster auto` in the user's config must not start one), never a prompt.
 */
const clientOptions = ['-F', '/dev/null', '-o', 'ControlMaster=no', '-o', 'BatchMode=yes']

function destinationArgs(hop: ResolvedHop): string[] {
  return ['-l', hop.username, '-p', String(hop.port), hop.host]
}

async function isFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile()
  } catch {
    return false
  }
}

function runSsh(
  args: readonly string[],
  env: Readonly<Record<string, string | undefined>> | undefined,
): Promise<{ code: number; stderr: string }> {
  return new Promise((resolve) => {
    execFile('ssh', args, { env: { ...(env ?? process.env) }, timeout: 15_000 }, (err, _stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === 'number' ? err.code : 255
      resolve({ code, stderr: stderr.trim() })
    })
  })
}

/**
 * The user's OpenSSH master connection (`ssh -M`, `ControlMaster`/`ControlPath`) used as the transport of a
 * link: each forwarded connection is an `ssh -S PATH -W host:port` child whose stdio is the stream, carried by
 * the master with no new login — how a user who logged in once with a one-time code, Kerberos or a FIDO key gets
 * tunnels without a prompt. Node cannot pass file descriptors over a unix socket, which OpenSSH's mux protocol
 * needs for a stdio forward, hence a small process per connection.
 *
 * @example
 * const master = await OpenSshMaster.find(hop) // undefined when no master is alive at hop.controlPath
 * const stream = await master?.forwardOut('127.0.0.1', 55123)
 * await master?.close()
 */
export class OpenSshMaster {
  readonly path: string
  readonly #hop: ResolvedHop
  readonly #env: Readonly<Record<string, string | undefined>> | undefined
  readonly #streams = new Set<ProxyCommand>()
  /** Its `ssh` children in a session of their own (a Link's `ownProcessGroup`). */
  readonly #detached: boolean
  #closed = false

  private constructor(
    path: string,
    hop: ResolvedHop,
    env?: Readonly<Record<string, string | undefined>>,
    detached = false,
  ) {
    this.path = path
    this.#hop = hop
    this.#env = env
    this.#detached = detached
  }

  /** True when a master answers `ssh -O check` at `path`. */
  static async alive(
    path: string,
    hop: ResolvedHop,
    env?: Readonly<Record<string, string | undefined>>,
  ): Promise<boolean> {
    if (!(await isSocket(path))) return false
    const { code } = await runSsh([...clientOptions, '-S', path, '-O', 'check', ...destinationArgs(hop)], env)
    return code === 0
  }

  /** The master at `hop.controlPath` when one is alive there; never starts one. */
  static async find(
    hop: ResolvedHop,
    env?: Readonly<Record<string, string | undefined>>,
    detached = false,
  ): Promise<OpenSshMaster | undefined> {
    const path = hop.controlPath
    if (path === undefined || !(await OpenSshMaster.alive(path, hop, env))) return undefined
    return new OpenSshMaster(path, hop, env, detached)
  }

  /**
   * Starts a master at `hop.controlPath` (`ssh -M -S PATH -o ControlPersist=yes -fN DEST`, reading the user's
   * ~/.ssh/config for the host as written) with the terminal as its stdio, so it can ask for a code or a passphrase;
   * resolves once it is up. Only for `--transport openssh`: a master outlives us, so it is never started unasked.
   *
   * @throws IppTunnelError `E_CONNECT` when the hop has no ControlPath or ssh could not log in.
   */
  static async start(
    hop: ResolvedHop,
    env?: Readonly<Record<string, string | undefined>>,
  ): Promise<OpenSshMaster> {
    const path = hop.controlPath
    if (path === undefined) {
      throw new IppTunnelError(
        'E_CONNECT',
        `--transport openssh needs a ControlPath for ${hop.alias} in the ssh config (e.g. ControlPath ~/.ssh/cm-%C)`,
      )
    }
    // what we resolved wins over the config, as the command line does in ssh(1); the rest (GSSAPI, ProxyJump, …)
    // comes from the user's config for the host as written
    const identities = (
      await Promise.all(hop.identityFiles.map(async (f) => ((await isFile(f)) ? ['-i', f] : [])))
    ).flat()
    const knownHosts =
      hop.knownHostsFiles.length > 0 ? ['-o', `UserKnownHostsFile=${hop.knownHostsFiles.join(' ')}`] : []
    const args = [
      '-M',
      '-S',
      path,
      '-o',
      'ControlPersist=yes',
      '-fN',
      ...identities,
      ...knownHosts,
      '-o',
      `HostName=${hop.host}`,
      '-l',
      hop.username,
      '-p',
      String(hop.port),
    ]
    const code = await new Promise<number>((resolve) => {
      const child = spawn('ssh', [...args, hop.alias], { stdio: 'inherit', env: { ...(env ?? process.env) } })
      child.once('error', () => resolve(255))
      child.once('exit', (c) => resolve(c ?? 255))
    })
    if (code !== 0 || !(await OpenSshMaster.alive(path, hop, env))) {
      throw new IppTunnelError(
        'E_CONNECT',
        `Could not start an OpenSSH master for ${hop.alias} at ${path} (ssh exited with status ${code})`,
      )
    }
    return new OpenSshMaster(path, hop, env)
  }

  /** Forwarded connections open now. */
  get streamsOpen(): number {
    return this.#streams.size
  }

  /** True when the master still answers. */
  alive(): Promise<boolean> {
    return OpenSshMaster.alive(this.path, this.#hop, this.#env)
  }

  /**
   * A stream to `host:port` as seen from the master's server. The stream ends when the forward does (a refusal
   * by the server, too: ssh says so on stderr and exits).
   */
  forwardOut(host: string, port: number): Promise<Duplex> {
    if (this.#closed) return Promise.reject(new IppTunnelError('E_CLOSED', 'The SSH link was closed'))
    const target = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
    const argv = ['ssh', ...clientOptions, '-S', this.path, '-W', target, ...destinationArgs(this.#hop)]
    const proc = new ProxyCommand(`ssh -S ${this.path} -W ${target}`, {
      argv,
      ...(this.#env !== undefined ? { env: this.#env } : {}),
      detached: this.#detached,
    })
    this.#streams.add(proc)
    // the stream's end is the process's: reap it then; destroying the stream kills it
    const stream = proc.stream
    stream.once('close', () => {
      this.#streams.delete(proc)
      void proc.close()
    })
    return Promise.resolve(stream)
  }

  /** Runs `command` on the master's server in a session of the master (no new login). */
  exec(command: string): RemoteCommand {
    if (this.#closed) throw new IppTunnelError('E_CLOSED', 'The SSH link was closed')
    return execThroughMaster(
      ['ssh', ...clientOptions, '-S', this.path, ...destinationArgs(this.#hop)],
      command,
      this.#env,
      this.#detached,
    )
  }

  /** Ends every forwarded connection (the master itself is the user's and stays). Safe to call twice. */
  async close(): Promise<void> {
    this.#closed = true
    const procs = [...this.#streams]
    this.#streams.clear()
    await Promise.all(procs.map((p) => p.close()))
  }
}
