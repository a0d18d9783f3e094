/**
 * A clock read once per batch of work: the first call in a turn of the event loop reads
 * performance.now(), later calls in the same turn (until the microtask queue drains) get the same
 * reading.
 *
 * Why: a request's latency is taken at its start and at its end, and requests arrive and complete
 * in batches (one socket read brings many NBD requests, one poll of the completion queue many
 * responses). Reading the clock per request costs two clock reads per I/O, and where the clock has
 * no vDSO fast path (a TCG guest, some hypervisors) each read is a system call. A batch's requests
 * share one reading instead; the error is the time spent within the batch's own processing.
 */
import { microtaskRunner } from './microtask.js';

let cached = -1;
const expireSoon = microtaskRunner(() => {
  cached = -1;
});

/** Milliseconds (performance.now()), read at most once per batch of synchronous work. */
export function batchNow(): number {
  if (cached < 0) {
    cached = performance.now();
    expireSoon();
  }
  return cached;
}
