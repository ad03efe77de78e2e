/**
 * Whether a remote kernel can take the Curve keys of a connection file. jupyter_client 8.9 writes
 * `curve_publickey`/`curve_secretkey` into the file and its clients then connect with Curve; the kernel must bind
 * with the same keys, or the handshake fails. ipykernel reads them from its connection file since 7.3.0
 * (ipykernel#1515), through jupyter_client 8.9's `load_connection_file`; an older one ignores them and listens
 * without Curve.
 */

import type { KernelInfo } from '../connection-file/index.js'
import type { RemoteProcesses } from '../remote/index.js'

/** The first ipykernel that reads Curve keys from its connection file. */
export const CURVE_IPYKERNEL = '7.3.0'
/** The first jupyter_client whose `load_connection_file` loads them (what ipykernel 7.3 requires). */
export const CURVE_JUPYTER_CLIENT = '8.9.0'

/**
 * Whether `version` is `min` or later: numeric parts compared in turn (missing parts are 0); a pre-release of a
 * version (`7.3.0rc1`, `7.3.0.dev0`) comes before it. A version that does not start with a number is never later.
 *
 * @example
 * atLeast('6.17.0', '7.3.0') // false
 * atLeast('7.3.1', '7.3.0') // true
 */
export function atLeast(version: string, min: string): boolean {
  const parse = (v: string): { parts: number[]; pre: boolean } | undefined => {
    const m = /^v?(\d+(?:\.\d+)*)(.*)$/u.exec(v.trim())
    if (m === null) return undefined
    const [, numbers = '', rest = ''] = m
    return { parts: numbers.split('.').map(Number), pre: rest !== '' && !rest.startsWith('+') }
  }
  const a = parse(version)
  const b = parse(min)
  if (a === undefined || b === undefined) return false
  for (let i = 0; i < Math.max(a.parts.length, b.parts.length); i++) {
    const x = a.parts[i] ?? 0
    const y = b.parts[i] ?? 0
    if (x !== y) return x > y
  }
  return !a.pre || b.pre
}

/**
 * Why the remote kernel would run without the file's Curve keys, or `undefined` when it takes them. `modules` is
 * what the remote python imports (`null`: cannot; `''`: no version), as `RemoteProcesses.modules` answers.
 */
export function curveRefusal(
  modules: Readonly<Record<string, string | null | undefined>>,
): string | undefined {
  const ipykernel = modules.ipykernel
  const client = modules.jupyter_client
  if (ipykernel === null || ipykernel === undefined) return 'the remote python cannot import ipykernel'
  if (!atLeast(ipykernel, CURVE_IPYKERNEL)) {
    return `its ipykernel ${ipykernel || '(no version)'} reads no Curve keys (ipykernel ${CURVE_IPYKERNEL} does)`
  }
  if (client === null || client === undefined || !atLeast(client, CURVE_JUPYTER_CLIENT)) {
    return `its jupyter_client ${client || '(none)'} loads no Curve keys (jupyter_client ${CURVE_JUPYTER_CLIENT} does)`
  }
  return undefined
}

/** What {@link remoteCurve} decided: the info the remote kernel gets, and why its Curve keys were withheld. */
export interface RemoteCurve {
  readonly info: KernelInfo
  /** Set when the file has Curve keys and the remote kernel does not get them: why. */
  readonly withheld?: string
}

/**
 * The file's Curve keys go to the remote kernel only when its ipykernel is checked to read them (one remote
 * python run, only for a file that has keys); otherwise they are left out, and `withheld` says why. A custom
 * `kernelCmd` cannot be checked: its keys are withheld too.
 */
export async function remoteCurve(
  info: KernelInfo,
  procs: RemoteProcesses,
  options: { readonly kernelCmd: boolean; readonly signal?: AbortSignal | undefined },
): Promise<RemoteCurve> {
  if (info.curve_secretkey === undefined) return { info }
  const withheld = options.kernelCmd
    ? 'it is started by a custom command (--kernel-cmd), whose ipykernel cannot be checked'
    : curveRefusal(
        (
          await procs.modules(
            ['ipykernel', 'jupyter_client'],
            options.signal ? { signal: options.signal } : {},
          )
        ).modules,
      )
  if (withheld === undefined) return { info }
  const rest: { -readonly [K in keyof KernelInfo]: KernelInfo[K] } = { ...info }
  delete rest.curve_publickey
  delete rest.curve_secretkey
  return { info: rest, withheld }
}
