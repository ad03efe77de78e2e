import { watch } from 'node:fs'
import { access } from 'node:fs/promises'
import { basename, dirname } from 'node:path'

/** Whether anything (a file, a directory, a dangling symlink's target aside) is at `path` now. */
export function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  )
}

/** Resolves once something is at `path` (watching its directory, so no polling); the directory must exist. */
export async function appears(path: string): Promise<void> {
  const watcher = watch(dirname(path))
  try {
    const named = new Promise<void>((resolve) =>
      watcher.on('change', (_event, name) => {
        if (name === basename(path)) void exists(path).then((yes) => yes && resolve())
      }),
    )
    if (await exists(path)) return
    await named
  } finally {
    watcher.close()
  }
}
