import { execFile } from 'node:child_process'

import { IppTunnelError } from '../errors/index.js'
import { PYTHON_VERSIONS } from '../remote/index.js'

/** A python and the versions that must match between the cluster and the client that uses the copy. */
export interface PythonVersions {
  /** How it is named in messages (`/usr/bin/python3 on login1`). */
  readonly where: string
  /** `3.11.2` */
  readonly python: string
  /** `null`: cannot import it. */
  readonly ipyparallel: string | null
  readonly cloudpickle: string | null
}

const PROBE = String.raw`
import json, os, sys
${PYTHON_VERSIONS}
print(json.dumps({'python': sys.version.split()[0], 'ipyparallel': installed('ipyparallel'), 'cloudpickle': installed('cloudpickle')}))
`

/** The versions of the local python that will use the copy. */
export function localVersions(python: string, signal?: AbortSignal): Promise<PythonVersions> {
  return new Promise((resolve, reject) => {
    execFile(
      python,
      ['-c', PROBE],
      { timeout: 30_000, ...(signal !== undefined && { signal }) },
      (err, stdout) => {
        if (err !== null) {
          reject(
            new IppTunnelError(
              'E_SPAWN',
              `the local python ${python} did not run (${err.message.split('\n')[0] ?? ''}): name another with --local-python, or --no-check`,
            ),
          )
          return
        }
        try {
          const v = JSON.parse(stdout) as Omit<PythonVersions, 'where'>
          resolve({ where: `${python} here`, ...v })
        } catch {
          reject(new IppTunnelError('E_SPAWN', `the local python ${python} answered what is not JSON`))
        }
      },
    )
  })
}

const majorMinor = (version: string): string => version.split('.').slice(0, 2).join('.')

/**
 * Refuses a cluster its client could not use: ipyparallel missing on either side, or another Python or ipyparallel
 * major.minor (their messages are pickles and their protocols change), or another cloudpickle major where both have
 * it. The message names both versions.
 */
export function checkCompatible(remote: PythonVersions, local: PythonVersions): void {
  if (remote.ipyparallel === null) {
    throw new IppTunnelError(
      'E_SPAWN',
      `${remote.where} cannot import ipyparallel: install it there (pip install ipyparallel), or name another python with --python`,
    )
  }
  if (local.ipyparallel === null) {
    throw new IppTunnelError(
      'E_SPAWN',
      `${local.where} cannot import ipyparallel (the cluster has ${remote.ipyparallel}): install it, or name the python that will use the cluster with --local-python`,
    )
  }
  const problems: string[] = []
  if (majorMinor(remote.python) !== majorMinor(local.python)) {
    problems.push(`Python ${remote.python} there, ${local.python} here`)
  }
  if (majorMinor(remote.ipyparallel) !== majorMinor(local.ipyparallel)) {
    problems.push(`ipyparallel ${remote.ipyparallel} there, ${local.ipyparallel} here`)
  }
  if (
    remote.cloudpickle !== null &&
    local.cloudpickle !== null &&
    remote.cloudpickle.split('.')[0] !== local.cloudpickle.split('.')[0]
  ) {
    problems.push(`cloudpickle ${remote.cloudpickle} there, ${local.cloudpickle} here`)
  }
  if (problems.length > 0) {
    throw new IppTunnelError(
      'E_SPAWN',
      `the cluster's python (${remote.where}) and the one that will use it (${local.where}) differ: ${problems.join('; ')}; their messages would not be understood (--no-check to go on anyway)`,
    )
  }
}
