/** A command-line mistake: printed with the usage hint, exit status 2 (src/cli/main.ts). */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}
