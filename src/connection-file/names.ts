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
