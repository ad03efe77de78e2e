import type { ResolvedHop } from './types.js'

/** `user@host:port`, with the alias the user wrote when it differs: how every message names a hop. */
export function hopLabel(hop: ResolvedHop): string {
  const where = `${hop.username}@${hop.host}:${hop.port}`
  return hop.alias === hop.host ? where : `${where} (${hop.alias})`
}
