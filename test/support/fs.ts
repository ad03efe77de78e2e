import { access } from 'node:fs/promises'

/** Whether anything (a file, a directory, a dangling symlink's target aside) is at `path` now. */
export function exists(path: string): Promise<boolean> {
  return access(path).then(
    () => true,
    () => false,
  )
}
