/** Slab placement: power of two choices on donor free memory. */

export interface Candidate {
  idx: number;
  freeBytes: number;
}

/**
 * Picks one donor: two distinct random candidates, the one with more free memory wins (ties:
 * the first drawn). One candidate is returned as is; none gives undefined.
 */
export function pickTwoChoices<T extends Candidate>(cands: T[], random: () => number = Math.random): T | undefined {
  if (cands.length === 0) return undefined;
  if (cands.length === 1) return cands[0];
  const a = Math.floor(random() * cands.length);
  let b = Math.floor(random() * (cands.length - 1));
  if (b >= a) b++;
  const x = cands[a]!;
  const y = cands[b]!;
  return y.freeBytes > x.freeBytes ? y : x;
}

/** Picks `n` distinct donors, one after the other, each by two choices among the rest. */
export function pickDistinct<T extends Candidate>(cands: T[], n: number, random: () => number = Math.random): T[] {
  const left = [...cands];
  const out: T[] = [];
  while (out.length < n && left.length > 0) {
    const c = pickTwoChoices(left, random)!;
    out.push(c);
    left.splice(left.indexOf(c), 1);
  }
  return out;
}
