import assert from 'node:assert/strict'
import { test } from 'node:test'

import { atLeast, CURVE_IPYKERNEL, curveRefusal } from '../../src/kernels/index.js'

test('versions: numeric parts in turn, a pre-release before its release', () => {
  assert.equal(atLeast('6.17.0', '7.3.0'), false)
  assert.equal(atLeast('7.2.9', '7.3.0'), false)
  assert.equal(atLeast('7.3.0', '7.3.0'), true)
  assert.equal(atLeast('7.3', '7.3.0'), true)
  assert.equal(atLeast('7.10.0', '7.3.0'), true)
  assert.equal(atLeast('8.0.0', '7.3.0'), true)
  assert.equal(atLeast('7.3.0rc1', '7.3.0'), false)
  assert.equal(atLeast('7.3.0.dev0', '7.3.0'), false)
  assert.equal(atLeast('7.3.0+local', '7.3.0'), true)
  assert.equal(atLeast('', '7.3.0'), false)
  assert.equal(atLeast('unknown', '7.3.0'), false)
})

test('Curve keys go to ipykernel 7.3 with jupyter_client 8.9, and to nothing older', () => {
  assert.equal(CURVE_IPYKERNEL, '7.3.0')
  assert.equal(curveRefusal({ ipykernel: '7.3.0', jupyter_client: '8.9.0' }), undefined)
  assert.match(
    curveRefusal({ ipykernel: '6.17.0', jupyter_client: '7.4.9' }) ?? '',
    /^its ipykernel 6\.17\.0 reads no Curve keys \(ipykernel 7\.3\.0 does\)$/u,
  )
  assert.match(
    curveRefusal({ ipykernel: '7.3.0', jupyter_client: '8.8.0' }) ?? '',
    /jupyter_client 8\.8\.0 loads no Curve keys/u,
  )
  assert.match(curveRefusal({ ipykernel: '', jupyter_client: '8.9.0' }) ?? '', /ipykernel \(no version\)/u)
  assert.match(curveRefusal({ ipykernel: null, jupyter_client: null }) ?? '', /cannot import ipykernel/u)
})
