/**
 * A buffered async iterator fed by a push side: what {@link Connection.messages} hands out. It ends when
 * its connection closes, when the consumer calls `return()` (a `break` in `for await`), or on abort.
 *
 * @example
 * const stream = new MessageStream<number>(() => undefined)
 * stream.push(1)
 * stream.end()
 * for await (const n of stream) console.log(n)
 */
export class MessageStream<T> implements AsyncIterableIterator<T> {
  readonly #buffer: T[] = []
  readonly #waiters: ((result: IteratorResult<T, undefined>) => void)[] = []
  readonly #onEnd: () => void
  #ended = false

  constructor(onEnd: () => void) {
    this.#onEnd = onEnd
  }

  /** True once the stream ended (buffered items may still be read). */
  get ended(): boolean {
    return this.#ended
  }

  /** Hands `item` to a waiting reader or buffers it. Ignored after the stream ended. */
  push(item: T): void {
    if (this.#ended) return
    const waiter = this.#waiters.shift()
    if (waiter) waiter({ value: item, done: false })
    else this.#buffer.push(item)
  }

  /** Ends the stream: readers get what is buffered, then `done`. Safe to call twice. */
  end(): void {
    if (this.#ended) return
    this.#ended = true
    for (const waiter of this.#waiters.splice(0)) waiter({ value: undefined, done: true })
    this.#onEnd()
  }

  next(): Promise<IteratorResult<T, undefined>> {
    const item = this.#buffer.shift()
    if (item !== undefined) return Promise.resolve({ value: item, done: false })
    if (this.#ended) return Promise.resolve({ value: undefined, done: true })
    return new Promise((resolve) => this.#waiters.push(resolve))
  }

  return(): Promise<IteratorResult<T, undefined>> {
    this.#buffer.length = 0
    this.end()
    return Promise.resolve({ value: undefined, done: true })
  }

  [Symbol.asyncIterator](): this {
    return this
  }
}
