/**
 * Small seeded PRNG (mulberry32) for deterministic simulations and the FSM's randomized tests:
 * the same seed always gives the same sequence, so a failing run is reproduced from its seed.
 */

/** Uniform floats in [0, 1) from a 32-bit seed. */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Integer in [0, n) from a [0, 1) source. */
export function randInt(random: () => number, n: number): number {
  return Math.floor(random() * n);
}

/** One element of a non-empty array. */
export function pick<T>(random: () => number, items: readonly T[]): T {
  return items[randInt(random, items.length)]!;
}
