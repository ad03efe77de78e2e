import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'

/** Absolute path of a file under fixtures/ (tests run from dist/test/connection-file/). */
export function fixturePath(name: string): string {
  return fileURLToPath(new URL(`../../../fixtures/${name}`, import.meta.url))
}

export function fixtureText(name: string): string {
  return readFileSync(fixturePath(name), 'utf8')
}

/** The real files captured from Debian's ipcontroller and ipykernel (keys replaced). */
export const REAL_FIXTURES = [
  'ipp/ipcontroller-client.json',
  'ipp/ipcontroller-engine.json',
  'ipp-wildcard/ipcontroller-client.json',
  'ipp-wildcard/ipcontroller-engine.json',
  'ipp-curve/ipcontroller-client.json',
  'ipp-curve/ipcontroller-engine.json',
  'ipp-cluster-id/ipcontroller-mycluster-client.json',
  'ipp-cluster-id/ipcontroller-mycluster-engine.json',
  'kernel/kernel-test.json',
  'kernel/kernel-anyip.json',
] as const
