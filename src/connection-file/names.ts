const ENGINE_SUFFIX = /^(ipcontroller(?:-.+)?)-engine\.json$/u
const CLIENT_SUFFIX = /^(ipcontroller(?:-.+)?)-client\.json$/u

function sibling(path: string, from: RegExp, to: string): string | undefined {
  const slash = path.lastIndexOf('/')
  const m = from.exec(path.slice(slash + 1))
  return m === null ? undefined : `${path.slice(0, slash + 1)}${m[1] ?? ''}${to}`
}

/**
 * The client file of the same cluster beside an engine file (`ipcontroller[-id]-engine.json` →
 * `ipcontroller[-id]-client.json`, same directory), or undefined when the name is not an engine file's.
 *
 * @example
 * siblingClientFile('/s/ipcontroller-abc-engine.json') // '/s/ipcontroller-abc-client.json'
 */
export function siblingClientFile(enginePath: string): string | undefined {
  return sibling(enginePath, ENGINE_SUFFIX, '-client.json')
}

/**
 * The engine file of the same cluster beside a client file: the inverse of {@link siblingClientFile}.
 *
 * @example
 * siblingEngineFile('/s/ipcontroller-client.json') // '/s/ipcontroller-engine.json'
 */
export function siblingEngineFile(clientPath: string): string | undefined {
  return sibling(clientPath, CLIENT_SUFFIX, '-engine.json')
}

const KERNEL_FILE = /^(kernel-.+)\.json$/u
const TUNNELLED_KERNEL_FILE = /^kernel-.+-ssh\.json$/u

/**
 * True for `kernel-<id>-ssh.json`: jupyter_client's name for a tunnelled copy of `kernel-<id>.json` (what
 * `jupyter console --ssh` writes, and the copy `up`/`watch` write beside a kernel file). Never a source to tunnel.
 *
 * @example
 * isTunnelledKernelName('/run/kernel-1-ssh.json') // true
 */
export function isTunnelledKernelName(path: string): boolean {
  return TUNNELLED_KERNEL_FILE.test(path.slice(path.lastIndexOf('/') + 1))
}

/**
 * The tunnelled copy of a kernel file beside it, as jupyter_client names it (`kernel-<id>.json` →
 * `kernel-<id>-ssh.json`, same directory), so that `jupyter console --existing` and `find_connection_file()` find
 * it; undefined for other names and for a name that already is such a copy.
 *
 * @example
 * tunnelledKernelFile('/run/kernel-abc.json') // '/run/kernel-abc-ssh.json'
 */
export function tunnelledKernelFile(path: string): string | undefined {
  if (isTunnelledKernelName(path)) return undefined
  return sibling(path, KERNEL_FILE, '-ssh.json')
}
