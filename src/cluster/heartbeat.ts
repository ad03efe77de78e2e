/**
 * The heartbeat our controllers beat with. ipyparallel's hub lists an engine (and a Client sees it) only at the
 * first beat after the engine's first answer, so at its default period (3 s) a fresh engine waits 3 to 6 s for it:
 * most of a `cluster start`. One beat a second makes that 1 to 2 s; the misses allowed go up so that an engine is
 * forgotten after 2 minutes without answers (the default allows 30 s), and engines elsewhere — which stop after 50
 * of their own checks, one per period + 0.5 s — still ride out 75 s (3 min before) without the controller's beats.
 */
export const HEARTBEAT_PERIOD_MS = 1000
export const HEARTBEAT_MISSES = 120

/** The controller's command-line words for {@link HEARTBEAT_PERIOD_MS} and {@link HEARTBEAT_MISSES}. */
export const CONTROLLER_HEARTBEAT: readonly string[] = [
  `--HeartMonitor.period=${String(HEARTBEAT_PERIOD_MS)}`,
  `--HeartMonitor.max_heartmonitor_misses=${String(HEARTBEAT_MISSES)}`,
]
