/** Parsing of human-written sizes such as "512", "4K", "1G", "1.5GiB". */

const UNITS: Record<string, number> = {
  '': 1,
  b: 1,
  k: 1024,
  m: 1024 ** 2,
  g: 1024 ** 3,
  t: 1024 ** 4,
  p: 1024 ** 5,
};

/** Parses SIZE with binary suffixes K, M, G, T, P (optionally followed by "iB" or "B"); throws naming the input. */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw new Error(`invalid size '${text}' (expected a number with an optional K, M, G, T or P suffix)`);
  const value = Number(m[1]) * UNITS[m[2]!.toLowerCase()]!;
  if (!Number.isSafeInteger(value)) throw new Error(`invalid size '${text}' (not a whole number of bytes below 2^53)`);
  return value;
}
