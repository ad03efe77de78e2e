#!/usr/bin/env node
'use strict'
// CommonJS (bin/package.json): node starts a CommonJS entry without its ES-module loader, which costs ~7 ms.
let cli
try {
  cli = require('../dist/src/cli/launch.cjs')
} catch (err) {
  if (err?.code !== 'MODULE_NOT_FOUND' || !String(err.message).includes('launch.cjs')) throw err
  process.stderr.write('ipp-tunnel: not built yet; run "npm run build" in the package directory first\n')
  process.exit(1)
}
cli.launch(process.argv.slice(2)).then((status) => (process.exitCode = status))
