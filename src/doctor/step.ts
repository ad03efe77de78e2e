/** A step's outcome: `skip` when it does not apply or an earlier step it needs failed. */
export type DoctorVerdict = 'pass' | 'fail' | 'warn' | 'skip'

/** One checked thing, with what was seen and, when it failed or warns, what to do about it. Never a secret. */
export interface DoctorStep {
  readonly name: string
  readonly verdict: DoctorVerdict
  readonly detail: string
  readonly fix?: string
}
