import type { LinkOptions, SshOptions } from '../ssh/index.js'
import type { ListenKind } from '../tunnel/index.js'

/** How a cluster is reached and, for `start`, started. */
export interface ClusterOptions extends SshOptions, Omit<LinkOptions, keyof SshOptions> {
  /** The ssh destination the cluster runs behind (`user@host`, an alias). */
  readonly destination: string
  /** The ipyparallel profile; default `default`. The copy goes where `Client(profile="NAME-tunnel")` looks. */
  readonly profile?: string
  /** The remote python (after `setup`); default `python3`. */
  readonly python?: string
  /** Shell lines run first on the server before every remote command (`module load …`, `conda activate …`). */
  readonly setup?: string
  /** The remote IPython directory; default the remote `$IPYTHONDIR`, else `~/.ipython`. */
  readonly remoteIpythonDir?: string
  /** The local IPython directory the copy goes to; default `$IPYTHONDIR`, else `~/.ipython`. */
  readonly ipythonDir?: string
  /** The remote directory of our processes' state; default `~/.ipp-tunnel/remote`. */
  readonly remoteDir?: string
  /** What the copy's local listeners are: `tcp` (default) ports on 127.0.0.1, or `unix` sockets only you can use. */
  readonly listen?: ListenKind
  readonly signal?: AbortSignal
}
