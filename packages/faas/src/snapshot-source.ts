/**
 * SnapshotPageSource: the read-only PageStore a restore serves faults from. Page p of it is page
 * p of the snapshot image: zero pages come back as found zeros without touching the stack,
 * stored pages are fetched from the stack and verified against the manifest's checksums. A page
 * that is missing or fails its checksum is reported as not found, so a strict region poisons it
 * (the toucher gets SIGBUS) instead of running on wrong bytes.
 *
 * It also records the working set: the order in which pages were first asked for (fault-around
 * blocks included), bounded by `maxRecordPages`, with a bitmap so each page is kept once.
 */
import { BasePageStore, TierStackError, ErrorCode, type PageStore } from '@tierstack/core';
import type { SnapshotManifest } from './manifest.js';
import { fetchSnapshotPages, type BadPage } from './reader.js';

export interface SnapshotSourceStats {
  requested: number;
  zeroServed: number;
  fetched: number;
  bad: number;
  recorded: number;
}

export class SnapshotPageSource extends BasePageStore {
  private readonly seen: Uint8Array;
  private readonly order: number[] = [];
  private recording: boolean;
  readonly badPages: BadPage[] = [];
  private readonly counts: SnapshotSourceStats = { requested: 0, zeroServed: 0, fetched: 0, bad: 0, recorded: 0 };

  constructor(
    readonly stack: PageStore,
    readonly manifest: SnapshotManifest,
    options: { record?: boolean; maxRecordPages?: number } = {},
  ) {
    super(`snapshot:${manifest.id}`, manifest.pageSize);
    this.seen = new Uint8Array(Math.ceil(manifest.pageCount / 8));
    this.recording = options.record !== false;
    this.maxRecord = options.maxRecordPages ?? 1 << 20;
  }

  private readonly maxRecord: number;

  /** Stops recording (a prefetch is about to ask for pages nobody touched). */
  pauseRecording(): void {
    this.recording = false;
  }

  resumeRecording(): void {
    this.recording = true;
  }

  /** First-touch order so far. */
  workingSet(): number[] {
    return [...this.order];
  }

  sourceStats(): SnapshotSourceStats {
    return { ...this.counts, recorded: this.order.length };
  }

  protected async doGet(_ns: string, pages: number[], out: Buffer, found: Uint8Array): Promise<number> {
    const m = this.manifest;
    if (this.recording) {
      for (const p of pages) {
        if (p >= m.pageCount || this.order.length >= this.maxRecord) continue;
        const bit = 1 << (p & 7);
        if (!(this.seen[p >>> 3]! & bit)) {
          this.seen[p >>> 3]! |= bit;
          this.order.push(p);
        }
      }
    }
    // Fetched straight into the engine's buffer; bad pages are zero-filled and reported missing.
    const r = await fetchSnapshotPages(this.stack, m, pages, out);
    this.counts.requested += pages.length;
    this.counts.fetched += r.fetched;
    let hits = pages.length;
    if (r.bad.length) {
      const badSet = new Set(r.bad.map((b) => b.page));
      for (let i = 0; i < pages.length; i++) if (badSet.has(pages[i]!)) hits--;
      for (let i = 0; i < pages.length; i++) found[i] = badSet.has(pages[i]!) ? 0 : 1;
    } else {
      found.fill(1);
    }
    this.counts.zeroServed += pages.length - r.fetched - r.bad.filter((b) => b.page >= m.pageCount).length;
    if (r.bad.length) {
      this.counts.bad += r.bad.length;
      if (this.badPages.length < 64) this.badPages.push(...r.bad.slice(0, 64 - this.badPages.length));
    }
    return hits;
  }

  protected async doPut(): Promise<void> {
    throw new TierStackError(ErrorCode.Unsupported, `snapshot ${this.manifest.id} is read-only`);
  }

  protected async doRemove(): Promise<void> {
    throw new TierStackError(ErrorCode.Unsupported, `snapshot ${this.manifest.id} is read-only`);
  }

  protected override extraStats(): Record<string, number> {
    return { ...this.sourceStats() };
  }
}
