import assert from 'node:assert/strict'
import { Writable } from 'node:stream'
import { describe, test } from 'node:test'

import {
  MAX_MESSAGE,
  Output,
  RepeatLimiter,
  oneLine,
  repeatKey,
  visible,
  type OutputClock,
  type OutputEvent,
} from '../../src/cli/output.js'
import { IppTunnelError } from '../../src/errors/index.js'
import { loginCommand } from '../../src/ssh/index.js'

/** A clock whose time moves only when the test says so; timers fire as it passes them. */
class FakeClock implements OutputClock {
  t = 1_700_000_000_000
  readonly #timers: { at: number; callback: () => void; cancelled: boolean }[] = []

  now(): number {
    return this.t
  }

  setTimer(callback: () => void, ms: number): { cancel(): void } {
    const timer = { at: this.t + ms, callback, cancelled: false }
    this.#timers.push(timer)
    return { cancel: () => (timer.cancelled = true) }
  }

  advance(ms: number): void {
    const end = this.t + ms
    for (;;) {
      const next = this.#timers.filter((x) => !x.cancelled && x.at <= end).sort((a, b) => a.at - b.at)[0]
      if (next === undefined) break
      next.cancelled = true
      this.t = next.at
      next.callback()
    }
    this.t = end
  }
}

class Sink extends Writable {
  text = ''
  override _write(chunk: Buffer, _encoding: string, callback: () => void): void {
    this.text += chunk.toString()
    callback()
  }
  get lines(): string[] {
    return this.text.split('\n').filter((l) => l !== '')
  }
}

function setup(json: boolean, extra: { humanResults?: string[] } = {}) {
  const clock = new FakeClock()
  const stdout = new Sink()
  const stderr = new Sink()
  const output = new Output({ json, debug: false, stdout, stderr, clock, ...extra })
  return { clock, stdout, stderr, output }
}

const hb: OutputEvent = {
  event: 'forward-error',
  file: '/k/kernel-1.json',
  channel: 'hb',
  message: 'Nothing accepts connections at 127.0.0.1:5 (seen from the ssh server)',
}

describe('RepeatLimiter (pure, time passed in)', () => {
  test('first occurrence printed, the rest of the window counted and summarised at its end', () => {
    const limiter = new RepeatLimiter()
    assert.equal(limiter.offer('k', hb, 0), true)
    for (let i = 1; i <= 167; i++) assert.equal(limiter.offer('k', hb, i * 29), false)
    assert.deepEqual(limiter.due(4_999), [])
    assert.equal(limiter.nextDue(), 5_000)
    assert.deepEqual(limiter.due(5_000), [{ sample: hb, count: 167, ms: 5_000 }])
    assert.deepEqual(limiter.due(5_000), [])
  })

  test('windows that held repeats double up to the cap; a key quiet long enough is forgotten', () => {
    const limiter = new RepeatLimiter({ firstWindowMs: 5_000, maxWindowMs: 20_000, forgetMs: 60_000 })
    limiter.offer('k', hb, 0)
    const windows: number[] = []
    for (let t = 1_000; t < 100_000; t += 1_000) {
      limiter.offer('k', hb, t)
      for (const s of limiter.due(t + 1)) windows.push(s.ms)
    }
    assert.deepEqual(windows.slice(0, 5), [5_000, 10_000, 20_000, 20_000, 20_000])
    // quiet from here on: forgotten once forgetMs passed, then printed afresh
    assert.ok(limiter.due(200_000).length <= 1)
    assert.equal(limiter.nextDue(), undefined)
    assert.equal(limiter.offer('k', hb, 200_001), true)
  })

  test('a stale file failing every 10 s: printed once, then summaries further and further apart', () => {
    const limiter = new RepeatLimiter()
    const printed: number[] = []
    const summaries: number[] = []
    for (let t = 0; t <= 3_600_000; t += 10_000) {
      for (const s of limiter.due(t)) summaries.push(s.count)
      if (limiter.offer('k', hb, t)) printed.push(t)
    }
    assert.deepEqual(printed, [0])
    assert.ok(summaries.length < 20, `one summary per window, not per failure: ${summaries.length}`)
    assert.equal(summaries.reduce((a, b) => a + b, 0) + 1 + (limiter.drain(3_600_001)[0]?.count ?? 0), 361)
  })

  test('the key is the event and its text fields; numbers (attempt, ms) do not split it', () => {
    assert.equal(repeatKey({ ...hb, ms: 1 }), repeatKey({ ...hb, ms: 2 }))
    assert.notEqual(repeatKey(hb), repeatKey({ ...hb, channel: 'shell' }))
    assert.notEqual(repeatKey(hb), repeatKey({ ...hb, event: 'error' }))
  })
})

describe('Output', () => {
  test('human: one line, then "repeated N times in the last 5 s"; other keys unaffected', () => {
    const { clock, stdout, stderr, output } = setup(false)
    output.format('forward-error', (e) => `channel ${String(e.channel)}: ${String(e.message)}`)
    for (let i = 0; i < 168; i++) {
      output.emit(hb)
      clock.advance(29)
    }
    output.emit({ ...hb, channel: 'shell' })
    assert.equal(stderr.lines.length, 2)
    clock.advance(5_000)
    assert.equal(stdout.text, '')
    const lines = stderr.lines
    assert.equal(lines.length, 3, stderr.text)
    assert.match(lines[0]!, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z channel hb: Nothing accepts/)
    assert.match(lines[1]!, /channel shell: /)
    assert.match(lines[2]!, /channel hb: Nothing accepts.* \(repeated 167 times in the last 5 s\)$/)
  })

  test('JSON: a "suppressed" event with of, count, ms and the fields of the last one', () => {
    const { clock, stdout, output } = setup(true)
    for (let i = 0; i < 168; i++) output.emit(hb)
    clock.advance(5_000)
    const events = stdout.lines.map((l) => JSON.parse(l) as Record<string, unknown>)
    assert.deepEqual(events, [hb, { ...hb, event: 'suppressed', of: 'forward-error', count: 167, ms: 5_000 }])
  })

  test('flush() prints held counts at once (end of a command), fail() flushes first', () => {
    const { clock, stderr, output } = setup(false)
    output.emit(hb)
    output.emit(hb)
    clock.advance(1_200)
    output.emit(hb)
    output.fail(new IppTunnelError('E_LINK_DOWN', 'gone'))
    const lines = stderr.lines
    assert.equal(lines.length, 3, stderr.text)
    assert.match(lines[1]!, /repeated 2 times in the last 1 s/)
    assert.equal(lines[2], 'ipp-tunnel: gone')
  })

  test('events that are not errors are never held back', () => {
    const { stderr, output } = setup(false)
    for (let i = 0; i < 5; i++) output.emit({ event: 'reconnecting', destination: 'd', message: 'lost' })
    assert.equal(stderr.lines.length, 5)
  })

  test('results: stdout, no timestamp; JSON results get event "result" (or keep their own)', () => {
    const human = setup(false, { humanResults: ['ready'] })
    human.output.result({ ids: [0] }, 'ids 0')
    human.output.emit({ event: 'ready', file: 'f' })
    human.output.emit({ event: 'warning', message: 'w' })
    assert.match(human.stdout.text, /^ids 0\n\S+Z ready file=f\n$/)
    assert.match(human.stderr.text, /^\S+Z warning message=w\n$/)
    const json = setup(true)
    json.output.result({ ids: [0] }, 'ids 0')
    json.output.result({ event: 'unit', text: 'x' }, 'x')
    json.output.result([1, 2], '1 2')
    assert.deepEqual(
      json.stdout.lines.map((l) => JSON.parse(l) as unknown),
      [
        { event: 'result', ids: [0] },
        { event: 'unit', text: 'x' },
        { event: 'result', value: [1, 2] },
      ],
    )
  })

  test('fail(): one line whatever the message holds, capped in length', () => {
    const { stderr, output } = setup(false)
    const code = output.fail(
      new IppTunnelError(
        'E_CONNFILE_FIELD',
        `f.json: field "ip" bad\nINJECTED LINE\r\u001b[31m${'x'.repeat(5000)}`,
      ),
    )
    assert.equal(code, 2)
    assert.equal(stderr.text.split('\n').length, 2, 'one line and its newline')
    assert.ok(stderr.text.length <= MAX_MESSAGE + 'ipp-tunnel: \n'.length)
    assert.ok(!stderr.text.includes('\u001b'), 'no escape character reaches the terminal')
    assert.match(stderr.text, /…\n$/)
    assert.equal(oneLine('a\nb\tc\u0000'), 'a b c\\x00')
  })
})

describe('visible(): the one escaping function', () => {
  test('control characters, C1, bidi overrides shown as escapes; lines kept only when asked; twice = once', () => {
    const hostile = 'a\u001b]0;T\u0007b\u009bc\u202ed\r\ne\rf\tg'
    assert.equal(visible(hostile), 'a\\x1b]0;T\\x07b\\x9bc\\u202ed\\x0d\\x0ae\\x0df\\x09g')
    assert.equal(visible(hostile, { newlines: true }), 'a\\x1b]0;T\\x07b\\x9bc\\u202ed\ne\\x0df\tg')
    assert.equal(visible(visible(hostile)), visible(hostile))
    assert.equal(oneLine(hostile), 'a\\x1b]0;T\\x07b\\x9bc\\u202ed e f g')
  })

  test('human event lines, results and lines of Output never carry a raw escape', () => {
    const { stdout, stderr, output } = setup(false)
    output.format('login', (e) => `asks ${JSON.stringify(e.prompts)}`)
    output.emit({ event: 'login', prompts: [{ prompt: '\u009b2J\u001b]0;x\u0007' }] })
    output.emit({ event: 'warning', message: 'file \u001b[2K' })
    output.result({}, 'report\n\u001b]0;x\u0007 line\n')
    output.line('\u001b[31m')
    for (const text of [stdout.text, stderr.text]) {
      for (const raw of ['\u001b', '\u0007', '\u009b']) assert.ok(!text.includes(raw), JSON.stringify(text))
    }
    assert.match(stdout.text, /^report\n\\x1b\]0;x\\x07 line\n$/u)
  })
})

describe('loginCommand(): a hint that pastes into a shell', () => {
  test('the alias when the destination shows one; quoted when a shell would read it otherwise', () => {
    assert.equal(loginCommand('root@10.213.39.2:2022 (otp)'), 'ipp-tunnel login otp')
    assert.equal(loginCommand('alice@cluster:22'), 'ipp-tunnel login alice@cluster:22')
    assert.equal(loginCommand('root@[::1]:22'), "ipp-tunnel login 'root@[::1]:22'")
  })
})
