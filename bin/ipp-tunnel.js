#!/usr/bin/env node
let cli
try {
  cli = await import('../dist/src/cli/launch.js')
} catch (err) {
  if (err?.code !== 'ERR_MODULE_NOT_FOUND' || !String(err.message).includes('dist/src/cli/launch.js'))
    throw err
  process.stderr.write('ipp-tunnel: not built yet; run "npm run build" in the package directory first\n')
  process.exit(1)
}
process.exitCode = await cli.launch(process.argv.slice(2))
