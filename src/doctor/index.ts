/**
 * `doctor`: checks one destination or connection file step by step — ssh config, keys, certificates, host key,
 * login, SFTP, unix-socket forwarding, round trip, each endpoint's channel, engines or heartbeat — each with a
 * verdict and, where it fails, the fix.
 *
 * @example
 * import { diagnose } from '../doctor/index.js'
 * for await (const step of diagnose({ file: 'ipcontroller-client.json' })) console.log(step.verdict, step.name)
 */
export { diagnose, type DiagnoseOptions, type DoctorTarget } from './diagnose.js'
export type { DoctorStep, DoctorVerdict } from './step.js'
