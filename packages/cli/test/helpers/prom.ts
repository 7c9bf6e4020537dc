/** Reads series out of a Prometheus text scrape (tests of --metrics-port). */
import { createServer } from 'node:net';

/** Sum of the samples of `name` whose labels include `labels` (0 when there is none). */
export function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have: Record<string, string> = {};
    for (const l of (m[3] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) have[l[1]!] = l[2]!;
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) sum += Number(m[4]);
  }
  return sum;
}

export async function scrape(url: string): Promise<string> {
  const res = await fetch(url);
  if (res.status !== 200) throw new Error(`${url}: HTTP ${res.status}`);
  return res.text();
}

/** Scrapes until `ok` holds for the text (the figures are read from stats that are published periodically). */
export async function scrapeUntil(url: string, ok: (text: string) => boolean, tries = 100): Promise<string> {
  let text = '';
  for (let i = 0; i < tries; i++) {
    try {
      text = await scrape(url);
      if (ok(text)) return text;
    } catch {
      // not listening yet (a restore worker binds once promoted)
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return text;
}

/** A TCP port nobody listens on right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}
