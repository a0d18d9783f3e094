/**
 * How long a reconnect attempt's login waits for the target's answer once its request is sent.
 *
 * A login sent into a black hole is lost for good: the connection manager resends its REQ only
 * after seconds, so an attempt whose request went out just before the path delivered again is
 * abandoned at its deadline and the next attempt, with a new connection, is the one that gets
 * through. The time from "the path delivers again" to "running" is therefore up to one deadline,
 * half of one on average, and the deadline should be as short as the target allows. But a login
 * abandoned just before its answer arrives costs the target a channel set up and torn down, and a
 * target that always answers later than the deadline would never be reached.
 *
 * So the wait follows what this target has shown: LOGIN_ANSWER_FACTOR times the slowest answer
 * among its last LOGIN_ANSWERS_KEPT logins (accepted or rejected, the first one at attach
 * included), at least LOGIN_ANSWER_FLOOR_MS, at most the attempt's whole deadline. With no answer
 * seen yet it is the whole deadline. A target that slows down beyond what it showed is still
 * reached: every FULL_WAIT_EVERY-th consecutive unanswered login waits the whole deadline, and
 * its answer, once it comes, is learnt.
 */

/** Answer times remembered per port. */
export const LOGIN_ANSWERS_KEPT = 8;
/** The wait is this many times the slowest remembered answer ... */
export const LOGIN_ANSWER_FACTOR = 3;
/** ... and never shorter than this (ms). */
export const LOGIN_ANSWER_FLOOR_MS = 250;
/** Of consecutive unanswered logins, every this-many-th waits the attempt's whole deadline. */
export const FULL_WAIT_EVERY = 4;

export class LoginAnswerWait {
  private readonly answers: number[] = [];
  private unanswered = 0;

  /** The target answered a login (accept or reject) after `ms`. */
  answered(ms: number): void {
    this.answers.push(ms);
    if (this.answers.length > LOGIN_ANSWERS_KEPT) this.answers.shift();
    this.unanswered = 0;
  }

  /** The target answered, but how fast is not known (the transport does not measure it). */
  answeredUntimed(): void {
    this.unanswered = 0;
  }

  /** A login got no answer before its wait ran out. */
  noAnswer(): void {
    this.unanswered++;
  }

  /** The slowest remembered answer, ms (undefined before the first). */
  get slowestMs(): number | undefined {
    return this.answers.length ? Math.max(...this.answers) : undefined;
  }

  /** How long the next login waits for its answer, given the attempt's whole deadline `fullMs`. */
  nextMs(fullMs: number): number {
    const slowest = this.slowestMs;
    if (slowest === undefined || this.unanswered % FULL_WAIT_EVERY === FULL_WAIT_EVERY - 1) return fullMs;
    return Math.min(fullMs, Math.max(LOGIN_ANSWER_FLOOR_MS, Math.ceil(LOGIN_ANSWER_FACTOR * slowest)));
  }
}
