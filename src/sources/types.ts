/** Where a connection file was found: this machine, or an ssh server it was pulled from. */
export type SourceOrigin =
  | { readonly kind: 'local' }
  | {
      readonly kind: 'remote'
      /** The ssh destination the file was pulled from, as the user wrote it. */
      readonly destination: string
    }

/** A connection file as a source saw it: its bytes and where they came from. */
export interface SourceFile {
  /** Unique among every source: a local path, or `destination:path` for a remote file. */
  readonly id: string
  /** The path on the host the file lives on. */
  readonly path: string
  readonly origin: SourceOrigin
  /** The content, as read. */
  readonly text: string
  /** Size, mtime and mode as seen when read; another shape means the file changed. */
  readonly shape: string
  /**
   * True when the file looked the same (size, mtime) on two looks in a row: content that does not parse is then
   * broken, not half-written.
   */
  readonly settled: boolean
}

/** Events of a source of connection files. Failures are named events; there is no bare `error` event. */
export interface SourceEvents {
  /** The source looked at its directory: `present` false while it does not exist (waited for, quietly). */
  watching: [
    { kind: 'remote'; destination: string; dir: string; present: boolean } | { kind: 'local'; dir: string },
  ]
  /** A connection file appeared or changed, or was looked at again (its content may be the same as before). */
  file: [SourceFile]
  /** A file reported before went away (or turned into something that is not a connection file). */
  removed: [{ id: string }]
  /** A file that cannot be taken (not a regular file, too large, unreadable); reported once per state. */
  'file:error': [{ id: string; code: string; message: string }]
  /** The directory cannot be looked at (permission, link down); reported once until it changes. */
  'dir:error': [{ destination: string; dir: string; code: string; message: string }]
  /** A file is readable by group or others. */
  warning: [{ id: string; message: string }]
}

/** What `status` shows of a source. */
export interface SourceStatus {
  readonly kind: 'remote'
  readonly destination: string
  readonly dir: string
  /** Whether the directory existed at the last poll (undefined before the first). */
  readonly present: boolean | undefined
  /** When the last poll finished (ISO 8601). */
  readonly lastPoll: string | undefined
  readonly polls: number
  /** Connection files held now. */
  readonly files: number
  /** Problems met since start. */
  readonly errors: number
  readonly lastError: { readonly code: string; readonly message: string; readonly at: string } | undefined
}
