import type { IppTunnelError } from '../../errors/index.js'

/** One question of a server: its text exactly as sent, and whether what is typed may be shown. */
export interface Prompt {
  readonly prompt: string
  readonly echo: boolean
}

/**
 * What a server asks during keyboard-interactive (or password) authentication. Carries no answer, ever: it may be
 * shown in events and in `status`.
 */
export interface PromptRequest {
  /** The link's destination (`user@host:port`, the server that forwards): what `ipp-tunnel login DEST` names. */
  readonly destination: string
  /** The hop that asks (a jump host, or the destination itself). */
  readonly host: string
  /** `host-key`: the question ssh(1) asks about an unknown host key, under `StrictHostKeyChecking ask`. */
  readonly method: 'keyboard-interactive' | 'password' | 'host-key'
  /** The server's name and instructions for this round (often empty). */
  readonly name: string
  readonly instructions: string
  readonly prompts: readonly Prompt[]
}

/**
 * Answers a server's prompts: one answer per prompt, in order, or undefined when no one can answer (no terminal,
 * nobody logged in). Must not hang when no one can answer: resolve undefined at once.
 */
export type PromptProvider = (request: PromptRequest) => Promise<readonly string[] | undefined>

/**
 * How a link waits for someone to answer, when it runs where no one can (the service). Given in
 * `LinkOptions.login`: a link whose login needs an answer then waits in `wait()` instead of failing, and tries
 * again once it resolves.
 */
export interface LoginGate {
  /** Resolves when someone is ready to answer prompts for `destination`; rejects when `signal` aborts. */
  wait(destination: string, signal: AbortSignal): Promise<void>
  /** Told how each attempt ended (undefined: the link is up), so that whoever answered hears the result. */
  settled(destination: string, error: IppTunnelError | undefined): void
}

/**
 * The text of a request's prompts, for messages: `"Password: ", "Verification code: "`. The prompts are as the
 * server sent them: whoever prints the message escapes what a terminal would act on (the CLI does for every line).
 */
export function quotePrompts(request: Pick<PromptRequest, 'prompts'>): string {
  return request.prompts.map((p) => `"${p.prompt}"`).join(', ')
}

/** A word a shell passes on as it is. */
const SHELL_SAFE = /^[A-Za-z0-9@%+=:,./_-]+$/u

/**
 * The command that answers a link's prompts, ready to paste into a shell: `ipp-tunnel login NAME`, NAME being the
 * alias the user wrote when the destination shows one (`root@10.0.0.2:2022 (otp)` → `otp`), else the destination,
 * single-quoted when a shell would read it otherwise (`root@[::1]:22`).
 *
 * @example
 * loginCommand('root@10.213.39.2:2022 (otp)') // 'ipp-tunnel login otp'
 */
export function loginCommand(destination: string): string {
  const name = /^\S+ \((\S+)\)$/u.exec(destination)?.[1] ?? destination
  return `ipp-tunnel login ${SHELL_SAFE.test(name) ? name : `'${name.replaceAll("'", `'\\''`)}'`}`
}
