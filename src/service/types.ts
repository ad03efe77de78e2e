import type { ConnectionKind } from '../connection-file/index.js'
import type { LinkOptions, LinkState, SshOptions } from '../ssh/index.js'
import type { ForwardInfo, ListenKind } from '../tunnel/index.js'
import type { PendingLogin } from './login-relay.js'

export interface ServiceOptions extends SshOptions, Omit<LinkOptions, keyof SshOptions> {
  /** Directories to watch (an IPython profile's `security/`, a Jupyter runtime dir, …). */
  readonly dirs: readonly string[]
  /** Put every loopback copy here instead of the sibling `-tunnel` directory of its source. */
  readonly outDir?: string
  /** Where the service keeps its list of copies (to clean up after a crash), and `listen: 'unix'` its sockets. */
  readonly runtimeDir: string
  /**
   * Directories on ssh servers to follow over SFTP. A file found there is tunnelled through the same server
   * (unless its own `ssh` field names another); its copy lands where a local one would (see `localCopyDir`).
   */
  readonly remotes?: readonly RemoteDir[]
  /** Milliseconds between polls of each remote directory; default 1000. */
  readonly pollMs?: number
  /** The local IPython directory copies of remote profile files go to; default `$IPYTHONDIR`, else `~/.ipython`. */
  readonly ipythonDir?: string
  /** The local Jupyter runtime directory copies of remote kernel files go to; default as jupyter_core finds it. */
  readonly jupyterRuntimeDir?: string
  /** What the tunnels listen on; default `tcp`. See {@link OpenTunnelOptions}. */
  readonly listen?: ListenKind
  /**
   * Milliseconds between looks at the copies (one removed behind the service's back is written again) and at
   * copy paths held by another file or process; default 2000.
   */
  readonly checkMs?: number
}

/** A directory on an ssh server: `dir` absolute, `~/…`, or relative to the remote home. */
export interface RemoteDir {
  readonly destination: string
  readonly dir: string
}

/** Where a remote file came from, on the events about it. */
export interface RemoteFields {
  readonly source: 'remote'
  readonly destination: string
  /** The file's path on the remote host. */
  readonly path: string
}

/** One forward of a file, with its counters. */
export interface ForwardStatus extends ForwardInfo {
  /** Connections open now. */
  readonly open: number
  readonly accepted: number
  /** Bytes from the remote endpoint towards local clients. */
  readonly bytesIn: number
  /** Bytes from local clients towards the remote endpoint. */
  readonly bytesOut: number
}

/** What the service holds for one connection file, as `status` shows it. */
export interface FileStatus {
  readonly file: string
  readonly kind: ConnectionKind | undefined
  readonly out: string
  readonly destination: string | undefined
  readonly state: 'pending' | 'ready' | 'error'
  readonly link: LinkState | undefined
  readonly reconnects: number
  readonly forwards: readonly ForwardStatus[]
  /** What is at `out`: the copy written, another file put in its place (left alone), or nothing yet. */
  readonly copy?: 'written' | 'replaced' | 'none'
  readonly lastError: { readonly code: string; readonly message: string; readonly at: string } | undefined
  /** Set for files pulled from a remote directory. */
  readonly remote?: { readonly destination: string; readonly path: string }
  /** With `--credential-command`: the certificate the link logged in with last, and when it expires (ISO 8601). */
  readonly certificate?: {
    readonly path: string
    readonly keyId: string
    readonly serial: string
    readonly expires: string | undefined
  }
}

/** Fields of `ready` and `changed`: the file, its loopback copy, how long it took, and its forwards. */
export type ReadyFields = {
  file: string
  out: string
  ms: number
  forwards: readonly ForwardInfo[]
  /** The client file whose `ssh` was used, for an engine file that names no server itself. */
  sshFrom?: string
} & (RemoteFields | { source?: never })

export interface ServiceEvents {
  ready: [ReadyFields]
  changed: [ReadyFields]
  closed: [{ file: string } & (RemoteFields | { source?: never })]
  /**
   * A file could not be taken (bad content, no ssh server, refused forward, not a regular file, a copy another
   * file already writes); it is retried on its next change. For a remote directory that cannot be listed, `file`
   * is `destination:dir`.
   */
  'file:error': [{ file: string; code: string; message: string } & (RemoteFields | { source?: never })]
  /** A remote directory was looked at for the first time, or appeared, or went away (`present`). */
  'remote:watching': [{ destination: string; dir: string; present: boolean }]
  /** A file is readable by group or others. */
  warning: [{ file: string; message: string }]
  /** The ssh link of `files` dropped; one event per link, not per file. */
  'link:reconnecting': [
    { destination: string; files: string[]; attempt: number; delayMs: number; message: string },
  ]
  'link:reconnected': [{ destination: string; files: string[]; attempt: number; downMs: number }]
  /**
   * A link needs someone to log in (a one-time code, a password): it waits, everything else keeps running, until
   * `ipp-tunnel login` answers. Once per need, not per attempt; carries the server's prompts, never an answer.
   */
  'auth-needed': [PendingLogin]
  /** A link that waited for a login is up. */
  'logged-in': [{ destination: string }]
}
