/* Which login methods are tried, in which order, and how often: OpenSSH's rules, less what ipp-tunnel cannot do. */

export type Method = 'publickey' | 'keyboard-interactive' | 'password'

/** OpenSSH's default order, less the methods ipp-tunnel does not speak (gssapi-with-mic, hostbased). */
const DEFAULT_METHODS: readonly Method[] = ['publickey', 'keyboard-interactive', 'password']
export const INTERACTIVE: ReadonlySet<string> = new Set(['keyboard-interactive', 'password'])
/** OpenSSH's NumberOfPasswordPrompts: rounds of keyboard-interactive, and passwords, per connection. */
export const MAX_TRIES = 3

/**
 * The methods to try, in order: `PreferredAuthentications` (or OpenSSH's default order) less what ipp-tunnel cannot
 * do, with every method that asks a person after every one that does not, so that nobody is asked while a key
 * could still do.
 */
export function methodOrder(preferred: readonly string[] | undefined): Method[] {
  const known = (preferred ?? DEFAULT_METHODS).filter((m): m is Method =>
    (DEFAULT_METHODS as readonly string[]).includes(m),
  )
  const unique = [...new Set(known)]
  return [...unique.filter((m) => !INTERACTIVE.has(m)), ...unique.filter((m) => INTERACTIVE.has(m))]
}
