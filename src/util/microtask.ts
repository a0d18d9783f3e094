/**
 * A microtask without Node's queueMicrotask() bookkeeping.
 *
 * Node's queueMicrotask() creates an AsyncResource for every call (an async id, the init hook
 * check, a bound function, and runInAsyncScope with a closure when it runs). The data path queues
 * one per batch of I/O (the RDMA channel's send flush, the batch clock's expiry): in a TCG guest,
 * where every instruction costs tens of times its native price, that bookkeeping showed in the
 * daemon's CPU profile at about as much as the work it schedules. A then() on a settled promise
 * queues the same microtask, in the same FIFO order, with one promise and no async resource. This
 * code keeps no async context across its microtasks, so nothing is lost.
 */
const settled = Promise.resolve();

function rethrow(err: unknown): never {
  throw err;
}

/**
 * Returns a function that queues `fn` as a microtask each time it is called (the caller keeps
 * from queueing it twice). Like queueMicrotask(), an exception `fn` throws is not swallowed: it
 * is rethrown outside the promise machinery, as an uncaught exception.
 */
export function microtaskRunner(fn: () => void): () => void {
  const guarded = (): void => {
    try {
      fn();
    } catch (err) {
      process.nextTick(rethrow, err);
    }
  };
  return () => {
    void settled.then(guarded);
  };
}
