// The part of fs-native-extensions (no types of its own) that the data folder lock uses.
declare module 'fs-native-extensions' {
  /** An exclusive (or shared) lock on an open file, held until unlocked or the descriptor closes; false when another holds it. */
  export function tryLock (fd: number, options?: { shared?: boolean }): boolean
  export function unlock (fd: number): void
}
