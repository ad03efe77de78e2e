import type Ssh2 from 'ssh2'

type Ssh2Library = typeof Ssh2

let library: Ssh2Library | undefined

/**
 * Loads ssh2 on first need. Its start-up (cipher tables, native bindings) takes ~20 ms; loaded here, right after
 * the TCP connection to the first hop was started, it overlaps the connect and the server's banner.
 */
export async function loadSsh2(): Promise<Ssh2Library> {
  library ??= (await import('ssh2')).default
  return library
}

/** ssh2, for code that runs only after {@link loadSsh2} resolved (an attempt's logins, the clients of a chain). */
export function ssh2(): Ssh2Library {
  if (library === undefined) throw new Error('unreachable: ssh2 used before loadSsh2()')
  return library
}
