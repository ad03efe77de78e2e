import type { HostKeyQuestion } from './known-hosts.js'
import type { PromptProvider } from '../login/index.js'

/** How many answers that are neither yes, no nor the fingerprint are taken before giving up (as a no). */
const TRIES = 3

/** `ED25519` for `ssh-ed25519`, `ECDSA` for `ecdsa-sha2-*`, `RSA` for `ssh-rsa`: how ssh(1) names key types here. */
function typeLabel(keyType: string): string {
  if (keyType.startsWith('ecdsa-')) return 'ECDSA'
  return keyType.replace(/^ssh-/u, '').toUpperCase()
}

/**
 * ssh(1)'s question about an unknown host key, asked through `prompt` (on the terminal): "yes" or the key's
 * fingerprint trusts it, "no" refuses it, anything else is asked again, as ssh(1) does. Undefined when no one can
 * answer.
 *
 * @example
 * const ask = hostKeyAsker(terminalPrompts, 'me@cluster:22', 'cluster:22')
 * await checkHostKey({ ...opts, policy: 'ask', ask })
 */
export function hostKeyAsker(
  prompt: PromptProvider,
  destination: string,
  host: string,
): (question: HostKeyQuestion) => Promise<boolean | undefined> {
  return async (question) => {
    const instructions =
      `The authenticity of host '${question.name}' can't be established.\n` +
      `${typeLabel(question.keyType)} key fingerprint is ${question.fingerprint}.`
    let text = 'Are you sure you want to continue connecting (yes/no/[fingerprint])? '
    for (let i = 0; i < TRIES; i++) {
      const answers = await prompt({
        destination,
        host,
        method: 'host-key',
        name: '',
        instructions: i === 0 ? instructions : '',
        prompts: [{ prompt: text, echo: true }],
      })
      const answer = answers?.[0]?.trim()
      if (answer === undefined) return undefined
      if (answer.toLowerCase() === 'yes' || answer === question.fingerprint) return true
      if (answer.toLowerCase() === 'no') return false
      text = "Please type 'yes', 'no' or the fingerprint: "
    }
    return false
  }
}
