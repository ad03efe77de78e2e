import type { Argv } from 'yargs'

import { Output } from './output.js'
import { openSource, openSourceClient } from './source-file.js'
import { withSourceFile, withSshOptions, type SshArgs } from './ssh-options.js'

interface PingArgs extends SshArgs {
  readonly file: string
  readonly poll?: number | undefined
  readonly timeout: number
  readonly json: boolean
  readonly debug: boolean
}

/** What `--help` and the command list say the command does. */
const DESCRIPTION =
  'connect to the controller or kernel a connection file names and report engines (or kernel info) and round-trip time'

/** `ipp-tunnel ping FILE`: connects (through ssh when the file says so) and reports who answers and how fast. */
export function registerPing(yargs: Argv, run: (task: () => Promise<number>) => void): Argv {
  return yargs.command(
    'ping <file>',
    DESCRIPTION,
    (y) =>
      withSshOptions(
        withSourceFile(y)
          .option('timeout', { type: 'number', default: 30, describe: 'seconds to wait for each answer' })
          .usage(`$0 ping FILE [ssh options] [--json]\n\n${DESCRIPTION}`),
      ),
    (args) => run(() => ping(args as unknown as PingArgs)),
  )
}

function ms(value: number): number {
  return Math.round(value * 100) / 100
}

async function ping(args: PingArgs): Promise<number> {
  const output = new Output({ json: args.json, debug: args.debug })
  let file = args.file
  const timeoutMs = Math.max(1, args.timeout * 1000)
  try {
    const started = performance.now()
    // host:PATH: pulled and tunnelled; its loopback copy is then reached directly
    await using source = await openSource(args.file, args, output, { render: false })
    file = source.file
    await using client = await openSourceClient(source, args, output, timeoutMs)
    const connectMs = performance.now() - started
    const tunnelled = source.pulled || client.connection.tunnel !== undefined
    const curve = client.connection.curve
    if (client.kind === 'ipp-client') {
      const t0 = performance.now()
      const engines = await client.engines()
      const roundTripMs = performance.now() - t0
      const result = {
        file,
        kind: client.kind,
        engines: engines.ids,
        roundTripMs: ms(roundTripMs),
        connectMs: ms(connectMs),
        tunnelled,
        curve,
      }
      output.result(
        result,
        `ipyparallel controller: ${engines.ids.length} engine${engines.ids.length === 1 ? '' : 's'}` +
          `${engines.ids.length > 0 ? ` [${engines.ids.join(', ')}]` : ''}, round trip ${ms(roundTripMs)} ms` +
          ` (connected in ${ms(connectMs)} ms${tunnelled ? ' through ssh' : ''}${curve ? ', curve' : ''})`,
      )
      return 0
    }
    const kernel = await client.kernelInfo()
    const heartbeatMs = await client.heartbeat(timeoutMs)
    const result = {
      file,
      kind: client.kind,
      implementation: kernel.implementation,
      implementationVersion: kernel.implementation_version,
      language: kernel.language_info.name,
      languageVersion: kernel.language_info.version,
      protocolVersion: kernel.protocol_version,
      roundTripMs: ms(kernel.roundTripMs),
      heartbeatMs: ms(heartbeatMs),
      connectMs: ms(connectMs),
      tunnelled,
      curve,
    }
    output.result(
      result,
      `kernel: ${kernel.implementation} ${kernel.implementation_version}, ${kernel.language_info.name} ` +
        `${kernel.language_info.version}, protocol ${kernel.protocol_version}, round trip ${ms(kernel.roundTripMs)} ms, ` +
        `heartbeat ${ms(heartbeatMs)} ms (connected in ${ms(connectMs)} ms${tunnelled ? ' through ssh' : ''}${curve ? ', curve' : ''})`,
    )
    return 0
  } catch (err) {
    return output.fail(err, { file })
  }
}
