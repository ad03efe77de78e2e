/**
 * `npm run build` (after tsc): the command line as one CommonJS file, dist/src/cli/ipp-tunnel.cjs, which
 * bin/ipp-tunnel.js loads when it is there. One file instead of some two hundred modules: no ES-module resolution,
 * reading and linking per file at every start, and one script V8 can keep a code cache for (src/cli/launch.ts).
 *
 * Stays outside: native addons (ssh2's crypto binding, cpu-features) and zeromq, loaded from node_modules as they
 * are; chokidar, which only `watch` loads. `ssh2` is narrowed to the client, the agent and the key parser: its index also
 * loads the server, key generation and http/https/tls agents, which no command uses. string-width loads on first use.
 */
import { readFile, rm } from 'node:fs/promises'
import { fileURLToPath } from 'node:url'

import { build, type Plugin } from 'esbuild'

const ROOT = fileURLToPath(new URL('../../', import.meta.url))
const ENTRY = `${ROOT}dist/src/cli/index.js`
/** Beside the tsc output it was made from, so that paths relative to import.meta.url stay the same. */
const OUT = `${ROOT}dist/src/cli/ipp-tunnel.cjs`
/** What bin/ipp-tunnel.js requires: launch.js as CommonJS, so that node never starts its ES-module loader for it. */
const LAUNCH = `${ROOT}dist/src/cli/launch.cjs`
const IMPORT_META_URL = `const __ipptImportMetaUrl = require('node:url').pathToFileURL(__filename).href;`

const nativeAddons: Plugin = {
  name: 'native-addons',
  setup(b) {
    // ssh2 requires its binding by a relative path: name it from its package, so that it resolves from the bundle
    b.onResolve({ filter: /\.node$/ }, (args) => {
      const path = fileURLToPath(new URL(args.path, `file://${args.resolveDir}/`))
      const at = path.lastIndexOf('/node_modules/')
      if (at < 0) throw new Error(`bundle: native addon outside node_modules: ${path}`)
      return { path: path.slice(at + '/node_modules/'.length), external: true }
    })
  },
}

const ssh2ClientOnly: Plugin = {
  name: 'ssh2-client-only',
  setup(b) {
    b.onResolve({ filter: /^ssh2$/ }, () => ({ path: 'ssh2', namespace: 'ssh2-client-only' }))
    b.onLoad({ filter: /.*/, namespace: 'ssh2-client-only' }, () => ({
      contents: `module.exports = {
        Client: require('ssh2/lib/client.js'),
        OpenSSHAgent: require('ssh2/lib/agent.js').OpenSSHAgent,
        utils: { parseKey: require('ssh2/lib/protocol/keyParser.js').parseKey },
      }`,
      resolveDir: ROOT,
      loader: 'js',
    }))
  },
}

/** yargs finds its locales and the caller's package.json from its own import.meta.url: keep it its own. */
const yargsOwnUrl: Plugin = {
  name: 'yargs-own-url',
  setup(b) {
    b.onLoad({ filter: /\/yargs\/lib\/platform-shims\/esm\.mjs$/ }, async (args) => ({
      contents: (await readFile(args.path, 'utf8')).replaceAll('import.meta.url', '__ipptYargsShimUrl()'),
      loader: 'js',
    }))
  },
}

/**
 * string-width makes an Intl.Segmenter and compiles Unicode property regexps as it loads (~50 ms of CPU), and yargs
 * loads it (twice: its own copy and cliui's) before parsing anything; only help text needs it. Loaded on first use.
 */
const lazyStringWidth: Plugin = {
  name: 'lazy-string-width',
  setup(b) {
    b.onResolve({ filter: /^string-width$/ }, async (args) => {
      if (args.pluginData === 'real') return undefined
      const real = await b.resolve(args.path, {
        kind: args.kind,
        resolveDir: args.resolveDir,
        pluginData: 'real',
      })
      if (real.errors.length > 0) return { errors: real.errors }
      return { path: real.path, namespace: 'lazy-string-width' }
    })
    b.onLoad({ filter: /.*/, namespace: 'lazy-string-width' }, (args) => ({
      // the function itself and its default: .mjs importers take module.exports as the default, others .default
      contents: `let width
        const lazy = (text, options) => (width ??= require(${JSON.stringify(args.path)}).default)(text, options)
        module.exports = Object.assign(lazy, { default: lazy, __esModule: true })`,
      resolveDir: ROOT,
      loader: 'js',
    }))
  },
}

await rm(OUT, { force: true })
await rm(LAUNCH, { force: true })
const launcher = await build({
  entryPoints: [`${ROOT}dist/src/cli/launch.js`],
  outfile: LAUNCH,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // the modules it falls back to (when the one-file build is older) stay what tsc wrote
  external: ['./index.js'],
  define: { 'import.meta.url': '__ipptImportMetaUrl' },
  banner: { js: IMPORT_META_URL },
  logLevel: 'warning',
})
if (launcher.errors.length > 0) process.exit(1)
const result = await build({
  entryPoints: [ENTRY],
  outfile: OUT,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  // smaller source is less for V8 to scan at every start; names stay for stack traces (--debug)
  minifyWhitespace: true,
  minifySyntax: true,
  minifyIdentifiers: true,
  keepNames: true,
  legalComments: 'none',
  external: ['zeromq', 'chokidar', 'cpu-features'],
  // import() of an external becomes require(): the bundle runs as a vm.Script (for its code cache), where import()
  // has no loader; Node >= 20.19 requires ES modules such as chokidar
  supported: { 'dynamic-import': false },
  define: { 'import.meta.url': '__ipptImportMetaUrl' },
  banner: {
    js: [
      IMPORT_META_URL,
      // yargs beside the package (a checkout, a global install) is one stat; require.resolve (~4 ms) otherwise
      `const __ipptYargsShimUrl = () => { const path = require('node:path'); const beside = path.join(__dirname, '../../../node_modules/yargs/package.json'); return require('node:url').pathToFileURL(path.join(require('node:fs').existsSync(beside) ? beside : require.resolve('yargs/package.json'), '../lib/platform-shims/esm.mjs')).href };`,
    ].join('\n'),
  },
  plugins: [nativeAddons, ssh2ClientOnly, yargsOwnUrl, lazyStringWidth],
  logLevel: 'warning',
})
if (result.errors.length > 0) process.exit(1)
