import assert from 'node:assert/strict'

import { isIppTunnelError, type ErrorCode } from '../../src/errors/index.js'

/**
 * A validator for `assert.rejects`/`assert.throws`: an {@link IppTunnelError} with `code` whose message
 * mentions every one of `parts`.
 *
 * @example
 * await assert.rejects(link.connect(), hasCode('E_HOSTKEY_UNKNOWN', 'SHA256:'))
 */
export function hasCode(code: ErrorCode, ...parts: string[]) {
  return (err: unknown): boolean => {
    assert.ok(isIppTunnelError(err), `expected IppTunnelError, got ${String(err)}`)
    assert.equal(err.code, code, err.message)
    for (const part of parts) assert.ok(err.message.includes(part), `"${err.message}" should mention ${part}`)
    return true
  }
}
